"""What to fetch before it is asked for, decided from what readers read. Policy only: cache.py fetches.

Every open is direct_io (fs.py), so each read that reaches us is the reader's
own, never the kernel's read-ahead. What a reader reads is then what tells a
tag scan from playback, whatever the size of the tags, the order of the
walk, or how many threads the reader uses.

A track has three zones, from the catalog (tags.py computes them at upload):
the head (tags, and what a tag reader inspects of the first frames), the
tail (ID3v1, APEv2, a trailing moov, the last Ogg page) and the audio between.

- Open: the track's head and tail zones are warmed once its first read is
  answered (that read has the link to itself). (A file that is not a track,
  a cover or lyrics, never comes here: fs.py fetches it whole at its first
  read, since it is read whole.)
- A tag scan (a player importing a library) opens many tracks and reads each
  within its zones. Two opens of tracks within SCAN_WINDOW_SECONDS that are
  not being played, from any threads, in any folders, start a scan. While it
  lasts, each folder it enters, and the folders after it in walk order up to
  SCAN_AHEAD_TRACKS tracks, have their tracks' zones warmed, and their other
  stored files (covers, images, lyrics: scanners open every file of a folder,
  and such a file is fetched whole at its first read anyway) warmed whole, so
  a scan waits on the network about once per folder, not once per read. The
  opened track's zones go first; the rest waits for its first read to be
  answered (at most OPEN_WARM_WAIT), so that read does not share the link
  with the whole look-ahead.
- Scanners read more than tags, each in its own way (one reads 256 KiB
  pieces, another probes a few frames for the duration). A handle that read
  near the head, or read on past it and went away soon after, teaches
  ProbeExtents how far this scanner reads past each track's head zone and how
  much of its tail. During a scan the zones warmed and the point where reading
  counts as playback are widened by that much (bounded by PROBE_MAX), so
  warmed zones cover a scanner's reads and none of them looks like playback.
- Playback, a decode or a copy reads on in order past the head zone (the
  widened one during a scan), or a reader reads at a player's pace (see
  below; a player that reads a large tag at the pace of its audio is still
  a player): then the rest of the track is pulled in one
  streamed GET (a track of at most PULL_WHOLE bytes), or in a window running
  ahead of the reader; it arrives at link speed block by block. During a
  scan the pull starts with PROBE_PULL bytes, and only a reader that reads on
  into them gets the rest: a scanner that read a little past its zones costs
  little. A read elsewhere (a seek) stops the pull and costs one round trip
  of its own; the next read in order after it starts a new pull from there.
  A peek at the tail (decoders read the last Ogg page, or a trailing moov,
  before they play) changes nothing.
- A handle has played its track (and is no part of a scan) once it read on
  past the head further than any scanner does, or to the end of the file,
  or at a player's pace: a scanner asks for its next read as soon as the last
  one is answered, a player when it needs more audio.
- An album plays in order: once the rest of the playing track has arrived,
  the start and tail of the next track in its folder are warmed, so gapless
  playback never waits and never takes the link from the current track.

Everything is bounded: a pull by its window, warming ahead by tracks and by
folders, each track's zones once (again only if a scan needs them more than
REWARM_MIN wider), the learned extents by PROBE_MAX and by the number of
handles remembered.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from cachetools import LRUCache

from lockerfs.cache import BlockCache
from lockerfs.objectref import ObjectRef
from lockerfs.track import Track
from lockerfs.tree import FileNode, Tree

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

HEAD_SLACK = 16 * KiB  # a buffered reader's last read runs on past the tags (one st_blksize)
TAIL_SLACK = 16 * KiB  # and one near the end starts before what it needs (a buffer, a block-aligned seek)
OPEN_WARM_WAIT = 0.05  # seconds an opened track's warming waits for its first read to be answered
PROBE_MAX = 1 * MiB  # how far past a head zone (or into a tail) a scanner may be taken to read
WIDEN_SLACK = 16 * KiB  # added to what scanners were seen to read past a zone (one st_blksize)
PROBE_MEMORY = 32  # handles whose reads the probe extents remember
PROBE_MEMORY_SECONDS = 120.0  # and for how long
PULL_WHOLE = 64 * MiB  # a track this long or shorter is pulled whole, in one GET
PROBE_PULL = 256 * KiB  # during a scan, a pull starts with this much; reading on into it pulls the rest
PACED_GAP_SECONDS = 0.05  # a read this long after the last was answered waited on the reader, not on us
PACED_READS = 2  # reads that came at a pace: a player, not a scanner
PLAYER_GAP_SECONDS = 0.5  # one read this long after the last is enough (a player's buffer wanting more)
PULL_WINDOW = 32 * MiB  # longer ones are pulled this far ahead of the reader
NEXT_TRACK_BYTES = 1 * MiB  # of the next track's audio, warmed past its head zone
SIBLINGS_MAX = 64  # tracks per folder whose zones are warmed at once
SCAN_WINDOW_SECONDS = 10.0  # two opens of tracks not being played this close together: a scan
SCAN_AHEAD_TRACKS = 64  # a scan warms folders ahead in walk order until this many tracks are covered
REWARM_MIN = 16 * KiB  # a track's zones are warmed again only if they grew by more than this
WARMED_MEMORY = 65536  # tracks whose warmed zones are remembered
WHOLE_FILE_MAX = 8 * MiB  # a cover or lyrics file up to this size is fetched whole at its first miss


def object_of(track: Track) -> ObjectRef:
    return ObjectRef(track.key, track.sha256, track.size, track.art)


def head_end(track: Track) -> int:
    """Where a tag reader's reads end at the front (its last buffered read included)."""
    return min(track.size, track.info.head_size + HEAD_SLACK)


