"""Prefetcher policy: tag regions, scans, read-ahead growth and cancellation, the next track.

Most tests use RecordingCache, which records warm() calls (and can hold them
open, to see them cancelled), so the policy is checked exactly and without
threads; the last ones run it over a real BlockCache and MemoryStore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from lockerfs import prefetch
from lockerfs.cache import BlockCache, ObjectRef
from lockerfs.prefetch import (HEAD_SLACK, KERNEL_READ, NEXT_TRACK_BYTES, READAHEAD_MAX,
                               READAHEAD_PIECE, READAHEAD_START, SIBLINGS_MAX, TAIL_MIN, Prefetcher, ReadState,
                               head_end, object_of, tag_regions)
from lockerfs.track import Track
from lockerfs.tree import FileNode, Tree
from tests.unit.test_catalog import make_track
from tests.unit.test_fs import GatedStore, content

KiB, MiB = 1024, 1024 * 1024
Warm = tuple[str, int, int]  # (key, start, end)


def sized(n: int, size: int, head: int = 8192, tail: int = 128) -> Track:
    return dataclasses.replace(make_track(n, head_size=head, tail_size=tail), size=size)


class RecordingCache:
    """The two calls Prefetcher makes of a BlockCache, recorded."""

    def __init__(self) -> None:
        self.warms: list[Warm] = []
        self.cancelled: list[Warm] = []
        self.present: list[Warm] = []  # ranges cached() reports as cached
        self.hold = False  # warm() waits until cancelled

    def cached(self, obj: ObjectRef, start: int, end: int, *, in_memory: bool = False) -> bool:
        return any(key == obj.key and s <= start and end <= e for key, s, e in self.present)

    async def warm(self, obj: ObjectRef, start: int, end: int, *, into_memory: bool = False) -> None:
        self.warms.append((obj.key, start, end))
        if self.hold:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                self.cancelled.append((obj.key, start, end))
                raise

    def of(self, track: Track) -> list[tuple[int, int]]:
        return [(s, e) for key, s, e in self.warms if key == track.key]


def album_tree(folders: dict[str, list[Track]]) -> Tree:
    tree = Tree()
    tree.rebuild({("Artist", folder, f"{i:02d}.flac"): track
                  for folder, tracks in folders.items() for i, track in enumerate(tracks, 1)})
    return tree


def node_of(tree: Tree, track: Track) -> FileNode:
    (node,) = [n for n in tree.nodes.values() if isinstance(n, FileNode) and n.track == track]
    return node


def scenario(tree: Tree, cache: object, body: Callable[[Prefetcher], Awaitable[None]]) -> None:
    """Run body with a running Prefetcher, then let its tasks run before stopping it."""
    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                prefetcher = Prefetcher(cache, lambda: tree)  # type: ignore[arg-type]
                await nursery.start(prefetcher.run)
                await body(prefetcher)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
    trio.run(main)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture(autouse=True)
def no_open_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """An opened track's warming waits for its first read; these tests make no reads."""
    monkeypatch.setattr(prefetch, "OPEN_WARM_WAIT", 0.0)


# --- tag_regions --------------------------------------------------------------------

def test_tag_regions_head_covers_the_kernels_first_read_and_tail_min() -> None:
    track = sized(1, 10 * MiB, head=8192, tail=128)
    assert tag_regions(track, direct=False) == [(0, KERNEL_READ), (10 * MiB - TAIL_MIN, 10 * MiB)]
    big_head = sized(2, 10 * MiB, head=300_000, tail=128)
    assert tag_regions(big_head, direct=False)[0] == (0, 300_000 + HEAD_SLACK)


def test_tag_regions_of_a_direct_open_are_the_tags_and_one_buffer() -> None:
    track = sized(1, 10 * MiB, head=8192, tail=128)
    assert head_end(track) == 8192 + HEAD_SLACK
    assert tag_regions(track, direct=True) == [(0, 8192 + HEAD_SLACK), (10 * MiB - TAIL_MIN, 10 * MiB)]


def test_tag_regions_use_a_tail_bigger_than_tail_min() -> None:
    track = sized(1, 10 * MiB, head=100, tail=200_000)
    assert tag_regions(track, direct=False) == [(0, KERNEL_READ), (10 * MiB - 200_000, 10 * MiB)]


