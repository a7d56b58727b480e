"""S3Store.get_range_stream takes only a reply that covers exactly the bytes asked for.

A server (or a proxy, or a cache in front of it) that ignores Range answers a
ranged GET with the whole object: its first bytes are not the ones asked for,
and a store that took them would have the cache serve one part of a track in
place of another, with no error anywhere. No test of the S3 server can show this
(rclone honours Range), so the client is a stand-in that answers as such a server,
on both ways a ranged GET goes: by signed URL (lockerfs.rangedget) and through botocore.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from lockerfs.store import S3Store, StoreError

OBJECT = bytes(range(256)) * 64  # 16 KiB, every offset's byte known


@pytest.fixture(params=["signed", "botocore"])
def store_answering(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A store whose ranged GETs `reply(Range=...)` answers, by the path the param names."""

    def make(reply) -> S3Store:  # type: ignore[no-untyped-def]
        store = S3Store("s3://bucket/music", endpoint_url="http://127.0.0.1:9", region_name="us-east-1")
        if request.param == "botocore":
            store._signed.enabled = False
            store._client = SimpleNamespace(get_object=reply)  # type: ignore[assignment]
        else:
            def signed_reply(key: str, start: int, end: int, connections: object) -> SimpleNamespace:
                answer = reply(Range=f"bytes={start}-{end - 1}")
                headers = {"content-length": str(answer["ContentLength"])}
                if "ContentRange" in answer:
                    headers["content-range"] = answer["ContentRange"]
                return SimpleNamespace(headers=headers, raw=answer["Body"])
            store._signed.open = signed_reply  # type: ignore[method-assign]
        return store

    return make


def ignoring_range(**request: object) -> dict:
    return {"Body": io.BytesIO(OBJECT), "ContentLength": len(OBJECT)}  # 200, the whole object


def honouring_range(Range: str, **request: object) -> dict:  # noqa: N803 (boto3's name)
    first, last = (int(n) for n in Range.removeprefix("bytes=").split("-"))
    last = min(last, len(OBJECT) - 1)
    return {"Body": io.BytesIO(OBJECT[first:last + 1]), "ContentLength": last + 1 - first,
            "ContentRange": f"bytes {first}-{last}/{len(OBJECT)}"}


def test_a_reply_that_ignored_the_range_is_refused_before_any_byte_is_taken(store_answering) -> None:
    got: list[bytes] = []
    with pytest.raises(StoreError, match="answered a request for 100 bytes"):
        store_answering(ignoring_range).get_range_stream("objects/a.flac", 1000, 1100, got.append)
    assert got == []


def test_a_reply_of_the_range_asked_is_taken_whole(store_answering) -> None:
    got: list[bytes] = []
    assert store_answering(honouring_range).get_range_stream("objects/a.flac", 1000, 1100, got.append) == 100
    assert b"".join(got) == OBJECT[1000:1100]
    got.clear()  # short only because the object ends there: taken
    assert store_answering(honouring_range).get_range_stream("objects/a.flac", 16000, 17000, got.append) == 384
    assert b"".join(got) == OBJECT[16000:]
