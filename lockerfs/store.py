"""The bucket: one small interface over an S3-compatible store, with typed errors.

Everything else in lockerfs sees keys relative to the locker prefix and the
errors below, never botocore. What is temporary (retry) and what is permanent
(tell the user) is decided here, once: botocore retries transient failures
with backoff according to the `RetryPolicy`; what still fails is mapped to a
`StoreError` subclass whose message is one sentence a user can act on.
Until the endpoint has answered once, a connection that cannot be made is
not retried at all (`FirstContact`): a command aimed at a server that is not
there says so at once, while a run under way stays patient.

Implementations: `S3Store` (boto3) and `MemoryStore` (unit tests).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import boto3
import boto3.exceptions
import botocore.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from lockerfs import dropped
from lockerfs.connections import FreshConnections
from lockerfs.rangedget import URL_LIFETIME_SECONDS, Delegate, SignedBody, SignedRangeGets

log = logging.getLogger(__name__)


class StoreError(Exception):
    """A request to the bucket failed for good; str() is a sentence for the user."""


class NotFound(StoreError):
    """The key does not exist."""


class BucketMissing(StoreError):
    """The bucket does not exist."""


class AccessDenied(StoreError):
    """Credentials are missing, wrong, or not allowed to do this."""


class Unreachable(StoreError):
    """The endpoint could not be reached or did not answer in time (after retries)."""


class ServerError(StoreError):
    """The server kept failing (5xx) after retries."""


class CorruptUpload(StoreError):
    """The server did not receive or store the bytes we sent, several times over."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str  # relative to the locker prefix
    size: int
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one request tries before it is reported as failed.

    Uploads can afford patience; the mount must answer a player within
    seconds, so it uses short timeouts and few attempts.
    """

    max_attempts: int
    connect_timeout: float
    read_timeout: float


UPLOAD_RETRIES = RetryPolicy(max_attempts=10, connect_timeout=5, read_timeout=60)
# Three stalled attempts (4 s of silence each) outlast the cache's 8 s read
# deadline on purpose: the reader gets EIO at the deadline, and the kernel's
# immediate retry of the same page joins the overdue fetch and fails at once
# (cache.py) instead of starting a fresh 8 s wait.
MOUNT_RETRIES = RetryPolicy(max_attempts=3, connect_timeout=2, read_timeout=4)
# check() answers "can we use this bucket at all": a few quick tries, so that a
# flaky network does not stop an upload before it starts, yet a server that is
# down is reported within seconds (a connection that cannot be made fails at
# once, see FirstContact; the standard-mode backoff between 4 attempts of
# anything else is at most 1 + 2 + 4 s).
PROBE_RETRIES = RetryPolicy(max_attempts=4, connect_timeout=3, read_timeout=5)
# Whole PUTs repeated when the server says it got other bytes than we sent.
VERIFY_ATTEMPTS = 3
SINGLE_COPY_LIMIT = 5 * 1024**3  # CopyObject's limit; larger objects are copied in parts
PRESIGN_MAX_SECONDS = 7 * 24 * 3600  # SigV4: a presigned URL lives at most 7 days


ChunkSink = Callable[[bytes], None]
STREAM_CHUNK = 64 * 1024  # bytes read from a response body at a time: a stop is seen this soon


class Store(Protocol):
    """The operations lockerfs needs from a bucket. Keys are relative to the locker."""

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object; shorter only at the object's end."""

    def get_range_stream(self, key: str, start: int, end: int, sink: ChunkSink,
                         stop: threading.Event | None = None) -> int:
        """Hand bytes [start, end) to `sink` in order, as they arrive; returns how many.

        Fewer than asked only when `stop` was set (checked between chunks)
        or the object ends sooner. Raises StoreError if the rest cannot be had.
        """

    def get(self, key: str) -> bytes: ...

    def put_bytes(self, key: str, data: bytes, *, md5: str | None = None,
                  content_type: str | None = None) -> None:
        """Store bytes; `md5` (hex, if the caller has it already) saves hashing them again."""

    def put_file(self, key: str, path: Path, progress: Callable[[int], None] | None = None,
                 md5: str | None = None, content_type: str | None = None) -> None:
        """Store a file; `md5` (hex, of the bytes the caller hashed) makes the server check
        that it stored exactly those bytes. Raises CorruptUpload if it keeps getting others."""

    def head(self, key: str) -> int | None:
        """The object's size, or None if it does not exist."""

    def holds(self, key: str, size: int, md5: str) -> bool:
        """Whether the object exists with this size and an ETag that is the MD5 `md5`.

        An object whose ETag is not the MD5 of its bytes (multipart, SSE-KMS,
        SSE-C) is not held: its size alone would trust whatever bytes it has."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def copy(self, source: str, destination: str, size: int) -> None:
        """Copy the object `source` (of `size` bytes) to `destination`, inside the bucket."""

    def check(self) -> None:
        """Fail with a clear StoreError if the bucket cannot be used at all."""


def parse_locker_url(url: str) -> tuple[str, str]:
    """`s3://BUCKET[/PREFIX]` -> (bucket, prefix without slashes at either end)."""
    if not url.startswith("s3://"):
        raise ValueError(f"a locker is s3://BUCKET[/PREFIX], not {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket name in {url!r}")
    return bucket, prefix.strip("/")


class S3Store:
    """A locker in an S3-compatible bucket, through boto3.

    One client per store; botocore clients are thread-safe, so worker threads
    share it, and its connection pool is sized to the caller's parallelism.
    """

    def __init__(self, url: str, endpoint_url: str | None = None,
                 retries: RetryPolicy = UPLOAD_RETRIES, pool_size: int = 10,
                 region_name: str | None = None) -> None:
        self.url = url
        self.bucket, self.prefix = parse_locker_url(url)
        config = Config(
            retries={"mode": "standard", "total_max_attempts": retries.max_attempts},
            connect_timeout=retries.connect_timeout,
            read_timeout=retries.read_timeout,
            max_pool_connections=pool_size,
            tcp_keepalive=True,
            # Many S3-compatible servers answer ranged GETs with the checksum of
            # the whole object; validating it would fail every range read.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Every PUT and UploadPart carries a Content-MD5 that is signed with
            # the request (see _send_content_md5), so the server refuses a body
            # changed on the way. Over https botocore then skips its own SHA-256
            # of the body; over plain http it would hash every byte once more.
            s3={"payload_signing_enabled": False},
        )
        session = boto3.session.Session()
        self._session = session
        self._config = config
        self._client = session.client("s3", endpoint_url=endpoint_url, config=config, region_name=region_name)
        # Pooled connections that died silently (sleep, a new network) are dropped, not waited on.
        self.connections = FreshConnections(self._client)
        self.connections.register(self._client.meta.events)
        # Registered last: botocore's retry handler and the pool's freshness watch see the attempt first.
        self.first_contact = FirstContact()
        self.first_contact.register(self._client.meta.events)
        self._probe: object | None = None  # check()'s client, made when first needed (a client costs 0.1 s)
        self._presigner: object | None = None  # presign_get()'s
        self._presigner_lock = threading.Lock()
        self._expected_md5: dict[str, str] = {}  # full key -> base64 MD5 for its single-part PUT
        self._expected_lock = threading.Lock()
        events = self._client.meta.events
        events.register("before-parameter-build.s3.PutObject", self._expected_content_md5)
        for operation in ("PutObject", "UploadPart"):
            events.register(f"before-call.s3.{operation}", _send_content_md5)
            events.register(f"after-call.s3.{operation}", _check_etag)
        self._body_attempts = retries.max_attempts
        self._transfer = TransferConfig(multipart_threshold=16 * 1024 * 1024,
                                        multipart_chunksize=16 * 1024 * 1024,
                                        max_concurrency=4, use_threads=True)
        self.endpoint = self._client.meta.endpoint_url
        # the client's own urllib3 session: its pools, TLS settings and proxies (botocore has no public handle)
        self._signed = SignedRangeGets(lambda key: self.presign_get(key, URL_LIFETIME_SECONDS),
                                       self._client._endpoint.http_session, self.first_contact,
                                       retries.max_attempts, self.endpoint)

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def get_range(self, key: str, start: int, end: int) -> bytes:
        pieces: list[bytes] = []
        self.get_range_stream(key, start, end, pieces.append)
        return b"".join(pieces)

    def get_range_stream(self, key: str, start: int, end: int, sink: ChunkSink,
                         stop: threading.Event | None = None) -> int:
        """Stream a ranged GET into `sink`, resuming a body cut off mid-way from where it broke.

        Streaming lets the cache hand each block to its reader the moment it
        arrives, so one long request costs a reader no more than a short one.
        A reply of another length than asked (a server that ignored Range, or
        answered short) is refused before any of it reaches the sink, unless it
        is short because the object ends there: bytes from the wrong offset must
        never be taken for the ones asked for.
        """
        position = start
        for attempt in range(1, self._body_attempts + 1):
            if position >= end or (stop is not None and stop.is_set()):
                break
            with self._errors(key):
                broken: Exception
                try:
                    body, length, content_range = self._open_range(key, position, end)
                except urllib3.exceptions.ProtocolError as exc:
                    broken = exc
                else:
                    if length is not None and length != end - position and not _ends_object(content_range, length):
                        body.close()
                        raise StoreError(f"the S3 server at {self.endpoint} answered a request for "
                                         f"{end - position} bytes of {key} with {length}")
                    try:
                        while position < end:
                            if stop is not None and stop.is_set():
                                body.close()  # the connection is dropped, not drained
                                return position - start
                            chunk = body.read(min(STREAM_CHUNK, end - position))
                            if not chunk:
                                return position - start  # the object ends here
                            sink(chunk)
                            position += len(chunk)
                        return position - start
                    except _BODY_ERRORS as exc:
                        broken = exc
                self.connections.failed(broken)
                try:
                    if attempt == self._body_attempts:
                        raise broken
                    log.debug("body of %s broke at %d (%s); resuming", key, position, type(broken).__name__)
                    dropped.drop(broken)
                finally:
                    del broken  # its traceback holds this frame (lockerfs.dropped)
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
        return position - start

    def _open_range(self, key: str, start: int, end: int) -> tuple[Any, int | None, str]:
        """A ranged GET's body (not yet read), Content-Length and Content-Range: by signed URL
        (lockerfs.rangedget: a fraction of botocore's CPU), or through botocore for an answer
        that path hands back."""
        refused = 0  # the HTTP status a signed URL was answered with, if it was handed back
        if self._signed.enabled:
            try:
                reply = self._signed.open(key, start, end, self.connections)
            except Delegate as why:
                refused = why.status  # not the exception: its traceback holds this frame
                if why.lasting:
                    self._stop_signing(refused)
            else:
                header = reply.headers.get("content-length", "")
                length = int(header) if header.isdigit() else None
                return SignedBody(reply, length, self.endpoint), length, reply.headers.get("content-range", "")
        response = self._client.get_object(Bucket=self.bucket, Key=self._full(key), Range=f"bytes={start}-{end - 1}")
        if refused == 403:
            self._stop_signing(refused)  # botocore's request was let in where the signed URL was not
        return response["Body"], response.get("ContentLength"), response.get("ContentRange", "")

    def _stop_signing(self, status: int) -> None:
        if self._signed.enabled:
            self._signed.enabled = False
            log.info("ranged GETs go through botocore from now on: %s answered a signed URL with HTTP %d",
                     self.endpoint, status)

    def get(self, key: str) -> bytes:
        return self._get_body(key)

    def _get_body(self, key: str) -> bytes:
        """GET and read the body, retrying a body cut off mid-way.

        botocore retries failed requests, but not a body that breaks while
        we read it (reset, short read): that retry is ours. Nor an error
        reply's body that breaks: botocore reads it inside get_object and lets
        urllib3's ProtocolError out; that is retried here too.
        """
        for attempt in range(1, self._body_attempts + 1):
            with self._errors(key):
                broken: Exception
                try:
                    response = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
                except urllib3.exceptions.ProtocolError as exc:
                    broken = exc
                else:
                    try:
                        return response["Body"].read()
                    except _BODY_ERRORS as exc:
                        broken = exc
                self.connections.failed(broken)
                if attempt == self._body_attempts:
                    raise broken
                log.debug("body of %s broke (%s); retrying", key, type(broken).__name__)
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
        raise AssertionError("unreachable")

    def put_bytes(self, key: str, data: bytes, *, md5: str | None = None,
                  content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        if md5 is not None:  # the hook below then sends it instead of hashing the body again
            extra["ContentMD5"] = base64.b64encode(bytes.fromhex(md5)).decode()
        self._verified_put(key, lambda: self._client.put_object(
            Bucket=self.bucket, Key=self._full(key), Body=data, **extra))

    def put_file(self, key: str, path: Path, progress: Callable[[int], None] | None = None,
                 md5: str | None = None, content_type: str | None = None) -> None:
        full = self._full(key)
        if md5 is not None:
            with self._expected_lock:
                self._expected_md5[full] = base64.b64encode(bytes.fromhex(md5)).decode()
        extra = {"ContentType": content_type} if content_type else None
        try:
            self._verified_put(key, lambda: self._client.upload_file(
                str(path), self.bucket, full, ExtraArgs=extra, Config=self._transfer, Callback=progress))
        finally:
            with self._expected_lock:
                self._expected_md5.pop(full, None)

    def _verified_put(self, key: str, put: Callable[[], object]) -> None:
        """Run a PUT, repeating it whole when the server got (or stored) other bytes than we sent.

        Integrity, and why this way: every PutObject and UploadPart carries
        Content-MD5 (the hooks below), which S3 defines and AWS, MinIO, Ceph
        RGW, B2, R2, GCS and rclone serve s3 all enforce: a body that arrives
        different is refused (BadDigest) and nothing is stored. For a file's
        single-part PUT that MD5 is the one computed while the file was hashed
        for its key, so the server checks the very bytes the key names, even
        if the file changed since. botocore's newer CRC checksums are not used:
        they need aws-chunked trailers that many S3-compatible servers reject,
        and rclone serve s3 ignores x-amz-checksum-sha256 (tried). As a second
        line, a reply whose ETag is a plain MD5 that differs from ours (a server
        that ignored Content-MD5 and kept other bytes) counts as a failure too.
        A PUT whose reply was lost is repeated by botocore; objects are
        content-addressed, so writing one twice is harmless.
        """
        for attempt in range(1, VERIFY_ATTEMPTS + 1):
            try:
                with self._errors(key):
                    put()
                return
            except CorruptUpload as exc:
                if attempt == VERIFY_ATTEMPTS:
                    raise
                log.warning("%s; sending it again", exc)

    def _expected_content_md5(self, params: dict, **kwargs: object) -> None:
        with self._expected_lock:
            md5 = self._expected_md5.get(params.get("Key", ""))
        if md5 is not None:
            params["ContentMD5"] = md5

    def head(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else head["ContentLength"]

    def holds(self, key: str, size: int, md5: str) -> bool:
        # Only an MD5 ETag says which bytes an object holds. A multipart upload of
        # a file edited meanwhile leaves an object of the right size and mixed
        # bytes under the old key (each part was verified as sent, not as the key
        # names), so an object whose ETag proves nothing is uploaded again. That
        # happens only for objects the catalog does not name: a run killed before
        # its record, or two machines uploading one file at once.
        head = self._head(key)
        if head is None or head["ContentLength"] != size:
            return False
        return _plain_md5_etag(head) == md5

    def _head(self, key: str) -> dict | None:
        try:
            with self._errors(key):
                return self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except NotFound:
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full(prefix)):
                for item in page.get("Contents", []):
                    yield ObjectInfo(self._relative(item["Key"]), item["Size"], item["LastModified"])

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def copy(self, source: str, destination: str, size: int) -> None:
        """A server-side copy (the bytes do not cross the network); its metadata (Content-Type) goes along.

        CopyObject takes objects of up to 5 GiB; larger ones go through
        boto3's managed copy, which copies them in parts."""
        with self._errors(source):
            copy_source = {"Bucket": self.bucket, "Key": self._full(source)}
            if size <= SINGLE_COPY_LIMIT:
                self._client.copy_object(Bucket=self.bucket, Key=self._full(destination), CopySource=copy_source)
            else:
                self._client.copy(copy_source, self.bucket, self._full(destination), Config=TransferConfig(
                    multipart_threshold=SINGLE_COPY_LIMIT, multipart_chunksize=1024**3))

    @property
    def region(self) -> str | None:
        """The region requests are signed for (boto3's chain, or the one given)."""
        return self._client.meta.region_name

    def signs_with_temporary_credentials(self) -> bool:
        """Whether the credentials carry a session token (SSO, an assumed role): links
        presigned with them stop working when the token expires, whatever they say."""
        credentials = self._session.get_credentials()
        return credentials is not None and credentials.get_frozen_credentials().token is not None

    def presign_get(self, key: str, expires: int, content_type: str | None = None,
                    disposition: str | None = None) -> str:
        """A URL that GETs `key` without credentials for `expires` seconds (at most 7 days).

        Signed with SigV4: boto3 presigns with SigV2 unless told otherwise, and
        SigV2 URLs are refused by many S3-compatible servers (rclone answers
        400). `content_type` and `disposition` are what the server is asked to
        answer with (response-content-type, response-content-disposition),
        whatever the object was stored with. Nothing is sent: signing is local.
        """
        if not 1 <= expires <= PRESIGN_MAX_SECONDS:
            raise ValueError(f"a presigned URL lives 1 s to {PRESIGN_MAX_SECONDS} s, not {expires} s")
        with self._presigner_lock:  # worker threads sign the URLs of ranged GETs
            if self._presigner is None:
                self._presigner = self._session.client(
                    "s3", endpoint_url=self.endpoint, region_name=self.region,
                    config=self._config.merge(Config(signature_version="s3v4")))
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        if content_type:
            params["ResponseContentType"] = content_type
        if disposition:
            params["ResponseContentDisposition"] = disposition
        with self._errors(key):
            return self._presigner.generate_presigned_url(  # type: ignore[attr-defined]
                "get_object", Params=params, ExpiresIn=expires)

    def check(self) -> None:
        """Whether the bucket can be used at all, asked with few quick tries whatever the retry policy."""
        if self._probe is None:
            self._probe = self._session.client(
                "s3", endpoint_url=self.endpoint, region_name=self.region, config=self._config.merge(Config(
                    retries={"mode": "standard", "total_max_attempts": PROBE_RETRIES.max_attempts},
                    connect_timeout=PROBE_RETRIES.connect_timeout, read_timeout=PROBE_RETRIES.read_timeout)))
            self.first_contact.register(self._probe.meta.events)  # type: ignore[attr-defined]
        with self._errors(""):
            self._probe.head_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]

    def _errors(self, key: str) -> _ErrorMapper:
        return _ErrorMapper(self, key)


