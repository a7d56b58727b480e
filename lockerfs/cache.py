"""Block cache: a memory LRU over a bounded, persistent disk cache, over the store.

Objects are immutable and named by their SHA-256, so a block, once fetched and
verified, is valid forever: nothing is ever invalidated, only evicted.

Block i of an object covers bytes [i*block_size, min((i+1)*block_size, size)).
A block is looked for in three places, in this order:

1. memory: a cachetools LRU of bytes, bounded by memory_limit (sum of lengths);
2. disk: one file per block, <cache_dir>/blocks/<sha[:2]>/<sha>-<index>, with
   a versioned, checksummed header; bounded by disk_limit (sum of file sizes);
3. the store: one ranged GET per run of contiguous missing blocks, cut into
   requests of at most max_request bytes that run in parallel.

Invariants
- What read() returns is the object's bytes or an error, never other bytes: a
  block file whose header or checksum does not match is deleted and fetched
  again; a short answer from the store is an error and is not cached.
- A read answers within read_deadline. Once a reader gave up on a load at
  its deadline, later readers of that load fail at once until it ends (the
  kernel retries a failed page with a second read; one read() must still
  fail within one deadline); the next read starts a fresh load. Likewise a
  block whose load failed a reader slowly (after half a deadline or more)
  fails at once for FAILED_TTL, and a
  reader whose joined load (started earlier by a warmer) failed tries once
  more within its own deadline.
- One load per block: `_pending` maps (sha, index) to the one load in flight,
  and every reader and warmer of that block waits on it. An entry lives from
  its claim until the block is in memory and on disk (or has failed).
- `_disk_bytes` is the sum of the sizes of the indexed block files. Writes are
  serialized by `_write_lock` and shielded from cancellation, and a writer
  deletes its victims before it writes, so the directory never holds more
  than disk_limit bytes of blocks, temp files included.
- Memory: the LRU (<= memory_limit), blocks of loads in flight (<= the slots
  times max_request, plus what readers are assembling), blocks waiting to be
  written (<= the same again: beyond that a slow disk is skipped, not waited
  for), and the disk index (about 200 bytes per block on disk).

Lock rules
- The tables (memory LRU, disk index, `_pending`, stats) are touched only on
  the trio thread. A lookup followed by a claim with no await in between is
  atomic, so the tables need no locks, and a claim needs no re-check.
- Worker threads do file and store I/O on the arguments they are given and
  return results; they never touch the tables.
- Only the load that claimed a block writes its file; eviction deletes only
  files already removed from the index.
- Loads run as trio system tasks, not in the reader's task: a reader that
  gives up at its deadline leaves the load running, so other waiters still
  get the block and it is still cached when the store finally answers.
- Between processes: an exclusive flock on <cache_dir>/lock, held from open()
  to close().
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import re
import stat
import struct
import sys
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cachetools
import trio

from lockerfs.store import Store, StoreError

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_BLOCK_NAME_RE = re.compile(r"([0-9a-f]{64})-(\d+)")

# Block file header: magic, format version, block size, sha256 of the object
# (raw), block index, data length, CRC-32 of the data. The block size is there
# because a mount with another --block-size numbers blocks differently: its
# block 1 could have the same index and length but other bytes. CRC-32 because the threat is
# accidental damage (torn writes after a crash, bit rot, truncation), which it
# detects at memory speed; a cryptographic hash would not stop a deliberate
# forger, who can write a matching digest into our own directory just as well.
_MAGIC = b"LKBC"
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHI32sQII")

BlockKey = tuple[str, int]  # (sha256, block index)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An object to read: where it is in the store and what it is."""

    key: str  # store key
    sha256: str  # identity, and the cache key
    size: int

    def __post_init__(self) -> None:
        # The digest names files in the cache dir: anything else could escape it.
        if not _SHA_RE.fullmatch(self.sha256):
            raise ValueError(f"not a lower-case SHA-256 hex digest: {self.sha256!r}")
        if self.size < 0:
            raise ValueError(f"negative object size {self.size} for {self.key}")


