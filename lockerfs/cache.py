"""Block cache: memory, then disk, then the store; one load per block however many wait for it.

Objects are immutable and named by their SHA-256, so a block, once fetched,
is valid forever: nothing is ever invalidated, only evicted.

Block i of an object covers bytes [i*block_size, min((i+1)*block_size, size)).
A block is looked for in three places, in this order:

1. memory: a cachetools LRU of bytes, bounded by memory_limit (sum of lengths);
2. disk: diskcache.DiskCache, one verified file per block, bounded by disk_limit;
3. the store: fetcher.Fetcher, one streamed GET per run of contiguous missing
   blocks (at most max_request long unless a warm asks for longer), each
   block handed over the moment it has arrived.

What is cached of a block is a piece (diskcache.Piece): the whole block, or
a part of it. Readers fetch whole blocks; a warm may ask for exactly the
bytes it names (`exact`: a scan's tag zones, so that the head of a file
costs its tags and not the rest of a 64 KiB block, and its tail the few
bytes a tag reader peeks at rather than the last block). A read is a hit
when the pieces in memory or on disk hold the bytes it asks for.

Invariants
- What read() returns is the object's bytes or an error, never other bytes
  from the cache's side: a block file that fails its checksum is a miss; a
  GET that returns less than asked delivers only its complete blocks and
  fails the rest; one that returns more is refused (store.py). What the store
  itself sends is trusted block by block; an object whose blocks are all
  cached is hashed once per mount, and if it does not match its SHA-256 its
  blocks are dropped and the mismatch logged (docs/SECURITY.md says why this
  and not per-block hashes).
- A read answers within read_deadline. Once a reader gave up on a load at
  its deadline, later readers of that load fail at once until it ends (the
  kernel may retry a failed read at once; one read() must still fail within
  one deadline); the next read starts a fresh load. Likewise a block whose
  load failed a reader slowly (after half a deadline or more) fails at once
  for FAILED_TTL, and a reader whose joined load (started by a warmer) failed
  tries once more within its own deadline.
- One load per block: `_pending` maps (sha, index) to the one load in flight,
  and every reader and warmer of that block whose bytes it brings waits on
  it, from its claim until the piece is in memory (or has failed); one
  that needs bytes of the block the load does not bring waits for it to end,
  then claims again.
- A load wanted only by warmers that all gave up (prefetch cancelled: a
  seek, a close) is stopped; a load a reader ever waited for is never
  stopped, so a reader that gives up at its deadline still leaves the block
  to be cached when the store answers.
- Memory: the LRU (<= memory_limit), blocks on their way to it, blocks
  waiting to be written to disk (bounded by DiskCache's backlog), the disk
  index (about 200 bytes per block on disk).

Lock rules
- The tables (memory LRU, disk index, `_pending`, stats) are touched only on
  the trio thread. A lookup followed by a claim with no await in between is
  atomic, so the tables need no locks, and a claim needs no re-check.
- Worker threads do file and store I/O on the arguments they are given and
  hand results back; they never touch the tables.
- Loads run as trio system tasks, not in a reader's task.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import cachetools
import trio

from lockerfs.cachestats import CacheStats
from lockerfs.diskcache import (BlockKey, CacheInUse, DiskCache, Part, Piece, UnsafeCacheDir, make_private_dir,
                                piece_range, piece_slice)
from lockerfs.fetcher import Fetch, Fetcher
from lockerfs.objectref import ObjectRef
from lockerfs.store import Store

__all__ = ["BlockCache", "CacheInUse", "CacheStats", "FetchError", "ObjectRef", "UnsafeCacheDir",
           "make_private_dir"]

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

FAILED_TTL = 1.0  # seconds a block that failed a reader is not asked for again (the kernel retries at once)
VERIFIED_MEMORY = 65536  # objects remembered as verified this mount (an LRU of digests)
DISK_BATCH = 16  # blocks of one GET written to disk together
INSET_WAITS = 3  # loads in flight a part read from an inset waits for before it is left to the track's own


class FetchError(Exception):
    """A read that could not be served; the filesystem answers it with EIO."""


Need = tuple[int, int, int]  # (block index, start, end): bytes of one block wanted, within it


class _Room(enum.Enum):
    """Whether a part read from an inset can be put in its block (see BlockCache._room_for)."""

    NOW = "now"
    LATER = "after the load in flight"
    NONE = "none"


class _Pending:
    """One block (or the part [start, end) of it) being loaded; everyone who needs those
    bytes waits on `done`."""

    __slots__ = ("done", "data", "error", "urgent", "started_by_reader", "started", "load", "overdue",
                 "warmers", "start", "end")

    def __init__(self, urgent: bool, start: int, end: int) -> None:
        self.done = trio.Event()
        self.start, self.end = start, end
        self.data: Piece | None = None
        self.error: str | None = None
        self.urgent = urgent  # a reader (not only a warmer) waits or waited for it: never stopped
        self.started_by_reader = urgent
        self.started = trio.current_time()
        self.load: _Load | None = None  # the GET bringing it, once one is under way
        # A reader gave up on it at its deadline. Later readers fail at once
        # instead of waiting a deadline of their own: the kernel retries a
        # failed page read with a second request, and a player's one read()
        # must still fail within one deadline. The next load starts afresh.
        self.overdue = False
        self.warmers = 0  # warm() calls waiting for it now

    def hurry(self) -> None:
        self.urgent = True
        if self.load is not None:
            self.load.fetch.hurry()

    @property
    def unwanted(self) -> bool:
        return not self.urgent and self.warmers == 0 and not self.done.is_set()

    def brings(self, start: int, end: int) -> bool:
        return self.start <= start and end <= self.end

    def finish(self, data: Piece | None = None, error: str | None = None) -> None:
        if not self.done.is_set():
            self.data, self.error = data, error
            self.done.set()


class _Load:
    """The cache's side of one GET: the blocks it brings and those waiting for the disk."""

    __slots__ = ("obj", "fetch", "pendings", "to_disk", "undelivered")

    def __init__(self, obj: ObjectRef, pendings: dict[int, _Pending]) -> None:
        self.obj = obj
        self.fetch: Fetch  # set as soon as the GET starts
        self.pendings = pendings
        self.to_disk: list[tuple[int, Piece]] = []
        self.undelivered = len(pendings)


