"""BlockCache: exact bytes, one fetch per block, priorities, deadlines, a verified and bounded disk."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from lockerfs import diskcache as cache_module
from lockerfs.cache import (BlockCache, CacheInUse, FetchError, ObjectRef, UnsafeCacheDir)
from lockerfs.store import MemoryStore, NotFound, StoreError, Unreachable

BS = 1024  # small blocks keep the tests fast; nothing depends on the size
HEADER = struct.Struct("<4sHI32sQIII")  # the documented block file header (version 2)
HEADER_V1 = struct.Struct("<4sHI32sQII")  # version 1: no offset, whole blocks only
BLOCK_FILE = HEADER.size + BS


class TestStore(MemoryStore):
    """A MemoryStore that records GET ranges and can be slowed, gated, failed or cut short."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[tuple[str, int, int]] = []
        self.delay = 0.0
        self.gates: dict[str, threading.Event] = {}
        self.fail: StoreError | None = None
        self.short = False
        self.active = 0
        self.max_active = 0
        self._mutex = threading.Lock()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        with self._mutex:
            self.ranges.append((key, start, end))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            gate = self.gates.get(key)
            if gate is not None:
                gate.wait(10)
            if self.delay:
                time.sleep(self.delay)
            if self.fail is not None:
                self._record("GET", key)
                raise self.fail
            data = super().get_range(key, start, end)
            return data[:-1] if self.short else data
        finally:
            with self._mutex:
                self.active -= 1

    def gets(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] == "GET"]

    def release_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


@pytest.fixture
def store() -> TestStore:
    return TestStore()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def put(store: MemoryStore, size: int, seed: int = 0) -> tuple[ObjectRef, bytes]:
    data = random.Random(seed).randbytes(size)
    sha = hashlib.sha256(data).hexdigest()
    key = f"objects/sha256/{sha[:2]}/{sha}.flac"
    store.put_bytes(key, data)
    store.requests.clear()
    return ObjectRef(key, sha, size), data


_caches: list[BlockCache] = []  # made by this test: run() lets their disk writes land


@pytest.fixture(autouse=True)
def _forget_caches() -> None:
    _caches.clear()


def new_cache(store: MemoryStore, cache_dir: Path | None, **options: Any) -> BlockCache:
    """A small-block cache, not yet open: `with new_cache(...) as cache` opens it."""
    settings: dict[str, Any] = dict(disk_limit=1 << 20, memory_limit=64 * BS, block_size=BS,
                                    max_request=8 * BS)
    settings.update(options)
    cache = BlockCache(store, cache_dir, **settings)
    _caches.append(cache)
    return cache


def run(fn: Callable[[], Awaitable[object]]) -> Any:
    """trio.run(fn), then wait until the GETs it started have ended and their blocks are on
    disk (they are written in the background, and trio.run would cancel the writes)."""
    async def main() -> object:
        result = await fn()
        for cache in _caches:
            await cache.settle()
        return result
    return trio.run(main)


def block_path(cache_dir: Path, obj: ObjectRef, index: int) -> Path:
    return cache_dir / "blocks" / obj.sha256[:2] / f"{obj.sha256}-{index}"


def block_files(cache_dir: Path) -> list[Path]:
    return [p for p in (cache_dir / "blocks").glob("*/*") if p.is_file()]


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


# --- bytes ---

SIZE = 5 * BS + 100


@pytest.mark.parametrize("offset,length", [
    (0, 10), (0, BS), (BS - 1, 2), (BS, BS), (100, 3 * BS), (0, SIZE), (0, SIZE + 1000),
    (SIZE - 5, 100), (5 * BS, 100), (SIZE - 1, 1), (SIZE, 10), (SIZE + 10, 10), (50, 0),
])
def test_read_returns_exactly_the_range(store: TestStore, cache_dir: Path, offset: int, length: int) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        first = run(lambda: cache.read(obj, offset, length))
        again = run(lambda: cache.read(obj, offset, length))
    assert first == again == data[offset:offset + length]


def test_read_from_disk_returns_exactly_the_range(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, SIZE))
    store.requests.clear()
    with new_cache(store, cache_dir, memory_limit=0) as cache:
        for offset, length in [(0, 10), (BS - 3, 7), (2 * BS + 5, 2 * BS), (SIZE - 1, 50)]:
            assert run(lambda: cache.read(obj, offset, length)) == data[offset:offset + length]
    assert store.gets() == []


def test_empty_object_reads_empty_without_a_request(store: TestStore, cache_dir: Path) -> None:
    obj, _ = put(store, 0)
    with new_cache(store, cache_dir) as cache:
        assert run(lambda: cache.read(obj, 0, 100)) == b""
    assert store.gets() == []


def test_negative_range_is_refused(store: TestStore) -> None:
    obj, _ = put(store, SIZE)
    cache = new_cache(store, None)
    with pytest.raises(ValueError):
        run(lambda: cache.read(obj, -1, 10))