@pytest.mark.parametrize("size, expected", [
    (KERNEL_READ + TAIL_MIN, [(0, KERNEL_READ + TAIL_MIN)]),  # they meet: one region
    (KERNEL_READ + TAIL_MIN - 1000, [(0, KERNEL_READ + TAIL_MIN - 1000)]),  # overlap
    (KERNEL_READ + TAIL_MIN + 1, [(0, KERNEL_READ), (KERNEL_READ + 1, KERNEL_READ + TAIL_MIN + 1)]),
    (1000, [(0, 1000)]),  # smaller than either end
    (0, [(0, 0)]),
])
def test_tag_regions_merge_when_they_meet(size: int, expected: list[tuple[int, int]]) -> None:
    assert tag_regions(sized(1, size, head=8192, tail=128), direct=False) == expected


def test_tag_regions_never_pass_the_file() -> None:
    track = sized(1, 50_000, head=10**9, tail=10**9)
    assert tag_regions(track, direct=False) == tag_regions(track, direct=True) == [(0, 50_000)]


# --- open: tag regions and scans ------------------------------------------------------

ALBUM = [sized(n, 5 * MiB) for n in range(1, 6)]
OTHER = [sized(n, 5 * MiB) for n in range(11, 14)]


def warmed_keys(cache: RecordingCache) -> set[str]:
    return {key for key, _, _ in cache.warms}


def test_one_open_warms_its_head_and_tail_only() -> None:
    tree, cache = album_tree({"A": ALBUM, "B": OTHER}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[2]))

    scenario(tree, cache, body)
    assert sorted(cache.warms) == [(ALBUM[2].key, s, e) for s, e in tag_regions(ALBUM[2], direct=False)]


def test_second_open_in_a_folder_warms_every_siblings_tags() -> None:
    tree, cache = album_tree({"A": ALBUM, "B": OTHER}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))
        await settle()
        p.opened(node_of(tree, ALBUM[1]))

    scenario(tree, cache, body)
    for track in ALBUM + OTHER:
        assert set(tag_regions(track, direct=True)) <= set(cache.of(track)), track.source
    # the scan is on: the next folder in walk order (B) is warmed ahead too
    assert warmed_keys(cache) == {t.key for t in ALBUM + OTHER}


def test_a_scan_in_progress_warms_each_new_folder_on_its_first_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "SCAN_AHEAD_TRACKS", 6)  # three folders of two
    folders = {f"F{n}": [make_track(100 * n + i) for i in range(2)] for n in range(6)}
    tree, cache = album_tree(folders), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, folders["F0"][0]))
        p.opened(node_of(tree, folders["F0"][1]))  # a scan: F0, F1, F2 warmed
        await settle()
        assert warmed_keys(cache) == {t.key for n in range(3) for t in folders[f"F{n}"]}
        p.opened(node_of(tree, folders["F3"][0]))  # first open in F3, scan still on
        await settle()

    scenario(tree, cache, body)
    assert warmed_keys(cache) == {t.key for n in range(6) for t in folders[f"F{n}"]}


def test_a_scan_warms_small_folders_ahead_up_to_a_number_of_tracks() -> None:
    folders = {f"F{n:02d}": [make_track(1000 + n)] for n in range(prefetch.SCAN_AHEAD_TRACKS + 10)}
    folders["F00"].append(make_track(999))
    tree, cache = album_tree(folders), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, folders["F00"][0]))
        p.opened(node_of(tree, folders["F00"][1]))  # a scan of one-track folders

    scenario(tree, cache, body)
    # F00's two tracks and the next folders' single tracks, SCAN_AHEAD_TRACKS in all
    assert len(warmed_keys(cache)) == prefetch.SCAN_AHEAD_TRACKS


def test_one_open_per_folder_long_apart_is_no_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "SCAN_WINDOW_SECONDS", 0.2)
    folders = {f"F{n}": [make_track(100 * n + i) for i in range(2)] for n in range(3)}
    tree, cache = album_tree(folders), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, folders["F0"][0]))
        await trio.sleep(0.3)
        p.opened(node_of(tree, folders["F1"][0]))
        await settle()

    scenario(tree, cache, body)
    assert warmed_keys(cache) == {folders["F0"][0].key, folders["F1"][0].key}


def test_same_track_opened_twice_is_not_a_scan() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))
        p.opened(node_of(tree, ALBUM[0]))

    scenario(tree, cache, body)
    assert warmed_keys(cache) == {ALBUM[0].key}