class FirstContact:
    """Until an endpoint has answered once, a connection that cannot be made is final.

    botocore retries a refused or timed-out connection like any transient
    failure, with backoff: 10 attempts took `lockerfs ls` 12 s to say that
    nothing listens there. Before any answer there is nothing to be patient
    about (the address is wrong, the server is down, the network is away), so
    the first such failure is reported at once: a refused connection within
    milliseconds, an unreachable host within one connect timeout. Once any
    HTTP response has come (even an error status), the retry policy applies
    unchanged: a run under way rides out a server that restarts or a network
    that blinks. Shared by a store's clients: an answer to either counts.
    """

    def __init__(self) -> None:
        self.answered = False

    def register(self, events: object, service: str = "s3") -> None:
        events.register_last(f"needs-retry.{service}", self._after_attempt)  # type: ignore[attr-defined]

    def _after_attempt(self, response: object = None, caught_exception: BaseException | None = None,
                       **kwargs: object) -> None:
        """botocore hook after each attempt. Raising ends the request with that error, unretried."""
        if response is not None:
            self.answered = True
        elif not self.answered and isinstance(caught_exception, botocore.exceptions.ConnectionError):
            raise caught_exception


def _why_unreachable(exc: BaseException) -> str:
    """What stopped a connection, as a few words for the user ('' if it does not say)."""
    if isinstance(exc, botocore.exceptions.ConnectTimeoutError):
        return " (no answer to connecting)"
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return " (its name does not resolve)"
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return " (connection refused: nothing listens there)"
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return " (no route to it: is the network up?)"
        nested = getattr(cause, "kwargs", {}).get("error") if isinstance(cause, botocore.exceptions.BotoCoreError) else None
        cause = nested or cause.__cause__ or cause.__context__
    return ""


