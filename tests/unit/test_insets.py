"""Insets: a track's embedded cover found at upload, recorded, and read from its one shared object."""

from __future__ import annotations

import hashlib
import threading
import random
from pathlib import Path

import pytest
import trio

from lockerfs import catalog, columnar
from lockerfs.cache import ObjectRef
from lockerfs.insets import MIN_INSET, EdgeKeeper, Edges, inset_from_dict, inset_to_dict, locate, make_inset
from lockerfs.objectref import Inset
from lockerfs.store import MemoryStore
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo
from lockerfs.tracktable import TrackTable
from tests.unit.test_cache import BS, TestStore, new_cache, run

COVER = random.Random(7).randbytes(MIN_INSET + 3 * BS + 37)
HEAD, TAIL = 500, 2 * BS + 11  # bytes of a track before and after its cover


def stored(store: MemoryStore, data: bytes, ext: str, inset: Inset | None = None) -> ObjectRef:
    sha = hashlib.sha256(data).hexdigest()
    key = f"objects/sha256/{sha[:2]}/{sha}.{ext}"
    store.put_bytes(key, data)
    return ObjectRef(key, sha, len(data), inset)


def track_with_cover(store: MemoryStore, seed: int, cover: bytes = COVER) -> tuple[ObjectRef, bytes]:
    """A track object holding `cover` at HEAD, its cover stored too; the ref carries the inset."""
    rng = random.Random(seed)
    data = rng.randbytes(HEAD) + cover + rng.randbytes(TAIL)
    art = ObjectRef(*_key_sha(cover, "jpg"), len(cover))
    ref = stored(store, data, "flac", Inset(HEAD, art))
    store.requests.clear()
    return ref, data


def _key_sha(data: bytes, ext: str) -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    return f"objects/sha256/{sha[:2]}/{sha}.{ext}", sha


@pytest.fixture
def store() -> TestStore:
    s = TestStore()
    stored(s, COVER, "jpg")
    return s


def got_from(store: TestStore, key: str) -> int:
    return sum(end - start for k, start, end in store.ranges if k == key)


# --- the cache reads an inset from its shared object ---

def test_a_scan_of_an_album_fetches_its_cover_once(store: TestStore, tmp_path: Path) -> None:
    tracks = [track_with_cover(store, seed) for seed in range(4)]
    cover_key = tracks[0][0].inset.object.key  # type: ignore[union-attr]
    head_zone = HEAD + len(COVER) + 100  # what a tag reader reads: the tags, the picture, a little audio
    with new_cache(store, tmp_path / "cache") as cache:
        for ref, data in tracks:
            run(lambda: cache.warm(ref, 0, head_zone, exact=True))
            assert run(lambda: cache.read(ref, 0, head_zone)) == data[:head_zone]
            assert got_from(store, ref.key) == head_zone - len(COVER)  # all but the picture
        assert got_from(store, cover_key) == len(COVER)
        assert cache.stats.inset_bytes == 4 * len(COVER)


def test_a_reader_gets_exact_bytes_around_and_inside_the_cover(store: TestStore, tmp_path: Path) -> None:
    ref, data = track_with_cover(store, 1)
    with new_cache(store, tmp_path / "cache") as cache:
        for offset, length in ((HEAD + 2 * BS, BS), (0, 3 * BS), (HEAD + len(COVER) - 10, 3 * BS),
                               (0, len(data))):
            assert run(lambda: cache.read(ref, offset, length)) == data[offset:offset + length]
        # the edges of the picture came from the track, its inside from the cover: no byte twice
        assert got_from(store, ref.key) < len(data) - len(COVER) + 2 * BS
    store.ranges.clear()
    with new_cache(store, tmp_path / "cache") as cache:  # and every byte was kept on disk
        assert run(lambda: cache.read(ref, 0, len(data))) == data
    assert store.ranges == []


def test_a_cover_gone_from_the_store_is_read_from_the_track(tmp_path: Path) -> None:
    store = TestStore()  # the cover object was never stored (or a gc of an older lockerfs took it)
    ref, data = track_with_cover(store, 2)
    with new_cache(store, tmp_path / "cache") as cache:
        run(lambda: cache.warm(ref, 0, len(data), exact=True))
        assert run(lambda: cache.read(ref, 0, len(data))) == data
        assert run(lambda: cache.read(ref, HEAD + BS, BS)) == data[HEAD + BS:HEAD + 2 * BS]


