"""The persistent half of the block cache: one verified file per block, bounded, least recently used out.

Kept apart from the memory cache and the fetching (as mountpoint-s3 keeps its
disk cache apart): this module knows files, an index and a byte limit, and
nothing of the store or of readers.

Layout: <cache_dir>/blocks/<sha[:2]>/<sha>-<index> for a whole block, and
<sha>-<index>@<offset> for part of one (a scan fetches the tags and no more:
the part of the block from `offset` to the end of the file); each file a
versioned, checksummed header and the bytes; <cache_dir>/lock is flocked by
the process that has the directory open. A block has one file at a time.

Invariants
- `_bytes` is the sum of the sizes of the indexed block files. Writes are
  serialized by `_write_lock` and shielded from cancellation, and a writer
  deletes its victims before it writes, so the directory never holds more
  than `limit` bytes of blocks, temp files included.
- The index is touched only on the trio thread; worker threads do file I/O on
  the arguments they are given and return results.
- Only entries already removed from the index are deleted; only the load
  that fetched a block writes its file.
- A file whose header or checksum does not match is deleted and reported as
  missing: a damaged block is a miss, never an error and never served.
- The first failed write turns writing off until the next mount (a full,
  read-only or dying disk would most likely fail again); reading what is
  already there goes on, and memory still serves.
- Blocks of pinned objects (`set_pinned`, for offline play) are indexed in
  `_pinned`, apart from the LRU, and are never evicted: room is made from the
  LRU only, and a block that finds no room is not written. Pins are admitted
  only while they fit in `limit` (pins.py), so the bound above holds; only a
  mount started with a smaller limit than its pins were made under holds
  more (the pinned bytes, and nothing else), and logs so.
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
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import trio

from lockerfs.cachestats import CacheStats

log = logging.getLogger(__name__)

BlockKey = tuple[str, int]  # (sha256, block index)


class Part(NamedTuple):
    """Part of a block: its bytes [start, start + len(data)). A whole block is plain bytes."""

    start: int
    data: bytes


Piece = bytes | Part  # what is cached of one block


def piece_range(piece: Piece) -> tuple[int, int]:
    """The bytes of its block a piece holds, as [start, end) within the block."""
    return (0, len(piece)) if isinstance(piece, bytes) else (piece.start, piece.start + len(piece.data))


def piece_slice(piece: Piece, start: int, end: int) -> bytes:
    """Bytes [start, end) of the block, which the piece must hold."""
    if isinstance(piece, bytes):
        return piece[start:end]
    return piece.data[start - piece.start:end - piece.start]


_BLOCK_NAME_RE = re.compile(r"([0-9a-f]{64})-(\d+)(?:@(\d+))?")

# Block file header: magic, format version, block size, sha256 of the object
# (raw), block index, data length, CRC-32 of the data. The block size is there
# because a mount with another --block-size numbers blocks differently: its
# block 1 could have the same index and length but other bytes. CRC-32 because the threat is
# accidental damage (torn writes after a crash, bit rot, truncation), which it
# detects at memory speed; a cryptographic hash would not stop a deliberate
# forger, who can write a matching digest into our own directory just as well.
_MAGIC = b"LKBC"
_FORMAT_VERSION = 2  # 2 added the piece's offset in its block; version 1 files (whole blocks) are still read
HEADER = struct.Struct("<4sHI32sQIII")  # magic, version, block size, sha, index, offset, length, crc
_HEADER_V1 = struct.Struct("<4sHI32sQII")


class CacheInUse(Exception):
    """Another live process holds this cache directory."""


class UnsafeCacheDir(Exception):
    """The cache directory could be changed by another user."""


class _Found(enum.Enum):
    HIT = enum.auto()
    MISSING = enum.auto()
    CORRUPT = enum.auto()
    FAILED = enum.auto()


class _Corrupt(Exception):
    """A block file that must not be served."""


class DiskCache:
    """Block files under one directory, bounded by `limit` bytes.

    open() before trio starts and close() after it ends; everything else runs
    on the trio thread. Without a directory it holds nothing.
    """

    def __init__(self, directory: Path | None, *, limit: int, block_size: int, stats: CacheStats,
                 max_backlog: int) -> None:
        if limit < 0:
            raise ValueError("cache limits cannot be negative")
        self.directory = directory
        self.limit = limit
        self.block_size = block_size
        self.stats = stats
        self._blocks_dir = str(directory / "blocks") if directory is not None else ""
        self._index: OrderedDict[BlockKey, int] = OrderedDict()  # LRU first; value: file size
        self._pinned: dict[BlockKey, int] = {}  # blocks of pinned objects: never evicted; value: file size
        self._pinned_objects: frozenset[str] = frozenset()  # sha256 of the pinned objects
        self._parts: dict[BlockKey, tuple[int, int]] = {}  # a block held in part -> [start, end) of it
        self._bytes = 0
        self._on = False  # new blocks are written
        self._write_lock = trio.Lock()
        self._backlog = 0  # bytes of blocks handed to save_soon and not yet written
        self._saves_queued = 0  # save_soon calls so far: a save's number orders it against drops
        self._saves_done = 0  # writes that changed files: a read that raced one may have missed a file
        self._dropped: dict[str, int] = {}  # sha -> saves queued when its blocks were dropped
        self._max_backlog = max_backlog
        self._lock_fd: int | None = None

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def pinned_bytes(self) -> int:
        """Bytes of block files (headers included) that belong to pinned objects."""
        return sum(self._pinned.values())

    @property
    def enabled(self) -> bool:
        return self._on

    @property
    def writing(self) -> bool:
        """Whether blocks handed to save_soon are still waiting to be written."""
        return self._backlog > 0

    # --- lifecycle (synchronous, outside trio) ---

    def open(self) -> None:
        """Take the directory for this process and index the blocks already there."""
        if self._lock_fd is not None:
            raise RuntimeError(f"the cache at {self.directory} is already open")
        if self.directory is None:
            return
        make_private_dir(self.directory)
        _check_safe(self.directory)
        os.makedirs(self._blocks_dir, mode=0o700, exist_ok=True)
        self._lock_fd = _take_lock(self.directory)
        try:
            self._load_index()
        except BaseException:
            self.close()
            raise
        self._on = True
        log.debug("disk cache %s: %d blocks, %d of %d bytes",
                  self.directory, len(self._index), self._bytes, self.limit)

    def close(self) -> None:
        """Release the directory; its blocks stay for the next open()."""
        self._on = False
        self._index.clear()
        self._pinned.clear()
        self._parts.clear()
        self._bytes = 0
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _load_index(self) -> None:
        """Rebuild the index, least recently used (oldest mtime) first."""
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
                        start = None if match[3] is None else int(match[3])
                        found.append((st.st_mtime_ns, (sha, int(match[2])), st.st_size, start, entry.path))
        found.sort()
        kept: dict[BlockKey, tuple[int, int | None]] = {}
        for _, key, size, start, path in reversed(found):  # newest first
            if key in kept:  # two files of one block (a crash between writing one and
                _unlink(path)  # deleting the other): keep the newer
            else:
                kept[key] = (size, start)
        for key, (size, start) in reversed(kept.items()):  # oldest first: the LRU order
            self._table(key)[key] = size
            self._bytes += size
            if start is not None:
                self._parts[key] = (start, start + size - HEADER.size)
        while self._bytes > self.limit and self._index:  # the limit shrank since the last mount
            key, size = self._index.popitem(last=False)
            _unlink(self.path(key))
            self._parts.pop(key, None)
            self._bytes -= size
            self.stats.evicted_blocks += 1
        if self._bytes > self.limit:
            log.warning("disk cache %s: pinned objects take %d bytes, more than the cache size (%d); "
                        "nothing else is kept on disk until some are unpinned", self.directory,
                        self._bytes, self.limit)

    # --- pins (trio thread, or before open; no I/O) ---

    def set_pinned(self, objects: Iterable[str]) -> None:
        """Make exactly these objects (by sha256) pinned: their blocks, present and to come,
        are never evicted. Blocks of objects no longer pinned join the LRU as its oldest."""
        pinned = frozenset(objects)
        released = [key for key in self._pinned if key[0] not in pinned]
        for key in released:
            self._index[key] = self._pinned.pop(key)
            self._index.move_to_end(key, last=False)
        if pinned - self._pinned_objects:
            for key in [key for key in self._index if key[0] in pinned]:
                self._pinned[key] = self._index.pop(key)
        self._pinned_objects = pinned

    def is_pinned(self, sha: str) -> bool:
        return sha in self._pinned_objects

    def _table(self, key: BlockKey) -> dict[BlockKey, int]:
        """The index a block of this object belongs in: the pinned one or the LRU."""
        return self._pinned if key[0] in self._pinned_objects else self._index

    def _size(self, key: BlockKey) -> int | None:
        """The size of the block's file if either index holds it."""
        size = self._index.get(key)
        return self._pinned.get(key) if size is None else size

    # --- the index (trio thread, no I/O) ---

    def has(self, key: BlockKey, start: int = 0, end: int | None = None) -> bool:
        """Whether the disk holds bytes [start, end) of the block (end None: all of it)."""
        if key not in self._index and key not in self._pinned:
            return False
        part = self._parts.get(key)
        return part is None or (end is not None and part[0] <= start and end <= part[1])

    def held(self, key: BlockKey, block_length: int) -> tuple[int, int] | None:
        """The bytes of the block the disk holds, as [start, end), or None."""
        if key not in self._index:
            return None
        return self._parts.get(key, (0, block_length))

    def holds_whole(self, key: BlockKey) -> bool:
        return (key in self._index or key in self._pinned) and key not in self._parts

    def touch(self, key: BlockKey) -> None:
        """Mark a block as just used (its file's mtime catches up when it is next read)."""
        if key in self._index:
            self._index.move_to_end(key)

    def path(self, key: BlockKey) -> str:
        """The file the index holds for a block."""
        part = self._parts.get(key)
        return self._file(key, None if part is None else part[0])

    def _file(self, key: BlockKey, start: int | None) -> str:
        """The file of a whole block (start None), or of the part of it from `start`."""
        sha, index = key
        suffix = "" if start is None else f"@{start}"
        return os.path.join(self._blocks_dir, sha[:2], f"{sha}-{index}{suffix}")

    # --- reading ---

    async def read(self, sha: str, wanted: list[tuple[int, int]]) -> dict[int, Piece]:
        """What the disk holds of the blocks among `wanted` (index, length of the whole block),
        verified: whole blocks as bytes, parts as Part.

        A block whose file is missing, damaged or unreadable leaves the index
        (and its file, if any, the disk) and is simply not in the answer. A file
        found missing while a write ran stays indexed: the write may have replaced
        it (a part by the whole block, an evicted block by its new copy), and
        forgetting that would leave a file on disk that `_bytes` does not count.
        """
        jobs = []
        for index, length in wanted:
            key = (sha, index)
            if key in self._index or key in self._pinned:
                start, end = self._parts.get(key, (None, length))
                jobs.append((index, self.path(key), start, (end - (start or 0))))
        if not jobs:
            return {}
        raw_sha = bytes.fromhex(sha)
        saves = self._saves_done
        results = await trio.to_thread.run_sync(
            _read_blocks, self.block_size, [(path, raw_sha, index, start, length) for index, path, start, length in jobs])
        found: dict[int, Piece] = {}
        for (index, _, start, _), (outcome, data) in zip(jobs, results):
            key = (sha, index)
            if outcome is _Found.HIT:
                assert data is not None
                self.stats.disk_hits += 1
                self.touch(key)
                found[index] = data if start is None else Part(start, data)
                continue
            if outcome is _Found.CORRUPT:
                self.stats.corrupt_blocks += 1
            elif outcome is _Found.FAILED:
                self.stats.disk_errors += 1
            elif self._saves_done != saves:
                continue  # missing, maybe because a write replaced it: a later read will tell
            self._forget(key)
        return found

    def _forget(self, key: BlockKey) -> None:
        size = self._index.pop(key, None)  # None: evicted meanwhile (or pinned)
        if size is None:
            size = self._pinned.pop(key, None)
        self._parts.pop(key, None)
        if size is not None:
            self._bytes -= size

    async def drop(self, keys: Iterable[BlockKey]) -> None:
        """Remove blocks that must not be served again (their object failed verification),
        and any of them still waiting to be written. Shielded: a file left behind would be
        indexed, and served, at the next open."""
        paths = []
        for key in keys:
            self._dropped[key[0]] = self._saves_queued
            if key in self._index or key in self._pinned:
                paths.append(self.path(key))
                self._forget(key)
        if paths:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_unlink_all, paths)

    # --- writing ---

    def save_soon(self, sha: str, blocks: list[tuple[int, Piece]]) -> None:
        """Write blocks (or parts of them) in the background, unless the disk already lags too
        far behind: then they are skipped (memory still has them), so a slow disk never holds
        fetched bytes in memory without bound."""
        if not self._on or not blocks:
            return
        size = sum(piece_range(piece)[1] - piece_range(piece)[0] for _, piece in blocks)
        if self._backlog + size > self._max_backlog:
            self.stats.disk_skipped += len(blocks)
            log.debug("disk cache lags behind; not writing %d blocks of %s", len(blocks), sha)
            return
        self._backlog += size
        self._saves_queued += 1
        trio.lowlevel.spawn_system_task(self._save, sha, blocks, size, self._saves_queued,
                                        name="lockerfs.diskcache save")

    async def _save(self, sha: str, blocks: list[tuple[int, Piece]], size: int, number: int) -> None:
        try:
            async with self._write_lock:
                # not switched off while we waited, nor dropped after being queued
                if self._on and self._dropped.get(sha, 0) < number:
                    with trio.CancelScope(shield=True):
                        await self._save_locked(sha, blocks, number)
        except Exception:  # a system task must not raise; a bug costs this write only
            log.exception("writing %d blocks of %s to the disk cache failed", len(blocks), sha)
        finally:
            self._backlog -= size

    async def _save_locked(self, sha: str, blocks: list[tuple[int, Piece]], number: int) -> None:
        """The write itself, under the lock and shielded from cancellation: once
        victims leave the index their files must go, and written files must
        enter it, or `_bytes` would drift from the directory.

        A part replaces what the disk holds of its block only if it holds more
        (a whole block is never replaced by a part of it)."""
        victims = []
        writes = []
        room = self.limit - self._bytes
        for index, piece in blocks:
            key = (sha, index)
            start, end = piece_range(piece)
            held_size = self._size(key)
            if held_size is not None:
                held = self._parts.get(key)
                if held is None or (held[0] <= start and end <= held[1]) or held[1] - held[0] >= end - start:
                    continue
                victims.append(self.path(key))  # a smaller part of it: replaced
                room += held_size
                self._forget(key)
            size = HEADER.size + end - start
            while room < size and self._index:
                victim, victim_size = self._index.popitem(last=False)
                victims.append(self.path(victim))
                self._parts.pop(victim, None)
                room += victim_size
                self._bytes -= victim_size
                self.stats.evicted_blocks += 1
            if room < size:
                break
            room -= size
            whole = isinstance(piece, bytes)
            data = piece if whole else piece.data
            writes.append((key, size, None if whole else start, data))
        jobs = [(self._file(key, start), bytes.fromhex(sha), key[1], start or 0, data)
                for key, _, start, data in writes]
        written, error = await trio.to_thread.run_sync(_write_blocks, self.block_size, victims, jobs)
        self._saves_done += 1
        if self._dropped.get(sha, 0) >= number:  # dropped while being written
            await trio.to_thread.run_sync(_unlink_all, [self._file(key, start) for key, _, start, _ in writes[:written]])
            written = 0
        for key, size, start, data in writes[:written]:
            self._table(key)[key] = size  # pinned meanwhile or not: decided now
            self._bytes += size
            if start is not None:
                self._parts[key] = (start, start + len(data))
        if error is not None:
            self._failed(error)

    def _failed(self, error: OSError) -> None:
        self.stats.disk_errors += 1
        if self._on:
            self._on = False
            log.warning("disk cache %s: %s; caching in memory only until the next mount "
                        "(blocks already on disk are still used)", self.directory, error.strerror or error)