_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
# ETags that are not the MD5 of the bytes even when they look like one.
_OPAQUE_ETAG_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse"})
_DIGEST_ERRORS = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})


def _send_content_md5(params: dict, context: dict, **kwargs: object) -> None:
    """botocore hook: send Content-MD5 on PUTs (the expected one if set, else the body's)."""
    headers = params.setdefault("headers", {})
    given = headers.get("Content-MD5")
    if given:
        context["lockerfs_md5"] = base64.b64decode(given).hex()
        return
    body = params.get("body") or b""
    if isinstance(body, (bytes, bytearray)):
        digest = hashlib.md5(body, usedforsecurity=False).digest()
    elif hasattr(body, "read") and hasattr(body, "seek"):
        # s3transfer's file chunks count what is read as progress; this read is
        # not a transfer (s3transfer turns counting back on when the request is sent)
        if hasattr(body, "signal_not_transferring"):
            body.signal_not_transferring()
        md5 = hashlib.md5(usedforsecurity=False)
        start = body.tell()
        for chunk in iter(lambda: body.read(1024 * 1024), b""):
            md5.update(chunk)
        body.seek(start)
        digest = md5.digest()
    else:
        return
    headers["Content-MD5"] = base64.b64encode(digest).decode()
    context["lockerfs_md5"] = digest.hex()