def test_object_ref_refuses_a_digest_that_could_name_another_path() -> None:
    with pytest.raises(ValueError):
        ObjectRef("k", "../" * 21 + "x", 10)


# --- lookup order and requests ---

def test_a_miss_fetches_the_aligned_blocks_in_one_get(store: TestStore, cache_dir: Path) -> None:
    obj, _ = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, BS + 10, 2 * BS))  # touches blocks 1, 2, 3
        run(lambda: cache.read(obj, SIZE - 10, 10))  # the short last block
    assert store.ranges == [(obj.key, BS, 4 * BS), (obj.key, 5 * BS, SIZE)]
    assert cache.stats.misses == 4 and cache.stats.requests == 2


def test_a_second_read_is_served_from_memory(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, 3 * BS))
        assert run(lambda: cache.read(obj, 10, 2 * BS)) == data[10:10 + 2 * BS]
    assert len(store.gets()) == 1
    assert cache.stats.memory_hits == 3 and cache.stats.disk_hits == 0


def test_a_disk_hit_is_promoted_to_memory(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, 2 * BS))
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, 2 * BS))
        assert (cache.stats.disk_hits, cache.stats.memory_hits) == (2, 0)
        assert run(lambda: cache.read(obj, 0, 2 * BS)) == data[:2 * BS]
        assert (cache.stats.disk_hits, cache.stats.memory_hits) == (2, 2)
    assert len(store.gets()) == 1


def test_a_second_cache_on_the_same_dir_needs_no_request(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, SIZE))
    store.requests.clear()
    with new_cache(store, cache_dir) as cache:
        assert run(lambda: cache.read(obj, 0, SIZE)) == data
        assert cache.cached(obj, 0, SIZE)
    assert store.requests == []


def test_cached_blocks_split_a_miss_into_runs(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 2 * BS, 1))
        store.ranges.clear()
        assert run(lambda: cache.read(obj, 0, SIZE)) == data
    assert sorted(store.ranges) == [(obj.key, 0, 2 * BS), (obj.key, 3 * BS, SIZE)]


def test_a_large_miss_is_split_into_parallel_requests(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, 8 * BS)
    store.delay = 0.05
    with new_cache(store, cache_dir, max_request=2 * BS) as cache:
        assert run(lambda: cache.read(obj, 0, 8 * BS)) == data
    assert sorted(store.ranges) == [(obj.key, i * BS, (i + 2) * BS) for i in (0, 2, 4, 6)]
    assert store.max_active > 1


def test_memory_only_without_a_cache_dir(store: TestStore) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, None) as cache:
        assert run(lambda: cache.read(obj, 0, SIZE)) == data
        assert run(lambda: cache.read(obj, 0, SIZE)) == data
        assert not cache.disk_enabled
    assert len(store.gets()) == 1


# --- single flight ---

def test_concurrent_reads_of_one_range_cause_one_get(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    store.delay = 0.1
    results: list[bytes] = []
    with new_cache(store, cache_dir) as cache:
        async def main() -> None:
            async def reader() -> None:
                results.append(await cache.read(obj, 100, 2 * BS))
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(reader)
        run(main)
        assert cache.pending_blocks == 0
        assert cache.stats.joins == 7 * 3
    assert len(store.gets()) == 1
    assert results == [data[100:100 + 2 * BS]] * 8


def test_overlapping_reads_fetch_each_block_once(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, 20 * BS)
    store.delay = 0.02
    ranges = [(random.Random(i).randrange(20 * BS), random.Random(-i).randrange(1, 4 * BS)) for i in range(30)]
    with new_cache(store, cache_dir) as cache:
        async def main() -> None:
            async def reader(offset: int, length: int) -> None:
                assert await cache.read(obj, offset, length) == data[offset:offset + length]
            async with trio.open_nursery() as nursery:
                for offset, length in ranges:
                    nursery.start_soon(reader, offset, length)
        run(main)
    fetched = [b for _, start, end in store.ranges for b in range(start // BS, (end + BS - 1) // BS)]
    assert len(fetched) == len(set(fetched))


def test_a_read_waits_for_a_warm_already_fetching_its_block(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    store.gates[obj.key] = gate = threading.Event()
    with new_cache(store, cache_dir) as cache:
        async def main() -> bytes:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.warm, obj, 0, 4 * BS)
                await until(lambda: bool(store.ranges))
                trio.lowlevel.current_trio_token().run_sync_soon(gate.set)
                return await cache.read(obj, BS, 10)
        try:
            assert run(main) == data[BS:BS + 10]
        finally:
            store.release_all()
    assert len(store.gets()) == 1


# --- foreground and background ---

def test_warm_does_not_starve_reads(store: TestStore, cache_dir: Path) -> None:
    slow, _ = put(store, SIZE, seed=1)
    fast, fast_data = put(store, SIZE, seed=2)
    store.gates[slow.key] = gate = threading.Event()
    with new_cache(store, cache_dir, foreground_slots=1, background_slots=1, read_deadline=5) as cache:
        async def main() -> bytes:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.warm, slow, 0, SIZE)
                await until(lambda: bool(store.ranges))
                data = await cache.read(fast, 0, SIZE)
                assert not gate.is_set()
                gate.set()
                return data
        try:
            assert run(main) == fast_data
        finally:
            store.release_all()


def test_a_read_moves_a_queued_warm_to_the_foreground(store: TestStore, cache_dir: Path) -> None:
    busy, _ = put(store, SIZE, seed=1)
    queued, queued_data = put(store, SIZE, seed=2)
    store.gates[busy.key] = gate = threading.Event()
    with new_cache(store, cache_dir, background_slots=1, read_deadline=5) as cache:
        async def main() -> bytes:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.warm, busy, 0, SIZE)  # holds the only background slot
                await until(lambda: bool(store.ranges))
                nursery.start_soon(cache.warm, queued, 0, SIZE)  # waits for that slot
                await trio.sleep(0.05)
                data = await cache.read(queued, BS, 10)
                assert not gate.is_set()
                gate.set()
                return data
        try:
            assert run(main) == queued_data[BS:BS + 10]
        finally:
            store.release_all()
    assert [r for r in store.ranges if r[0] == queued.key] == [(queued.key, 0, SIZE)]


# --- warm and cached ---

def test_warm_fetches_in_max_request_pieces_and_caches(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, 10 * BS)
    with new_cache(store, cache_dir, max_request=4 * BS) as cache:
        run(lambda: cache.warm(obj, 0, 10 * BS))
        assert cache.cached(obj, 0, 10 * BS)
        assert sorted(store.ranges) == [(obj.key, 0, 4 * BS), (obj.key, 4 * BS, 8 * BS),
                                        (obj.key, 8 * BS, 10 * BS)]
        store.requests.clear()
        assert run(lambda: cache.read(obj, 0, 10 * BS)) == data
        assert cache.stats.memory_hits == 10
    assert store.requests == []


def test_warm_skips_cached_blocks(store: TestStore, cache_dir: Path) -> None:
    obj, _ = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, 1))
        store.ranges.clear()
        run(lambda: cache.warm(obj, 0, 4 * BS))
        run(lambda: cache.warm(obj, 0, 4 * BS))
    assert store.ranges == [(obj.key, BS, 4 * BS)]


