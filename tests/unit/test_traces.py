"""The scan/play rule replayed against what real readers did (tests/data/traces, recorded by
scripts/record_traces.py from mutagen, ffprobe, MPD, TagLib, ffmpeg, cp and a paced player
reading the "purchased" library through a direct_io passthrough).

Each trace is replayed through a real Prefetcher on its own clock, over LinkCache: a block
cache on an emulated link (RTT, bandwidth) that counts the bytes and requests that would
cross it. A warm arrives one RTT plus its bytes after it was asked for; a pull streams; a
read of bytes not there yet is a miss (the reader waits). From that, per reader:

- scanners (mutagen, ffprobe, MPD, TagLib): the bytes fetched stay within 1.5x of what the
  reader read (each byte counted once), and few reads wait on the network: a scan costs
  about a round trip per folder, not one per read;
- players and copies (ffmpeg, cp, the player): every track is pulled in one stream once
  it is read past its head, nothing is fetched twice, and reads after the first few never
  wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pytest
import trio
import trio.testing

from lockerfs import prefetch
from lockerfs.cache import ObjectRef
from lockerfs.prefetch import Prefetcher, ReadState
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo
from lockerfs.tree import FileNode, Tree
from tests.support import traces
from tests.support.traces import Trace

KiB, MiB = 1024, 1024 * 1024
RTT_MS = 30.0
BYTES_PER_MS = 200e6 / 8 / 1000  # 200 Mbit/s
BLOCK = 64 * KiB
IN_FLIGHT = 512 * KiB  # what a stopped stream has sent but not yet delivered, charged whole


class Clock:
    def __init__(self) -> None:
        self.ms = 0.0

    def monotonic(self) -> float:
        return self.ms / 1000


@dataclass
class Stream:
    """One GET: bytes [start, end) of an object, asked for at `asked` (ms)."""

    sha: str
    start: int
    end: int
    asked: float
    stopped_at: float | None = None

    def arrived(self, now: float) -> int:
        """How far its bytes have arrived by `now`: one RTT, then the link's rate."""
        now = now if self.stopped_at is None else min(now, self.stopped_at)
        return min(self.end, self.start + max(0, int((now - self.asked - RTT_MS) * BYTES_PER_MS)))

    def charged(self, now: float) -> int:
        if self.stopped_at is None:
            return self.end - self.start
        return min(self.end, self.arrived(now) + IN_FLIGHT) - self.start