def test_a_cover_object_shorter_than_recorded_is_not_used(tmp_path: Path) -> None:
    store = TestStore()
    ref, data = track_with_cover(store, 3)
    assert ref.inset is not None
    store.put_bytes(ref.inset.object.key, COVER[:-5])  # damaged or replaced under its name
    with new_cache(store, tmp_path / "cache") as cache:
        assert run(lambda: cache.read(ref, 0, len(data))) == data


def test_a_block_holding_other_bytes_is_left_to_the_track(store: TestStore, tmp_path: Path) -> None:
    """A part already held that the inset would not meet stays: the block is not one run."""
    ref, data = track_with_cover(store, 4)
    with new_cache(store, tmp_path / "cache") as cache:
        run(lambda: cache.warm(ref, 0, 100, exact=True))  # block 0 holds [0, 100); the cover starts at 500
        assert run(lambda: cache.read(ref, 0, BS)) == data[:BS]
        assert run(lambda: cache.read(ref, 0, len(data))) == data


# --- where a track holds its cover ---

def test_locate_finds_the_cover_in_the_head_or_the_tail() -> None:
    body = bytes(50_000)
    head_file = b"ID3" + COVER + body
    assert locate(COVER, Edges(head_file, head_file, len(head_file)), 3 + len(COVER), 0) == 3
    tail_file = body + COVER + b"TAG"
    assert locate(COVER, Edges(tail_file, tail_file, len(tail_file)), 10, len(COVER) + 3) == len(body)
    # outside the tag regions (in the audio): not an inset
    assert locate(COVER, Edges(tail_file, tail_file, len(tail_file)), 10, 3) is None
    assert locate(COVER[:MIN_INSET - 1], Edges(head_file, head_file, len(head_file)), len(head_file), 0) is None
    changed = bytearray(COVER)
    changed[100] ^= 1
    assert locate(bytes(changed), Edges(head_file, head_file, len(head_file)), len(head_file), 0) is None


def test_the_edges_of_a_streamed_file_find_what_the_whole_file_finds() -> None:
    data = b"h" * 1000 + COVER + bytes(300_000) + COVER + b"t" * 77
    keeper = EdgeKeeper(edge=len(COVER) + 2000)
    for start in range(0, len(data), 4096):
        keeper.feed(data[start:start + 4096])
    edges = keeper.edges()
    assert edges.size == len(data) and data.startswith(edges.head) and data.endswith(edges.tail)
    assert len(edges.head) == len(edges.tail) == len(COVER) + 2000
    assert locate(COVER, edges, 1000 + len(COVER), 0) == 1000
    assert locate(COVER, edges, 10, len(COVER) + 77) == len(data) - 77 - len(COVER)


# --- the record: written, read, and never trusted ---

def a_track(art: Inset | None, size: int = 1 << 20) -> Track:
    sha = hashlib.sha256(b"track").hexdigest()
    return Track(sha, catalog.object_key(sha, "flac"), size, "flac", "a/b.flac", 1.0,
                 TrackInfo(format="flac", codec="flac", title="T"), art)


def test_a_track_record_keeps_its_inset() -> None:
    inset = make_inset(hashlib.sha256(COVER).hexdigest(), "jpg", len(COVER), 123)
    record = catalog.add_record(a_track(inset))
    assert record["track"]["art"] == inset_to_dict(inset)
    assert catalog.track_from_dict(record["track"]).art == inset


@pytest.mark.parametrize("change", [
    {"sha256": "X" * 64}, {"ext": "../x"}, {"size": MIN_INSET - 1}, {"at": -1}, {"at": 1 << 20},
    {"size": "big"}, {"at": 1.5}, {"size": True},
])
def test_a_bad_inset_is_dropped_and_the_track_kept(change: dict[str, object]) -> None:
    good = inset_to_dict(make_inset(hashlib.sha256(COVER).hexdigest(), "jpg", len(COVER), 123))
    record = catalog.add_record(a_track(None))["track"] | {"art": good | change}
    assert catalog.track_from_dict(record).art is None
    assert inset_from_dict("not a dict", 1 << 20) is None