def test_opens_in_two_folders_are_not_a_scan() -> None:
    tree, cache = album_tree({"A": ALBUM, "B": OTHER}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))
        p.opened(node_of(tree, OTHER[0]))

    scenario(tree, cache, body)
    assert warmed_keys(cache) == {ALBUM[0].key, OTHER[0].key}


def test_opens_further_apart_than_the_scan_window_are_not_a_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "SCAN_WINDOW_SECONDS", 0.05)
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))
        await trio.sleep(0.15)  # TTLCache runs on time.monotonic, as does trio's default clock
        p.opened(node_of(tree, ALBUM[1]))

    scenario(tree, cache, body)
    assert warmed_keys(cache) == {ALBUM[0].key, ALBUM[1].key}


def test_a_folder_is_warmed_once() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))
        p.opened(node_of(tree, ALBUM[1]))
        await settle()
        before = len(cache.warms)
        p.opened(node_of(tree, ALBUM[2]))
        p.opened(node_of(tree, ALBUM[3]))
        await settle()
        # only the two tracks' own tag regions again, not the whole album
        assert len(cache.warms) - before == 2 * len(tag_regions(ALBUM[2], direct=True))

    scenario(tree, cache, body)


def test_sibling_warming_is_capped() -> None:
    big = [sized(n, 1 * MiB) for n in range(100, 100 + SIBLINGS_MAX + 10)]
    tree, cache = album_tree({"A": big}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, big[0]))
        p.opened(node_of(tree, big[1]))

    scenario(tree, cache, body)
    assert len(warmed_keys(cache)) == SIBLINGS_MAX


def test_cached_regions_are_not_warmed_again() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()
    head, tail = tag_regions(ALBUM[0], direct=False)
    cache.present.append((ALBUM[0].key, *head))

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))

    scenario(tree, cache, body)
    assert cache.warms == [(ALBUM[0].key, *tail)]


def test_without_run_nothing_is_warmed_and_nothing_fails() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()
    prefetcher = Prefetcher(cache, lambda: tree)  # type: ignore[arg-type]
    state = prefetcher.opened(node_of(tree, ALBUM[0]))
    prefetcher.opened(node_of(tree, ALBUM[1]))
    for off in range(0, 5 * MiB, 128 * KiB):
        prefetcher.read(state, off, 128 * KiB)
    prefetcher.released(state)
    assert cache.warms == []


def test_opens_during_a_scan_are_marked_for_direct_io() -> None:
    tree, cache = album_tree({"A": ALBUM, "B": OTHER}), RecordingCache()
    states: list[ReadState] = []

    async def body(p: Prefetcher) -> None:
        states.append(p.opened(node_of(tree, ALBUM[0])))
        states.append(p.opened(node_of(tree, ALBUM[1])))  # the scan is detected here
        states.append(p.opened(node_of(tree, OTHER[0])))  # and goes on in the next folder

    scenario(tree, cache, body)
    assert [state.scanning for state in states] == [False, True, True]


def test_an_album_played_track_after_track_is_no_scan() -> None:
    tree, cache = album_tree({"A": ALBUM, "B": OTHER}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        first = p.opened(node_of(tree, ALBUM[0]))
        for off in range(0, 2 * MiB, 128 * KiB):  # played, not just tag-read
            p.read(first, off, 128 * KiB)
        second = p.opened(node_of(tree, ALBUM[1]))
        assert not second.scanning
        assert not p.opened(node_of(tree, ALBUM[2])).scanning

    scenario(tree, cache, body)
    assert not warmed_keys(cache) & {t.key for t in ALBUM[3:] + OTHER}


# --- reads: read-ahead ------------------------------------------------------------------

LONG = sized(50, 64 * MiB)
READ = 128 * KiB


def test_a_single_read_or_tag_hops_warm_nothing_ahead() -> None:
    tree, cache = album_tree({"A": [LONG, ALBUM[0]]}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, LONG))
        await settle()
        cache.warms.clear()
        p.read(state, 0, 4096)  # a tag reader: head, then the tail, then the head again
        p.read(state, LONG.size - 128, 128)
        p.read(state, 4096, 4096)

    scenario(tree, cache, body)
    assert cache.warms == []  # neither read-ahead nor the next track