def _plain_md5_etag(reply: dict) -> str | None:
    """The ETag if it is the MD5 of the object's bytes, as S3 makes it for single-part
    unencrypted or SSE-S3 objects; None for multipart, SSE-KMS, SSE-C, or odd ETags."""
    etag = str(reply.get("ETag", "")).strip('"').lower()
    if (not _MD5_RE.match(etag) or reply.get("SSECustomerAlgorithm")
            or reply.get("ServerSideEncryption") in _OPAQUE_ETAG_ENCRYPTION):
        return None
    return etag


def _check_etag(parsed: dict, context: dict, **kwargs: object) -> None:
    """botocore hook: a PUT whose reply names other bytes than we sent failed."""
    sent = context.get("lockerfs_md5")
    if not sent or "Error" in parsed:
        return
    stored = _plain_md5_etag(parsed)
    if stored is not None and stored != sent:
        raise CorruptUpload(f"the S3 server stored other bytes than were sent (ETag {stored}, "
                            f"MD5 sent {sent})")


_BODY_ERRORS = (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError,
                botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError)


class _ErrorMapper:
    """Turns botocore's exceptions into StoreErrors with one clear sentence each."""

    def __init__(self, store: S3Store, key: str) -> None:
        self.store = store
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, StoreError):
            return False
        mapped = self._map(exc)
        if mapped is None:
            return False
        try:
            raise mapped from exc
        finally:
            del mapped  # its traceback holds this frame (lockerfs.dropped)

    def _map(self, exc: BaseException) -> StoreError | None:
        if isinstance(exc, boto3.exceptions.S3UploadFailedError):
            # upload_file wraps the ClientError that says what went wrong
            cause = exc.__cause__ or exc.__context__
            return self._map(cause) if cause is not None else StoreError(f"S3 upload failed: {exc}")
        where = f"s3://{self.store.bucket}"
        endpoint = self.store.endpoint
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return AccessDenied("no S3 credentials found: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or ~/.aws/credentials")
        if isinstance(exc, botocore.exceptions.ConnectionError):  # refused, timed out, no route, no such name
            return Unreachable(f"cannot connect to the S3 endpoint {endpoint}{_why_unreachable(exc)}")
        if isinstance(exc, (*_BODY_ERRORS, urllib3.exceptions.ProtocolError)):
            return Unreachable(f"the S3 endpoint {endpoint} stopped answering ({type(exc).__name__})")
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _DIGEST_ERRORS:
                return CorruptUpload(f"the S3 server at {endpoint} received other bytes than were sent "
                                     f"for {where}/{self.store._full(self.key)} ({code})")
            if code == "NoSuchBucket" or (status == 404 and not self.key):
                return BucketMissing(f"the bucket {where} does not exist at {endpoint}")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return NotFound(f"{where}/{self.store._full(self.key)} does not exist")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                        "403", "Forbidden", "InvalidToken", "ExpiredToken") or status in (401, 403):
                return AccessDenied(f"the S3 server at {endpoint} refused our credentials "
                                    f"for {where} ({code or status})")
            if status >= 500:
                return ServerError(f"the S3 server at {endpoint} keeps failing ({code or status})")
            return StoreError(f"the S3 server at {endpoint} refused a request on {where} ({code or status})")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return StoreError(f"S3 request failed: {exc}")
        return None