@pytest.mark.parametrize("failure", [Unreachable("cannot connect"), NotFound("gone")])
def test_warm_never_raises(store: TestStore, cache_dir: Path, failure: StoreError) -> None:
    obj, _ = put(store, SIZE)
    store.fail = failure
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.warm(obj, 0, SIZE))
        assert cache.stats.warm_failures == 1
        assert cache.pending_blocks == 0
        assert not cache.cached(obj, 0, SIZE)


def test_cached_answers_from_the_tables(store: TestStore, cache_dir: Path) -> None:
    obj, _ = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        assert not cache.cached(obj, 0, 1)
        run(lambda: cache.read(obj, BS, 2 * BS))
        assert cache.cached(obj, BS, 3 * BS)
        assert cache.cached(obj, BS + 5, BS + 6)
        assert not cache.cached(obj, 0, 3 * BS)
        assert cache.cached(obj, SIZE, SIZE + 100)  # nothing to have
    with new_cache(store, cache_dir, memory_limit=0) as cache:
        assert cache.cached(obj, BS, 3 * BS)  # on disk
    assert len(store.gets()) == 1


# --- failures and deadlines ---

def test_a_slow_read_fails_at_the_deadline_and_the_block_is_cached_later(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    store.gates[obj.key] = gate = threading.Event()
    with new_cache(store, cache_dir, read_deadline=0.2) as cache:
        async def main() -> None:
            began = time.monotonic()
            with pytest.raises(FetchError, match="longer than 0.2 s"):
                await cache.read(obj, 0, 10)
            assert time.monotonic() - began < 1.5
            gate.set()
            await until(lambda: cache.pending_blocks == 0)
        try:
            run(main)
        finally:
            store.release_all()
        assert cache.stats.timeouts == 1
        assert cache.cached(obj, 0, 10)
        assert run(lambda: cache.read(obj, 0, 10)) == data[:10]
    assert len(store.gets()) == 1


def test_a_store_error_becomes_a_fetch_error_with_its_message(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    store.fail = Unreachable("cannot connect to the S3 endpoint http://127.0.0.1:9")
    with new_cache(store, cache_dir) as cache:
        with pytest.raises(FetchError) as caught:
            run(lambda: cache.read(obj, 0, 10))
        assert str(caught.value) == "cannot connect to the S3 endpoint http://127.0.0.1:9"
        assert cache.pending_blocks == 0 and not cache.cached(obj, 0, 10)
        store.fail = None
        # A quick failure is not remembered: the kernel's immediate retry asks the store again.
        assert run(lambda: cache.read(obj, 0, 10)) == data[:10]


def test_a_slow_failure_fails_the_immediate_retry_at_once(store: TestStore, cache_dir: Path) -> None:
    """A stalling server: the kernel's retry of the page must not wait a second deadline."""
    obj, data = put(store, SIZE)
    store.fail = Unreachable("the S3 endpoint stopped answering")
    store.delay = 0.3
    with new_cache(store, cache_dir) as cache:
        cache.read_deadline = 0.5  # the failure took more than half of it
        with pytest.raises(FetchError, match="stopped answering"):
            run(lambda: cache.read(obj, 0, 10))
        store.fail, store.delay = None, 0.0
        requests = len(store.requests)
        with pytest.raises(FetchError, match="failed moments ago"):
            run(lambda: cache.read(obj, 0, 10))
        assert len(store.requests) == requests
        cache._failed.clear()  # FAILED_TTL has passed: the store is asked again
        assert run(lambda: cache.read(obj, 0, 10)) == data[:10]


def test_a_missing_object_is_a_fetch_error(store: TestStore, cache_dir: Path) -> None:
    obj = ObjectRef("objects/sha256/00/nothing.flac", "0" * 64, 100)
    with new_cache(store, cache_dir) as cache:
        with pytest.raises(FetchError, match="does not exist"):
            run(lambda: cache.read(obj, 0, 10))


def test_every_waiter_gets_the_error_of_the_one_get(store: TestStore, cache_dir: Path) -> None:
    obj, _ = put(store, SIZE)
    store.fail = Unreachable("down")
    store.delay = 0.05
    errors: list[str] = []
    with new_cache(store, cache_dir) as cache:
        async def main() -> None:
            async def reader() -> None:
                try:
                    await cache.read(obj, 0, BS)
                except FetchError as err:
                    errors.append(str(err))
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(reader)
        run(main)
        assert cache.pending_blocks == 0
    assert errors == ["down"] * 5
    assert len(store.gets()) == 1


def test_short_data_from_the_store_is_an_error_and_not_cached(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    store.short = True
    with new_cache(store, cache_dir) as cache:
        with pytest.raises(FetchError, match="bytes"):
            run(lambda: cache.read(obj, 0, 2 * BS))
        assert not cache.cached(obj, 0, 2 * BS)
        assert block_files(cache_dir) == []
        store.short = False
        cache._failed.clear()  # FAILED_TTL has passed
        assert run(lambda: cache.read(obj, 0, 2 * BS)) == data[:2 * BS]


# --- disk format and verification ---

def test_block_files_carry_a_versioned_checksummed_header(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, SIZE))
    for index in range(6):
        raw = block_path(cache_dir, obj, index).read_bytes()
        magic, version, block_size, sha, stored_index, offset, length, crc = HEADER.unpack_from(raw)
        block = data[index * BS:(index + 1) * BS]
        assert (magic, version, block_size, sha.hex(), stored_index, offset, length) == (
            b"LKBC", 2, BS, obj.sha256, index, 0, len(block))
        assert raw[HEADER.size:] == block and crc == zlib.crc32(block)
    assert not list(cache_dir.rglob("*.tmp"))


def test_blocks_written_by_version_1_are_still_served(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, 2 * BS))
    for index in (0, 1):
        block = data[index * BS:(index + 1) * BS]
        block_path(cache_dir, obj, index).write_bytes(
            HEADER_V1.pack(b"LKBC", 1, BS, bytes.fromhex(obj.sha256), index, len(block), zlib.crc32(block)) + block)
    store.ranges.clear()
    with new_cache(store, cache_dir) as cache:
        assert run(lambda: cache.read(obj, 0, 2 * BS)) == data[:2 * BS]
        assert cache.stats.disk_hits == 2 and cache.stats.corrupt_blocks == 0
    assert store.ranges == []


def test_an_exact_warm_fetches_just_its_bytes_and_serves_them(store: TestStore, cache_dir: Path) -> None:
    """A scan's tag zones: the head ends and the tail starts inside blocks."""
    obj, data = put(store, 10 * BS)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.warm(obj, 0, BS + 100, exact=True))
        run(lambda: cache.warm(obj, 10 * BS - 160, 10 * BS, exact=True))
        assert store.ranges == [(obj.key, 0, BS + 100), (obj.key, 10 * BS - 160, 10 * BS)]
        assert cache.cached(obj, 0, BS + 100) and cache.cached(obj, 10 * BS - 160, 10 * BS)
        assert not cache.cached(obj, 0, BS + 101) and not cache.cached(obj, 10 * BS - 161, 10 * BS)
        store.ranges.clear()
        assert run(lambda: cache.read(obj, 50, BS)) == data[50:BS + 50]
        assert run(lambda: cache.read(obj, 10 * BS - 128, 128)) == data[-128:]
        assert store.ranges == []
    assert sorted(p.name.split("-", 1)[1] for p in block_files(cache_dir)) == ["0", "1@0", f"9@{BS - 160}"]
    with new_cache(store, cache_dir) as cache:  # the parts are kept on disk, and served from there
        assert run(lambda: cache.read(obj, BS, 100)) == data[BS:BS + 100]
        assert run(lambda: cache.read(obj, 10 * BS - 128, 128)) == data[-128:]
        assert store.ranges == []
        # a read that needs more of a block than its part fetches the whole block, which replaces it
        assert run(lambda: cache.read(obj, BS + 50, 200)) == data[BS + 50:BS + 250]
        assert store.ranges == [(obj.key, BS, 2 * BS)]
    assert "1" in [p.name.split("-", 1)[1] for p in block_files(cache_dir)]
    assert "1@0" not in [p.name.split("-", 1)[1] for p in block_files(cache_dir)]


