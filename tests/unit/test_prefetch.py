"""Prefetcher policy: zones, scans, learned probe extents, pulls, the next track.

Most tests use RecordingCache, which records warm() calls (and can hold them
open, to see them cancelled), so the policy is checked exactly and without
threads; the last ones run it over a real BlockCache and MemoryStore.
tests/unit/test_traces.py replays what real readers did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from lockerfs import prefetch
from lockerfs.cache import BlockCache, ObjectRef
from lockerfs.prefetch import (HEAD_SLACK, NEXT_TRACK_BYTES, PROBE_MAX, PULL_WHOLE, TAIL_SLACK, WIDEN_SLACK,
                               Prefetcher, ReadState, Zones, head_end, object_of, tail_start)
from lockerfs.track import Track
from lockerfs.tree import FileNode, Tree
from tests.unit.test_catalog import make_track
from tests.unit.test_fs import GatedStore, content

KiB, MiB = 1024, 1024 * 1024
Warm = tuple[str, int, int]  # (key, start, end)


def sized(n: int, size: int, head: int = 8192, tail: int = 128) -> Track:
    return dataclasses.replace(make_track(n, head_size=head, tail_size=tail), size=size)


class RecordingCache:
    """What Prefetcher uses of a BlockCache, recorded."""

    memory_limit = 128 * MiB
    block_size = 64 * KiB

    def __init__(self) -> None:
        self.warms: list[Warm] = []
        self.whole: list[Warm] = []  # warms asked to stream in one GET
        self.cancelled: list[Warm] = []
        self.present: list[Warm] = []  # ranges cached() reports as cached
        self.hold = False  # warm() waits until cancelled

    def cached(self, obj: ObjectRef, start: int, end: int, *, in_memory: bool = False) -> bool:
        return any(key == obj.key and s <= start and end <= e for key, s, e in self.present)

    async def warm(self, obj: ObjectRef, start: int, end: int, *, into_memory: bool = False,
                   max_request: int | None = None, exact: bool = False) -> None:
        self.warms.append((obj.key, start, end))
        if max_request is not None and max_request >= end - start:
            self.whole.append((obj.key, start, end))
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
    """An opened track's warming waits for its first read; most tests make none."""
    monkeypatch.setattr(prefetch, "OPEN_WARM_WAIT", 0.0)


READ = 16 * KiB


def read_in_order(p: Prefetcher, state: ReadState, start: int, end: int, size: int = READ) -> None:
    """Reads of `size` from start up to end (the last one cut at end)."""
    for offset in range(start, end, size):
        p.read(state, offset, min(size, end - offset))
        p.served(state)


def probe(p: Prefetcher, tree: Tree, track: Track, past_head: int = 0, tail: int = 0) -> None:
    """A scanner's handle: reads its head zone and `past_head` more in order, `tail` bytes at
    the end, then goes away."""
    state = p.opened(node_of(tree, track))
    read_in_order(p, state, 0, head_end(track) + past_head)
    if tail:
        p.read(state, track.size - tail, tail)
    p.released(state)


# --- zones ------------------------------------------------------------------------------

def test_zones_are_the_tags_one_buffer_and_the_tail() -> None:
    track = sized(1, 10 * MiB, head=8192, tail=200)
    assert head_end(track) == 8192 + HEAD_SLACK
    assert tail_start(track) == 10 * MiB - 200 - TAIL_SLACK
    assert Zones(head_end(track), tail_start(track)).ranges(track.size) == [
        (0, 8192 + HEAD_SLACK), (10 * MiB - 200 - TAIL_SLACK, 10 * MiB)]


@pytest.mark.parametrize("head, tail, expected", [
    (100, 101, [(0, 100), (101, 200)]),
    (100, 100, [(0, 200)]),  # they meet: one range, one GET
    (150, 100, [(0, 200)]),  # overlap: one
    (0, 0, [(0, 200)]),
])
def test_zones_merge_when_they_overlap(head: int, tail: int, expected: list[tuple[int, int]]) -> None:
    assert Zones(head, tail).ranges(200) == expected


