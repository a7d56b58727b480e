"""Ranged GETs by signed URL (lockerfs.rangedget) against a real S3 server through the fault proxy:
the bytes, the retries, the answers handed to botocore, and no URL in any error."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from botocore.awsrequest import AWSResponse

from lockerfs.store import MOUNT_RETRIES, NotFound, RetryPolicy, S3Store, StoreError
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import S3Server

DATA = bytes(range(256)) * 1024
SIGNED = "X-Amz-Signature"
# the mount's attempts, with timeouts no busy test machine reaches: only the faults injected retry
PATIENT = RetryPolicy(MOUNT_RETRIES.max_attempts, connect_timeout=30, read_timeout=60)


@pytest.fixture
def proxied_store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Store, FaultProxy]]:
    bucket = f"signed-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    s3_server.client().put_object(Bucket=bucket, Key="music/song", Body=DATA)
    for name, value in s3_server.env().items():
        if name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            monkeypatch.setenv(name, value)
    with FaultProxy(s3_server.port) as proxy:
        yield S3Store(f"s3://{bucket}/music", proxy.endpoint, PATIENT, pool_size=4), proxy


def test_ranged_gets_go_by_a_url_signed_once_per_object(proxied_store, monkeypatch) -> None:
    store, proxy = proxied_store
    signed = []
    presign = store.presign_get
    monkeypatch.setattr(store, "presign_get", lambda key, expires: signed.append(key) or presign(key, expires))
    assert store.get_range("song", 1000, 5000) == DATA[1000:5000]
    assert store.get_range("song", 200_000, 300_000) == DATA[200_000:]  # short only where the object ends
    assert signed == ["song"]
    gets = [r for r in proxy.records() if r.method == "GET"]
    assert len(gets) == 2 and all(SIGNED in r.query for r in gets)


def test_failures_on_the_signed_path_are_retried(proxied_store) -> None:
    store, proxy = proxied_store
    proxy.fail_next("http503", 1, method="GET")
    proxy.fail_next("reset_before", 1, method="GET")
    assert store.get_range("song", 0, 70_000) == DATA[:70_000]
    assert proxy.count("GET") == 3 and store._signed.enabled


def test_a_missing_object_is_not_found_and_signing_stays_on(proxied_store) -> None:
    store, proxy = proxied_store
    with pytest.raises(NotFound):
        store.get_range("no-such-song", 0, 10)
    assert store._signed.enabled
    assert store.get_range("song", 0, 10) == DATA[:10]


@pytest.mark.parametrize(("status", "signing_after"), [(301, False), (403, False), (404, True)])
def test_answers_handed_to_botocore_and_whether_signing_goes_on(proxied_store, status, signing_after) -> None:
    """A redirect (an AWS bucket in another region than the one signed for) is botocore's to
    follow; a 403 that botocore's own request then gets past means this server refuses query
    signatures. After either, later reads no longer sign URLs. A 404 through both says only
    that the object is missing: signing goes on."""
    store, proxy = proxied_store
    key = "song" if status != 404 else "no-such-song"
    session = store._signed._session
    _answer_signed_urls_with(store, status)
    if status == 404:
        with pytest.raises(NotFound):
            store.get_range(key, 10, 20)
    else:
        assert store.get_range(key, 10, 20) == DATA[10:20]
    assert store._signed.enabled is signing_after
    store._signed._session = session  # the server takes signed URLs again
    store.get_range("song", 20, 30)
    signed_after = [SIGNED in r.query for r in proxy.records() if r.method == "GET"][2:]
    assert signed_after == [signing_after]


def _answer_signed_urls_with(store: S3Store, status: int) -> None:
    """Signed GETs reach the server (and its answer is dropped) but are answered `status`."""
    session = store._signed._session

    class Answering:
        def send(self, request):  # type: ignore[no-untyped-def]
            if SIGNED in request.url:
                session.send(request).raw.release_conn()
                return AWSResponse(request.url, status, {}, _EmptyRaw())
            return session.send(request)

    store._signed._session = Answering()


class _EmptyRaw:
    def read(self, amount: int | None = None) -> bytes:
        return b""

    def release_conn(self) -> None:
        pass


def test_no_error_names_the_signed_url(proxied_store) -> None:
    store, proxy = proxied_store
    assert store.get_range("song", 0, 10) == DATA[:10]  # the endpoint has answered: failures are retried
    proxy.set_down(True)
    with pytest.raises(StoreError) as caught:
        store.get_range("song", 0, 10)
    seen, chain = set(), [caught.value]
    while chain:
        error = chain.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        assert SIGNED not in str(error) and "X-Amz-Credential" not in str(error), repr(error)
        assert os.environ["AWS_ACCESS_KEY_ID"] not in str(error)
        linked = [error.__cause__, error.__context__, *getattr(error, "kwargs", {}).values()]
        chain += [link for link in linked if isinstance(link, BaseException)]