def tail_start(track: Track) -> int:
    """Where a tag reader's reads at the end begin (a buffered or block-aligned read included)."""
    return max(0, track.size - track.info.tail_size - TAIL_SLACK)


@dataclass(frozen=True)
class Zones:
    """The byte ranges a scanner reads of one track: [0, head) and [tail, size)."""

    head: int
    tail: int

    def ranges(self, size: int) -> list[tuple[int, int]]:
        if self.tail <= self.head:
            return [(0, size)]
        return [(0, self.head), (self.tail, size)]


class ProbeExtents:
    """How far past each track's own zones the current scanner reads, learned from its handles.

    Kept per container, since a scanner reads each its own way (MPD reads
    half a MiB of an MP3's or an Ogg's audio and none of a FLAC's), and
    relative to the zones, not as absolute offsets: a reader that reads its
    head in 256 KiB pieces ends at most 256 KiB past any track's tags, however
    large the tags are, while the absolute end varies with them. The widest of
    the recent handles is used, so one track that needed more widens the next
    ones at once. A handle that played its track is no probe and teaches nothing.
    """

    def __init__(self) -> None:
        self._seen: dict[str, deque[tuple[float, int, int]]] = {}  # format -> (when, head, tail)
        self.generation = 0  # counts the times a widening grew: zones warmed since are still wide enough

    def learn(self, fmt: str, past_head: int, into_tail: int) -> None:
        before = self.widening(fmt)
        seen = self._seen.setdefault(fmt, deque(maxlen=PROBE_MEMORY))
        seen.append((time.monotonic(), min(max(past_head, 0), PROBE_MAX), min(max(into_tail, 0), PROBE_MAX)))
        after = self.widening(fmt)
        if after[0] > before[0] or after[1] > before[1]:
            self.generation += 1

    def widening(self, fmt: str) -> tuple[int, int]:
        """(bytes past the head zone, bytes before the tail zone) a scanner reads of this container.

        Each gets WIDEN_SLACK more when it is not 0: where a reader stops depends on where
        its reads fall, and the next track's reads fall a few bytes further as often as not.
        """
        horizon = time.monotonic() - PROBE_MEMORY_SECONDS
        recent = [(head, tail) for when, head, tail in self._seen.get(fmt, ()) if when >= horizon]
        if not recent:
            return 0, 0
        head, tail = max(head for head, _ in recent), max(tail for _, tail in recent)
        return (head + WIDEN_SLACK if head else 0), (tail + WIDEN_SLACK if tail else 0)


