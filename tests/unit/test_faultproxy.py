"""The fault proxy against a real `rclone serve s3`, seen through boto3.

Integration tests trust its counts and its faults, so each fault is checked
as the client observes it, with botocore's retries off unless a test is about
retrying.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (ClientError, ConnectionClosedError, EndpointConnectionError,
                                 ReadTimeoutError, ResponseStreamingError)

from lockerfs.store import MOUNT_RETRIES, NotFound, S3Store
from tests.support import faultproxy
from tests.support.bounds import within
from tests.support.faultproxy import ALL_KINDS, FaultProxy
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port

MiB = 1024 * 1024
# Client timeouts the timing tests measure against; a bound is the timeout plus a
# fraction of it (tests/support/bounds.py), enough for a loaded 2-core machine.
CONNECT_TIMEOUT = 2.0
STALL_READ_TIMEOUT = 2.0


@pytest.fixture
def server(s3_server: S3Server) -> S3Server:
    """The session's S3 server (tests/conftest.py)."""
    return s3_server


@pytest.fixture
def bucket(server: S3Server) -> str:
    """A fresh bucket per test, so tests sharing the server do not see each other's objects.

    Made through the API: rclone caches the listing of its root, so a folder
    made behind its back after the first request stays unseen for minutes.
    """
    name = f"t-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(server: S3Server) -> Iterator[FaultProxy]:
    fp = FaultProxy(server.port, stall_seconds=3.0)
    fp.start()
    try:
        yield fp
    finally:
        fp.stop()


def s3_client(endpoint: str, attempts: int = 1, read_timeout: float = 10.0):
    """boto3 as lockerfs configures it; `attempts` counts the first try (1: no retries)."""
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        config=Config(request_checksum_calculation="when_required",
                      response_checksum_validation="when_required",
                      retries={"mode": "standard", "total_max_attempts": attempts},
                      connect_timeout=CONNECT_TIMEOUT, read_timeout=read_timeout))


def exists(server: S3Server, bucket: str, key: str) -> bool:
    """Asked of the server directly, behind the proxy's back."""
    try:
        server.client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False


# counting