def test_a_columnar_snapshot_keeps_insets_and_drops_bad_ones() -> None:
    cover_sha = hashlib.sha256(COVER).hexdigest()
    table = TrackTable()
    tracks = []
    for n in range(5):
        sha = hashlib.sha256(b"t%d" % n).hexdigest()
        art = make_inset(cover_sha, "jpg", len(COVER), 100 * n) if n != 2 else None
        tracks.append(Track(sha, catalog.object_key(sha, "mp3"), 1 << 20, "mp3", f"{n}.mp3", 1.0,
                            TrackInfo(format="mp3", codec="mp3"), art))
        table.put(sha, ("f", n), tracks[-1])
    table.art_at[4] = (1 << 20) - 10  # a copy damaged (or written by a hostile hand): past the track's end
    decoded = columnar.decode(columnar.encode(table, "id", [], []), 1 << 30, lambda version: None)
    again = TrackTable()
    again.merge_columns(decoded.shas, decoded.columns, decoded.header["files"], decoded.rejected)
    assert [again.track(row).art for row in range(5)] == [t.art for t in tracks[:4]] + [None]
    assert again.art[0] is again.art[1]  # one object for the album's tracks


def test_a_warm_asks_for_the_cover_and_the_bytes_around_it_at_once(store: TestStore, tmp_path: Path) -> None:
    """Two round trips one after the other per track would double a cold scan's wait."""
    ref, data = track_with_cover(store, 5)
    assert ref.inset is not None
    gate = store.gates[ref.inset.object.key] = threading.Event()
    zone = HEAD + len(COVER) + 100

    async def scenario() -> None:
        with new_cache(store, tmp_path / "cache") as cache:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: cache.warm(ref, 0, zone, exact=True))
                with trio.fail_after(5):  # the track's own bytes are asked for while the cover is held up
                    while got_from(store, ref.key) < zone - len(COVER):
                        await trio.sleep(0.01)
                gate.set()
            assert await cache.read(ref, 0, zone) == data[:zone]

    trio.run(scenario)
    assert got_from(store, ref.key) == zone - len(COVER)


@pytest.mark.parametrize("offset, length", [(HEAD + len(COVER) - 100, 4096), (HEAD + len(COVER) + 10, 4096),
                                            (0, HEAD + 100)])
def test_a_read_beside_the_cover_before_the_cover_came_fetches_none_of_it(
        store: TestStore, tmp_path: Path, offset: int, length: int) -> None:
    """A tag reader's first read past the picture starts inside it (the kernel reads whole pages)
    or just after it, and on a busy machine it comes before the cover's object has: the track's
    own GET must bring only the bytes beside the picture, not its block whole."""
    ref, data = track_with_cover(store, 6)
    assert ref.inset is not None
    gate = store.gates[ref.inset.object.key] = threading.Event()
    cover_end = HEAD + len(COVER)

    async def scenario() -> None:
        with new_cache(store, tmp_path / "cache") as cache:
            async with trio.open_nursery() as nursery:
                async def reader() -> None:
                    assert await cache.read(ref, offset, length) == data[offset:offset + length]
                nursery.start_soon(reader)
                with trio.fail_after(5):
                    while not got_from(store, ref.key):
                        await trio.sleep(0.01)
                gate.set()

    trio.run(scenario)
    # from the picture's end on (the read runs on to the track's end), or up to its start
    beside = (0, HEAD) if offset < HEAD else (cover_end, len(data))
    assert [(start, end) for key, start, end in store.ranges if key == ref.key] == [beside]


def test_a_cover_that_comes_before_a_load_of_its_block_is_kept_when_the_load_ends(
        store: TestStore, tmp_path: Path) -> None:
    """A block is one run of bytes: the picture's part put there while a load of other bytes of
    the block is in flight would be replaced by them, and then fetched again from the track.
    It waits for the load instead (a scan's zones of one track are warmed at once)."""
    ref, data = track_with_cover(store, 7)
    assert ref.inset is not None
    cover = ref.inset.object
    gate = store.gates[ref.key] = threading.Event()
    zone = HEAD + len(COVER) + 100

    async def scenario() -> None:
        with new_cache(store, tmp_path / "cache") as cache:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: cache.warm(ref, 0, 100, exact=True))  # held up at the store
                with trio.fail_after(5):
                    while not got_from(store, ref.key):
                        await trio.sleep(0.01)
                nursery.start_soon(lambda: cache.warm(ref, 0, zone, exact=True))
                with trio.fail_after(5):  # the cover is in before the track's first load ends
                    while not cache.cached(cover, 0, len(COVER)):
                        await trio.sleep(0.01)
                gate.set()
            assert await cache.read(ref, 0, zone) == data[:zone]

    trio.run(scenario)
    assert got_from(store, ref.key) == zone - len(COVER)