# --- worker-thread functions: file I/O only, no shared state ---

def _read_blocks(block_size: int, jobs: list[tuple[str, bytes, int, int | None, int]],
                 ) -> list[tuple[_Found, bytes | None]]:
    """Read and verify block files (path, sha, index, offset or None for a whole block,
    length); delete the ones that must not be served."""
    results: list[tuple[_Found, bytes | None]] = []
    for path, raw_sha, index, start, length in jobs:
        try:
            data = _read_block_file(path, block_size, raw_sha, index, start, length)
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


def _read_block_file(path: str, block_size: int, raw_sha: bytes, index: int, start: int | None,
                     length: int) -> bytes:
    with open(path, "rb") as f:
        header = f.read(HEADER.size)
        if header[4:6] == struct.pack("<H", 1) and start is None:  # a whole block written by version 1
            f.seek(_HEADER_V1.size)
            header = header[:_HEADER_V1.size]
        data = f.read(length + 1)
    if len(header) < 6 or header[:4] != _MAGIC:
        raise _Corrupt("not a lockerfs block")
    if len(header) == _HEADER_V1.size:
        _, _, stored_block_size, sha, stored_index, stored_length, crc = _HEADER_V1.unpack(header)
        stored_start = 0
    elif len(header) == HEADER.size:
        magic, version, stored_block_size, sha, stored_index, stored_start, stored_length, crc = HEADER.unpack(header)
        if version != _FORMAT_VERSION:
            raise _Corrupt(f"format version {version}, not {_FORMAT_VERSION}")
    else:
        raise _Corrupt("truncated header")
    if stored_block_size != block_size or sha != raw_sha or stored_index != index or stored_start != (start or 0):
        raise _Corrupt("header names another block")
    if stored_length != length or len(data) != length:
        raise _Corrupt(f"{len(data)} bytes of data, header says {stored_length}, expected {length}")
    if zlib.crc32(data) != crc:
        raise _Corrupt("checksum mismatch")
    return data


def _write_blocks(block_size: int, victims: list[str],
                  jobs: list[tuple[str, bytes, int, int, bytes]]) -> tuple[int, OSError | None]:
    """Delete victims, then write blocks (path, sha, index, offset, bytes); stop at the first error.

    Returns how many blocks were written, and the error if any.
    """
    written = 0
    try:
        for path in victims:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for path, raw_sha, index, start, data in jobs:
            header = HEADER.pack(_MAGIC, _FORMAT_VERSION, block_size, raw_sha, index, start, len(data),
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


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        _unlink(path)


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


def claim_private_dir(path: Path) -> None:
    """Create path (0700) if missing, and refuse it if another user could write to it.

    Call it before writing anything there (a log, a block): a file we create in
    a folder another user controls could be their symlink to one of ours.
    """
    make_private_dir(path)
    _check_safe(path)


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