class FetchError(Exception):
    """A read that could not be served; the filesystem answers it with EIO."""


class CacheInUse(Exception):
    """Another live process holds this cache directory."""


class UnsafeCacheDir(Exception):
    """The cache directory could be changed by another user."""


@dataclass
class CacheStats:
    """Counters for logs, benchmarks and tests. Blocks unless named otherwise."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0  # blocks asked of the store
    joins: int = 0  # waits on a load someone else had started
    requests: int = 0  # GETs sent
    failed_requests: int = 0
    fetched_bytes: int = 0
    timeouts: int = 0  # reads that gave up at read_deadline
    warm_failures: int = 0  # warm() calls that could not fetch everything
    corrupt_blocks: int = 0
    disk_errors: int = 0
    disk_skipped: int = 0  # not written: the disk lagged too far behind
    evicted_blocks: int = 0  # from disk


class _Found(enum.Enum):
    HIT = enum.auto()
    MISSING = enum.auto()
    CORRUPT = enum.auto()
    FAILED = enum.auto()


class _Corrupt(Exception):
    """A block file that must not be served."""


class _Slot:
    """The worker-thread slot of one GET, in trio's limiter protocol.

    It queues on the background limiter while only warmers want its blocks;
    when a reader joins, hurry() moves it to the foreground queue, so a player
    never waits behind prefetch for bytes it needs now. Once a slot is held
    the GET is under way and nothing changes.
    """

    def __init__(self, limiter: trio.CapacityLimiter, foreground: trio.CapacityLimiter) -> None:
        self._want = limiter
        self._foreground = foreground
        self._held: trio.CapacityLimiter | None = None
        self._queue: trio.CancelScope | None = None

    def hurry(self) -> None:
        if self._held is None and self._want is not self._foreground:
            self._want = self._foreground
            if self._queue is not None:
                self._queue.cancel()

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        while True:
            limiter = self._want
            with trio.CancelScope() as self._queue:
                await limiter.acquire_on_behalf_of(borrower)
                self._held = limiter
                return
            # hurry() cancelled the wait: queue again on the foreground limiter

    def release_on_behalf_of(self, borrower: object) -> None:
        assert self._held is not None
        self._held.release_on_behalf_of(borrower)


FAILED_TTL = 1.0  # seconds a block that failed a reader is not asked for again (the kernel retries at once)


class _Pending:
    """One block being loaded; everyone who needs it waits on `done`."""

    __slots__ = ("done", "data", "error", "urgent", "started_by_reader", "started", "slot", "overdue")

    def __init__(self, urgent: bool) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: str | None = None
        self.urgent = urgent  # a reader (not only a warmer) waits for it
        self.started_by_reader = urgent
        self.started = trio.current_time()
        self.slot: _Slot | None = None
        # A reader gave up on it at its deadline. Later readers fail at once
        # instead of waiting a deadline of their own: the kernel retries a
        # failed page read with a second request, and a player's one read()
        # must still fail within one deadline. The next load starts afresh.
        self.overdue = False

    def hurry(self) -> None:
        self.urgent = True
        if self.slot is not None:
            self.slot.hurry()

    def finish(self, data: bytes | None = None, error: str | None = None) -> None:
        if not self.done.is_set():
            self.data, self.error = data, error
            self.done.set()


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
        if disk_limit < 0 or memory_limit < 0:
            raise ValueError("cache limits cannot be negative")
        self.block_size = block_size
        self.read_deadline = read_deadline
        self.stats = CacheStats()
        self._store = store
        self._dir = cache_dir
        self._blocks_dir = str(cache_dir / "blocks") if cache_dir is not None else ""
        self._disk_limit = disk_limit
        self._blocks_per_request = max_request // block_size
        self._foreground = trio.CapacityLimiter(foreground_slots)
        self._background = trio.CapacityLimiter(background_slots)
        self._memory: cachetools.LRUCache[BlockKey, bytes] = cachetools.LRUCache(
            maxsize=memory_limit, getsizeof=len)
        self._index: OrderedDict[BlockKey, int] = OrderedDict()  # LRU first; value: file size
        self._disk_bytes = 0
        self._disk_on = False  # new blocks are written to disk
        self._write_lock = trio.Lock()
        self._write_backlog = 0  # bytes of blocks waiting for _write_lock
        self._max_write_backlog = max_request * (foreground_slots + background_slots)
        self._pending: dict[BlockKey, _Pending] = {}
        # Blocks whose load just failed a reader -> why; a read of them fails at once meanwhile.
        self._failed: cachetools.TTLCache[BlockKey, str] = cachetools.TTLCache(maxsize=4096, ttl=FAILED_TTL)
        self._lock_fd: int | None = None

    @property
    def memory_bytes(self) -> int:
        return int(self._memory.currsize)

    @property
    def disk_bytes(self) -> int:
        return self._disk_bytes

    @property
    def disk_enabled(self) -> bool:
        return self._disk_on

    @property
    def pending_blocks(self) -> int:
        return len(self._pending)

    # --- lifecycle (synchronous, outside trio) ---

    def open(self) -> None:
        """Take the cache dir for this process and index the blocks already there."""
        if self._lock_fd is not None:
            raise RuntimeError(f"the cache at {self._dir} is already open")
        if self._dir is None:
            return
        make_private_dir(self._dir)
        _check_safe(self._dir)
        os.makedirs(self._blocks_dir, mode=0o700, exist_ok=True)
        self._lock_fd = _take_lock(self._dir)
        try:
            self._load_index()
        except BaseException:
            self.close()
            raise
        self._disk_on = True
        log.debug("disk cache %s: %d blocks, %d of %d bytes",
                  self._dir, len(self._index), self._disk_bytes, self._disk_limit)

    def close(self) -> None:
        """Release the cache dir; its blocks stay for the next open()."""
        self._disk_on = False
        self._index.clear()
        self._disk_bytes = 0
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> BlockCache:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _load_index(self) -> None:
        """Rebuild the disk index, least recently used (oldest mtime) first."""
        found: list[tuple[int, BlockKey, int]] = []
        with os.scandir(self._blocks_dir) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        if entry.name.endswith(".tmp"):  # a write cut short by a crash
                            _unlink(entry.path)
                            continue
                        match = _BLOCK_NAME_RE.fullmatch(entry.name)
                        if not match or shard.name != match[1][:2] or not entry.is_file(follow_symlinks=False):
                            continue
                        st = entry.stat(follow_symlinks=False)
                        sha = sys.intern(match[1])  # one string for all blocks of an object
                        found.append((st.st_mtime_ns, (sha, int(match[2])), st.st_size))
        found.sort()
        for _, key, size in found:
            self._index[key] = size
            self._disk_bytes += size
        while self._disk_bytes > self._disk_limit:  # the limit shrank since the last mount
            key, size = self._index.popitem(last=False)
            _unlink(self._path(key))
            self._disk_bytes -= size
            self.stats.evicted_blocks += 1

    # --- reading ---

    async def read(self, obj: ObjectRef, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of obj, shorter only at its end.

        Raises FetchError if the bytes cannot be had within read_deadline.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        end = min(offset + length, obj.size)
        if offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        blocks: dict[int, bytes] = {}
        for index in range(first, last + 1):
            data = self._memory.get((obj.sha256, index))
            if data is not None:
                blocks[index] = data
                self._touch_disk((obj.sha256, index))
        self.stats.memory_hits += len(blocks)
        missing = [i for i in range(first, last + 1) if i not in blocks]
        if missing:
            try:
                with trio.fail_after(self.read_deadline):
                    await self._wait_for(obj, missing, blocks, f"bytes {offset}-{end - 1}")
            except trio.TooSlowError:
                self.stats.timeouts += 1
                raise FetchError(f"reading {obj.key} (bytes {offset}-{end - 1}) took longer "
                                 f"than {self.read_deadline:g} s") from None
        base = first * self.block_size
        if first == last:
            return blocks[first][offset - base:end - base]
        return b"".join(blocks[i] for i in range(first, last + 1))[offset - base:end - base]

    async def _wait_for(self, obj: ObjectRef, missing: list[int], blocks: dict[int, bytes], what: str) -> None:
        """Claim the missing blocks and wait for them into `blocks`; the caller sets the deadline.

        A load that a warmer started earlier and that failed is tried once
        more: this reader's deadline has time left, and the warm may have been
        stuck long before the reader came. A load a reader started that failed
        is final, so a server that refuses connections gives EIO at once.
        """
        for attempt in (1, 2):
            failed = next((self._failed[(obj.sha256, i)] for i in missing if (obj.sha256, i) in self._failed), None)
            if failed is not None:
                raise FetchError(f"{failed} (failed moments ago; not asking again yet)")
            waits = self._claim(obj, missing, urgent=True)
            if any(pending.overdue and not pending.done.is_set() for _, pending in waits):
                self.stats.timeouts += 1
                raise FetchError(f"reading {obj.key} ({what}): the store has not "
                                 f"answered for longer than {self.read_deadline:g} s")
            retry = []
            try:
                for index, pending in waits:
                    await pending.done.wait()
                    if pending.error is None:
                        assert pending.data is not None
                        blocks[index] = pending.data
                    elif pending.started_by_reader or attempt == 2:
                        if trio.current_time() - pending.started >= self.read_deadline / 2:
                            # A slow failure (a stalling server): the kernel retries a
                            # failed page read at once; answer that retry now rather than
                            # with a second long wait. A quick failure may be retried.
                            self._failed[(obj.sha256, index)] = pending.error
                        raise FetchError(pending.error)
                    else:
                        retry.append(index)
            except trio.Cancelled:
                for _, pending in waits:
                    pending.overdue = not pending.done.is_set()
                raise
            if not retry:
                return
            missing = retry

    async def warm(self, obj: ObjectRef, start: int, end: int, *, into_memory: bool = False) -> None:
        """Fetch the blocks of [start, end) not yet cached; never raises.

        Uses the background slots, so it cannot starve read(). Warmed blocks go
        to memory and disk both: the next read of a prefetched range should
        not even touch the disk (size memory_limit above the prefetch window).
        Blocks already on disk are left there, unless `into_memory` (read-ahead
        of a re-read): then they are loaded from disk in one batch ahead of the
        reader, which would otherwise wait on the disk block by block.
        """
        start, end = max(start, 0), min(end, obj.size)
        if start >= end:
            return
        first, last = start // self.block_size, (end - 1) // self.block_size
        present = self._in_memory if into_memory else self._has
        wanted = [i for i in range(first, last + 1) if not present((obj.sha256, i))]
        error = None
        for _, pending in self._claim(obj, wanted, urgent=False):
            await pending.done.wait()
            error = pending.error or error
        if error is not None:
            self.stats.warm_failures += 1
            log.debug("warming %s bytes %d-%d: %s", obj.key, start, end - 1, error)

    def cached(self, obj: ObjectRef, start: int, end: int, *, in_memory: bool = False) -> bool:
        """Whether every block of [start, end) is in memory (or, unless `in_memory`, on disk); no I/O."""
        start, end = max(start, 0), min(end, obj.size)
        if start >= end:
            return True
        first, last = start // self.block_size, (end - 1) // self.block_size
        present = self._in_memory if in_memory else self._has
        return all(present((obj.sha256, i)) for i in range(first, last + 1))

    def _has(self, key: BlockKey) -> bool:
        return key in self._memory or key in self._index

    def _in_memory(self, key: BlockKey) -> bool:
        return key in self._memory

    def _touch_disk(self, key: BlockKey) -> None:
        if key in self._index:
            self._index.move_to_end(key)

    def _remember(self, key: BlockKey, data: bytes) -> None:
        if len(data) <= self._memory.maxsize:
            self._memory[key] = data

    def _claim(self, obj: ObjectRef, indices: list[int], *, urgent: bool) -> list[tuple[int, _Pending]]:
        """Join the load in flight of each block, and start one load for the others."""
        waits = []
        mine = []
        for index in indices:
            key = (obj.sha256, index)
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Pending(urgent)
                mine.append(index)
            else:
                self.stats.joins += 1
                if urgent:
                    pending.hurry()
            waits.append((index, pending))
        if mine:
            trio.lowlevel.spawn_system_task(self._load, obj, mine, name=f"lockerfs.cache load {obj.key}")
        return waits

    async def _load(self, obj: ObjectRef, indices: list[int]) -> None:
        """Bring claimed blocks into the cache and hand them to their waiters.

        A system task: it must not raise, and whatever happens every claimed
        block is finished and unclaimed when it ends.
        """
        pendings = {i: self._pending[(obj.sha256, i)] for i in indices}
        try:
            missing = await self._load_from_disk(obj, pendings)
            if missing:
                async with trio.open_nursery() as nursery:
                    for piece in self._pieces(missing):
                        nursery.start_soon(self._fetch, obj, piece, pendings)
        except Exception:
            log.exception("loading blocks of %s failed", obj.key)
        finally:
            for index, pending in pendings.items():
                pending.finish(error=f"reading {obj.key} was interrupted")
                if self._pending.get((obj.sha256, index)) is pending:
                    del self._pending[(obj.sha256, index)]

    async def _load_from_disk(self, obj: ObjectRef, pendings: dict[int, _Pending]) -> list[int]:
        """Serve what the disk has; return the indices still missing, ascending."""
        on_disk = [i for i in pendings if (obj.sha256, i) in self._index]
        missing = [i for i in pendings if (obj.sha256, i) not in self._index]
        if not on_disk:
            return missing
        raw_sha = bytes.fromhex(obj.sha256)
        jobs = [(self._path((obj.sha256, i)), raw_sha, i, self._block_length(obj, i)) for i in on_disk]
        results = await trio.to_thread.run_sync(_read_blocks, self.block_size, jobs)
        for index, (found, data) in zip(on_disk, results):
            key = (obj.sha256, index)
            if found is _Found.HIT:
                assert data is not None
                self.stats.disk_hits += 1
                self._remember(key, data)
                self._touch_disk(key)
                pendings[index].finish(data=data)
                continue
            if found is _Found.CORRUPT:
                self.stats.corrupt_blocks += 1
            elif found is _Found.FAILED:
                self.stats.disk_errors += 1
            size = self._index.pop(key, None)  # None: evicted meanwhile
            if size is not None:
                self._disk_bytes -= size
            missing.append(index)
        return sorted(missing)

    def _pieces(self, indices: list[int]) -> list[list[int]]:
        """Ascending block indices -> runs of contiguous blocks, each at most max_request long."""
        pieces: list[list[int]] = []
        for index in indices:
            if pieces and pieces[-1][-1] == index - 1 and len(pieces[-1]) < self._blocks_per_request:
                pieces[-1].append(index)
            else:
                pieces.append([index])
        return pieces

    async def _fetch(self, obj: ObjectRef, piece: list[int], pendings: dict[int, _Pending]) -> None:
        """One ranged GET for a run of contiguous blocks. Never raises but Cancelled."""
        bs = self.block_size
        start, end = piece[0] * bs, min((piece[-1] + 1) * bs, obj.size)
        waiting = [pendings[i] for i in piece]
        urgent = any(p.urgent for p in waiting)
        slot = _Slot(self._foreground if urgent else self._background, self._foreground)
        for pending in waiting:
            pending.slot = slot
        self.stats.requests += 1
        self.stats.misses += len(piece)
        error = None
        try:
            # Abandoned only when trio itself shuts down; the slot stays taken
            # until the thread really ends, so the pool is never oversubscribed.
            data = await trio.to_thread.run_sync(self._store.get_range, obj.key, start, end,
                                                 limiter=slot, abandon_on_cancel=True)
        except StoreError as err:
            error = str(err)
        except Exception as err:  # a bug in a store; the waiters must still hear of it
            log.exception("reading %s bytes %d-%d", obj.key, start, end - 1)
            error = f"reading {obj.key} failed: {err!r}"
        else:
            log.debug("GET %s bytes %d-%d (%s)", obj.key, start, end - 1, "reader" if urgent else "prefetch")
            self.stats.fetched_bytes += len(data)
            if len(data) != end - start:
                error = (f"the store returned {len(data)} bytes of {obj.key} at {start} "
                         f"where {end - start} were asked for")
        if error is not None:
            self.stats.failed_requests += 1
            log.debug("GET %s bytes %d-%d: %s", obj.key, start, end - 1, error)
            for pending in waiting:
                pending.finish(error=error)
            return
        blocks = []
        for n, index in enumerate(piece):
            # bytes() of a slice is a copy: a cached block never pins the whole response
            block = bytes(data[n * bs:(n + 1) * bs])
            self._remember((obj.sha256, index), block)
            pendings[index].finish(data=block)
            blocks.append((index, block))
        await self._save(obj.sha256, blocks)

    # --- disk ---

    def _path(self, key: BlockKey) -> str:
        sha, index = key
        return os.path.join(self._blocks_dir, sha[:2], f"{sha}-{index}")

    def _block_length(self, obj: ObjectRef, index: int) -> int:
        return min(self.block_size, obj.size - index * self.block_size)

    async def _save(self, sha: str, blocks: list[tuple[int, bytes]]) -> None:
        """Write blocks to disk, evicting least recently used ones to make room."""
        if not self._disk_on:
            return
        size = sum(len(data) for _, data in blocks)
        if self._write_backlog + size > self._max_write_backlog:
            self.stats.disk_skipped += len(blocks)
            log.debug("disk cache lags behind; not writing %d blocks of %s", len(blocks), sha)
            return
        self._write_backlog += size
        try:
            async with self._write_lock:
                if not self._disk_on:  # switched off while we waited
                    return
                with trio.CancelScope(shield=True):
                    await self._save_locked(sha, blocks)
        finally:
            self._write_backlog -= size

    async def _save_locked(self, sha: str, blocks: list[tuple[int, bytes]]) -> None:
        """The write itself, under the lock and shielded from cancellation: once
        victims leave the index their files must go, and written files must
        enter it, or `_disk_bytes` would drift from the directory."""
        victims = []
        writes = []
        room = self._disk_limit - self._disk_bytes
        for index, data in blocks:
            key = (sha, index)
            size = _HEADER.size + len(data)
            if key in self._index:
                continue
            while room < size and self._index:
                victim, victim_size = self._index.popitem(last=False)
                victims.append(self._path(victim))
                room += victim_size
                self._disk_bytes -= victim_size
            if room < size:
                break
            room -= size
            writes.append((key, size, data))
        self.stats.evicted_blocks += len(victims)
        jobs = [(self._path(key), bytes.fromhex(sha), key[1], data) for key, _, data in writes]
        written, error = await trio.to_thread.run_sync(_write_blocks, self.block_size, victims, jobs)
        for key, size, _ in writes[:written]:
            self._index[key] = size
            self._disk_bytes += size
        if error is not None:
            self._disk_failed(error)

    def _disk_failed(self, error: OSError) -> None:
        """Stop writing to a disk that failed once: it would most likely fail again
        (full, over quota, read-only, dying), and memory still serves reads."""
        self.stats.disk_errors += 1
        if self._disk_on:
            self._disk_on = False
            log.warning("disk cache %s: %s; caching in memory only until the next mount "
                        "(blocks already on disk are still used)", self._dir, error.strerror or error)


# --- worker-thread functions: file I/O only, no shared state ---

def _read_blocks(block_size: int, jobs: list[tuple[str, bytes, int, int]]) -> list[tuple[_Found, bytes | None]]:
    """Read and verify block files; delete the ones that must not be served."""
    results: list[tuple[_Found, bytes | None]] = []
    for path, raw_sha, index, length in jobs:
        try:
            data = _read_block_file(path, block_size, raw_sha, index, length)
        except FileNotFoundError:
            results.append((_Found.MISSING, None))
        except _Corrupt as err:
            log.warning("corrupt cache block %s (%s); fetching it again", path, err)
            _unlink(path)
            results.append((_Found.CORRUPT, None))
        except OSError as err:
            log.warning("cannot read cache block %s (%s); fetching it again", path, err)
            _unlink(path)
            results.append((_Found.FAILED, None))
        else:
            _touch(path)  # mtime orders the LRU at the next open()
            results.append((_Found.HIT, data))
    return results


def _read_block_file(path: str, block_size: int, raw_sha: bytes, index: int, length: int) -> bytes:
    with open(path, "rb") as f:
        header = f.read(_HEADER.size)
        data = f.read(length + 1)
    if len(header) < _HEADER.size:
        raise _Corrupt("truncated header")
    magic, version, stored_block_size, sha, stored_index, stored_length, crc = _HEADER.unpack(header)
    if magic != _MAGIC:
        raise _Corrupt("not a lockerfs block")
    if version != _FORMAT_VERSION:
        raise _Corrupt(f"format version {version}, not {_FORMAT_VERSION}")
    if stored_block_size != block_size or sha != raw_sha or stored_index != index:
        raise _Corrupt("header names another block")
    if stored_length != length or len(data) != length:
        raise _Corrupt(f"{len(data)} bytes of data, header says {stored_length}, expected {length}")
    if zlib.crc32(data) != crc:
        raise _Corrupt("checksum mismatch")
    return data


def _write_blocks(block_size: int, victims: list[str],
                  jobs: list[tuple[str, bytes, int, bytes]]) -> tuple[int, OSError | None]:
    """Delete victims, then write blocks; stop at the first error.

    Returns how many blocks were written, and the error if any.
    """
    written = 0
    try:
        for path in victims:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for path, raw_sha, index, data in jobs:
            header = _HEADER.pack(_MAGIC, _FORMAT_VERSION, block_size, raw_sha, index, len(data),
                                  zlib.crc32(data))
            _write_block_file(path, header, data)
            written += 1
    except OSError as err:
        return written, err
    return written, None


def _write_block_file(path: str, header: bytes, data: bytes) -> None:
    """Write one block file atomically (temp, then rename).

    No fsync: after a crash a torn file fails verification and is a miss.
    """
    tmp = f"{path}.{threading.get_ident()}.tmp"  # one writer per thread, one process per dir
    try:
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:  # first block of this shard
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            f = open(tmp, "wb")
        with f:
            f.write(header)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _touch(path: str) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


# --- the cache directory ---

def make_private_dir(path: Path) -> None:
    """Create path and its missing parents, 0700: a cache tells what its owner listens to."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass


def _check_safe(path: Path) -> None:
    """Refuse a cache dir another user could write to: they could feed us blocks."""
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise UnsafeCacheDir(f"the cache directory {path} belongs to user id {st.st_uid}, not to you "
                             f"({os.getuid()}); choose another cache directory")
    if st.st_mode & stat.S_IWOTH:
        raise UnsafeCacheDir(f"the cache directory {path} is writable by every user "
                             f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 700 {path}` or choose another")
    for parent in path.resolve().parents:
        mode = os.stat(parent).st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            raise UnsafeCacheDir(f"{parent}, a parent of the cache directory {path}, is writable by "
                                 f"every user, who could replace the cache; choose another cache directory")


def _take_lock(directory: Path) -> int:
    """flock <directory>/lock for this process and write our pid in it."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CacheInUse(f"the cache directory {directory} is in use by another lockerfs "
                             f"process (pid {holder}); unmount that first, or give this mount "
                             f"its own cache directory") from None
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds without the pid, which only helps messages
            pass
    except BaseException:
        os.close(fd)
        raise
    return fd
