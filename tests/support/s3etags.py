"""A proxy that gives multipart objects the ETags AWS S3 gives them.

`rclone serve s3` answers every HEAD and GET with the MD5 of the whole object,
however it was uploaded. AWS S3, MinIO and Ceph RGW do not: an object made by
a multipart upload has the ETag `<MD5 of the parts' binary MD5s>-<parts>`,
which says nothing a client can check against the MD5 of a file. Tests that
need that behaviour put this proxy in front of rclone: it computes the S3
ETag from each CompleteMultipartUpload it relays (the parts' ETags are in its
body) and rewrites the ETag header of later HEAD and GET answers for that key.
A plain PutObject to the key makes it a single-part object again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from tests.support.faultproxy import FaultProxy

_PART_ETAG = re.compile(rb"<ETag>(?:\"|&quot;|&#34;)?([0-9a-fA-F]{32})(?:\"|&quot;|&#34;)?</ETag>")


def multipart_etag(part_md5s: list[str]) -> str:
    """S3's ETag for an object assembled from parts with these MD5s (hex)."""
    joined = b"".join(bytes.fromhex(md5) for md5 in part_md5s)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(part_md5s)}"


class S3EtagProxy(FaultProxy):
    """A FaultProxy whose answers carry S3's multipart ETags (faults and counts work as usual)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.etags: dict[str, str] = {}  # request path (/bucket/key) -> S3 ETag, without quotes

    def _request_body(self, client, request, record) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
        completing = record.method == "POST" and "uploadId=" in record.query
        body = bytearray()
        for piece in super()._request_body(client, request, record):
            if completing:
                body += piece
            yield piece
        if completing:
            parts = [m.decode() for m in _PART_ETAG.findall(bytes(body))]
            with self._lock:
                self.etags[record.path] = multipart_etag(parts)
        elif record.method == "PUT" and "partNumber=" not in record.query:
            with self._lock:
                self.etags.pop(record.path, None)

    def _send(self, client, data: bytes, record) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            etag = self.etags.get(record.path) if record.method in ("HEAD", "GET") else None
        if etag and data.startswith(b"HTTP/1.1 2") and b"\r\n\r\n" in data:
            head, separator, rest = data.partition(b"\r\n\r\n")
            lines = [f'ETag: "{etag}"'.encode() if line.lower().startswith(b"etag:") else line
                     for line in head.split(b"\r\n")]
            data = b"\r\n".join(lines) + separator + rest
        super()._send(client, data, record)
