"""What to fetch before it is asked for. Policy only: cache.py does the fetching.

Three patterns matter for music, and each is warmed in the background
(cache.warm uses its own request slots, so a player's read never waits
behind prefetch):

- A tag scan (a player importing a library) opens every track and reads its
  head and tail. On open we warm both tag regions of the track together. When
  a second track of the same folder is opened soon after the first, and the
  first was not played (a scan, not an album playing), the scan is on: the
  tag regions of all the folder's tracks, and of the next folders in walk
  order, are warmed at once, and while the scan goes on every folder it
  enters is warmed on its first open. A scan then waits on the network about
  once, not twice per track. Its opens are marked for direct_io (fs.py), so
  the kernel's read-ahead cannot ask for bytes past the tags.
- Playback reads a track sequentially. Read-ahead starts at the second
  sequential read past the tags (a tag reader reads its head in order too,
  then stops), small, and doubles with every sequential read up to a window
  that keeps the link busy; a seek cancels the old read-ahead and starts
  over from the new position, so random reads cost no extra bytes.
- An album plays in order: once a track has played for two seconds, or the
  rest of it is cached (a fast reader), the start of the next track in its
  folder is warmed so gapless playback never waits.

Everything is bounded: per-handle read-ahead is cancelled when the handle is
released or seeks, sibling warming is capped per folder, and warmed ranges
are remembered (bounded LRU) so a scan does not warm the same region twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from cachetools import TTLCache

from lockerfs.cache import BlockCache, ObjectRef
from lockerfs.track import Track
from lockerfs.tree import FileNode, Tree

log = logging.getLogger(__name__)

HEAD_SLACK = 16 * 1024  # a buffered reader's last read runs on past the tags (one st_blksize)
KERNEL_READ = 128 * 1024  # the kernel's first read of a file (not direct_io) asks this much at once
OPEN_WARM_WAIT = 0.05  # seconds an opened track's warming waits for its first read to be answered
TAIL_MIN = 8 * 1024  # the kernel reads whole pages around ID3v1/APEv2 probes at the very end
READAHEAD_START = 512 * 1024
READAHEAD_MAX = 16 * 1024 * 1024
READAHEAD_PIECE = 4 * 1024 * 1024  # one warm() call; cache splits it into requests
NEXT_TRACK_AFTER_SECONDS = 2.0  # a track played this long in real time has its successor warmed
NEXT_TRACK_BYTES = 1024 * 1024
SIBLINGS_MAX = 64  # tracks per folder whose tags are warmed at once
SCAN_WINDOW_SECONDS = 10.0  # two opens in one folder this close together look like a scan
# During a scan, the folders after the current one are warmed until this many
# tracks are: a scan walks small folders faster than a round trip.
SCAN_AHEAD_TRACKS = 64
SIBLING_SCOPE_SECONDS = 300.0  # a folder is warmed at most once per this period


def object_of(track: Track) -> ObjectRef:
    return ObjectRef(track.key, track.sha256, track.size)


def head_end(track: Track) -> int:
    """Where a tag reader's reads end at the front: reading that starts here is playback."""
    return min(track.size, track.info.head_size + HEAD_SLACK)


def tag_regions(track: Track, *, direct: bool) -> list[tuple[int, int]]:
    """The byte ranges a tag reader needs: the head and the tail, merged if they meet.

    `direct`: the reader's reads reach us as they are (a scan's direct_io
    open); otherwise the kernel's first read of the file is KERNEL_READ long.
    """
    size = track.size
    head = head_end(track) if direct else min(size, max(head_end(track), KERNEL_READ))
    tail_start = max(0, size - max(track.info.tail_size, TAIL_MIN))
    if tail_start <= head:
        return [(0, size)]
    return [(0, head), (tail_start, size)]