@dataclass
class LinkCache:
    """What Prefetcher uses of a BlockCache, on an emulated link; counts what crosses it."""

    clock: Clock
    memory_limit: int = 128 * MiB
    block_size: int = BLOCK
    streams: list[Stream] = field(default_factory=list)
    misses: int = 0  # reads that waited on the network

    def _covered(self, sha: str, start: int, end: int, now: float) -> bool:
        """Whether [start, end) has arrived by `now` (from one stream or several)."""
        spans = sorted((s.start, s.arrived(now)) for s in self.streams if s.sha == sha and s.asked <= now)
        reach = start
        for a, b in spans:
            if a <= reach < b:
                reach = b
            if reach >= end:
                return True
        return reach >= end

    def _asked(self, sha: str, start: int, end: int) -> bool:
        spans = sorted((s.start, s.end) for s in self.streams if s.sha == sha and s.stopped_at is None)
        reach = start
        for a, b in spans:
            if a <= reach < b:
                reach = b
        return reach >= end

    def cached(self, obj: ObjectRef, start: int, end: int, *, in_memory: bool = False) -> bool:
        return self._asked(obj.sha256, start, min(end, obj.size))

    async def warm(self, obj: ObjectRef, start: int, end: int, *, into_memory: bool = False,
                   max_request: int | None = None, exact: bool = False) -> None:
        if not exact:
            start, end = start // BLOCK * BLOCK, min(obj.size, -(-end // BLOCK) * BLOCK)
        streams = [Stream(obj.sha256, a, b, self.clock.ms) for a, b in self._gaps(obj.sha256, start, end)]
        self.streams.extend(streams)
        try:
            await trio.sleep_forever()  # until cancelled: a pull stopped, or the replay's end
        finally:
            for stream in streams:
                if stream.arrived(self.clock.ms) < stream.end:
                    stream.stopped_at = self.clock.ms

    def _gaps(self, sha: str, start: int, end: int) -> Iterator[tuple[int, int]]:
        spans = sorted((s.start, s.end) for s in self.streams if s.sha == sha and s.stopped_at is None)
        position = start
        for a, b in spans:
            if b <= position or a >= end:
                continue
            if a > position:
                yield position, a
            position = max(position, b)
        if position < end:
            yield position, end

    def read(self, sha: str, size: int, offset: int, length: int) -> float:
        """A reader's read: how long it waits (ms). Bytes neither there nor coming are asked for
        (whole blocks, one request), and the reader waits until they have arrived."""
        end = min(offset + length, size)
        now = self.clock.ms
        if end <= offset or self._covered(sha, offset, end, now):
            return 0.0
        if not self._asked(sha, offset, end):
            for a, b in self._gaps(sha, offset // BLOCK * BLOCK, min(size, -(-end // BLOCK) * BLOCK)):
                self.streams.append(Stream(sha, a, b, now))
        self.misses += 1
        low, high = now, now + 60_000.0
        while high - low > 0.1:
            middle = (low + high) / 2
            low, high = (low, middle) if self._covered(sha, offset, end, middle) else (middle, high)
        return high - now

    def fetched(self) -> int:
        return sum(s.charged(self.clock.ms) for s in self.streams)


@dataclass
class Replay:
    trace: Trace
    cache: LinkCache
    tracks: dict[int, Track]  # file id -> track
    tree: Tree
    pulled: set[int] = field(default_factory=set)  # handles whose track was pulled
    waited_ms: float = 0.0  # all the readers' waits on the network

    def next_track_allowance(self) -> int:
        """What warming the next track of each played one may fetch: its zones and
        NEXT_TRACK_BYTES of its audio."""
        total = 0
        for handle in self.trace.handles:
            node = next((n for n in self.tree.nodes.values() if isinstance(n, FileNode)
                         and n.track.source == handle.file.path), None)
            if node is None:
                continue
            siblings = self.tree.siblings(node)
            position = siblings.index(node)
            if position + 1 < len(siblings):
                following = siblings[position + 1].track
                total += min(following.size, prefetch.head_end(following) + prefetch.NEXT_TRACK_BYTES
                             + following.size - prefetch.tail_start(following))
        return total

    def unique_bytes_read(self) -> int:
        total = 0
        for path in {h.file.path for h in self.trace.handles}:
            size = next(h.file.size for h in self.trace.handles if h.file.path == path)
            spans = sorted((r.offset, min(r.end, size)) for h in self.trace.handles_of(path) for r in h.reads)
            position = 0
            for a, b in spans:
                a = max(a, position)
                if b > a:
                    total += b - a
                    position = b
        return total


def track_of(file: traces.TracedFile, n: int) -> Track:
    sha = f"{n:064x}"
    info = TrackInfo(format=file.format, codec=file.format, head_size=file.head_size, tail_size=file.tail_size)
    return Track(sha256=sha, key=f"objects/sha256/{sha[:2]}/{sha}.{file.format}", size=file.size,
                 ext=file.format, source=file.path, mtime=0.0, info=info)


def replay(reader: str, monkeypatch: pytest.MonkeyPatch) -> Replay:
    trace = traces.load(reader)
    clock = Clock()
    monkeypatch.setattr(prefetch.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(prefetch, "OPEN_WARM_WAIT", 0.0)
    audio = [(n, f) for n, f in enumerate(trace.files) if f.format]
    tracks = {n: track_of(f, n) for n, f in audio}
    tree = Tree()
    tree.rebuild({PurePosixPath(f.path).parts: tracks[n] for n, f in audio})
    nodes = {node.track.sha256: node for node in tree.nodes.values() if isinstance(node, FileNode)}
    cache = LinkCache(clock)
    result = Replay(trace, cache, tracks, tree)
    file_ids = {id(f): n for n, f in enumerate(trace.files)}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            prefetcher = Prefetcher(cache, lambda: tree)  # type: ignore[arg-type]
            await nursery.start(prefetcher.run)
            states: dict[int, ReadState] = {}
            by_handle = {h.handle: h for h in trace.handles}
            lag = 0.0  # what the reader has waited so far: every later event comes that much later
            for event in trace.events:
                clock.ms = event[0] + lag
                handle = by_handle[event[2]]
                track = tracks.get(file_ids[id(handle.file)])
                if track is None:
                    continue  # a cover: not a track, prefetch never sees it
                if event[1] == "o":
                    states[handle.handle] = prefetcher.opened(nodes[track.sha256])
                elif event[1] == "r":
                    state = states[handle.handle]
                    prefetcher.read(state, event[3], event[4])
                    await trio.testing.wait_all_tasks_blocked()
                    waited = cache.read(track.sha256, track.size, event[3], event[4])
                    lag += waited
                    result.waited_ms += waited
                    clock.ms += waited
                    prefetcher.served(state)
                    if state.pulling:
                        result.pulled.add(handle.handle)
                else:
                    prefetcher.released(states.pop(handle.handle))
                await trio.testing.wait_all_tasks_blocked()
            clock.ms += 60_000  # let what is still coming arrive
            nursery.cancel_scope.cancel()
    trio.run(main)
    return result


SCANNERS = ["mutagen", "ffprobe", "mpd", "taglib"]
PLAYERS = ["ffmpeg", "cp", "player"]


@pytest.mark.parametrize("reader", SCANNERS)
def test_a_scan_fetches_little_more_than_the_scanner_reads(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = replay(reader, monkeypatch)
    read, fetched = result.unique_bytes_read(), result.cache.fetched()
    print(f"{reader}: read {read / MiB:.1f} MiB, fetched {fetched / MiB:.1f} MiB "
          f"({fetched / read:.2f}x), {result.cache.misses} reads waited, {len(result.pulled)} handles pulled")
    assert fetched <= 1.5 * read


@pytest.mark.parametrize("reader", SCANNERS)
def test_a_scan_waits_on_the_network_about_once_a_folder(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = replay(reader, monkeypatch)
    folders = len({PurePosixPath(h.file.path).parent for h in result.trace.handles})
    kinds = len(result.trace.kinds())  # a scanner's first file of each kind teaches how it reads it
    assert result.cache.misses <= folders + 2 * kinds, (result.cache.misses, folders, kinds)


@pytest.mark.parametrize("reader", PLAYERS)
def test_playing_or_copying_pulls_every_track_once(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once read past its head, a track comes whole (a player, like rclone, pulls it all), and
    nothing is fetched twice; besides, the next track of each is warmed."""
    result = replay(reader, monkeypatch)
    played = {h.handle for h in result.trace.handles
              if h.file.format and max((r.end for r in h.reads), default=0) > h.file.head_size + 2 * MiB}
    assert played and played <= result.pulled
    sizes = sum({h.file.path: h.file.size for h in result.trace.handles if h.file.format}.values())
    allowed = sizes + result.next_track_allowance() + len(result.trace.handles) * IN_FLIGHT
    print(f"{reader}: fetched {result.cache.fetched() / MiB:.1f} MiB of {allowed / MiB:.1f} allowed, "
          f"tracks {sizes / MiB:.1f} MiB")
    assert result.cache.fetched() <= allowed


@pytest.mark.parametrize("reader", ["ffmpeg", "cp"])
def test_a_fast_reader_waits_for_little_more_than_the_link(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decode or a copy outruns the link: it waits about a round trip or two per track, then
    for the bytes the link brings, not for one request after another."""
    result = replay(reader, monkeypatch)
    handles = [h for h in result.trace.handles if h.file.format]
    link_ms = sum(h.file.size for h in handles) / BYTES_PER_MS
    print(f"{reader}: waited {result.waited_ms:.0f} ms; the link needs {link_ms:.0f} ms "
          f"plus {len(handles)} x RTT {RTT_MS:.0f} ms")
    assert result.waited_ms <= link_ms + 3 * RTT_MS * len(handles)


def test_the_replay_counts_what_a_reader_alone_would_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: with prefetch doing nothing, every byte read is fetched by a miss."""
    monkeypatch.setattr(Prefetcher, "opened", lambda self, node: ReadState(node))
    monkeypatch.setattr(Prefetcher, "read", lambda self, state, offset, size: None)
    result = replay("mutagen", monkeypatch)
    assert result.cache.fetched() >= result.unique_bytes_read()
    assert result.cache.misses >= len(result.trace.handles)
    assert not result.pulled

