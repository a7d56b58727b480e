"""When pooled S3 connections stop being trusted, and what that buys against a real server.

The decisions are checked with stand-in clocks; what they are for is checked
against `rclone serve s3` behind the fault proxy, whose `drop_silently` makes
every open connection a dead path, as a suspend or a new network does.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lockerfs import connections
from lockerfs.connections import FreshConnections, NetworkWatch, _address_messages
from lockerfs.store import MOUNT_RETRIES, S3Store
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import S3Server


class Clocks:
    def __init__(self) -> None:
        self.monotonic = 100.0
        self.boot = 1000.0

    def run(self, seconds: float) -> None:
        self.monotonic += seconds
        self.boot += seconds

    def sleep(self, seconds: float) -> None:  # suspended: only the boot clock moves
        self.boot += seconds


class ClosableClient:
    """Has no botocore internals, so the pool is dropped with close()."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class QuietNetwork:
    def __init__(self) -> None:
        self.news = False

    def changed(self) -> bool:
        news, self.news = self.news, False
        return news


@pytest.fixture
def fresh() -> tuple[FreshConnections, Clocks, ClosableClient, QuietNetwork]:
    clocks, client, network = Clocks(), ClosableClient(), QuietNetwork()
    watcher = FreshConnections(client, idle_limit=30.0, clock=lambda: clocks.monotonic,
                               boot_clock=lambda: clocks.boot, network=network)  # type: ignore[arg-type]
    return watcher, clocks, client, network


def test_a_busy_pool_is_kept(fresh) -> None:
    watcher, clocks, client, _ = fresh
    for _ in range(10):
        clocks.run(20.0)  # never 30 s between requests
        watcher.check()
    assert client.closed == 0


def test_a_pool_idle_past_the_limit_is_dropped_once(fresh) -> None:
    watcher, clocks, client, _ = fresh
    clocks.run(31.0)
    watcher.check()
    watcher.check()
    assert client.closed == 1


def test_a_short_suspend_drops_the_pool(fresh) -> None:
    watcher, clocks, client, _ = fresh
    clocks.run(5.0)
    clocks.sleep(3.0)  # far under the idle limit, but the machine slept
    watcher.check()
    assert client.closed == 1
    clocks.run(1.0)
    watcher.check()
    assert client.closed == 1


def test_a_network_change_drops_the_pool(fresh) -> None:
    watcher, clocks, client, network = fresh
    network.news = True
    clocks.run(0.1)
    watcher.check()
    assert client.closed == 1


def test_a_request_that_checks_during_a_drop_waits_until_it_is_done(fresh) -> None:
    """Or it could take one of the dead connections before they are closed (after a resume,
    the overdue catalog refresh and a player's read check at the same moment)."""
    watcher, clocks, client, _ = fresh
    closed_at: list[float] = []

    def slow_close() -> None:
        time.sleep(0.2)
        closed_at.append(time.monotonic())

    client.close = slow_close
    clocks.run(31.0)
    first = threading.Thread(target=watcher.check)
    first.start()
    time.sleep(0.05)
    watcher.check()  # the second request: nothing left to drop, but it must wait
    second_done = time.monotonic()
    first.join()
    assert len(closed_at) == 1 and second_done >= closed_at[0]


def test_only_connection_failures_drop_the_pool(fresh) -> None:
    watcher, _, client, _ = fresh
    watcher.failed(ValueError("a bug, not the network"))
    assert client.closed == 0
    watcher.failed(ConnectionResetError())
    assert client.closed == 1


def _address_message(kind: int, family: int, index: int, address: bytes) -> bytes:
    attribute = struct.pack("=HH", 4 + len(address), 2) + address  # IFA_LOCAL
    attribute += b"\0" * (-len(attribute) % 4)
    body = struct.pack("=BBBBI", family, 24, 0, 0, index) + attribute
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_address_messages_are_parsed_and_other_messages_skipped() -> None:
    data = (_address_message(20, socket.AF_INET, 2, bytes([192, 0, 2, 7]))
            + struct.pack("=IHHII", 20, 24, 0, 0, 0) + b"\0" * 4  # a route message
            + _address_message(21, socket.AF_INET6, 3, bytes(16)))
    assert _address_messages(data) == [(20, (socket.AF_INET, 2, bytes([192, 0, 2, 7]))),
                                       (21, (socket.AF_INET6, 3, bytes(16)))]
    assert _address_messages(data[:30]) == []  # a cut message is not read past its end