def test_zones_never_pass_the_file() -> None:
    track = sized(1, 50_000, head=10**9, tail=10**9)
    assert head_end(track) == 50_000 and tail_start(track) == 0


# --- open and scans -------------------------------------------------------------------------

ALBUM = [sized(n, 5 * MiB) for n in range(1, 6)]
OTHER = [sized(n, 5 * MiB) for n in range(11, 14)]


def warmed_keys(cache: RecordingCache) -> set[str]:
    return {key for key, _, _ in cache.warms}


def zone_ranges(track: Track) -> list[tuple[int, int]]:
    return Zones(head_end(track), tail_start(track)).ranges(track.size)


def test_one_open_warms_its_head_and_tail_only() -> None:
    tree, cache = album_tree({"A": ALBUM, "B": OTHER}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[2]))

    scenario(tree, cache, body)
    assert sorted(cache.warms) == [(ALBUM[2].key, s, e) for s, e in zone_ranges(ALBUM[2])]


def test_an_opened_tracks_zones_wait_for_its_first_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "OPEN_WARM_WAIT", 5.0)
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, ALBUM[0]))
        await settle()
        assert cache.warms == []  # the first read has the link to itself
        p.served(state)
        await settle()
        assert sorted(cache.warms) == [(ALBUM[0].key, s, e) for s, e in zone_ranges(ALBUM[0])]

    scenario(tree, cache, body)


def test_a_second_open_starts_a_scan_that_warms_the_folder_and_ahead() -> None:
    tree, cache = album_tree({"A": ALBUM, "B": OTHER}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))
        await settle()
        p.opened(node_of(tree, ALBUM[1]))

    scenario(tree, cache, body)
    for track in ALBUM + OTHER:
        assert set(zone_ranges(track)) <= set(cache.of(track)), track.source


def test_two_opens_in_different_folders_start_a_scan_too() -> None:
    """A scanner with several threads, or in an order of its own, opens across folders."""
    tree, cache = album_tree({"A": ALBUM, "B": OTHER}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, OTHER[0]))
        p.opened(node_of(tree, ALBUM[3]))
        assert p.scanning

    scenario(tree, cache, body)
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
    assert len(warmed_keys(cache)) == prefetch.SCAN_AHEAD_TRACKS


def test_opens_further_apart_than_the_scan_window_are_not_a_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "SCAN_WINDOW_SECONDS", 0.05)
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))
        await trio.sleep(0.1)
        p.opened(node_of(tree, ALBUM[1]))
        assert not p.scanning

    scenario(tree, cache, body)
    assert warmed_keys(cache) == {ALBUM[0].key, ALBUM[1].key}


def test_the_same_track_opened_twice_is_not_a_scan() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))
        p.opened(node_of(tree, ALBUM[0]))
        assert not p.scanning

    scenario(tree, cache, body)
    assert warmed_keys(cache) == {ALBUM[0].key}


def test_an_album_played_track_after_track_is_no_scan() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        first = p.opened(node_of(tree, ALBUM[0]))
        read_in_order(p, first, 0, 2 * MiB, size=128 * KiB)  # played on, far past its head
        p.released(first)
        p.opened(node_of(tree, ALBUM[1]))  # the next track, a moment later
        assert not p.scanning

    scenario(tree, cache, body)
    assert {ALBUM[2].key, ALBUM[3].key, ALBUM[4].key}.isdisjoint(warmed_keys(cache))


def test_a_copy_of_an_album_is_no_scan() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        for track in ALBUM[:3]:
            state = p.opened(node_of(tree, track))
            read_in_order(p, state, 0, track.size, size=128 * KiB)
            p.released(state)
        assert not p.scanning

    scenario(tree, cache, body)
    assert {ALBUM[3].key, ALBUM[4].key}.isdisjoint(warmed_keys(cache) - {ALBUM[3].key})