def test_a_tag_reader_reading_its_head_in_order_warms_nothing_ahead() -> None:
    cover = sized(51, 64 * MiB, head=300_000)
    tree, cache = album_tree({"A": [cover, ALBUM[0]]}), RecordingCache()
    buffer = 16 * KiB

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, cover))
        await settle()
        cache.warms.clear()
        for off in range(0, head_end(cover), buffer):  # the last read runs into HEAD_SLACK
            p.read(state, off, buffer)
        await settle()
        assert cache.warms == []
        p.read(state, off + buffer, buffer)  # reading on past the tags: playback
        p.read(state, off + 2 * buffer, buffer)
        await settle()
        assert {key for key, _, _ in cache.warms} == {cover.key}

    scenario(tree, cache, body)


def test_sequential_reads_double_the_window_up_to_the_max() -> None:
    tree, cache = album_tree({"A": [LONG]}), RecordingCache()
    frontiers: list[int] = []

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, LONG))
        await settle()
        cache.warms.clear()
        for i in range(10):
            p.read(state, i * READ, READ)
            frontiers.append(state.warmed_until)
            await settle()

    scenario(tree, cache, body)
    windows = [READAHEAD_START * 2 ** k for k in range(6)] + [READAHEAD_MAX] * 3
    assert windows[5] == READAHEAD_MAX  # 512 KiB doubles to 16 MiB in five steps
    # While the window grows, every read refills it; once it is full, a refill
    # waits until less than half of it is left (big requests, not one per read).
    assert frontiers[1:7] == [(i + 2) * READ + w for i, w in enumerate(windows[:6])]
    assert frontiers[7:] == [frontiers[6]] * 3
    # the warmed ranges are contiguous from the end of the second read, in pieces
    ranges = sorted((s, e) for _, s, e in cache.warms)
    assert ranges[0][0] == 2 * READ
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert ranges[-1][1] == frontiers[-1]
    assert all(0 < e - s <= READAHEAD_PIECE for s, e in ranges)


def test_a_seek_cancels_read_ahead_and_restarts_small() -> None:
    tree, cache = album_tree({"A": [LONG]}), RecordingCache()
    seek = 40 * MiB

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, LONG))
        await settle()
        cache.warms.clear()
        cache.hold = True
        for i in range(4):
            p.read(state, i * READ, READ)
        await settle()
        outstanding = list(cache.warms)
        assert outstanding and state.readahead
        p.read(state, seek, READ)  # the seek
        await settle()
        assert sorted(cache.cancelled) == sorted(outstanding)
        assert not state.readahead
        assert state.window == READAHEAD_START
        assert cache.warms == outstanding  # the seek itself warms nothing
        p.read(state, seek + READ, READ)
        await settle()
        assert cache.warms[len(outstanding):] == [(LONG.key, seek + 2 * READ, seek + 2 * READ + READAHEAD_START)]

    scenario(tree, cache, body)


def test_release_cancels_read_ahead() -> None:
    tree, cache = album_tree({"A": [LONG]}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, LONG))
        cache.hold = True
        p.read(state, 0, READ)
        p.read(state, READ, READ)
        await settle()
        held = [w for w in cache.warms if w[1] == 2 * READ]  # the read-ahead, not the tag warms
        assert held
        p.released(state)
        await settle()
        assert set(held) <= set(cache.cancelled)
        assert not state.readahead

    scenario(tree, cache, body)


# --- reads: the next track, and the end of the file ----------------------------------------

TRACK_SIZE = 4 * MiB
SET = [sized(n, TRACK_SIZE, tail=4096) for n in range(60, 63)]


def read_sequentially(p: Prefetcher, state: ReadState, until: int, start: int = 0) -> None:
    for off in range(start, until, READ):
        p.read(state, off, READ)


def test_the_next_track_is_warmed_once_this_one_has_played_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "NEXT_TRACK_AFTER_SECONDS", 0.1)
    tree, cache = album_tree({"A": SET}), RecordingCache()
    following = SET[1]

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, SET[0]))
        read_sequentially(p, state, 1 * MiB)  # playing, but only just
        await settle()
        assert cache.of(following) == []
        await trio.sleep(0.15)
        read_sequentially(p, state, 1 * MiB + READ, start=1 * MiB)
        await settle()

    scenario(tree, cache, body)
    tail = tag_regions(following, direct=False)[-1]
    assert sorted(cache.of(following)) == [(0, NEXT_TRACK_BYTES), tail]
    assert cache.of(SET[2]) == []