def test_parts_that_meet_are_joined(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, 4 * BS)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.warm(obj, 0, 300, exact=True))
        run(lambda: cache.warm(obj, 300, BS, exact=True))
        assert cache.cached(obj, 0, BS)
        store.ranges.clear()
        assert run(lambda: cache.read(obj, 0, BS)) == data[:BS]
        assert store.ranges == []


def test_a_part_that_would_leave_a_hole_fills_it_and_nothing_held_is_lost(store: TestStore, cache_dir: Path) -> None:
    """A scan warms a small file's tail, then its head, then a player reads it all (one block)."""
    obj, data = put(store, BS - 10)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.warm(obj, BS - 200, BS - 10, exact=True))
        run(lambda: cache.warm(obj, 0, 100, exact=True))
        assert store.ranges == [(obj.key, BS - 200, BS - 10), (obj.key, 0, BS - 200)]
        assert run(lambda: cache.read(obj, 0, BS)) == data
        run(cache.settle)
    store.ranges.clear()
    with new_cache(store, cache_dir) as cache:  # the disk kept every byte the first cache had
        assert run(lambda: cache.read(obj, 0, BS)) == data
    assert store.ranges == []


def test_a_part_is_widened_to_a_part_held_on_disk(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, 2 * BS)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.warm(obj, 100, 200, exact=True))
        run(cache.settle)
    store.ranges.clear()
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.warm(obj, 500, 600, exact=True))
        assert store.ranges == [(obj.key, 200, 600)]
        assert cache.cached(obj, 100, 600)
        run(cache.settle)
    assert [p.name.split("-", 1)[1] for p in block_files(cache_dir)] == ["0@100"]