def test_short_tracks_decoded_whole_one_after_another_are_no_scan() -> None:
    """ffmpeg decoding small tracks from several albums reads each to its end: no scan."""
    short = [sized(n, 300 * KiB) for n in (31, 32, 33)]
    tree, cache = album_tree({"A": short[:1], "B": short[1:2], "C": short[2:], "D": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        for track in short:
            state = p.opened(node_of(tree, track))
            read_in_order(p, state, 0, track.size, size=32 * KiB)
            p.released(state)
        assert not p.scanning

    scenario(tree, cache, body)
    assert {t.key for t in ALBUM}.isdisjoint(warmed_keys(cache))


def test_a_first_read_in_the_middle_pulls_nothing() -> None:
    """A seek straight after opening (a player resuming, a random read) is no playback yet."""
    track = sized(34, 20 * MiB)
    tree, cache = album_tree({"A": [track]}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, track))
        p.read(state, 10 * MiB, 64 * KiB)
        await settle()
        assert cache.whole == []
        p.read(state, 10 * MiB + 64 * KiB, 64 * KiB)  # reading on from there is

    scenario(tree, cache, body)
    assert cache.whole == [(track.key, 10 * MiB + 128 * KiB, track.size)]


def test_a_folder_is_warmed_once() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        for track in ALBUM:
            p.opened(node_of(tree, track))
            await settle()

    scenario(tree, cache, body)
    for track in ALBUM:  # its own open and, at most, the one folder warm
        assert len(cache.of(track)) <= 2 * len(zone_ranges(track)), track.source


def test_zones_are_warmed_again_only_for_what_a_wider_scan_adds() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()
    track = ALBUM[4]

    async def body(p: Prefetcher) -> None:
        node = node_of(tree, track)
        p._warm_zones(node)
        p._scan_until = float("inf")
        probe(p, tree, track, past_head=2 * KiB)  # read by a scanner a little past its head
        p.probes.learn("flac", 4 * KiB, 0)  # the next reads a little more: not worth a request
        p._warm_zones(node)
        p.probes.learn("flac", 300 * KiB, 0)  # one that reads 300 KiB more: just that is warmed
        p._warm_zones(node)

    scenario(tree, cache, body)
    head = head_end(track)
    zone_warms = sorted(set(cache.of(track)) - {(s, e) for key, s, e in cache.whole if key == track.key})
    assert zone_warms == [(0, head), (head + 2 * KiB, head + 300 * KiB + WIDEN_SLACK), (tail_start(track), track.size)]


def test_sibling_warming_is_capped() -> None:
    big = [make_track(200 + n) for n in range(prefetch.SIBLINGS_MAX + 20)]
    tree, cache = album_tree({"A": big}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, big[0]))
        p.opened(node_of(tree, big[1]))

    scenario(tree, cache, body)
    assert len(warmed_keys(cache)) <= prefetch.SIBLINGS_MAX + 1


def test_cached_zones_are_not_warmed_again() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()
    cache.present = [(t.key, 0, t.size) for t in ALBUM]

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, ALBUM[0]))
        p.opened(node_of(tree, ALBUM[1]))

    scenario(tree, cache, body)
    assert cache.warms == []


def test_without_run_nothing_is_warmed_and_nothing_fails() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()
    p = Prefetcher(cache, lambda: tree)  # type: ignore[arg-type]
    state = p.opened(node_of(tree, ALBUM[0]))
    p.read(state, 0, 1 * MiB)
    p.released(state)
    assert cache.warms == []


# --- what scanners read: learned probe extents -------------------------------------------------

def test_a_scanner_reading_past_the_tags_widens_the_zones_of_the_next_tracks() -> None:
    tree, cache = album_tree({"A": ALBUM, "B": OTHER}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        probe(p, tree, ALBUM[0], past_head=200 * KiB, tail=256 * KiB)
        probe(p, tree, ALBUM[1], past_head=200 * KiB, tail=256 * KiB)
        assert p.scanning
        zones = p.zones(OTHER[0])
        assert zones.head == head_end(OTHER[0]) + 200 * KiB + WIDEN_SLACK
        assert zones.tail == OTHER[0].size - 256 * KiB - WIDEN_SLACK
        p.opened(node_of(tree, OTHER[0]))  # a new folder: warmed with the widened zones

    scenario(tree, cache, body)
    assert (OTHER[1].key, 0, head_end(OTHER[1]) + 200 * KiB + WIDEN_SLACK) in cache.warms
    assert (OTHER[1].key, OTHER[1].size - 256 * KiB - WIDEN_SLACK, OTHER[1].size) in cache.warms


def test_zones_widen_only_while_a_scan_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "SCAN_WINDOW_SECONDS", 0.05)
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        probe(p, tree, ALBUM[0], past_head=300 * KiB)
        probe(p, tree, ALBUM[1], past_head=300 * KiB)
        assert p.zones(ALBUM[2]).head == head_end(ALBUM[2]) + 300 * KiB + WIDEN_SLACK
        await trio.sleep(0.1)
        assert not p.scanning and p.zones(ALBUM[2]).head == head_end(ALBUM[2])

    scenario(tree, cache, body)