def test_a_fast_reader_warms_the_next_track_once_its_own_rest_is_cached() -> None:
    tree, cache = album_tree({"A": SET}), RecordingCache()
    following = SET[1]

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, SET[0]))
        read_sequentially(p, state, 1 * MiB)  # read-ahead has asked for the rest, not got it
        await settle()
        assert cache.of(following) == []
        cache.present.append((SET[0].key, 0, TRACK_SIZE))  # now it has
        read_sequentially(p, state, 1 * MiB + READ, start=1 * MiB)
        await settle()

    scenario(tree, cache, body)
    assert cache.of(following)


def test_a_short_track_read_whole_at_once_warms_the_next_one() -> None:
    short = [sized(n, 100 * KiB) for n in (64, 65)]
    tree, cache = album_tree({"A": short}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, short[0]))
        p.read(state, 0, KERNEL_READ)  # the kernel's first read takes it all

    scenario(tree, cache, body)
    assert cache.of(short[1])


def test_a_scan_reading_whole_tracks_warms_no_next_track() -> None:
    short = [sized(n, 100 * KiB) for n in (66, 67, 68)]
    tree, cache = album_tree({"A": short, "B": OTHER}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, short[0]))
        state = p.opened(node_of(tree, short[1]))  # a scan
        await settle()
        cache.warms.clear()
        p.read(state, 0, 64 * KiB)
        p.read(state, 64 * KiB, 64 * KiB)

    scenario(tree, cache, body)
    assert cache.warms == []  # the scan warmed the folder already; nothing more


def test_the_last_track_warms_no_next_track() -> None:
    tree, cache = album_tree({"A": SET}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, SET[-1]))
        read_sequentially(p, state, TRACK_SIZE)

    scenario(tree, cache, body)
    assert warmed_keys(cache) == {SET[-1].key}


def test_nothing_is_warmed_beyond_the_file() -> None:
    short_next = sized(70, 300_000, head=4096, tail=128)  # smaller than NEXT_TRACK_BYTES
    tracks = [sized(69, 3 * MiB + 12_345), short_next]
    tree, cache = album_tree({"A": tracks}), RecordingCache()
    sizes = {t.key: t.size for t in tracks}

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, tracks[0]))
        read_sequentially(p, state, tracks[0].size + 2 * READ)  # a player reading past the end

    scenario(tree, cache, body)
    assert cache.warms
    assert all(0 <= s < e <= sizes[key] for key, s, e in cache.warms)
    assert max(e for _, e in cache.of(tracks[0])) == tracks[0].size
    assert cache.of(short_next) == [(0, 300_000)]


# --- over a real BlockCache ---------------------------------------------------------------

def real_cache(tracks: list[Track]) -> tuple[GatedStore, BlockCache]:
    store = GatedStore()
    for track in tracks:
        store.put_bytes(track.key, content(track))
    return store, BlockCache(store, None, disk_limit=0, block_size=4 * KiB, max_request=256 * KiB)


async def until_cached(cache: BlockCache, track: Track, direct: bool) -> None:
    obj = object_of(track)
    while not all(cache.cached(obj, s, e) for s, e in tag_regions(track, direct=direct)):
        await trio.sleep(0.002)


def test_open_fetches_head_and_tail_not_the_middle() -> None:
    track = sized(80, 2 * MiB)
    tree = album_tree({"A": [track]})
    store, cache = real_cache([track])

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, track))
        await until_cached(cache, track, direct=False)

    scenario(tree, cache, body)
    (head, tail) = tag_regions(track, direct=False)
    assert not cache.cached(object_of(track), head[1] + 4 * KiB, tail[0] - 4 * KiB)
    assert sorted((s, e) for _, s, e in store.ranges) == [(0, head[1]), (tail[0] // 4096 * 4096, track.size)]


def test_a_scan_fetches_the_tags_of_the_whole_album() -> None:
    tracks = [sized(n, 1 * MiB) for n in range(90, 96)]
    tree = album_tree({"A": tracks})
    store, cache = real_cache(tracks)

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, tracks[0]))
        p.opened(node_of(tree, tracks[1]))
        for track in tracks:
            await until_cached(cache, track, direct=True)

    scenario(tree, cache, body)
    for track in tracks:
        assert not cache.cached(object_of(track), 256 * KiB, 512 * KiB)
    assert {key for key, _, _ in store.ranges} == {t.key for t in tracks}