class BlockCache:
    """Serves byte ranges of immutable objects from memory, disk, or the store.

    Call open() before trio starts and close() after it ends; read() and
    warm() run inside trio. Without a cache_dir the cache is memory only.
    A read served from memory does not yield to the trio loop.
    """

    def __init__(self, store: Store, cache_dir: Path | None, *, disk_limit: int,
                 memory_limit: int = 128 * MiB, block_size: int = 64 * KiB,
                 max_request: int = 8 * MiB, foreground_slots: int = 8,
                 background_slots: int = 8, read_deadline: float = 8.0) -> None:
        if block_size <= 0 or max_request < block_size:
            raise ValueError(f"need 0 < block_size <= max_request, not {block_size} and {max_request}")
        if memory_limit < 0:
            raise ValueError("cache limits cannot be negative")
        self.block_size = block_size
        self.read_deadline = read_deadline
        self.memory_limit = memory_limit
        self.stats = CacheStats()
        self.disk = DiskCache(cache_dir, limit=disk_limit, block_size=block_size, stats=self.stats,
                              max_backlog=max_request * (foreground_slots + background_slots))
        self._fetcher = Fetcher(store, block_size, foreground_slots=foreground_slots,
                                background_slots=background_slots, stats=self.stats)
        self._blocks_per_request = max_request // block_size
        self._memory: cachetools.LRUCache[BlockKey, Piece] = cachetools.LRUCache(
            maxsize=memory_limit, getsizeof=_piece_size)
        self._pending: dict[BlockKey, _Pending] = {}
        # Blocks whose load just failed a reader -> why; a read of them fails at once meanwhile.
        self._failed: cachetools.TTLCache[BlockKey, str] = cachetools.TTLCache(maxsize=4096, ttl=FAILED_TTL)
        self._verified: cachetools.LRUCache[str, bool] = cachetools.LRUCache(maxsize=VERIFIED_MEMORY)
        self._fetching = 0  # GETs under way

    @property
    def memory_bytes(self) -> int:
        return int(self._memory.currsize)

    @property
    def disk_bytes(self) -> int:
        return self.disk.bytes

    @property
    def disk_enabled(self) -> bool:
        return self.disk.enabled

    @property
    def pending_blocks(self) -> int:
        return len(self._pending)

    # --- lifecycle (synchronous, outside trio) ---

    def open(self) -> None:
        """Take the cache dir for this process and index the blocks already there."""
        self.disk.open()

    def close(self) -> None:
        """Release the cache dir; its blocks stay for the next open()."""
        self.disk.close()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait (at most `timeout`) until no GET is under way and every fetched block is on
        disk: before unmounting, so what was fetched is kept, and in tests."""
        with trio.move_on_after(timeout):
            while self._fetching or self.disk.writing:
                await trio.sleep(0.005)

    def __enter__(self) -> BlockCache:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- reading ---

    def _needs(self, obj: ObjectRef, start: int, end: int) -> list[Need]:
        """The bytes of each block [start, end) covers, within the block."""
        bs = self.block_size
        return [(index, max(start, index * bs) - index * bs, min(end, (index + 1) * bs) - index * bs)
                for index in range(start // bs, (end - 1) // bs + 1)]

    async def read(self, obj: ObjectRef, offset: int, length: int, *, fetch_to: int | None = None) -> bytes:
        """Bytes [offset, offset+length) of obj, shorter only at its end.

        `fetch_to`: on a miss, the same GET goes on to this offset (a file that
        is read whole comes in one request); the read returns as soon as its
        own bytes are in. Raises FetchError if they cannot be had within
        read_deadline.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        end = min(offset + length, obj.size)
        if offset >= end:
            return b""
        needs = self._needs(obj, offset, end)
        got: dict[int, bytes] = {}
        missing = []
        for index, a, b in needs:
            piece = self._memory.get((obj.sha256, index))
            if piece is not None and _holds(piece, a, b):
                got[index] = piece_slice(piece, a, b)
                self.disk.touch((obj.sha256, index))
            else:
                missing.append((index, a, b))
        self.stats.memory_hits += len(got)
        if missing and fetch_to is not None:
            last = needs[-1][0]
            beyond = [(i, 0, self._block_length(obj, i))
                      for i in range(last + 1, (min(fetch_to, obj.size) - 1) // self.block_size + 1)]
            more = [need for need in beyond if not self._cached(obj, need) and (obj.sha256, need[0]) not in self._pending]
            self._claim(obj, missing + more, urgent=True, per_request=len(missing) + len(more))
        if missing:
            try:
                with trio.fail_after(self.read_deadline):
                    if obj.inset is not None:
                        missing = await self._read_inset(obj, missing, got)
                    await self._wait_for(obj, missing, got, f"bytes {offset}-{end - 1}")
            except trio.TooSlowError:
                self.stats.timeouts += 1
                raise FetchError(f"reading {obj.key} (bytes {offset}-{end - 1}) took longer "
                                 f"than {self.read_deadline:g} s") from None
        if len(needs) == 1:
            return got[needs[0][0]]
        return b"".join(got[index] for index, _, _ in needs)

    async def _wait_for(self, obj: ObjectRef, missing: list[Need], got: dict[int, bytes], what: str) -> None:
        """Claim what is missing and wait for it into `got`; the caller sets the deadline.

        A load that a warmer started earlier and that failed is tried once
        more: this reader's deadline has time left, and the warm may have been
        stuck (or stopped) long before the reader came. A load a reader
        started that failed is final, so a server that refuses connections
        gives EIO at once. A load that brings other bytes of a block is
        waited for, then the block is claimed again.
        """
        attempt = 1
        while missing:
            failed = next((self._failed[(obj.sha256, i)] for i, _, _ in missing
                           if (obj.sha256, i) in self._failed), None)
            if failed is not None:
                raise FetchError(f"{failed} (failed moments ago; not asking again yet)")
            waits, elsewhere = self._claim(obj, missing, urgent=True)
            if any(pending.overdue and not pending.done.is_set() for _, pending in waits):
                self.stats.timeouts += 1
                raise FetchError(f"reading {obj.key} ({what}): the store has not "
                                 f"answered for longer than {self.read_deadline:g} s")
            retry = []
            try:
                for (index, a, b), pending in waits:
                    await pending.done.wait()
                    if pending.error is None:
                        assert pending.data is not None
                        got[index] = piece_slice(pending.data, a, b)
                    elif pending.started_by_reader or attempt == 2:
                        if trio.current_time() - pending.started >= self.read_deadline / 2:
                            # A slow failure (a stalling server): the kernel retries a
                            # failed page read at once; answer that retry now rather than
                            # with a second long wait. A quick failure may be retried.
                            self._failed[(obj.sha256, index)] = pending.error
                        raise FetchError(pending.error)
                    else:
                        retry.append((index, a, b))
                for need, pending in elsewhere:
                    await pending.done.wait()
                    piece = self._memory.get((obj.sha256, need[0]))
                    if piece is not None and _holds(piece, need[1], need[2]):
                        got[need[0]] = piece_slice(piece, need[1], need[2])
                    else:
                        retry.append(need)
            except trio.Cancelled:
                for _, pending in waits:
                    pending.overdue = not pending.done.is_set()
                raise
            if any(need not in [n for n, _ in elsewhere] for need in retry):
                attempt = 2  # a failed warm's blocks are asked for once more, and no more
            missing = retry

    async def warm(self, obj: ObjectRef, start: int, end: int, *, into_memory: bool = False,
                   max_request: int | None = None, exact: bool = False) -> str | None:
        """Fetch what is not yet cached of [start, end); never raises, returns why a block
        could not be had (None when all went well).

        Uses the background slots, so it cannot starve read(). Warmed blocks go
        to memory and disk both. Blocks already on disk are left there, unless
        `into_memory` (read-ahead): then they are loaded from disk in one batch
        ahead of the reader, which would otherwise wait on the disk block by
        block. `max_request` allows longer GETs than the cache's default (a
        track pulled whole streams in one request). `exact`: fetch these bytes
        and no more, though they end or start inside a block (a scan's tag
        zones). If the caller is cancelled, loads that only warmers wanted are
        stopped.
        """
        start, end = max(start, 0), min(end, obj.size)
        if start >= end or obj.inset is None:
            return await self._warm(obj, start, end, into_memory, max_request, exact)
        low, high = obj.inset.offset, obj.inset.offset + obj.inset.object.size
        errors: list[str | None] = []

        async def around(a: int, b: int) -> None:
            errors.append(await self._warm(obj, a, b, into_memory, max_request, exact))

        filled: list[bool] = []

        async def fill() -> None:
            filled.append(await self._fill_inset(obj, start, end))

        async with trio.open_nursery() as nursery:  # the cover and the bytes around it, at once
            nursery.start_soon(fill)
            for a, b in ((start, min(end, low)), (max(start, high), end)):
                if a < b:
                    nursery.start_soon(around, a, b)
        if filled[0]:  # the bytes around it may have come after it did, and only now meet it
            await self._fill_inset(obj, start, end)
        # what the cover's object could not bring comes from obj itself (nothing, when it did)
        errors.append(await self._warm(obj, max(start, low), min(end, high), into_memory, max_request, exact))
        return next((error for error in errors if error), None)

    async def _warm(self, obj: ObjectRef, start: int, end: int, into_memory: bool, max_request: int | None,
                    exact: bool) -> str | None:
        """warm() of bytes of obj itself."""
        if start >= end:
            return None
        needs = self._needs(obj, start, end)
        if not exact:
            needs = [(index, 0, self._block_length(obj, index)) for index, _, _ in needs]
        wanted = [need for need in needs if not self._cached(obj, need, in_memory=into_memory)]
        per_request = max(1, max_request // self.block_size) if max_request else None
        error = None
        for _ in range(3):  # a load bringing other bytes of a block: wait for it, claim again
            waits, elsewhere = self._claim(obj, wanted, urgent=False, per_request=per_request, exact=exact)
            for _, pending in waits:
                pending.warmers += 1
            try:
                for _, pending in waits:
                    await pending.done.wait()
                    error = pending.error or error
                for _, pending in elsewhere:
                    await pending.done.wait()
            finally:
                for _, pending in waits:
                    pending.warmers -= 1
                self._stop_unwanted({id(p.load): p.load for _, p in waits if p.load is not None}.values())
            wanted = [need for need, _ in elsewhere if not self._cached(obj, need, in_memory=into_memory)]
            if not wanted:
                break
        if error is not None:
            self.stats.warm_failures += 1
            log.debug("warming %s bytes %d-%d: %s", obj.key, start, end - 1, error)
        return error

    # --- insets: a run of an object's bytes read from the shared object that holds them ---

    async def _read_inset(self, obj: ObjectRef, missing: list[Need], got: dict[int, bytes]) -> list[Need]:
        """Serve what the missing needs hold of obj's inset from the inset's object, into `got`;
        return the needs still missing. The bytes beside the inset are claimed from obj first, so
        both come at once. A read across the inset's edge is the usual case, not a rare one: the
        kernel reads whole pages, and the audio after a picture seldom starts on a page."""
        bs = self.block_size
        touching = [need for need in missing if self._inset_part(obj, need[0], need[1], need[2]) is not None]
        if not touching:
            return missing
        beside = [part for need in missing if (part := self._beside_inset(obj, need)) is not None]
        if beside:
            self._claim(obj, beside, urgent=True)
        await self._fill_inset(obj, touching[0][0] * bs + touching[0][1], touching[-1][0] * bs + touching[-1][2])
        still = []
        for need in missing:  # the others' loads may have ended meanwhile too
            piece = self._memory.get((obj.sha256, need[0]))
            if piece is not None and _holds(piece, need[1], need[2]):
                got[need[0]] = piece_slice(piece, need[1], need[2])
            else:
                still.append(need)  # being loaded, or the inset could not be read: from obj itself
        return still

    def _inset_part(self, obj: ObjectRef, index: int, start: int = 0, end: int | None = None) -> tuple[int, int] | None:
        """What [start, end) of a block (the whole block by default) holds of obj's inset."""
        if obj.inset is None:
            return None
        base = index * self.block_size
        low = max(obj.inset.offset - base, start)
        high = min(obj.inset.offset + obj.inset.object.size - base,
                   self._block_length(obj, index) if end is None else end)
        return (low, high) if low < high else None

    def _beside_inset(self, obj: ObjectRef, need: Need) -> Need | None:
        """The part of a need its block's own bytes must bring: none when the inset holds all of
        it, the bytes on one side when the inset holds the other, else the whole need (a small
        inset inside it: a block is one run)."""
        index, a, b = need
        part = self._inset_part(obj, index, a, b)
        if part is None:
            return need
        if part == (a, b):
            return None
        if part[0] == a:
            return index, part[1], b
        if part[1] == b:
            return index, a, part[0]
        return need

    async def _fill_inset(self, obj: ObjectRef, start: int, end: int) -> bool:
        """Put what [start, end) holds of obj's inset into obj's blocks, read from the inset's
        object (fetched once for every track that holds it). Never raises: what could not be
        had this way is left to be fetched from obj itself. Returns False if the inset's object
        could not be read.

        Only parts that join what a block holds are put (a block is one run of bytes), and a
        block's part is widened to the whole inset within it, so the bytes around the inset are
        all that is left to fetch from obj. A part whose block a load is bringing other bytes
        of waits for that load: put before, it would be replaced when the load's bytes came."""
        inset = obj.inset
        assert inset is not None
        low, high = max(start, inset.offset), min(end, inset.offset + inset.object.size)
        if low >= high:
            return True
        bs = self.block_size
        parts = [(index, *part) for index, _, _ in self._needs(obj, low, high)
                 if (part := self._inset_part(obj, index)) is not None]
        parts = [part for part in parts if self._room_for(obj, part) is not _Room.NONE]
        if not parts:
            return True
        first, last = parts[0][0] * bs + parts[0][1], parts[-1][0] * bs + parts[-1][2]
        try:
            data = await self.read(inset.object, first - inset.offset, last - first)
        except FetchError as exc:
            log.debug("reading %s for %s: %s; reading the track's own bytes", inset.object.key, obj.key, exc)
            return False
        if len(data) != last - first:  # the inset's object is shorter than the record says
            return False
        saved = []
        for waits in range(INSET_WAITS + 1):
            later = []
            for index, a, b in parts:
                room = self._room_for(obj, (index, a, b))
                if room is _Room.LATER:
                    later.append((index, a, b))
                elif room is _Room.NOW:
                    at = index * bs + a - first
                    piece = data[at:at + b - a]
                    whole = a == 0 and b == self._block_length(obj, index)
                    saved.append((index, self._remember(obj, index, piece if whole else Part(a, piece))))
                    self.stats.inset_bytes += b - a
            parts = later
            if not parts or waits == INSET_WAITS:
                break
            for index in sorted({index for index, _, _ in parts}):
                pending = self._pending.get((obj.sha256, index))
                if pending is not None:
                    await pending.done.wait()
        self.disk.save_soon(obj.sha256, saved)
        return True

    def _room_for(self, obj: ObjectRef, part: Need) -> _Room:
        """Whether a part of a block read from an inset can be put there now: it is not held
        yet, it meets what the block holds (if anything), and a load in flight for the block
        brings bytes that meet it (their join keeps both). A part the disk holds would be
        replaced by this one, and then fetched again: that block is left to the track's own
        load, or to the load in flight, after which there may be room."""
        index, a, b = part
        key = (obj.sha256, index)
        pending = self._pending.get(key)
        if key in self._memory:
            held = piece_range(self._memory[key])
            if held[0] <= a and b <= held[1]:
                return _Room.NONE
            meets = held[0] <= b and a <= held[1]
        else:
            meets = self.disk.held(key, self._block_length(obj, index)) is None
        if pending is None:
            return _Room.NOW if meets else _Room.NONE
        return _Room.NOW if meets and pending.start <= b and a <= pending.end else _Room.LATER

    def cached(self, obj: ObjectRef, start: int, end: int, *, in_memory: bool = False) -> bool:
        """Whether every byte of [start, end) is in memory (or, unless `in_memory`, on disk); no I/O."""
        start, end = max(start, 0), min(end, obj.size)
        if start >= end:
            return True
        return all(self._cached(obj, need, in_memory=in_memory) for need in self._needs(obj, start, end))

    def cached_bytes(self, obj: ObjectRef) -> int:
        """How many of the object's bytes are in the cache (memory or disk); no I/O."""
        total = 0
        for index in range((obj.size + self.block_size - 1) // self.block_size):
            key = (obj.sha256, index)
            piece = self._memory.get(key)
            if piece is not None:
                a, b = piece_range(piece)
                total += b - a
            elif self.disk.has(key, 0, self._block_length(obj, index)):
                total += self._block_length(obj, index)
        return total

    # --- pinned objects: kept whole on disk for offline play ---

    def set_pinned(self, objects: Iterable[str]) -> None:
        """Pin exactly these objects (sha256): their blocks on disk are never evicted.
        Call it before open() too, so the blocks already there are indexed as pinned."""
        self.disk.set_pinned(objects)

    def is_pinned(self, obj: ObjectRef) -> bool:
        return self.disk.is_pinned(obj.sha256)

    def on_disk(self, obj: ObjectRef) -> int:
        """How many of the object's bytes the disk holds as whole blocks; no I/O."""
        return sum(self._block_length(obj, index) for index in range(self._blocks(obj))
                   if self.disk.holds_whole((obj.sha256, index)))

    async def keep_on_disk(self, obj: ObjectRef, attempts: int = 3) -> str | None:
        """Bring every block of a pinned object to the disk, then check the whole object
        there against its SHA-256; returns None, or why it is not kept.

        Blocks memory holds are written from there; the others are fetched in one streamed
        GET per run (the background slots, so readers keep theirs). A block the disk did not
        take (its writer lagged behind, see DiskCache.save_soon) is tried again. Bytes that do
        not hash to the object's name are dropped from memory and disk.
        """
        # The disk copy is checked below; the check of GETs that complete an object in
        # memory (_verify) would only race it, so it is not started meanwhile.
        self._verified[obj.sha256] = True
        error = await self._keep_on_disk(obj, attempts)
        if error is not None:
            self._verified.pop(obj.sha256, None)
        return error

    async def _keep_on_disk(self, obj: ObjectRef, attempts: int) -> str | None:
        error = None
        for _ in range(attempts):
            missing = [index for index in range(self._blocks(obj)) if not self.disk.holds_whole((obj.sha256, index))]
            if not missing:
                break
            if not self.disk.enabled:
                return "the disk cache is not being written (a full or failing disk: see the mount log)"
            held = [(index, piece) for index in missing
                    if isinstance(piece := self._memory.get((obj.sha256, index)), bytes)]
            self.disk.save_soon(obj.sha256, held)
            if len(held) < len(missing):
                error = await self.warm(obj, 0, obj.size, max_request=self._blocks(obj) * self.block_size) or error
            while self.disk.writing:
                await trio.sleep(0.01)
        else:
            if any(not self.disk.holds_whole((obj.sha256, index)) for index in range(self._blocks(obj))):
                return error or "the disk cache did not take all of it"
        verified = await self._hashes_on_disk(obj)
        if verified is None:
            return "a block of it went bad in the disk cache as it was checked"
        if not verified:
            return (f"the store sent bytes for {obj.key} that do not hash to its name (the bucket, or "
                    "something between it and us, is damaging data)")
        return None

    async def _hashes_on_disk(self, obj: ObjectRef) -> bool | None:
        """Whether the blocks on disk hash to the object's name (None: one is missing after
        all); if they do not, they are dropped (memory too): the disk copy is what plays offline."""
        digest = hashlib.sha256()
        blocks = self._blocks(obj)
        for first in range(0, blocks, DISK_BATCH):
            indices = range(first, min(blocks, first + DISK_BATCH))
            found = await self.disk.read(obj.sha256, [(i, self._block_length(obj, i)) for i in indices])
            if any(not isinstance(found.get(i), bytes) for i in indices):
                return None  # damaged on disk meanwhile: the read dropped it
            await trio.to_thread.run_sync(_hash_into, digest, [found[i] for i in indices])
        if digest.hexdigest() == obj.sha256:
            return True
        self.stats.corrupt_objects += 1
        log.error("the store sent bytes for %s that do not hash to its name; dropped them from the cache",
                  obj.key)
        keys = [(obj.sha256, i) for i in range(blocks)]
        for key in keys:
            self._memory.pop(key, None)
        await self.disk.drop(keys)
        return False

    def _blocks(self, obj: ObjectRef) -> int:
        return (obj.size + self.block_size - 1) // self.block_size

    def _cached(self, obj: ObjectRef, need: Need, *, in_memory: bool = False) -> bool:
        index, a, b = need
        key = (obj.sha256, index)
        piece = self._memory.get(key)
        if piece is not None and _holds(piece, a, b):
            return True
        return not in_memory and self.disk.has(key, a, b)

    def _whole(self, obj: ObjectRef, index: int) -> bool:
        return self._cached(obj, (index, 0, self._block_length(obj, index)))

    def _remember(self, obj: ObjectRef, index: int, piece: Piece) -> Piece:
        """Put a piece in memory, joined to what memory holds of its block; returns the result."""
        key = (obj.sha256, index)
        merged = _join(self._memory.get(key), piece, self._block_length(obj, index))
        if _piece_size(merged) <= self._memory.maxsize:
            self._memory[key] = merged
        return merged

    # --- loading ---

    def _claim(self, obj: ObjectRef, needs: list[Need], *, urgent: bool, per_request: int | None = None,
               exact: bool = False) -> tuple[list[tuple[Need, _Pending]], list[tuple[Need, _Pending]]]:
        """Join the load in flight that brings each need, and start one load for the others.

        Returns (needs and the loads bringing them, needs whose block a load
        is bringing other bytes of: wait for it, then claim again). A new load
        brings the whole block, or with `exact` (or from the disk) just the
        bytes needed.
        """
        waits = []
        elsewhere = []
        mine = []
        for need in needs:
            index, a, b = need
            key = (obj.sha256, index)
            pending = self._pending.get(key)
            if pending is None:
                # the bytes needed, when the disk has them (a part of the block there serves
                # them) or when asked for exactly (less what is held); else the rest of the block
                if self.disk.has(key, a, b):
                    start, end = self._meeting(obj, index, a, b)
                elif exact:
                    start, end = self._meeting(obj, index, *self._unheld(obj, index, a, b))
                else:
                    start, end = self._meeting(obj, index, *self._rest(obj, index, a, b))
                pending = self._pending[key] = _Pending(urgent, start, end)
                mine.append(index)
            elif not pending.brings(a, b):
                elsewhere.append((need, pending))
                continue
            else:
                self.stats.joins += 1
                if urgent:
                    pending.hurry()
            waits.append((need, pending))
        if mine:
            trio.lowlevel.spawn_system_task(self._load, obj, mine, per_request or self._blocks_per_request,
                                            name=f"lockerfs.cache load {obj.key}")
        return waits, elsewhere

    def _held(self, obj: ObjectRef, index: int) -> tuple[int, int] | None:
        """The run of bytes memory, else the disk, holds of a block; None if neither holds any."""
        key = (obj.sha256, index)
        piece = self._memory.get(key)
        return piece_range(piece) if piece is not None else self.disk.held(key, self._block_length(obj, index))

    def _rest(self, obj: ObjectRef, index: int, start: int, end: int) -> tuple[int, int]:
        """What a reader's load of [start, end) brings: the block, less what lies wholly to one
        side of [start, end) at an end of the block and is either held already or obj's inset
        (its bytes come from the inset's object): the bytes around a cover are all it fetches."""
        load_start, load_end = 0, self._block_length(obj, index)
        runs = sorted(run for run in (self._held(obj, index), self._inset_part(obj, index)) if run is not None)
        for low, high in runs:  # from the block's start: an inset, then the bytes held after it
            if low <= load_start < high <= start:
                load_start = high
        for low, high in reversed(runs):  # and from its end
            if end <= low < load_end <= high:
                load_end = low
        return load_start, load_end

    def _unheld(self, obj: ObjectRef, index: int, start: int, end: int) -> tuple[int, int]:
        """[start, end) less what the block holds at one end of it. Only for a warm's exact
        load: nobody slices its bytes out of the load itself (a reader joining it must find
        its bytes in [start, end), or waits and claims again)."""
        held = self._held(obj, index)
        if held is not None:
            if held[0] <= start < held[1] < end:
                return held[1], end
            if start < held[0] < end <= held[1]:
                return start, held[0]
        return start, end

    def _meeting(self, obj: ObjectRef, index: int, start: int, end: int) -> tuple[int, int]:
        """[start, end) widened to meet the bytes of the block already held, so the two join.

        A block is held as one run of bytes (a Part), in memory and on disk: a
        load that left a hole would make the join keep only the newer run, and
        bytes a reader already had would be fetched again. Filling the hole
        costs less than a block.
        """
        held = self._held(obj, index)
        if held is None:
            return start, end
        return min(start, held[1]), max(end, held[0])

    async def _load(self, obj: ObjectRef, indices: list[int], per_request: int) -> None:
        """Bring claimed blocks in from the disk, or start GETs for them.

        A system task: it must not raise, and every claimed block ends up
        finished and unclaimed, here or when its GET ends.
        """
        pendings = {i: self._pending[(obj.sha256, i)] for i in indices}
        started: set[int] = set()
        try:
            found = await self.disk.read(obj.sha256, [(i, self._block_length(obj, i)) for i in indices])
            for index, piece in found.items():
                merged = self._remember(obj, index, piece)
                pending = pendings[index]
                if _holds(merged, pending.start, pending.end):
                    self._finish(obj, index, pending, data=merged)
            todo = sorted(i for i in indices if not pendings[i].done.is_set())
            for piece in self._runs(obj, todo, pendings, per_request):
                waiting = {i: pendings[i] for i in piece}
                if all(p.unwanted for p in waiting.values()):  # the warm that wanted them gave up
                    for index, pending in waiting.items():
                        self._finish(obj, index, pending, error="no longer wanted")
                    continue
                self._start_fetch(obj, waiting)
                started.update(piece)
        except Exception:
            log.exception("loading blocks of %s failed", obj.key)
        finally:
            for index, pending in pendings.items():
                if index not in started:
                    self._finish(obj, index, pending, error=f"reading {obj.key} was interrupted")

    def _runs(self, obj: ObjectRef, indices: list[int], pendings: dict[int, _Pending],
              per_request: int) -> list[list[int]]:
        """Ascending block indices -> runs that one GET can bring: contiguous bytes (a part of
        a block ends a run unless it reaches the block's end, or starts one unless it starts at
        the block's start), at most per_request blocks long."""
        runs: list[list[int]] = []
        for index in indices:
            if runs and runs[-1][-1] == index - 1 and len(runs[-1]) < per_request \
                    and pendings[index - 1].end == self._block_length(obj, index - 1) and pendings[index].start == 0:
                runs[-1].append(index)
            else:
                runs.append([index])
        return runs

    def _start_fetch(self, obj: ObjectRef, waiting: dict[int, _Pending]) -> None:
        load = _Load(obj, waiting)
        for pending in waiting.values():
            pending.load = load
        first, last = min(waiting), max(waiting)
        start = first * self.block_size + waiting[first].start
        end = last * self.block_size + waiting[last].end
        self._fetching += 1
        load.fetch = self._fetcher.start(
            obj, start, end, urgent=any(p.urgent for p in waiting.values()),
            deliver=lambda index, offset, data: self._delivered(load, index, offset, data),
            ended=lambda fetch, position, error: self._fetch_ended(load, error))

    def _delivered(self, load: _Load, index: int, offset: int, data: bytes) -> None:
        """A piece arrived (trio thread, from the fetcher): to memory, its waiters, soon the disk."""
        try:
            whole = offset == 0 and len(data) == self._block_length(load.obj, index)
            piece = self._remember(load.obj, index, data if whole else Part(offset, data))
            self._finish(load.obj, index, load.pendings[index], data=piece)
            load.to_disk.append((index, piece))
            load.undelivered -= 1
            # The last block goes to the disk with the rest at once, not when the GET's thread
            # ends: whoever waited for the blocks then finds them written or being written.
            if len(load.to_disk) >= DISK_BATCH or load.undelivered == 0:
                self.disk.save_soon(load.obj.sha256, load.to_disk)
                load.to_disk = []
        except Exception:  # a callback of the trio loop must never raise
            log.exception("taking block %d of %s", index, load.obj.key)

    def _fetch_ended(self, load: _Load, error: str | None) -> None:
        self._fetching -= 1
        try:
            self.disk.save_soon(load.obj.sha256, load.to_disk)
            load.to_disk = []
            reason = error or f"reading {load.obj.key} was stopped"
            for index, pending in load.pendings.items():
                if not pending.done.is_set():
                    self._finish(load.obj, index, pending, error=reason)
                pending.load = None  # a cycle with its bytes in it would wait for a full gc
            if error is None and load.obj.sha256 not in self._verified and self._complete(load.obj):
                self._verified[load.obj.sha256] = True
                trio.lowlevel.spawn_system_task(self._verify, load.obj, name=f"lockerfs.cache verify {load.obj.key}")
        except Exception:
            log.exception("ending a GET of %s", load.obj.key)

    def _finish(self, obj: ObjectRef, index: int, pending: _Pending, *, data: Piece | None = None,
                error: str | None = None) -> None:
        pending.finish(data, error)
        key = (obj.sha256, index)
        if self._pending.get(key) is pending:
            del self._pending[key]

    def _stop_unwanted(self, loads: object) -> None:
        """Stop each GET whose undelivered blocks nobody waits for any more."""
        for load in loads:  # type: ignore[attr-defined]
            if not load.fetch.stopped and all(p.unwanted or p.done.is_set() for p in load.pendings.values()):
                load.fetch.stop()

    def _block_length(self, obj: ObjectRef, index: int) -> int:
        return min(self.block_size, obj.size - index * self.block_size)

    # --- verification of whole objects ---

    def _complete(self, obj: ObjectRef) -> bool:
        blocks = (obj.size + self.block_size - 1) // self.block_size
        return all(self._whole(obj, i) for i in range(blocks))

    async def _verify(self, obj: ObjectRef) -> None:
        """Hash an object whose blocks are all cached; drop them if they are not its bytes.

        Blocks are taken from memory where they are and from disk otherwise;
        one that is gone meanwhile ends the check (it is no longer complete).
        """
        try:
            blocks = (obj.size + self.block_size - 1) // self.block_size
            digest = hashlib.sha256()
            for first in range(0, blocks, DISK_BATCH):
                indices = range(first, min(blocks, first + DISK_BATCH))
                batch: dict[int, Piece | None] = {i: self._memory.get((obj.sha256, i)) for i in indices}
                absent = [(i, self._block_length(obj, i)) for i, piece in batch.items()
                          if not isinstance(piece, bytes)]
                if absent:
                    batch.update(await self.disk.read(obj.sha256, absent))
                if any(not isinstance(batch.get(i), bytes) for i in indices):
                    self._verified.pop(obj.sha256, None)
                    return
                # hashlib lets go of the GIL: hashing in a worker keeps the loop free
                await trio.to_thread.run_sync(_hash_into, digest, [batch[i] for i in indices])
            if digest.hexdigest() == obj.sha256:
                self.stats.verified_objects += 1
                return
            self.stats.corrupt_objects += 1
            log.error("the store sent bytes for %s that do not hash to its name; dropped them from "
                      "the cache (the bucket or something between it and us is damaging data)", obj.key)
            keys = [(obj.sha256, i) for i in range(blocks)]
            for key in keys:
                self._memory.pop(key, None)
            await self.disk.drop(keys)
            self._verified.pop(obj.sha256, None)
        except Exception:
            log.exception("verifying %s failed", obj.key)


def _piece_size(piece: Piece) -> int:
    return len(piece) if isinstance(piece, bytes) else len(piece.data)


def _holds(piece: Piece, start: int, end: int) -> bool:
    held = piece_range(piece)
    return held[0] <= start and end <= held[1]


def _join(old: Piece | None, new: Piece, block_length: int | None) -> Piece:
    """What to keep of a block given what was held and what arrived: a whole block wins; two
    parts that meet become one (whole if it covers the block); else the newer part."""
    if old is None or isinstance(new, bytes):
        return new
    if isinstance(old, bytes):
        return old
    (a0, b0), (a1, b1) = piece_range(old), piece_range(new)
    if a1 > b0 or a0 > b1:
        return new
    start, end = min(a0, a1), max(b0, b1)
    joined = bytearray(end - start)
    joined[a0 - start:b0 - start] = old.data
    joined[a1 - start:b1 - start] = new.data
    if start == 0 and end == block_length:
        return bytes(joined)
    return Part(start, bytes(joined))


def _hash_into(digest: hashlib._Hash, blocks: list[Piece | None]) -> None:
    for block in blocks:
        assert isinstance(block, bytes)
        digest.update(block)