def test_widening_is_bounded() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        probe(p, tree, ALBUM[0], past_head=PROBE_MAX - 64 * KiB)
        p.probes.learn("flac", 10 * PROBE_MAX, 10 * PROBE_MAX)
        probe(p, tree, ALBUM[1])
        assert p.zones(ALBUM[2]).head == head_end(ALBUM[2]) + PROBE_MAX + WIDEN_SLACK

    scenario(tree, cache, body)


def test_a_played_track_teaches_nothing() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, ALBUM[0]))
        read_in_order(p, state, 0, 3 * MiB, size=128 * KiB)
        p.released(state)
        assert p.probes.widening("flac") == (0, 0)

    scenario(tree, cache, body)


def test_the_widening_is_forgotten_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "PROBE_MEMORY_SECONDS", 0.05)
    extents = prefetch.ProbeExtents()
    extents.learn("mp3", 100 * KiB, 0)
    assert extents.widening("mp3") == (100 * KiB + WIDEN_SLACK, 0)

    async def later() -> None:
        await trio.sleep(0.1)
    trio.run(later)
    assert extents.widening("mp3") == (0, 0)


def test_widening_is_learned_per_container() -> None:
    """MPD reads half a MiB of an MP3's audio and none of a FLAC's."""
    extents = prefetch.ProbeExtents()
    extents.learn("mp3", 512 * KiB, 32)
    extents.learn("flac", 0, 0)
    assert extents.widening("mp3") == (512 * KiB + WIDEN_SLACK, 32 + WIDEN_SLACK)
    assert extents.widening("flac") == (0, 0) and extents.widening("ogg") == (0, 0)


# --- playback: pulls ---------------------------------------------------------------------------

def test_a_tag_reader_reading_its_head_in_order_pulls_nothing() -> None:
    track = sized(60, 8 * MiB, head=100 * KiB)
    tree, cache = album_tree({"A": [track]}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, track))
        read_in_order(p, state, 0, head_end(track))
        p.read(state, track.size - 128, 128)
        p.released(state)

    scenario(tree, cache, body)
    assert cache.whole == []


def test_reading_on_past_the_head_pulls_the_rest_in_one_request() -> None:
    track = sized(61, 8 * MiB, head=40 * KiB)
    tree, cache = album_tree({"A": [track]}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, track))
        read_in_order(p, state, 0, 128 * KiB, size=32 * KiB)

    scenario(tree, cache, body)
    (pull,) = cache.whole
    assert pull[1] <= head_end(track) + 32 * KiB and pull[2] == track.size


def test_a_first_read_past_the_head_pulls_at_once() -> None:
    """A copy's first read (128 KiB) already runs past small tags."""
    track = sized(62, 8 * MiB, head=8 * KiB)
    tree, cache = album_tree({"A": [track]}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, track))
        p.read(state, 0, 128 * KiB)

    scenario(tree, cache, body)
    assert cache.whole == [(track.key, 128 * KiB, track.size)]