def test_counts_puts_gets_heads_and_lists(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    client.put_object(Bucket=bucket, Key="a b/one.flac", Body=b"1" * 1000)
    assert client.get_object(Bucket=bucket, Key="a b/one.flac")["Body"].read() == b"1" * 1000
    client.head_object(Bucket=bucket, Key="a b/one.flac")
    client.list_objects_v2(Bucket=bucket, Prefix="a b/")

    assert proxy.count() == 4
    assert proxy.count("PUT") == proxy.count("HEAD") == 1
    assert proxy.count("GET") == 2
    assert proxy.count("GET", path_contains="a b/one.flac") == 1  # keys are matched decoded
    assert proxy.count(path_contains="nothing-like-this") == 0
    listing = proxy.records()[-1]
    assert (listing.method, listing.path) == ("GET", f"/{bucket}")
    assert "list-type=2" in listing.query


def test_counts_bytes_each_way(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    client.put_object(Bucket=bucket, Key="k", Body=b"x" * 100_000)
    client.get_object(Bucket=bucket, Key="k")["Body"].read()
    proxy.wait_idle()

    put, get = proxy.records()
    assert put.status == get.status == 200
    assert 100_000 < put.request_bytes < 102_000 and put.response_bytes < 2_000
    assert get.request_bytes < 2_000 and 100_000 < get.response_bytes < 102_000


def test_keep_alive_carries_many_requests_on_one_connection(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    for i in range(20):
        client.put_object(Bucket=bucket, Key=f"k{i}", Body=b"v" * i)  # PUTs send Expect: 100-continue
        client.head_object(Bucket=bucket, Key=f"k{i}")
    assert proxy.count() == 40
    assert proxy.connections == 1


def test_reset_counts_forgets_requests_and_faults(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    proxy.fail_next("http500")
    with pytest.raises(ClientError):
        client.list_objects_v2(Bucket=bucket)
    proxy.reset_counts()
    assert (proxy.count(), proxy.stats, proxy.connections) == (0, {}, 0)
    client.list_objects_v2(Bucket=bucket)
    assert proxy.count("GET") == 1


# each fault, as boto3 sees it


@pytest.mark.parametrize("kind, status, code", [("http500", 500, "InternalError"),
                                                ("http503", 503, "SlowDown")])
def test_http_errors_are_s3_xml_errors_and_keep_the_connection(
        proxy: FaultProxy, server: S3Server, bucket: str, kind: str, status: int, code: str) -> None:
    client = s3_client(proxy.endpoint)
    proxy.fail_next(kind)
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=bucket, Key="k", Body=b"x" * 10_000)
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert not exists(server, bucket, "k")  # answered by the proxy: the store never saw it

    client.put_object(Bucket=bucket, Key="k", Body=b"x" * 10_000)
    assert proxy.connections == 1  # the body was consumed, so the connection stayed usable
    assert [(r.status, r.fault) for r in proxy.records()] == [(status, kind), (200, None)]
    assert proxy.stats == {kind: 1}


def test_http_error_on_head_has_no_body(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    client.put_object(Bucket=bucket, Key="k", Body=b"x")
    proxy.fail_next("http503")
    with pytest.raises(ClientError) as caught:
        client.head_object(Bucket=bucket, Key="k")
    assert caught.value.response["Error"]["Code"] == "503"  # HEAD errors carry no XML to name them
    client.head_object(Bucket=bucket, Key="k")
    assert proxy.connections == 1


def test_reset_before_fails_the_request_before_it_reaches_the_store(
        proxy: FaultProxy, server: S3Server, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    proxy.fail_next("reset_before")
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="k", Body=b"x" * 10_000)
    assert not exists(server, bucket, "k")
    assert proxy.records()[0].status is None


def test_reset_mid_body_breaks_a_get_after_its_headers(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    client.put_object(Bucket=bucket, Key="k", Body=b"x" * 100_000)
    proxy.fail_next("reset_mid_body")
    response = client.get_object(Bucket=bucket, Key="k")  # the headers came whole
    with pytest.raises(ResponseStreamingError, match="reset by peer"):
        response["Body"].read()
    proxy.wait_idle()
    record = proxy.records()[-1]
    assert record.status == 200 and 50_000 < record.response_bytes < 51_000


def test_store_retries_an_error_reply_cut_mid_body(proxy: FaultProxy, bucket: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore reads an error reply's body inside get_object; a reset there used
    # to escape as urllib3's ProtocolError and end `lockerfs upload` with a traceback.
    for name, value in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    store = S3Store(f"s3://{bucket}/p", endpoint_url=proxy.endpoint, retries=MOUNT_RETRIES)
    proxy.fail_next("reset_mid_body", method="GET", path_contains="missing")
    with pytest.raises(NotFound):
        store.get("missing")
    proxy.wait_idle()
    assert [r.status for r in proxy.records() if "missing" in r.path] == [404, 404]


def test_reset_mid_body_of_a_put_loses_only_the_answer(
        proxy: FaultProxy, server: S3Server, bucket: str) -> None:
    """The store applied the PUT; the client cannot know. Retried writes must be idempotent."""
    client = s3_client(proxy.endpoint)
    proxy.fail_next("reset_mid_body")
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="k", Body=b"x" * 10_000)
    assert exists(server, bucket, "k")


def test_short_body_ends_a_get_early_and_cleanly(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    client.put_object(Bucket=bucket, Key="k", Body=b"x" * 100_000)
    proxy.fail_next("short_body")
    response = client.get_object(Bucket=bucket, Key="k")
    with pytest.raises(ResponseStreamingError, match="IncompleteRead"):
        response["Body"].read()


def test_short_body_of_a_bodiless_response_cuts_its_status_line(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    client.put_object(Bucket=bucket, Key="k", Body=b"x")
    proxy.fail_next("short_body", count=2)
    with pytest.raises(ConnectionClosedError):
        client.head_object(Bucket=bucket, Key="k")
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="k", Body=b"y")


def test_stall_outlasts_the_read_timeout_and_stop_ends_it(server: S3Server, bucket: str) -> None:
    stall_seconds = 30.0
    proxy = FaultProxy(server.port, stall_seconds=stall_seconds)
    proxy.start()
    try:
        client = s3_client(proxy.endpoint, read_timeout=STALL_READ_TIMEOUT)
        proxy.fail_next("stall")
        started = time.monotonic()
        with pytest.raises(ReadTimeoutError):
            client.list_objects_v2(Bucket=bucket)
        elapsed = time.monotonic() - started
        assert STALL_READ_TIMEOUT <= elapsed < within(STALL_READ_TIMEOUT), f"{elapsed:.2f} s"
    finally:
        started = time.monotonic()
        proxy.stop()  # while its thread still stalls
    stopping = time.monotonic() - started
    assert stopping < stall_seconds / 10, f"stop() took {stopping:.2f} s: it waited for the stall"
    assert proxy.stats == {"stall": 1}


def test_stall_of_a_put_swallows_the_body(server: S3Server, bucket: str) -> None:
    with FaultProxy(server.port, stall_seconds=3.0) as proxy:
        client = s3_client(proxy.endpoint, read_timeout=0.5)
        proxy.fail_next("stall")
        with pytest.raises(ReadTimeoutError):
            # boto3 waits 1 s for a 100 Continue that does not come, then sends the body
            client.put_object(Bucket=bucket, Key="k", Body=b"x" * 10_000)
        assert not exists(server, bucket, "k")


def test_fail_next_applies_only_to_matching_requests(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    client.put_object(Bucket=bucket, Key="objects/a", Body=b"a")
    client.put_object(Bucket=bucket, Key="catalog/j", Body=b"j")
    proxy.fail_next("http500", count=2, method="GET", path_contains="/objects/")
    client.get_object(Bucket=bucket, Key="catalog/j")["Body"].read()
    client.head_object(Bucket=bucket, Key="objects/a")
    for _ in range(2):
        with pytest.raises(ClientError):
            client.get_object(Bucket=bucket, Key="objects/a")
    assert client.get_object(Bucket=bucket, Key="objects/a")["Body"].read() == b"a"
    assert proxy.stats == {"http500": 2}


def test_fault_arguments_are_checked(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.fail_next("gremlins")
    with pytest.raises(ValueError):
        proxy.fail_next("stall", count=0)
    with pytest.raises(ValueError):
        proxy.set_fault_rate(1.5)
    with pytest.raises(ValueError):
        proxy.set_fault_rate(0.5, kinds=[])


# server down


def test_set_down_refuses_fast_and_set_down_false_recovers(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    client.put_object(Bucket=bucket, Key="k", Body=b"x")  # leaves a pooled connection open
    proxy.set_down(True)
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError):
        client.head_object(Bucket=bucket, Key="k")
    refused = time.monotonic() - started
    # refused at once: a server that drops the connection silently would cost the whole connect timeout
    assert refused < CONNECT_TIMEOUT / 2, f"{refused:.2f} s"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()

    proxy.set_down(False)
    client.head_object(Bucket=bucket, Key="k")
    assert proxy.count("HEAD") == 1  # nothing was seen while down


def test_set_down_drops_a_transfer_in_progress(proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(proxy.endpoint)
    client.put_object(Bucket=bucket, Key="k", Body=b"x" * (8 * MiB))
    body = client.get_object(Bucket=bucket, Key="k")["Body"]
    body.read(1)  # the proxy is now blocked sending the rest, the client not reading
    proxy.set_down(True)
    with pytest.raises(ResponseStreamingError):
        body.read()
    proxy.set_down(False)
    assert client.head_object(Bucket=bucket, Key="k")["ContentLength"] == 8 * MiB


# the random schedule


def fault_sequence(server: S3Server, bucket: str, seed: int) -> list[str | None]:
    with FaultProxy(server.port, seed=seed) as proxy:
        client = s3_client(proxy.endpoint)
        proxy.set_fault_rate(0.3, kinds=["http500", "http503", "reset_before"])
        for i in range(40):
            try:
                client.head_object(Bucket=bucket, Key=f"missing-{i}")
            except (ClientError, ConnectionClosedError):
                pass
        return [r.fault for r in proxy.records()]


def test_schedule_is_reproducible_for_a_seed(server: S3Server, bucket: str) -> None:
    first = fault_sequence(server, bucket, seed=7)
    assert 4 <= sum(f is not None for f in first) <= 20
    assert len(set(first) - {None}) >= 2
    assert fault_sequence(server, bucket, seed=7) == first
    assert fault_sequence(server, bucket, seed=8) != first


def get_bytes(client, bucket: str, key: str, attempts: int = 10) -> bytes:
    """botocore retries a failed request, not a failed read of a body it has returned."""
    for _ in range(attempts - 1):
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ResponseStreamingError:
            pass
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_standard_retries_outlast_a_20_percent_schedule(server: S3Server, bucket: str) -> None:
    # seed 4 makes every kind occur; retries replay the same faults on every run
    with FaultProxy(server.port, seed=4, stall_seconds=0.2) as proxy:
        client = s3_client(proxy.endpoint, attempts=11, read_timeout=2)  # max_attempts=10 retries
        proxy.set_fault_rate(0.2)
        for i in range(50):
            body = os.urandom(1000 + 997 * i)
            client.put_object(Bucket=bucket, Key=f"k{i}", Body=body)
            assert get_bytes(client, bucket, f"k{i}") == body
        stats = proxy.stats
    assert set(stats) == set(ALL_KINDS)
    assert 0.1 < sum(stats.values()) / len(proxy.records()) < 0.3


# framing beyond what rclone sends


def read_chunked(stream) -> bytes:
    body = bytearray()
    while size := int(stream.readline().split(b";")[0], 16):
        body += stream.read(size)
        stream.readline()
    while stream.readline() not in (b"\r\n", b""):
        pass
    return bytes(body)


class FramingUpstream(http.server.BaseHTTPRequestHandler):
    """What rclone does not send: chunked and close-delimited responses, chunked requests."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = read_chunked(self.rfile)
        else:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 7000):
                piece = body[start:start + 7000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: kept\r\n\r\n")
        else:  # close-delimited, as HTTP/1.0 servers do
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def framing_proxy() -> Iterator[FaultProxy]:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FramingUpstream)
    thread = threading.Thread(target=upstream.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with FaultProxy(upstream.server_address[1]) as fp:
            yield fp
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join()


def test_chunked_both_ways_keeps_the_connection(framing_proxy: FaultProxy) -> None:
    body = os.urandom(300_000)
    conn = http.client.HTTPConnection("127.0.0.1", framing_proxy.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("PUT", "/chunked", encode_chunked=True,
                         body=(body[i:i + 50_000] for i in range(0, len(body), 50_000)))
            response = conn.getresponse()
            assert response.getheader("Transfer-Encoding") == "chunked"
            assert response.read() == body
    finally:
        conn.close()
    assert framing_proxy.count("PUT", "/chunked") == 3
    assert framing_proxy.connections == 1


def test_close_delimited_response_is_relayed_to_the_end(framing_proxy: FaultProxy) -> None:
    body = os.urandom(200_000)
    conn = http.client.HTTPConnection("127.0.0.1", framing_proxy.port, timeout=5)
    try:
        conn.request("PUT", "/eof", body=body)
        assert conn.getresponse().read() == body
    finally:
        conn.close()


def test_expect_100_continue_is_answered_once_before_the_body(framing_proxy: FaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", framing_proxy.port), timeout=5) as sock:
        sock.sendall(b"PUT /eof HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        rest = b""
        while data := sock.recv(65536):
            rest += data
    # the upstream's own 100 Continue was dropped: the client already had one
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nhello")


# streaming


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def test_50_mb_round_trip_streams_through_bounded_memory(
        server: S3Server, bucket: str, tmp_path: Path) -> None:
    """In a process of its own, so its peak resident memory is the proxy's alone."""
    source = tmp_path / "big"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        for _ in range(50):
            block = os.urandom(MiB)
            digest.update(block)
            out.write(block)
    child = subprocess.Popen(
        [sys.executable, faultproxy.__file__, str(server.port), "--port", str(free_port())],
        stdout=subprocess.PIPE, text=True)
    try:
        endpoint = child.stdout.readline().strip()
        idle_rss = peak_rss(child.pid)
        client = s3_client(endpoint, read_timeout=30)
        with source.open("rb") as body:
            client.put_object(Bucket=bucket, Key="big", Body=body)
        fetched = hashlib.sha256()
        for piece in client.get_object(Bucket=bucket, Key="big")["Body"].iter_chunks(MiB):
            fetched.update(piece)
        assert fetched.hexdigest() == digest.hexdigest()
        assert peak_rss(child.pid) - idle_rss < 10 * MiB
        child.send_signal(signal.SIGTERM)
        summary = json.loads(child.communicate(timeout=10)[0])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert summary["requests"] == {"PUT": 1, "GET": 1}
    assert summary["request_bytes"] > 50 * MiB and summary["response_bytes"] > 50 * MiB


# the whole network failing (life on a laptop)


def _ask(conn: http.client.HTTPConnection) -> int:
    """One unsigned request: the server refuses it (4xx), an answer, which is all these tests need."""
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    return response.status // 100 * 100


def test_drop_silently_answers_nothing_on_open_connections_but_serves_new_ones(proxy: FaultProxy) -> None:
    old = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=1.0)
    assert _ask(old) == 400
    proxy.drop_silently()
    with pytest.raises(TimeoutError):  # no answer, and no FIN or RST either
        _ask(old)
    old.close()
    fresh = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5.0)
    assert _ask(fresh) == 400
    fresh.close()


def test_move_leaves_the_old_address_dead_and_serves_at_the_new_one(proxy: FaultProxy) -> None:
    port = proxy.port
    old = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    assert _ask(old) == 400
    proxy.move("127.0.0.2")
    assert proxy.endpoint == f"http://127.0.0.2:{port}"
    with pytest.raises(TimeoutError):
        _ask(old)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0)
    assert _ask(http.client.HTTPConnection("127.0.0.2", port, timeout=5.0)) == 400


def test_reset_connections_resets_open_ones(proxy: FaultProxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5.0)
    assert _ask(conn) == 400
    proxy.reset_connections()
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        _ask(conn)


def test_latency_costs_a_round_trip_per_request_and_one_more_per_connection(proxy: FaultProxy) -> None:
    rtt = 0.2
    proxy.set_latency(rtt)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5.0)
    started = time.monotonic()
    _ask(conn)
    first = time.monotonic() - started
    started = time.monotonic()
    _ask(conn)
    second = time.monotonic() - started
    assert 2 * rtt <= first < 3 * rtt
    assert rtt <= second < 2 * rtt
    with pytest.raises(ValueError):
        proxy.set_latency(-1)
