"""Pins: the disk cache's pinned index, keep_on_disk, the Pins set (fit, all or nothing, persistence,
following tag replacements), and a read racing a write in the disk cache."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from lockerfs import catalog, diskcache, pins as pins_module
from lockerfs.cache import BlockCache, ObjectRef
from lockerfs.catalog import CatalogState
from lockerfs.pins import Pin, PinError, Pins, footprint, load_pins, save_pins
from lockerfs.store import Unreachable
from tests.unit.test_cache import BLOCK_FILE, BS, TestStore, block_files, new_cache, put, run
from tests.unit.test_catalog import make_track


def disk_bytes(cache_dir: Path) -> int:
    return sum(path.stat().st_size for path in block_files(cache_dir))


async def fill(cache: BlockCache, obj: ObjectRef) -> None:
    """Read an object whole, so that all its blocks go to disk."""
    await cache.read(obj, 0, obj.size)
    await cache.settle()


# --- the disk cache's pinned index -------------------------------------------------------------

def test_pinned_blocks_are_never_evicted_however_much_else_is_read(tmp_path: Path) -> None:
    store = TestStore()
    pinned, _ = put(store, 4 * BS, seed=1)
    others = [put(store, 4 * BS, seed=10 + n)[0] for n in range(10)]
    limit = 10 * BLOCK_FILE  # room for the pinned object and six blocks more

    async def main() -> None:
        with new_cache(store, tmp_path, disk_limit=limit) as cache:
            cache.set_pinned([pinned.sha256])
            await fill(cache, pinned)
            for obj in others:
                await fill(cache, obj)
            assert cache.on_disk(pinned) == pinned.size
            assert cache.disk.pinned_bytes == 4 * BLOCK_FILE
            assert disk_bytes(tmp_path) == cache.disk_bytes <= limit
            assert cache.stats.evicted_blocks >= 30  # the others went round and round

    run(main)


def test_pins_set_before_open_keep_blocks_already_on_disk_and_a_smaller_limit_keeps_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = TestStore()
    pinned, _ = put(store, 3 * BS, seed=1)
    other, _ = put(store, 3 * BS, seed=2)

    async def fill_both() -> None:
        with new_cache(store, tmp_path) as cache:
            await fill(cache, pinned)
            await fill(cache, other)

    run(fill_both)
    cache = new_cache(store, tmp_path, disk_limit=2 * BLOCK_FILE)  # smaller than the pin
    cache.set_pinned([pinned.sha256])
    with caplog.at_level(logging.WARNING), cache:
        assert cache.on_disk(pinned) == pinned.size  # all kept
        assert cache.on_disk(other) == 0  # evicted to make up for the smaller limit
        assert "pinned objects take" in caplog.text


def test_unpinned_blocks_are_the_first_to_go(tmp_path: Path) -> None:
    store = TestStore()
    first, _ = put(store, 2 * BS, seed=1)
    second, _ = put(store, 2 * BS, seed=2)
    third, _ = put(store, 2 * BS, seed=3)

    async def main() -> None:
        with new_cache(store, tmp_path, disk_limit=4 * BLOCK_FILE) as cache:
            cache.set_pinned([first.sha256])
            await fill(cache, first)
            await fill(cache, second)
            cache.set_pinned([])
            await fill(cache, third)  # needs two blocks of room: the once pinned ones leave
            assert (cache.on_disk(first), cache.on_disk(second)) == (0, second.size)

    run(main)


def test_a_read_that_misses_a_file_a_write_just_replaced_keeps_the_new_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A part of a block on disk, a reader about to open it, and a write of the whole block
    in between: the reader finds no file, and must not drop the whole block's entry."""
    store = TestStore()
    obj, data = put(store, 2 * BS, seed=4)
    reading = trio.Event()
    replaced = trio.Event()
    original = diskcache._read_blocks

    def slow_read(*args):  # type: ignore[no-untyped-def]
        trio.from_thread.run_sync(reading.set)
        trio.from_thread.run(replaced.wait)
        return original(*args)

    async def main() -> None:
        with new_cache(store, tmp_path) as cache:
            await cache.warm(obj, 100, 200, exact=True)  # a part of block 0, as a tag scan leaves it
            await cache.settle()
            assert cache.disk.has((obj.sha256, 0), 100, 200) and not cache.disk.holds_whole((obj.sha256, 0))
            monkeypatch.setattr(diskcache, "_read_blocks", slow_read)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.disk.read, obj.sha256, [(0, BS)])
                await reading.wait()
                cache.disk.save_soon(obj.sha256, [(0, data[:BS])])  # the whole block replaces the part
                while cache.disk.writing:
                    await trio.sleep(0.001)
                replaced.set()
            monkeypatch.setattr(diskcache, "_read_blocks", original)
            assert cache.disk.holds_whole((obj.sha256, 0))
            assert disk_bytes(tmp_path) == cache.disk_bytes

    run(main)


# --- keep_on_disk -----------------------------------------------------------------------------