def test_a_reader_needing_more_than_a_part_in_flight_waits_and_fetches_the_rest(cache_dir: Path) -> None:
    store = TricklingStore()
    store.more.set()
    obj, data = put(store, 4 * BS)
    with new_cache(store, cache_dir) as cache:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: cache.warm(obj, 0, 200, exact=True))
                await trio.testing.wait_all_tasks_blocked()
                assert await cache.read(obj, 0, BS) == data[:BS]
        run(main)


def _flip_data(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _truncate_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:20])


def _older_version_with_a_newer_header(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:4] + struct.pack("<H", 1) + raw[6:])


def _bad_magic(path: Path) -> None:
    path.write_bytes(b"XXXX" + path.read_bytes()[4:])


def _newer_version(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:4] + struct.pack("<H", 99) + raw[6:])


def _another_block(path: Path) -> None:
    path.write_bytes(path.with_name(path.name[:-1] + "1").read_bytes())


@pytest.mark.parametrize("damage", [_flip_data, _truncate, _truncate_header, _bad_magic,
                                    _newer_version, _older_version_with_a_newer_header, _another_block])
def test_a_damaged_block_is_a_miss_and_fetched_again(store: TestStore, cache_dir: Path,
                                                     damage: Callable[[Path], None]) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, 2 * BS))
    damage(block_path(cache_dir, obj, 0))
    store.ranges.clear()
    with new_cache(store, cache_dir) as cache:
        assert run(lambda: cache.read(obj, 0, 2 * BS)) == data[:2 * BS]
        assert cache.stats.corrupt_blocks == 1 and cache.stats.disk_hits == 1
    assert store.ranges == [(obj.key, 0, BS)]
    store.ranges.clear()
    with new_cache(store, cache_dir) as cache:  # the block was written again, whole
        assert run(lambda: cache.read(obj, 0, 2 * BS)) == data[:2 * BS]
        assert cache.stats.corrupt_blocks == 0
    assert store.ranges == []


def test_blocks_of_another_block_size_are_not_served(store: TestStore, cache_dir: Path) -> None:
    # With 2 KiB blocks, block 1 is the last KiB; with 1 KiB blocks it is the
    # second: same index, same length, other bytes.
    obj, data = put(store, 3 * BS)
    with new_cache(store, cache_dir, block_size=2 * BS) as cache:
        run(lambda: cache.read(obj, 0, 3 * BS))
    with new_cache(store, cache_dir, block_size=BS) as cache:
        assert run(lambda: cache.read(obj, BS, BS)) == data[BS:2 * BS]
        assert cache.stats.corrupt_blocks == 1


def test_a_vanished_block_file_is_a_miss(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, BS))
    with new_cache(store, cache_dir) as cache:
        block_path(cache_dir, obj, 0).unlink()
        assert run(lambda: cache.read(obj, 0, BS)) == data[:BS]
        assert cache.disk_bytes == BLOCK_FILE