def _ends_object(content_range: str, length: int) -> bool:
    """Whether a ranged reply of `length` bytes is short only because the object ends there."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range or "")
    return bool(match) and int(match[2]) + 1 == int(match[3]) and int(match[2]) - int(match[1]) + 1 == length


def feed_in_chunks(data: bytes, sink: ChunkSink, stop: threading.Event | None = None) -> int:
    """get_range_stream for a store that answers whole ranges at once (tests, wrappers)."""
    done = 0
    while done < len(data) and not (stop is not None and stop.is_set()):
        sink(data[done:done + STREAM_CHUNK])
        done += min(STREAM_CHUNK, len(data) - done)
    return done


class MemoryStore:
    """An in-memory bucket for unit tests; behaves like S3Store, including errors."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, datetime]] = {}
        self.content_types: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _record(self, op: str, key: str) -> None:
        with self._lock:
            self.requests.append((op, key))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        self._record("GET", key)
        return self._data(key)[start:end]

    def get_range_stream(self, key: str, start: int, end: int, sink: ChunkSink,
                         stop: threading.Event | None = None) -> int:
        data = self.get_range(key, start, end)
        if len(data) != min(end, len(self._data(key))) - start:  # as S3Store refuses a wrong length
            raise StoreError(f"the store answered a request for {end - start} bytes of {key} with {len(data)}")
        return feed_in_chunks(data, sink, stop)

    def get(self, key: str) -> bytes:
        self._record("GET", key)
        return self._data(key)

    def _data(self, key: str) -> bytes:
        try:
            return self.objects[key][0]
        except KeyError:
            raise NotFound(f"{key} does not exist") from None

    def put_bytes(self, key: str, data: bytes, *, md5: str | None = None,
                  content_type: str | None = None) -> None:
        if md5 is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
            raise CorruptUpload(f"the bytes for {key} are not the ones that were hashed")
        self._record("PUT", key)
        with self._lock:
            self.objects[key] = (bytes(data), datetime.now(timezone.utc))
            if content_type:
                self.content_types[key] = content_type

    def put_file(self, key: str, path: Path, progress: Callable[[int], None] | None = None,
                 md5: str | None = None, content_type: str | None = None) -> None:
        data = path.read_bytes()
        if md5 is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
            raise CorruptUpload(f"{path} changed before it was stored as {key}")
        self.put_bytes(key, data, content_type=content_type)
        if progress:
            progress(len(data))

    def head(self, key: str) -> int | None:
        self._record("HEAD", key)
        entry = self.objects.get(key)
        return len(entry[0]) if entry else None

    def holds(self, key: str, size: int, md5: str) -> bool:
        self._record("HEAD", key)
        entry = self.objects.get(key)
        return (entry is not None and len(entry[0]) == size
                and hashlib.md5(entry[0], usedforsecurity=False).hexdigest() == md5)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._record("LIST", prefix)
        with self._lock:
            items = sorted((k, v) for k, v in self.objects.items() if k.startswith(prefix))
        for key, (data, modified) in items:
            yield ObjectInfo(key, len(data), modified)

    def delete(self, key: str) -> None:
        self._record("DELETE", key)
        with self._lock:
            self.objects.pop(key, None)

    def copy(self, source: str, destination: str, size: int) -> None:
        self._record("COPY", f"{source} -> {destination}")
        with self._lock:
            self.objects[destination] = (self._data(source), datetime.now(timezone.utc))

    def check(self) -> None:
        return None