def test_during_a_scan_reads_within_the_widened_zone_pull_nothing() -> None:
    tree, cache = album_tree({"A": ALBUM}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        probe(p, tree, ALBUM[0], past_head=256 * KiB)
        probe(p, tree, ALBUM[1], past_head=256 * KiB)
        await settle()
        cache.whole.clear()
        for track in ALBUM[2:]:
            probe(p, tree, track, past_head=200 * KiB, tail=256 * KiB)

    scenario(tree, cache, body)
    assert cache.whole == []


def test_a_long_track_is_pulled_in_a_window_ahead_of_the_reader() -> None:
    track = sized(63, PULL_WHOLE + 100 * MiB)
    tree, cache = album_tree({"A": [track]}), RecordingCache()
    window = prefetch.PULL_WINDOW

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, track))
        read_in_order(p, state, 0, 2 * MiB, size=128 * KiB)
        await settle()
        assert max(e for _, _, e in cache.whole) <= 2 * MiB + window
        read_in_order(p, state, 2 * MiB, 40 * MiB, size=128 * KiB)

    scenario(tree, cache, body)
    pulled = sorted((s, e) for _, s, e in cache.whole)
    assert all(a[1] == b[0] for a, b in zip(pulled, pulled[1:]))  # contiguous, never twice
    assert 40 * MiB + window // 2 <= pulled[-1][1] <= 40 * MiB + window


def test_a_seek_stops_the_pull_and_reading_on_from_there_pulls_again() -> None:
    track = sized(64, 20 * MiB)
    tree, cache = album_tree({"A": [track]}), RecordingCache()
    cache.hold = True

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, track))
        read_in_order(p, state, 0, 256 * KiB, size=128 * KiB)
        await settle()
        assert [(s, e) for _, s, e in cache.whole] == [(128 * KiB, track.size)]
        p.read(state, 10 * MiB, 128 * KiB)  # a seek
        await settle()
        assert (track.key, 128 * KiB, track.size) in cache.cancelled
        p.read(state, 10 * MiB + 128 * KiB, 128 * KiB)  # playing on from there
        await settle()

    scenario(tree, cache, body)
    assert cache.whole[-1] == (track.key, 10 * MiB + 256 * KiB, track.size)


def test_closing_the_file_stops_its_pull() -> None:
    track = sized(65, 20 * MiB)
    tree, cache = album_tree({"A": [track]}), RecordingCache()
    cache.hold = True

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, track))
        read_in_order(p, state, 0, 256 * KiB, size=128 * KiB)
        await settle()
        p.released(state)
        await settle()

    scenario(tree, cache, body)
    assert (track.key, 128 * KiB, track.size) in cache.cancelled