# --- bounded disk ---

def _disk_usage(cache_dir: Path) -> int:
    """Bytes in block files, temp files of writes under way included."""
    total = 0
    for path in (cache_dir / "blocks").glob("*/*"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # renamed or evicted while we looked
            pass
    return total


def test_heavy_reading_never_exceeds_the_disk_limit(store: TestStore, cache_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    objects = [put(store, 20 * BS + 7 * i, seed=i) for i in range(3)]
    limit = 10 * BLOCK_FILE + 100
    rng = random.Random(7)
    reads = [(rng.choice(objects), rng.randrange(20 * BS), rng.randrange(1, 5 * BS)) for _ in range(60)]
    usage: list[int] = []
    write = cache_module._write_block_file

    def measured_write(path: str, header: bytes, block: bytes) -> None:
        # Usage only grows when a file is written, and writes are serialized,
        # so measuring here sees the peak; a scan from another thread could
        # count a victim and its replacement both.
        write(path, header, block)
        usage.append(_disk_usage(cache_dir))

    monkeypatch.setattr(cache_module, "_write_block_file", measured_write)
    with new_cache(store, cache_dir, disk_limit=limit, memory_limit=2 * BS) as cache:
        async def main() -> None:
            async def reader(obj: ObjectRef, data: bytes, offset: int, length: int) -> None:
                assert await cache.read(obj, offset, length) == data[offset:offset + length]
            for batch in range(0, len(reads), 6):
                async with trio.open_nursery() as nursery:
                    for n, ((obj, data), offset, length) in enumerate(reads[batch:batch + 6]):
                        if n % 3 == 2:  # prefetch traffic in the mix
                            nursery.start_soon(cache.warm, obj, offset, offset + length)
                        else:
                            nursery.start_soon(reader, obj, data, offset, length)
            await until(lambda: cache.pending_blocks == 0)  # writes lag reads; let them land
        run(main)
        assert cache.disk_bytes == _disk_usage(cache_dir) <= limit
        assert cache.stats.evicted_blocks > 0
    assert len(usage) > 10 and max(usage) <= limit


def test_the_least_recently_used_block_is_evicted(store: TestStore, cache_dir: Path) -> None:
    obj, _ = put(store, SIZE)
    with new_cache(store, cache_dir, disk_limit=3 * BLOCK_FILE, memory_limit=0) as cache:
        for index in (0, 1, 2, 0, 3):  # block 0 is used again before 3 comes in
            run(lambda: cache.read(obj, index * BS, 1))
        assert cache.stats.disk_hits == 1
    assert sorted(p.name for p in block_files(cache_dir)) == [f"{obj.sha256}-{i}" for i in (0, 2, 3)]


def test_a_block_larger_than_the_disk_limit_is_not_written(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir, disk_limit=BS) as cache:
        assert run(lambda: cache.read(obj, 0, SIZE)) == data
        assert cache.disk_bytes == 0 and cache.disk_enabled
    assert block_files(cache_dir) == []


def test_open_orders_blocks_by_mtime_and_trims_to_the_limit(store: TestStore, cache_dir: Path) -> None:
    obj, _ = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, SIZE))
    for age, index in enumerate([4, 1, 5, 0, 2, 3]):  # block 4 oldest, block 3 newest
        os.utime(block_path(cache_dir, obj, index), (1_000_000 + age, 1_000_000 + age))
    with new_cache(store, cache_dir, disk_limit=3 * BLOCK_FILE) as cache:
        assert cache.stats.evicted_blocks == 3
        assert cache.disk_bytes == _disk_usage(cache_dir)
    remaining = {int(p.name.rsplit("-", 1)[1]) for p in block_files(cache_dir)}
    assert remaining == {0, 2, 3}


def test_open_removes_temp_files_of_a_crashed_write(store: TestStore, cache_dir: Path) -> None:
    obj, _ = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, 1))
    stale = block_path(cache_dir, obj, 1).with_name(f"{obj.sha256}-1.123.tmp")
    stale.write_bytes(b"half a block")
    with new_cache(store, cache_dir) as cache:
        assert cache.disk_bytes == BLOCK_FILE
    assert not stale.exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_a_failing_disk_turns_the_disk_cache_off_with_one_warning(
        store: TestStore, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, code: int) -> None:
    obj, data = put(store, 10 * BS)
    attempts = []

    def failing_write(path: str, header: bytes, block: bytes) -> None:
        attempts.append(path)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(cache_module, "_write_block_file", failing_write)
    with caplog.at_level(logging.WARNING, logger="lockerfs.cache"), new_cache(store, cache_dir) as cache:
        for index in range(10):
            assert run(lambda: cache.read(obj, index * BS, BS)) == data[index * BS:(index + 1) * BS]
        assert not cache.disk_enabled
        assert cache.stats.disk_errors == 1 and cache.disk_bytes == 0
        assert run(lambda: cache.read(obj, 0, 10 * BS)) == data  # memory still serves
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "memory only" in warnings[0].getMessage()
    assert len(attempts) == 1