@dataclass
class ReadState:
    """Per open file: what its reader has read, and what we pull for it."""

    node: FileNode
    opened_at: float = field(default_factory=time.monotonic)
    next_offset: int = -1  # where a read in order would start
    frontier: int = 0  # the head read contiguously from 0 (reads starting at or before it extend it)
    lowest_tail_read: int | None = None  # the lowest offset read past the frontier, near the end
    pulling: bool = False  # reading on in order past the head zone: playback, decode or copy
    pull_start: int = 0  # where the current pull began
    pulled_until: int = 0  # the end of the range asked for so far
    probing: bool = False  # the pull is a scan's probe of PROBE_PULL bytes, not yet the rest
    played: int = 0  # bytes read in order while a pull ran
    read_to_end: bool = False  # reading in order while a pull ran reached the end of the file
    served_at: float | None = None  # when the last read was answered
    paced_gaps: int = 0  # reads that came well after the one before was answered: a player's pace
    next_track_warmed: bool = False
    pulls: set[trio.CancelScope] = field(default_factory=set)  # one scope per pull task
    first_read_served: trio.Event = field(default_factory=trio.Event)

    @property
    def played_on(self) -> bool:
        """Played, decoded or copied, not scanned: it read on past the head further than any
        scanner does, or to the end of the file, or at a player's pace (a scanner asks for its
        next read as soon as the last one is answered)."""
        return self.played > PROBE_MAX or self.read_to_end or self.paced_gaps >= PACED_READS

    def stop_pull(self) -> None:
        for scope in self.pulls:
            scope.cancel()
        self.pulls.clear()
        self.pulling = False