def test_keep_on_disk_fetches_in_one_get_and_checks_the_sha256(tmp_path: Path) -> None:
    store = TestStore()
    obj, _ = put(store, 5 * BS + 7, seed=5)

    async def main() -> None:
        with new_cache(store, tmp_path, memory_limit=BS) as cache:  # memory holds almost nothing
            assert await cache.keep_on_disk(obj) is None
            assert cache.on_disk(obj) == obj.size
            assert len(store.ranges) == 1 and store.ranges[0][1:] == (0, obj.size)
            assert await cache.keep_on_disk(obj) is None  # nothing more to do
            assert len(store.ranges) == 1

    run(main)


class LateEndingStore(TestStore):
    """Its GETs hand over every byte, then take a while to return (a busy machine's thread)."""

    def get_range_stream(self, key: str, start: int, end: int, sink: Callable[[bytes], None],
                         stop: threading.Event | None = None) -> int:
        got = super().get_range_stream(key, start, end, sink, stop)
        time.sleep(0.3)
        return got


def test_keep_on_disk_fetches_once_though_the_get_returns_after_its_last_block(tmp_path: Path) -> None:
    """The blocks go to the disk as soon as the last one came: a pin that then finds them not
    on disk yet would fetch them again."""
    store = LateEndingStore()
    obj, _ = put(store, 5 * BS + 7, seed=5)

    async def main() -> None:
        with new_cache(store, tmp_path, memory_limit=BS) as cache:
            assert await cache.keep_on_disk(obj) is None
            assert cache.on_disk(obj) == obj.size
            assert len(store.ranges) == 1

    run(main)


def test_keep_on_disk_drops_bytes_that_do_not_hash_to_the_name(tmp_path: Path) -> None:
    store = TestStore()
    obj, data = put(store, 3 * BS, seed=6)
    store.put_bytes(obj.key, bytes(reversed(data)))  # the store now serves other bytes of the same size

    async def main() -> None:
        with new_cache(store, tmp_path) as cache:
            error = await cache.keep_on_disk(obj)
            assert error is not None and "do not hash to its name" in error
            assert cache.on_disk(obj) == 0
            assert cache.stats.corrupt_objects == 1

    run(main)


def test_keep_on_disk_says_why_the_store_failed(tmp_path: Path) -> None:
    store = TestStore()
    obj, _ = put(store, 3 * BS, seed=7)
    store.fail = Unreachable("cannot connect to the S3 endpoint http://127.0.0.1:9")

    async def main() -> None:
        with new_cache(store, tmp_path) as cache:
            error = await cache.keep_on_disk(obj, attempts=2)
            assert error is not None and "cannot connect" in error

    run(main)


# --- the Pins set -------------------------------------------------------------------------------

def make_pins(tmp_path: Path, store: TestStore, capacity: int, **options: object) -> tuple[Pins, BlockCache]:
    cache = new_cache(store, tmp_path / "cache", **options)
    pins = Pins(tmp_path / "pins.json", cache, capacity)
    pins.load()
    cache.open()
    return pins, cache


async def no_progress(done: int, total: int) -> None:
    pass


def test_a_pin_is_fetched_saved_and_reported(tmp_path: Path) -> None:
    store = TestStore()
    objects = [put(store, 3 * BS, seed=n)[0] for n in range(3)]
    seen: list[tuple[int, int]] = []

    async def progress(done: int, total: int) -> None:
        seen.append((done, total))

    async def main() -> None:
        pins, cache = make_pins(tmp_path, store, capacity=1 << 20)
        try:
            made = await pins.pin([Pin("Band/Album", tuple(o.sha256 for o in objects[:2]), tuple(objects), 0.0)],
                                  progress)
            assert [pin.path for pin in made] == ["Band/Album"] and made[0].created > 0
            assert all(cache.on_disk(obj) == obj.size for obj in objects)
            assert seen[-1] == (9 * BS, 9 * BS)
            assert load_pins(tmp_path / "pins.json") == made
            assert [status.on_disk for status in pins.status()] == [9 * BS]
            assert pins.is_pinned(objects[2].sha256) and cache.is_pinned(objects[2])
        finally:
            cache.close()

    run(main)


def test_a_pin_that_does_not_fit_is_refused_with_the_figures_and_changes_nothing(tmp_path: Path) -> None:
    store = TestStore()
    big, _ = put(store, 20 * BS, seed=1)

    async def main() -> None:
        pins, cache = make_pins(tmp_path, store, capacity=10 * BS)
        try:
            with pytest.raises(PinError) as refused:
                await pins.pin([Pin("Big", (big.sha256,), (big,), 0.0)], no_progress)
            message = str(refused.value)
            assert f"needs {footprint([big], BS) / 1024:.1f} KiB more" in message
            assert "pins may use 10.0 KiB" in message and "--cache-size" in message
            assert pins.pins == [] and not (tmp_path / "pins.json").exists() and store.ranges == []
        finally:
            cache.close()

    run(main)