def test_a_stalled_disk_does_not_hold_fetched_blocks(store: TestStore, cache_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    obj, data = put(store, 40 * BS)
    disk = threading.Event()
    write = cache_module._write_block_file

    def stalled_write(path: str, header: bytes, block: bytes) -> None:
        disk.wait(10)
        write(path, header, block)

    monkeypatch.setattr(cache_module, "_write_block_file", stalled_write)
    # backlog bound: max_request * (1 + 1) slots = 4 blocks
    with new_cache(store, cache_dir, max_request=2 * BS, foreground_slots=1, background_slots=1) as cache:
        async def main() -> None:
            for offset in range(0, 40 * BS, BS):
                assert await cache.read(obj, offset, BS) == data[offset:offset + BS]
                assert cache.pending_blocks <= 4 + 1
            assert cache.stats.disk_skipped > 0
            disk.set()
            await until(lambda: cache.pending_blocks == 0)
        try:
            run(main)
        finally:
            disk.set()
        assert cache.disk_bytes == _disk_usage(cache_dir) > 0


# --- the cache directory ---

def test_a_second_live_cache_on_the_dir_is_refused(store: TestStore, cache_dir: Path) -> None:
    first = new_cache(store, cache_dir)
    first.open()
    second = new_cache(store, cache_dir)
    with pytest.raises(CacheInUse) as caught:
        second.open()
    assert str(cache_dir) in str(caught.value) and f"pid {os.getpid()}" in str(caught.value)
    first.close()
    second.open()
    second.close()


def test_created_dirs_are_private(store: TestStore, tmp_path: Path) -> None:
    cache_dir = tmp_path / "xdg" / "lockerfs" / "cache"
    with new_cache(store, cache_dir):
        pass
    for directory in (tmp_path / "xdg", tmp_path / "xdg" / "lockerfs", cache_dir):
        assert directory.stat().st_mode & 0o077 == 0


def test_a_world_writable_cache_dir_is_refused(store: TestStore, cache_dir: Path) -> None:
    cache_dir.mkdir()
    cache_dir.chmod(0o777)
    with pytest.raises(UnsafeCacheDir, match="writable by every user") as caught:
        new_cache(store, cache_dir).open()
    assert str(cache_dir) in str(caught.value)


@pytest.mark.parametrize("mode,safe", [(0o777, False), (0o1777, True)])
def test_a_world_writable_parent_needs_the_sticky_bit(store: TestStore, tmp_path: Path, mode: int, safe: bool) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    if safe:
        with new_cache(store, shared / "cache"):
            pass
    else:
        with pytest.raises(UnsafeCacheDir, match=str(shared)):
            new_cache(store, shared / "cache").open()


# --- memory ---

def test_memory_stays_within_its_limit(store: TestStore) -> None:
    obj, data = put(store, 40 * BS)
    with new_cache(store, None, memory_limit=4 * BS) as cache:
        for offset in range(0, 40 * BS, 3 * BS):
            assert run(lambda: cache.read(obj, offset, 3 * BS)) == data[offset:offset + 3 * BS]
            assert cache.memory_bytes <= 4 * BS
        assert cache.pending_blocks == 0


def test_warm_into_memory_loads_disk_blocks_ahead_without_the_store(store: TestStore, cache_dir: Path) -> None:
    """Read-ahead of a re-read: blocks on disk are brought into memory before the reader asks."""
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, SIZE))
    gets = len(store.gets())
    with new_cache(store, cache_dir) as cache:
        assert cache.cached(obj, 0, SIZE) and not cache.cached(obj, 0, SIZE, in_memory=True)
        run(lambda: cache.warm(obj, 0, SIZE))  # plain warming leaves disk blocks where they are
        assert not cache.cached(obj, 0, SIZE, in_memory=True)
        run(lambda: cache.warm(obj, 0, SIZE, into_memory=True))
        assert cache.cached(obj, 0, SIZE, in_memory=True)
        assert run(lambda: cache.read(obj, 0, SIZE)) == data
    assert len(store.gets()) == gets


# --- streaming, stopping, verifying ---