@dataclass
class ReadState:
    """Per open file: where sequential reading is and how far ahead we have warmed.

    `scanning`: opened during a library scan, so opened with direct_io: the
    kernel adds no read-ahead of its own and each read is the reader's own.
    """

    node: FileNode
    scanning: bool = False
    playing_since: float | None = None  # when it was first read in order past its tags
    next_offset: int = -1
    window: int = READAHEAD_START
    warmed_until: int = 0
    next_track_warmed: bool = False
    readahead: set[trio.CancelScope] = field(default_factory=set)  # one scope per warm task
    first_read_served: trio.Event = field(default_factory=trio.Event)

    def cancel_readahead(self) -> None:
        for scope in self.readahead:
            scope.cancel()
        self.readahead.clear()


class Prefetcher:
    """Turns opens and reads into background warm() calls on the block cache."""

    def __init__(self, cache: BlockCache, tree_of: Callable[[], Tree]) -> None:
        self.cache = cache
        self._tree_of = tree_of  # returns the current Tree (it is replaced on refresh)
        self._nursery: trio.Nursery | None = None
        self._first_opened: TTLCache[int, ReadState] = TTLCache(maxsize=4096, ttl=SCAN_WINDOW_SECONDS)
        self._warmed_folders: TTLCache[int, bool] = TTLCache(maxsize=4096, ttl=SIBLING_SCOPE_SECONDS)
        self._scan_until = 0.0  # monotonic clock: opens before this belong to a scan in progress

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery prefetch tasks run in, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _spawn(self, owner: ReadState | None, obj: ObjectRef, start: int, end: int,
               after: trio.Event | None = None) -> None:
        """Warm [start, end) in the background; started once `after` is set (or OPEN_WARM_WAIT
        has passed). With an `owner` this is its read-ahead: cancelled with it, and loaded
        into memory even from the disk cache, since a reader is about to ask for it."""
        into_memory = owner is not None
        if self._nursery is None or end <= start or self.cache.cached(obj, start, end, in_memory=into_memory):
            return
        scope = trio.CancelScope()
        if owner is not None:
            owner.readahead.add(scope)
        self._nursery.start_soon(self._warm, owner, scope, obj, start, end, after)

    async def _warm(self, owner: ReadState | None, scope: trio.CancelScope, obj: ObjectRef,
                    start: int, end: int, after: trio.Event | None) -> None:
        with scope:
            if after is not None:
                with trio.move_on_after(OPEN_WARM_WAIT):
                    await after.wait()
            await self.cache.warm(obj, start, end, into_memory=owner is not None)
        if owner is not None:
            owner.readahead.discard(scope)

    # --- events from fs.py ------------------------------------------------------

    def opened(self, node: FileNode) -> ReadState:
        """A track was opened: warm its tag regions, and during a scan its folder's and the next ones'.

        The reader's own first read comes at once and should not share the
        link with anything: the opened track's tag regions are warmed once that
        read is answered (what it fetched is skipped then).
        """
        state = ReadState(node)
        state.scanning = self._scanning(state)
        obj = object_of(node.track)
        for start, end in tag_regions(node.track, direct=state.scanning):
            self._spawn(None, obj, start, end, after=state.first_read_served)
        if state.scanning:
            self._warm_ahead(node)
        return state

    def _warm_ahead(self, opened: FileNode) -> None:
        """Warm the tags of the opened track's folder and of the folders after it in
        walk order, up to SCAN_AHEAD_TRACKS tracks; each folder once."""
        tree = self._tree_of()
        tracks = 0
        # every folder in walk order holds a track, so this many folders always suffice
        for folder in [tree.nodes[opened.parent], *tree.folders_after(opened.parent, SCAN_AHEAD_TRACKS)]:
            files = tree.files_in(folder)[:SIBLINGS_MAX]  # type: ignore[arg-type]
            if folder.inode not in self._warmed_folders:
                self._warmed_folders[folder.inode] = True
                for track in files:
                    if track.inode != opened.inode:
                        self._warm_tags(track)
            tracks += len(files)
            if tracks >= SCAN_AHEAD_TRACKS:
                break

    def served(self, state: ReadState) -> None:
        """A read of the handle was answered (or failed): its open's warming may start."""
        state.first_read_served.set()

    def _warm_tags(self, node: FileNode) -> None:
        obj = object_of(node.track)
        for start, end in tag_regions(node.track, direct=True):  # siblings open during a scan
            self._spawn(None, obj, start, end)

    def _scanning(self, state: ReadState) -> bool:
        """Whether opens look like a library scan: a second track opened in one folder
        within the scan window while the first was not played (an album played
        track after track is no scan), or any open while a recent scan goes on."""
        node = state.node
        if node.parent not in self._tree_of().nodes:
            return False
        now = time.monotonic()  # the clock the TTL caches use
        if now < self._scan_until:
            self._scan_until = now + SCAN_WINDOW_SECONDS
            return True
        first = self._first_opened.setdefault(node.parent, state)
        if first.node.inode != node.inode and first.playing_since is None:
            self._scan_until = now + SCAN_WINDOW_SECONDS
            return True
        return False

    def read(self, state: ReadState, offset: int, size: int) -> None:
        """A read is being served: extend read-ahead if reading is sequential, else drop it.

        Read-ahead starts only at the second sequential read, and only past
        the tags (a tag reader reads its head sequentially, then stops): a
        seek, or a tag reader hopping between the two ends of a file, costs
        no extra bytes. Likewise the next track is warmed only once this one
        is being played (see _nearly_played), or has been read to its end.
        """
        track_size = state.node.track.size
        audio_start = head_end(state.node.track)
        end = offset + size
        sequential = offset == state.next_offset
        state.next_offset = end
        if not state.next_track_warmed and not state.scanning and (sequential or offset == 0) and (
                end >= track_size or self._nearly_played(state, end)):
            state.next_track_warmed = True
            self._warm_next_track(state.node)
        if not sequential:
            state.cancel_readahead()
            state.window = READAHEAD_START
            state.warmed_until = end
            return
        if offset < audio_start:
            return
        if state.playing_since is None:
            state.playing_since = time.monotonic()
        # Refill only when less than half a window is left, so read-ahead goes
        # out in large requests (a 128 KiB GET per kernel read would cap the
        # rate far below the link's), and grow the window while reading stays
        # sequential.
        state.warmed_until = max(state.warmed_until, end)
        if state.warmed_until - end < state.window // 2:
            target = min(track_size, end + state.window)
            obj = object_of(state.node.track)
            while state.warmed_until < target:
                piece_end = min(target, state.warmed_until + READAHEAD_PIECE)
                self._spawn(state, obj, state.warmed_until, piece_end)
                state.warmed_until = piece_end
        state.window = min(state.window * 2, READAHEAD_MAX)

    def _nearly_played(self, state: ReadState, position: int) -> bool:
        """Whether the track has played for a while in real time, or the rest of it
        is cached (a fast reader): then, and not sooner, the next track's start may
        share the link with it."""
        track = state.node.track
        return state.playing_since is not None and (
            time.monotonic() - state.playing_since >= NEXT_TRACK_AFTER_SECONDS
            or self.cache.cached(object_of(track), position, track.size))

    def _warm_next_track(self, node: FileNode) -> None:
        tree = self._tree_of()
        if node.parent not in tree.nodes:
            return
        siblings = tree.siblings(node)
        names = [sibling.name for sibling in siblings]
        try:
            position = names.index(node.name)
        except ValueError:
            return
        if position + 1 < len(siblings):
            following = siblings[position + 1].track
            end = min(following.size, max(NEXT_TRACK_BYTES, following.info.head_size + HEAD_SLACK))
            self._spawn(None, object_of(following), 0, end)
            tail_start, tail_end = tag_regions(following, direct=False)[-1]
            self._spawn(None, object_of(following), max(tail_start, end), tail_end)

    def released(self, state: ReadState) -> None:
        state.cancel_readahead()