class Prefetcher:
    """Turns opens and reads into background warm() calls on the block cache."""

    def __init__(self, cache: BlockCache, tree_of: Callable[[], Tree]) -> None:
        self.cache = cache
        self._tree_of = tree_of  # returns the current Tree (it is replaced on refresh)
        self._nursery: trio.Nursery | None = None
        self.probes = ProbeExtents()
        self._recent_opens: deque[tuple[float, ReadState]] = deque(maxlen=256)
        # inode -> the zones already warmed, [0, head) and [tail, size), whether a reader has
        # read the track since (then they hold what it read as well), and the widening they
        # were warmed for (_widening_now)
        self._warmed: LRUCache[int, tuple[int, int, bool, int]] = LRUCache(maxsize=WARMED_MEMORY)
        self._warmed_whole: LRUCache[str, bool] = LRUCache(maxsize=WARMED_MEMORY)  # sha256 of other files
        self._scan_until = 0.0  # monotonic clock: opens before this belong to a scan in progress
        self.pull_window = min(PULL_WINDOW, max(cache.memory_limit // 4, cache.block_size))

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery prefetch tasks run in, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def stop(self) -> None:
        """Cancel every warm and pull (unmounting)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def scanning(self) -> bool:
        return time.monotonic() < self._scan_until

    def _widening_now(self) -> int:
        """Names the widening zones get now: none outside a scan, else the probes' generation.
        Zones warmed under the same name need no second look, which keeps a scan's opens
        cheap: each walks SCAN_AHEAD_TRACKS tracks that are mostly warmed already."""
        return self.probes.generation if self.scanning else -1

    # --- zones -------------------------------------------------------------------

    def zones(self, track: Track) -> Zones:
        """The track's zones, widened by what the current scanner reads while a scan goes on."""
        head, tail = head_end(track), tail_start(track)
        if self.scanning:
            past_head, into_tail = self.probes.widening(track.info.format)
            head, tail = min(track.size, head + past_head), max(0, tail - into_tail)
        return Zones(head, tail)

    # --- spawning ------------------------------------------------------------------

    def _spawn(self, owner: ReadState | None, obj: ObjectRef, start: int, end: int,
               after: trio.Event | None = None, whole: bool = False, exact: bool = False) -> None:
        """Warm [start, end) in the background, once `after` is set (or OPEN_WARM_WAIT has
        passed). With an `owner` it is that reader's pull: loaded into memory even from
        the disk, streamed in one GET (`whole`), and stopped with the owner's pull.
        `exact`: these bytes and no more (a zone), not the whole blocks around them."""
        into_memory = owner is not None
        if self._nursery is None or end <= start or self.cache.cached(obj, start, end, in_memory=into_memory):
            return
        scope = trio.CancelScope()
        if owner is not None:
            owner.pulls.add(scope)
        self._nursery.start_soon(self._warm, owner, scope, obj, start, end, after, whole, exact)

    async def _warm(self, owner: ReadState | None, scope: trio.CancelScope, obj: ObjectRef,
                    start: int, end: int, after: trio.Event | None, whole: bool, exact: bool) -> None:
        with scope:
            if after is not None:
                with trio.move_on_after(OPEN_WARM_WAIT):
                    await after.wait()
            await self.cache.warm(obj, start, end, into_memory=owner is not None,
                                  max_request=end - start if whole else None, exact=exact)
        if owner is not None:
            owner.pulls.discard(scope)

    def _warm_zones(self, node: FileNode, after: trio.Event | None = None) -> None:
        """Warm the track's zones, or what they have grown by since they were last warmed (a
        scan that reads more than the last one did); a few bytes more are not worth a request."""
        warmed = self._warmed.get(node.inode)
        widening = self._widening_now()
        if warmed and warmed[3] in (widening, self.probes.generation):  # as wide as zones can be now
            return
        track = node.track
        zones = self.zones(track)
        head, tail, read, _ = warmed or (0, track.size, False, widening)
        # Once a scanner has read a track, its reads are what the next one needs, give or take
        # the slack its zones were widened by: only a scanner reading much more warms it again.
        worth = REWARM_MIN + (WIDEN_SLACK if read else 0)
        if warmed and zones.head <= head + worth and zones.tail >= tail - worth:
            return
        self._warmed[node.inode] = (max(head, zones.head), min(tail, zones.tail), read, widening)
        obj = object_of(track)
        if not warmed:
            for start, end in zones.ranges(track.size):
                self._spawn(None, obj, start, end, after, exact=True)
        elif zones.tail <= zones.head:
            self._spawn(None, obj, head, tail, after, exact=True)  # they meet now: what lies between
        else:
            self._spawn(None, obj, head, zones.head, after, exact=True)
            self._spawn(None, obj, zones.tail, tail, after, exact=True)

    # --- events from fs.py ------------------------------------------------------

    def opened(self, node: FileNode) -> ReadState:
        """A file was opened: warm its zones (after its first read), and during a scan its folder's
        and the next folders'."""
        state = ReadState(node)
        if self._opens_look_like_a_scan(state):
            self._warm_ahead(node, after=state.first_read_served)
        else:
            self._warm_zones(node, after=state.first_read_served)
        return state

    def _opens_look_like_a_scan(self, state: ReadState) -> bool:
        """Whether this open and another one within the scan window are of tracks not being
        played: a scan starts (or goes on). An album played track after track is no scan, nor
        is a copy: those handles read on past their heads."""
        now = state.opened_at
        while self._recent_opens and now - self._recent_opens[0][0] > SCAN_WINDOW_SECONDS:
            self._recent_opens.popleft()
        others = {s.node.inode for _, s in self._recent_opens if not s.played_on} - {state.node.inode}
        self._recent_opens.append((now, state))
        if others or now < self._scan_until:
            self._scan_until = now + SCAN_WINDOW_SECONDS
            return True
        return False

    def _warm_ahead(self, opened: FileNode, after: trio.Event) -> None:
        """Warm the zones of the opened track at once; then, once `after` is set, its folder's
        tracks and other stored files, and the folders after it in walk order, up to
        SCAN_AHEAD_TRACKS tracks."""
        self._warm_zones(opened)
        tree = self._tree_of()
        if opened.parent not in tree.nodes:
            return
        tracks = 0
        # every folder in walk order holds a track, so this many folders always suffice
        for folder in [tree.nodes[opened.parent], *tree.folders_after(opened.parent, SCAN_AHEAD_TRACKS)]:
            files = tree.files_in(folder)[:SIBLINGS_MAX]  # type: ignore[arg-type]
            for node in files:
                self._warm_zones(node, after)
            for obj in tree.stored_extras_in(folder)[:SIBLINGS_MAX]:  # type: ignore[arg-type]
                self._warm_whole(obj, after)
            tracks += len(files)
            if tracks >= SCAN_AHEAD_TRACKS:
                break

    def _warm_whole(self, obj: ObjectRef, after: trio.Event) -> None:
        """Warm a folder's cover, image or lyrics file whole, once (the size a reader's first
        read would fetch: fs.py reads such a file whole)."""
        if obj.size > WHOLE_FILE_MAX or obj.sha256 in self._warmed_whole:
            return
        self._warmed_whole[obj.sha256] = True
        self._spawn(None, obj, 0, obj.size, after)

    def served(self, state: ReadState) -> None:
        """A read of the handle was answered (or failed): its open's warming may start."""
        state.first_read_served.set()
        state.served_at = time.monotonic()

    def read(self, state: ReadState, offset: int, size: int) -> None:
        """A read is being served: note what it says about the reader, and pull if it plays."""
        track = state.node.track
        end = min(offset + size, track.size)
        if state.served_at is not None:
            idle = time.monotonic() - state.served_at
            state.paced_gaps += 1 if idle >= PACED_GAP_SECONDS else 0
            state.paced_gaps += PACED_READS if idle >= PLAYER_GAP_SECONDS else 0
        if offset <= state.frontier:
            state.frontier = max(state.frontier, end)
        elif track.size - offset <= PROBE_MAX + track.info.tail_size:
            state.lowest_tail_read = offset if state.lowest_tail_read is None else min(state.lowest_tail_read, offset)
        zones = self.zones(track)
        if offset >= zones.tail and offset != state.next_offset:
            return  # a peek at the tail (a tag reader's, or a decoder's before it plays on): nothing changes
        in_order = offset == state.next_offset
        from_the_start = state.next_offset < 0 and offset == 0  # a copy's first read may run past the tags
        state.next_offset = end
        if state.pulling and not in_order:  # a seek: what was pulled ahead is not needed now
            state.stop_pull()
        if state.pulling:
            state.played += end - offset
            state.read_to_end = state.read_to_end or end >= track.size
            if state.probing and end >= state.pull_start + PROBE_PULL // 2:  # read on into the probe: a play
                state.probing = False
            self._extend_pull(state, end)
        elif (in_order or from_the_start) and end < track.size and (
                zones.head < end and offset < zones.tail or state.paced_gaps >= PACED_READS):
            self._start_pull(state, end)  # past the head, or at a player's pace (it will want it all)
        if state.pulling and not state.next_track_warmed and state.pulled_until >= track.size \
                and self.cache.cached(object_of(track), end, track.size):
            state.next_track_warmed = True
            self._warm_next_track(state.node)

    def _start_pull(self, state: ReadState, position: int) -> None:
        """Pull the rest of the track; during a scan, first only PROBE_PULL bytes of it (a scanner
        that read a little further than its zones is not worth the whole track)."""
        state.pulling = True
        state.probing = self.scanning and state.paced_gaps < PACED_READS
        state.pull_start = state.pulled_until = position
        self._extend_pull(state, position)

    def _extend_pull(self, state: ReadState, position: int) -> None:
        """Keep the pull a window ahead of the reader (the whole track if it is short)."""
        size = state.node.track.size
        if state.pulled_until >= size:
            return
        if state.probing:
            target = min(size, state.pull_start + PROBE_PULL)
            if target <= state.pulled_until:
                return
        elif size - state.pull_start <= PULL_WHOLE:
            target = size
        elif state.pulled_until - position < self.pull_window // 2:
            target = min(size, position + self.pull_window)
        else:
            return
        self._spawn(state, object_of(state.node.track), state.pulled_until, target, whole=True)
        state.pulled_until = target

    def _warm_next_track(self, node: FileNode) -> None:
        tree = self._tree_of()
        if node.parent not in tree.nodes:
            return
        siblings = tree.siblings(node)
        position = next((i for i, sibling in enumerate(siblings) if sibling.inode == node.inode), len(siblings))
        if position + 1 < len(siblings):
            following = siblings[position + 1].track
            obj = object_of(following)
            zones = self.zones(following)
            head = min(following.size, zones.head + NEXT_TRACK_BYTES)
            self._spawn(None, obj, 0, head)
            self._spawn(None, obj, max(zones.tail, head), following.size, exact=True)

    def released(self, state: ReadState) -> None:
        """The handle is closed: stop its pull, and learn from it if it was a probe."""
        state.stop_pull()
        track = state.node.track
        if not state.played_on and state.frontier > 0:
            past_head = state.frontier - head_end(track)
            into_tail = tail_start(track) - state.lowest_tail_read if state.lowest_tail_read is not None else 0
            self.probes.learn(track.info.format, past_head, into_tail)
            head, tail, _, widening = self._warmed.get(state.node.inode, (0, track.size, False, -1))
            lowest = track.size if state.lowest_tail_read is None else state.lowest_tail_read
            self._warmed[state.node.inode] = (max(head, state.frontier), min(tail, lowest), True, widening)