class TricklingStore(TestStore):
    """Streams a GET one block-sized chunk at a time, and holds it after `release` chunks
    until `more` is set; records whether the cache asked it to stop."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.release = 1
        self.more = threading.Event()
        self.stopped = threading.Event()
        self.sent = 0

    def get_range_stream(self, key: str, start: int, end: int, sink: Callable[[bytes], None],
                         stop: threading.Event | None = None) -> int:
        data = self.get_range(key, start, end)
        done = 0
        for n, offset in enumerate(range(0, len(data), BS)):
            if n >= self.release:
                self.more.wait(10)
            if stop is not None and stop.is_set():
                self.stopped.set()
                return done
            sink(data[offset:offset + BS])
            done += len(data[offset:offset + BS])
            self.sent += 1
        return done


def test_a_long_get_hands_over_each_block_as_it_arrives(cache_dir: Path) -> None:
    store = TricklingStore()
    obj, data = put(store, 8 * BS)
    with new_cache(store, cache_dir) as cache:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: cache.warm(obj, 0, 8 * BS))
                await trio.testing.wait_all_tasks_blocked()
                with trio.fail_after(5):  # block 0 comes while the GET is still held after it
                    assert await cache.read(obj, 0, BS) == data[:BS]
                assert cache.pending_blocks == 7 and len(store.gets()) == 1
                store.more.set()
        run(main)
        assert cache.cached(obj, 0, 8 * BS) and len(store.gets()) == 1


def test_a_warm_given_up_stops_its_get(cache_dir: Path) -> None:
    store = TricklingStore()
    obj, data = put(store, 8 * BS)
    with new_cache(store, cache_dir) as cache:
        async def main() -> None:
            with trio.move_on_after(0.2):
                await cache.warm(obj, 0, 8 * BS)  # held after its first block
            store.more.set()
            await until(lambda: cache.pending_blocks == 0)
        run(main)
        assert store.stopped.is_set() and cache.stats.stopped_requests == 1
        assert cache.cached(obj, 0, BS) and not cache.cached(obj, BS, 8 * BS)
        assert run(lambda: cache.read(obj, 0, 8 * BS)) == data  # the rest is fetched when asked for


def test_a_get_a_reader_waits_for_is_never_stopped(cache_dir: Path) -> None:
    store = TricklingStore()
    obj, data = put(store, 8 * BS)
    with new_cache(store, cache_dir) as cache:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                warming = trio.CancelScope()

                async def warm() -> None:
                    with warming:
                        await cache.warm(obj, 0, 8 * BS)
                nursery.start_soon(warm)
                await until(lambda: store.sent == 1)
                result: list[bytes] = []

                async def read() -> None:  # joins the warm's GET for block 5
                    result.append(await cache.read(obj, 5 * BS, BS))
                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                warming.cancel()
                await trio.testing.wait_all_tasks_blocked()
                store.more.set()
            assert result == [data[5 * BS:6 * BS]]
        run(main)
        assert not store.stopped.is_set() and cache.stats.stopped_requests == 0


def test_a_warm_may_stream_a_long_range_in_one_get(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, 40 * BS)
    with new_cache(store, cache_dir) as cache:  # max_request is 8 blocks
        run(lambda: cache.warm(obj, 0, 40 * BS, max_request=40 * BS))
        assert store.ranges == [(obj.key, 0, 40 * BS)]
        assert run(lambda: cache.read(obj, 0, 40 * BS)) == data


def test_a_wholly_cached_object_is_verified_once(store: TestStore, cache_dir: Path) -> None:
    obj, data = put(store, SIZE)
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, 2 * BS))
        assert cache.stats.verified_objects == 0  # not all of it yet
        run(lambda: cache.read(obj, 0, SIZE))
        run(lambda: trio.sleep(0.05))
        assert cache.stats.verified_objects == 1 and cache.stats.corrupt_objects == 0
        assert run(lambda: cache.read(obj, 0, SIZE)) == data


def test_an_object_whose_bytes_do_not_hash_to_its_name_is_dropped(
        store: TestStore, cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A store that sends other bytes of the right length (a damaged object or middlebox):
    once the whole object is cached the mismatch is found, logged, and nothing of it is kept."""
    obj, data = put(store, SIZE)
    damaged = bytes([data[0] ^ 0xFF]) + data[1:]
    store.objects[obj.key] = (damaged, store.objects[obj.key][1])
    with new_cache(store, cache_dir) as cache:
        run(lambda: cache.read(obj, 0, SIZE))

        async def verified() -> None:
            await until(lambda: cache.stats.corrupt_objects == 1)
            await cache.settle()
        run(verified)
        assert not any(cache.cached(obj, i * BS, (i + 1) * BS) for i in range(SIZE // BS + 1))
        assert cache.disk_bytes == 0 and block_files(cache_dir) == []
    assert "do not hash to its name" in caplog.text


def test_an_object_shorter_than_its_record_fails_its_reads_and_says_the_store_answered_short(
        store: TestStore, cache_dir: Path) -> None:
    """The bucket's object lost its tail (replaced, truncated): a ranged GET past its end is
    answered short without any error from the store. The read fails, and the reason says
    the store returned too few bytes (what the mount's failure report shows), not that the
    GET was stopped, which would blame the reader."""
    obj, data = put(store, SIZE)
    store.objects[obj.key] = (data[:3 * BS + 10], store.objects[obj.key][1])
    with new_cache(store, cache_dir) as cache:
        with pytest.raises(FetchError, match=r"returned 10 bytes of \S+ at 3072 where \d+ were asked for"):
            run(lambda: cache.read(obj, 3 * BS, 2 * BS + 100))
        assert cache.stats.failed_requests == 1 and cache.stats.stopped_requests == 0
        assert not cache.cached(obj, 3 * BS, SIZE)