def test_the_watch_sees_an_address_come_and_go() -> None:
    """Root only (as the integration tests are): a /32 on the loopback, removed at once."""
    import subprocess

    watch = NetworkWatch()
    address = f"127.99.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}/32"
    assert not watch.changed()
    subprocess.run(["ip", "addr", "add", address, "dev", "lo"], check=True)
    try:
        assert watch.changed()
        assert not watch.changed()  # told once
    finally:
        subprocess.run(["ip", "addr", "del", address, "dev", "lo"], check=True)
    assert watch.changed()


# --- against a real server ------------------------------------------------------------------

@pytest.fixture
def proxied_store(s3_server: S3Server) -> Iterator[tuple[S3Store, FaultProxy]]:
    bucket = f"fresh-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    s3_server.client().put_object(Bucket=bucket, Key="music/song", Body=bytes(range(256)) * 1024)
    with FaultProxy(s3_server.port) as proxy:
        import os

        saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        os.environ.update({k: v for k, v in s3_server.env().items() if k in saved})
        try:
            yield S3Store(f"s3://{bucket}/music", proxy.endpoint, MOUNT_RETRIES, pool_size=4), proxy
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _fill_pool(store: S3Store) -> None:
    """Two requests at once: two pooled connections."""
    with ThreadPoolExecutor(2) as pool:
        assert all(len(b) == 1000 for b in pool.map(lambda _: store.get_range("song", 0, 1000), range(2)))


def test_after_an_idle_spell_a_dead_pool_costs_nothing(proxied_store, monkeypatch) -> None:
    store, proxy = proxied_store
    monkeypatch.setattr(connections, "IDLE_LIMIT", 0.5)
    store.connections = FreshConnections(store._client)  # the limit is read when it is made
    store.connections.register(store._client.meta.events)
    _fill_pool(store)
    proxy.drop_silently()
    time.sleep(0.6)
    started = time.monotonic()
    assert store.get_range("song", 1000, 2000) == (bytes(range(256)) * 1024)[1000:2000]
    assert time.monotonic() - started < MOUNT_RETRIES.read_timeout / 2


def test_a_dead_connection_costs_one_timeout_then_the_pool_is_fresh(proxied_store) -> None:
    """Without dropping the pool, the retry would take the second dead connection,
    and the third attempt a new one: two timeouts, not one."""
    store, proxy = proxied_store
    _fill_pool(store)
    proxy.drop_silently()
    started = time.monotonic()
    assert store.get_range("song", 0, 1000) == bytes(range(256)) * 3 + bytes(range(232))
    elapsed = time.monotonic() - started
    print(f"\n[dead pool] a GET on a dead connection took {elapsed:.2f} s "
          f"(read timeout {MOUNT_RETRIES.read_timeout:g} s)")
    assert MOUNT_RETRIES.read_timeout <= elapsed < 1.5 * MOUNT_RETRIES.read_timeout


def test_dropping_closes_idle_connections_without_closing_the_pools(proxied_store) -> None:
    store, proxy = proxied_store
    _fill_pool(store)
    connections_before = proxy.connections
    store.connections.drop("a test")
    manager = store._client._endpoint.http_session._manager
    pools = [manager.pools.get(key) for key in manager.pools.keys()]
    assert pools and all(pool.pool is not None for pool in pools)  # still open for requests
    assert all(c is None or not c.is_connected for pool in pools for c in pool.pool.queue)
    assert store.get_range("song", 0, 10) == bytes(range(10))
    assert proxy.connections == connections_before + 1