def test_a_pin_that_cannot_be_fetched_is_taken_back_whole(tmp_path: Path) -> None:
    store = TestStore()
    first, _ = put(store, 2 * BS, seed=1)
    second, _ = put(store, 2 * BS, seed=2)

    async def main() -> None:
        pins, cache = make_pins(tmp_path, store, capacity=1 << 20)
        try:
            await pins.pin([Pin("Old", (first.sha256,), (first,), 0.0)], no_progress)
            saved = (tmp_path / "pins.json").read_bytes()
            store.fail = Unreachable("cannot connect to the S3 endpoint http://127.0.0.1:9")
            with pytest.raises(PinError) as failed:
                await pins.pin([Pin("New", (second.sha256,), (second,), 0.0)], no_progress)
            assert "cannot connect" in str(failed.value) and "nothing was pinned" in str(failed.value)
            assert [pin.path for pin in pins.pins] == ["Old"]
            assert (tmp_path / "pins.json").read_bytes() == saved
            assert not cache.is_pinned(second) and cache.is_pinned(first)
        finally:
            cache.close()

    run(main)


def test_unpin_takes_back_what_lies_under_a_path(tmp_path: Path) -> None:
    store = TestStore()
    a, b, c = (put(store, BS, seed=n)[0] for n in range(3))

    async def main() -> None:
        pins, cache = make_pins(tmp_path, store, capacity=1 << 20)
        try:
            await pins.pin([Pin("X/Album", (a.sha256, b.sha256), (a, b), 0.0),
                            Pin("Y/Album", (c.sha256,), (c,), 0.0)], no_progress)
            touched, released = await pins.unpin("X/Album/01.flac", [a.sha256])  # one track of a pin
            assert [pin.path for pin in touched] == ["X/Album"] and released == footprint([a], BS)
            assert [(pin.path, pin.tracks) for pin in pins.pins] == [("X/Album", (b.sha256,)), ("Y/Album", (c.sha256,))]
            touched, _ = await pins.unpin("Y", [])  # a folder holding a pin, by its name alone
            assert [pin.path for pin in touched] == ["Y/Album"]
            assert [pin.path for pin in load_pins(tmp_path / "pins.json")] == ["X/Album"]
            assert not cache.is_pinned(a) and not cache.is_pinned(c) and cache.is_pinned(b)
        finally:
            cache.close()

    run(main)


def test_pins_follow_a_retagged_track_and_let_go_of_a_removed_one(tmp_path: Path) -> None:
    store = TestStore()
    old, kept, gone = (make_track(n) for n in (1, 2, 3))
    new = dataclasses.replace(make_track(4), source=old.source)
    cover = ObjectRef("objects/sha256/" + "ab" + "/" + "ab" * 32 + ".png", "ab" * 32, 100)
    state = CatalogState()
    state.merge_file("1000000000000-0000000000000000", {"kind": "journal", "version": 2, "records": [
        catalog.add_record(t) for t in (old, kept, gone)]})
    state.merge_file("1000000000001-0000000000000000", {"kind": "journal", "version": 2, "records": [
        catalog.add_record(new), catalog.remove_record(old.sha256, replaced_by=new.sha256, track=old),
        catalog.remove_record(gone.sha256, track=gone)]})

    def ref(track):  # type: ignore[no-untyped-def]
        return ObjectRef(track.key, track.sha256, track.size)

    async def main() -> None:
        cache = new_cache(store, tmp_path / "cache")
        pins = Pins(tmp_path / "pins.json", cache, 1 << 30)
        pins.pins = [Pin("Album", (old.sha256, kept.sha256, gone.sha256), (ref(old), ref(kept), ref(gone), cover), 1.0)]
        await pins.follow(state)
        [pin] = pins.pins
        assert pin.tracks == (new.sha256, kept.sha256)
        assert {obj.sha256 for obj in pin.objects} == {new.sha256, kept.sha256, cover.sha256}
        assert load_pins(tmp_path / "pins.json") == pins.pins

    trio.run(main)


def test_a_damaged_pins_file_is_set_aside_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pins.json"
    path.write_text(json.dumps({"version": 1, "pins": [{"path": "x", "tracks": [], "objects": [
        {"key": "../../etc/passwd", "sha256": "ab" * 32, "size": 1}]}]}))
    with caplog.at_level(logging.WARNING):
        assert load_pins(path) == []
    assert "bad key" in caplog.text
    assert not path.exists() and (tmp_path / "pins.json.damaged").exists()


def test_pins_round_trip_and_a_crashed_save_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pins.json"
    obj = ObjectRef("objects/sha256/cd/" + "cd" * 32 + ".flac", "cd" * 32, 12345)
    first = [Pin("A/B", (obj.sha256,), (obj,), 12.5)]
    save_pins(path, first)
    assert load_pins(path) == first

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pins_module.os, "fsync", crash)
    with pytest.raises(OSError):
        save_pins(path, [])
    assert load_pins(path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["pins.json"]  # no temp file left behind