def test_a_reader_at_a_players_pace_gets_the_whole_track_though_still_in_its_head(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A player reading a large tag (embedded art) at the pace of its audio is a player: the
    rest of the track comes, and the next one is warmed, long before it leaves the head."""
    clock = [0.0]
    monkeypatch.setattr(prefetch.time, "monotonic", lambda: clock[0])
    tracks = [sized(71, 4 * MiB, head=1400 * KiB), sized(72, 4 * MiB)]
    tree, cache = album_tree({"A": tracks}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, tracks[0]))
        for offset in range(0, 4 * 64 * KiB, 64 * KiB):
            p.read(state, offset, 64 * KiB)
            p.served(state)
            clock[0] += 1.0  # a read a second: a player's pace
        await settle()
        assert cache.whole == [(tracks[0].key, 2 * 64 * KiB, tracks[0].size)]  # at the second read
        cache.present.append((tracks[0].key, 0, tracks[0].size))
        p.read(state, 4 * 64 * KiB, 64 * KiB)

    scenario(tree, cache, body)
    assert cache.of(tracks[1])  # the next track is warmed


# --- the next track ------------------------------------------------------------------------------

def test_the_next_track_is_warmed_once_the_rest_of_this_one_has_arrived() -> None:
    tracks = [sized(66, 4 * MiB), sized(67, 4 * MiB)]
    tree, cache = album_tree({"A": tracks}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, tracks[0]))
        read_in_order(p, state, 0, 512 * KiB, size=128 * KiB)
        await settle()
        assert cache.of(tracks[1]) == []  # the pull is still coming: the link is this track's
        cache.present.append((tracks[0].key, 0, tracks[0].size))
        p.read(state, 512 * KiB, 128 * KiB)

    scenario(tree, cache, body)
    zones = Zones(head_end(tracks[1]), tail_start(tracks[1]))
    assert sorted(cache.of(tracks[1])) == [(0, zones.head + NEXT_TRACK_BYTES), (zones.tail, tracks[1].size)]


def test_the_last_track_warms_no_next_track() -> None:
    tracks = [sized(68, 4 * MiB)]
    tree, cache = album_tree({"A": tracks}), RecordingCache()

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, tracks[0]))
        cache.present.append((tracks[0].key, 0, tracks[0].size))
        read_in_order(p, state, 0, 512 * KiB, size=128 * KiB)

    scenario(tree, cache, body)
    assert warmed_keys(cache) <= {tracks[0].key}


def test_nothing_is_warmed_beyond_the_file() -> None:
    short_next = sized(70, 300_000, head=4096, tail=128)  # smaller than NEXT_TRACK_BYTES
    tracks = [sized(69, 3 * MiB + 12_345), short_next]
    tree, cache = album_tree({"A": tracks}), RecordingCache()
    sizes = {t.key: t.size for t in tracks}

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, tracks[0]))
        read_in_order(p, state, 0, tracks[0].size // 2, size=128 * KiB)
        cache.present.append((tracks[0].key, 0, tracks[0].size))
        read_in_order(p, state, tracks[0].size // 2 // (128 * KiB) * 128 * KiB, tracks[0].size + 256 * KiB,
                      size=128 * KiB)

    scenario(tree, cache, body)
    assert all(0 <= s < e <= sizes[key] for key, s, e in cache.warms)
    assert cache.of(short_next) == [(0, 300_000)]


# --- over a real BlockCache ---------------------------------------------------------------

def real_cache(tracks: list[Track]) -> tuple[GatedStore, BlockCache]:
    store = GatedStore()
    for track in tracks:
        store.put_bytes(track.key, content(track))
    return store, BlockCache(store, None, disk_limit=0, block_size=4 * KiB, max_request=256 * KiB)


async def until_cached(cache: BlockCache, track: Track) -> None:
    obj = object_of(track)
    while not all(cache.cached(obj, s, e) for s, e in zone_ranges(track)):
        await trio.sleep(0.002)


def test_open_fetches_head_and_tail_not_the_middle() -> None:
    track = sized(80, 2 * MiB)
    tree = album_tree({"A": [track]})
    store, cache = real_cache([track])

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, track))
        await until_cached(cache, track)

    scenario(tree, cache, body)
    head, tail = zone_ranges(track)
    assert not cache.cached(object_of(track), head[1] + 4 * KiB, tail[0] - 4 * KiB)
    assert sorted((s, e) for _, s, e in store.ranges) == [(0, head[1]), (tail[0], track.size)]  # exactly


def test_a_scan_fetches_the_zones_of_the_whole_album() -> None:
    tracks = [sized(n, 1 * MiB) for n in range(90, 96)]
    tree = album_tree({"A": tracks})
    store, cache = real_cache(tracks)

    async def body(p: Prefetcher) -> None:
        p.opened(node_of(tree, tracks[0]))
        p.opened(node_of(tree, tracks[1]))
        for track in tracks:
            await until_cached(cache, track)

    scenario(tree, cache, body)
    for track in tracks:
        assert not cache.cached(object_of(track), 256 * KiB, 512 * KiB)
    assert {key for key, _, _ in store.ranges} == {t.key for t in tracks}


def test_a_pull_streams_the_rest_of_a_track_in_one_get() -> None:
    track = sized(97, 3 * MiB)
    tree = album_tree({"A": [track]})
    store, cache = real_cache([track])
    data = content(track)

    async def body(p: Prefetcher) -> None:
        state = p.opened(node_of(tree, track))
        for offset in range(0, track.size, 128 * KiB):
            p.read(state, offset, 128 * KiB)
            assert await cache.read(object_of(track), offset, 128 * KiB) == data[offset:offset + 128 * KiB]
            p.served(state)

    scenario(tree, cache, body)
    pulls = [(s, e) for _, s, e in store.ranges if e == track.size and e - s > 256 * KiB]
    assert pulls == [(128 * KiB, track.size)]
