"""LockerOperations driven directly (no mount): names, attributes, listings, bytes, errors."""

from __future__ import annotations

import dataclasses
import errno
import logging
import hashlib
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from lockerfs.asset import stored_object
from lockerfs.cache import BlockCache, FetchError
from lockerfs.extras import ExtraFile
from lockerfs.fs import NAME_MAX, STATFS_BLOCK, FailedReads, LockerOperations
from lockerfs import prefetch
from lockerfs.prefetch import Prefetcher, ReadState, Zones, head_end, object_of, tail_start
from lockerfs.store import MemoryStore, StoreError
from lockerfs.track import Track
from lockerfs.tree import ROOT_INODE, Tree
from tests.unit.test_catalog import make_track

BS = 4096
CTX = pyfuse3.RequestContext()


def content(track: Track) -> bytes:
    """Bytes of a track's object that differ at every offset mod 251 and per track."""
    seed = int(track.sha256[:2], 16)
    pattern = bytes((seed + i) % 251 for i in range(251))
    return (pattern * (track.size // 251 + 1))[:track.size]


class GatedStore(MemoryStore):
    """A MemoryStore that records GET ranges, and holds GETs while `gate` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[tuple[str, int, int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        with self._lock:
            self.ranges.append((key, start, end))
        self.gate.wait(10)
        return super().get_range(key, start, end)


class FailingStore(GatedStore):
    def get_range(self, key: str, start: int, end: int) -> bytes:
        raise StoreError("the S3 server keeps failing (503)")


TRACKS = [dataclasses.replace(make_track(n), mtime=1_700_000_000.25 + n) for n in (1, 2, 3)]
PATHS = {("Artist", "Album", "01.flac"): TRACKS[0], ("Artist", "Album", "02.flac"): TRACKS[1],
         ("Artist", "Other", "01.flac"): TRACKS[2]}


class Fs:
    """One LockerOperations over a MemoryStore holding TRACKS."""

    def __init__(self, store: GatedStore | None = None) -> None:
        self.store = store if store is not None else GatedStore()
        for track in TRACKS:
            self.store.put_bytes(track.key, content(track))
        self.tree = Tree()
        self.tree.rebuild(PATHS)
        self.cache = BlockCache(self.store, None, disk_limit=0, block_size=BS, max_request=16 * BS,
                                read_deadline=5.0)
        self.prefetcher = Prefetcher(self.cache, lambda: self.tree)
        self.ops = LockerOperations(self.tree, self.cache, self.prefetcher)

    def inode(self, *names: str) -> int:
        inode = ROOT_INODE
        for name in names:
            node = self.tree.lookup(inode, name)
            assert node is not None
            inode = node.inode
        return inode


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        with trio.fail_after(10):
            return await fn()
    return trio.run(main)


def fuse_errno(fn: Callable[[], Awaitable[Any]]) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        run(fn)
    return info.value.errno


@pytest.fixture
def fs() -> Fs:
    return Fs()


# --- lookup -----------------------------------------------------------------------

def test_lookup_finds_names(fs: Fs) -> None:
    attrs = run(lambda: fs.ops.lookup(fs.inode("Artist"), b"Album", CTX))
    assert attrs.st_ino == fs.inode("Artist", "Album")
    attrs = run(lambda: fs.ops.lookup(fs.inode("Artist", "Album"), b"02.flac", CTX))
    assert attrs.st_ino == fs.inode("Artist", "Album", "02.flac")
    assert attrs.st_size == TRACKS[1].size


def test_lookup_dot_and_dotdot(fs: Fs) -> None:
    album = fs.inode("Artist", "Album")
    assert run(lambda: fs.ops.lookup(album, b".", CTX)).st_ino == album
    assert run(lambda: fs.ops.lookup(album, b"..", CTX)).st_ino == fs.inode("Artist")
    assert run(lambda: fs.ops.lookup(ROOT_INODE, b"..", CTX)).st_ino == ROOT_INODE


@pytest.mark.parametrize("parent, name", [
    (("Artist",), b"Nope"),
    ((), b"album"),  # names are case-sensitive
    (("Artist", "Album", "01.flac"), b"x"),  # inside a file
    (("Artist",), b"\xff\xfe"),  # not UTF-8
])
def test_lookup_of_missing_name_is_enoent(fs: Fs, parent: tuple[str, ...], name: bytes) -> None:
    assert fuse_errno(lambda: fs.ops.lookup(fs.inode(*parent), name, CTX)) == errno.ENOENT


def test_lookup_in_unknown_inode_is_enoent(fs: Fs) -> None:
    assert fuse_errno(lambda: fs.ops.lookup(999_999, b"x", CTX)) == errno.ENOENT


# --- getattr ------------------------------------------------------------------------

def test_getattr_of_a_dir(fs: Fs) -> None:
    attrs = run(lambda: fs.ops.getattr(fs.inode("Artist"), CTX))
    assert attrs.st_mode == stat.S_IFDIR | 0o555
    assert attrs.st_nlink == 2 + 2  # Album and Other
    assert (attrs.st_uid, attrs.st_gid) == (os.getuid(), os.getgid())
    assert attrs.st_mtime_ns == int(max(t.mtime for t in TRACKS) * 1e9)
    root = run(lambda: fs.ops.getattr(ROOT_INODE, CTX))
    assert root.st_mode == stat.S_IFDIR | 0o555 and root.st_nlink == 3


def test_getattr_of_a_file(fs: Fs) -> None:
    inode = fs.inode("Artist", "Album", "02.flac")
    attrs = run(lambda: fs.ops.getattr(inode, CTX))
    assert attrs.st_ino == inode
    assert attrs.st_mode == stat.S_IFREG | 0o444
    assert attrs.st_nlink == 1
    assert attrs.st_size == TRACKS[1].size
    assert attrs.st_blocks == (TRACKS[1].size + 511) // 512
    assert (attrs.st_uid, attrs.st_gid) == (os.getuid(), os.getgid())
    assert attrs.st_mtime_ns == attrs.st_ctime_ns == attrs.st_atime_ns
    assert abs(attrs.st_mtime_ns - TRACKS[1].mtime * 1e9) < 1e3


def test_mtimes_are_stable_across_calls_and_rebuilds(fs: Fs) -> None:
    inodes = [fs.inode(), fs.inode("Artist"), fs.inode("Artist", "Album", "01.flac")]

    async def mtimes() -> list[int]:
        return [(await fs.ops.getattr(inode, CTX)).st_mtime_ns for inode in inodes]

    first = run(mtimes)
    assert run(mtimes) == first
    fs.tree.rebuild(dict(PATHS))
    assert run(mtimes) == first


def test_getattr_of_unknown_inode_is_enoent(fs: Fs) -> None:
    assert fuse_errno(lambda: fs.ops.getattr(999_999, CTX)) == errno.ENOENT


# --- readdir ------------------------------------------------------------------------

class Replies:
    """Stands in for pyfuse3.readdir_reply: records entries, refuses after `room` of them."""

    def __init__(self, room: int = 1000) -> None:
        self.room = room
        self.entries: list[tuple[str, int, int]] = []  # (name, inode, next offset)
        self.calls = 0

    def __call__(self, token: object, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
        self.calls += 1
        if len(self.entries) >= self.room:
            return False
        self.entries.append((os.fsdecode(name), attrs.st_ino, next_id))
        return True


def list_dir(fs: Fs, monkeypatch: pytest.MonkeyPatch, inode: int, start: int = 0,
             room: int = 1000, fh: int | None = None) -> list[tuple[str, int, int]]:
    replies = Replies(room)
    LAST_REPLIES[:] = [replies]
    monkeypatch.setattr(pyfuse3, "readdir_reply", replies)

    async def go() -> None:
        handle = fh if fh is not None else await fs.ops.opendir(inode, CTX)
        await fs.ops.readdir(handle, start, None)  # type: ignore[arg-type]

    run(go)
    return replies.entries


LAST_REPLIES: list[Replies] = []


def test_readdir_lists_every_entry_in_name_order(fs: Fs, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = list_dir(fs, monkeypatch, fs.inode("Artist"))
    assert entries == [("Album", fs.inode("Artist", "Album"), 1), ("Other", fs.inode("Artist", "Other"), 2)]


def test_readdir_resumes_from_start_id(fs: Fs, monkeypatch: pytest.MonkeyPatch) -> None:
    album = fs.inode("Artist", "Album")
    assert [e[0] for e in list_dir(fs, monkeypatch, album)] == ["01.flac", "02.flac"]
    assert list_dir(fs, monkeypatch, album, start=1) == [("02.flac", fs.inode("Artist", "Album", "02.flac"), 2)]
    assert list_dir(fs, monkeypatch, album, start=2) == []


def test_readdir_stops_when_the_buffer_is_full(fs: Fs, monkeypatch: pytest.MonkeyPatch) -> None:
    tracks = {("D", f"{n:03d}.flac"): make_track(n) for n in range(50)}
    fs.tree.rebuild(tracks)
    directory = fs.inode("D")
    seen: list[str] = []
    start = 0
    for _ in range(20):  # 50 entries, 7 per call
        entries = list_dir(fs, monkeypatch, directory, start=start, room=7)
        if not entries:
            break
        assert len(entries) <= 7
        if len(entries) == 7 and start + 7 < 50:
            assert LAST_REPLIES[0].calls == 8  # stopped at the first refused entry
        seen += [name for name, _, _ in entries]
        start = entries[-1][2]
    assert seen == [f"{n:03d}.flac" for n in range(50)]


def test_readdir_skips_entries_removed_while_listing(fs: Fs, monkeypatch: pytest.MonkeyPatch) -> None:
    album = fs.inode("Artist", "Album")
    fh = run(lambda: fs.ops.opendir(album, CTX))
    fs.tree.rebuild({path: track for path, track in PATHS.items() if path[-1] != "01.flac"})
    entries = list_dir(fs, monkeypatch, album, fh=fh)
    assert [(name, offset) for name, _, offset in entries] == [("02.flac", 2)]


def test_opendir_of_a_file_is_enotdir(fs: Fs) -> None:
    assert fuse_errno(lambda: fs.ops.opendir(fs.inode("Artist", "Album", "01.flac"), CTX)) == errno.ENOTDIR
    assert fuse_errno(lambda: fs.ops.opendir(999_999, CTX)) == errno.ENOENT


# --- open / read ------------------------------------------------------------------

@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND])
def test_open_for_writing_is_erofs(fs: Fs, flags: int) -> None:
    inode = fs.inode("Artist", "Album", "01.flac")
    assert fuse_errno(lambda: fs.ops.open(inode, flags, CTX)) == errno.EROFS


def test_every_open_bypasses_the_page_cache(fs: Fs) -> None:
    """Prefetch tells a scan from playback by the reads it sees: the kernel must not add its own."""
    async def go() -> list[bool]:
        infos = [await fs.ops.open(fs.inode("Artist", "Album", name), os.O_RDONLY, CTX)
                 for name in ("01.flac", "02.flac")]
        return [info.direct_io for info in infos]

    assert run(go) == [True, True]


def test_direct_io_can_be_turned_off(fs: Fs) -> None:
    fs.ops.direct_io = False

    async def go() -> bool:
        return (await fs.ops.open(fs.inode("Artist", "Album", "01.flac"), os.O_RDONLY, CTX)).direct_io

    assert run(go) is False


def test_open_of_a_dir_is_eisdir(fs: Fs) -> None:
    assert fuse_errno(lambda: fs.ops.open(fs.inode("Artist"), os.O_RDONLY, CTX)) == errno.EISDIR
    assert fuse_errno(lambda: fs.ops.open(999_999, os.O_RDONLY, CTX)) == errno.ENOENT


def test_read_returns_the_exact_bytes(fs: Fs) -> None:
    track = TRACKS[1]
    data = content(track)
    inode = fs.inode("Artist", "Album", "02.flac")

    async def go() -> None:
        info = await fs.ops.open(inode, os.O_RDONLY, CTX)
        assert info.keep_cache
        for off, size in [(0, 100), (BS - 10, 20), (12_345, 3 * BS + 7), (track.size - 50, 50), (0, track.size)]:
            assert await fs.ops.read(info.fh, off, size) == data[off:off + size], (off, size)
        await fs.ops.release(info.fh)

    run(go)


def test_read_at_and_past_eof(fs: Fs) -> None:
    track = TRACKS[0]
    inode = fs.inode("Artist", "Album", "01.flac")

    async def go() -> None:
        fh = (await fs.ops.open(inode, os.O_RDONLY, CTX)).fh
        assert await fs.ops.read(fh, track.size - 10, 4096) == content(track)[-10:]
        assert await fs.ops.read(fh, track.size, 4096) == b""
        assert await fs.ops.read(fh, track.size + 10_000, 4096) == b""

    run(go)


def test_read_of_unknown_handle_is_ebadf(fs: Fs) -> None:
    assert fuse_errno(lambda: fs.ops.read(12345, 0, 10)) == errno.EBADF


def test_store_failure_is_eio() -> None:
    fs = Fs(FailingStore())

    async def go() -> None:
        fh = (await fs.ops.open(fs.inode("Artist", "Album", "01.flac"), os.O_RDONLY, CTX)).fh
        await fs.ops.read(fh, 0, 4096)

    assert fuse_errno(go) == errno.EIO


def test_unexpected_error_in_the_cache_is_eio(fs: Fs, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(fs.cache, "read", broken)

    async def go() -> None:
        fh = (await fs.ops.open(fs.inode("Artist", "Album", "01.flac"), os.O_RDONLY, CTX)).fh
        await fs.ops.read(fh, 0, 4096)

    assert fuse_errno(go) == errno.EIO


def test_a_prefetch_bug_costs_neither_open_nor_read(fs: Fs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefetch is an optimisation: if it raises, the open and the read still succeed."""
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(fs.prefetcher, "opened", broken)
    monkeypatch.setattr(fs.prefetcher, "read", broken)

    async def go() -> bytes:
        fh = (await fs.ops.open(fs.inode("Artist", "Album", "01.flac"), os.O_RDONLY, CTX)).fh
        return await fs.ops.read(fh, 0, 4096)

    assert trio.run(go) == content(TRACKS[0])[:4096]


def test_release_stops_the_pull() -> None:
    track = TRACKS[0]
    audio = head_end(track)
    fs = Fs()
    inode = fs.inode("Artist", "Album", "01.flac")
    zones = Zones(audio, tail_start(track))

    async def go() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.prefetcher.run)
            fh = (await fs.ops.open(inode, os.O_RDONLY, CTX)).fh
            assert await fs.ops.read(fh, 0, BS) == content(track)[:BS]
            while not all(fs.cache.cached(object_of(track), s, e) for s, e in zones.ranges(track.size)):
                await trio.sleep(0.005)  # the zones warmed after the first read
            await fs.cache.warm(object_of(track), audio, audio + 2 * BS)
            fs.store.gate.clear()  # from now on the store does not answer
            state: ReadState = fs.ops._handles[fh].reading
            for off in range(BS, audio + 2 * BS, BS):  # reading on in order past the head, from memory
                assert await fs.ops.read(fh, off, BS) == content(track)[off:off + BS]
            await trio.testing.wait_all_tasks_blocked()
            scopes = set(state.pulls)
            assert scopes, "the pull should be outstanding while the store is held"
            await fs.ops.release(fh)
            assert all(scope.cancel_called for scope in scopes)
            assert not state.pulls
            fs.store.gate.set()
            nursery.cancel_scope.cancel()

    run(go)


def test_release_of_unknown_handle_is_harmless(fs: Fs) -> None:
    run(lambda: fs.ops.release(777))
    run(lambda: fs.ops.releasedir(777))


# --- statfs, xattrs -----------------------------------------------------------------

def test_statfs(fs: Fs) -> None:
    data = run(lambda: fs.ops.statfs(CTX))
    total = sum(t.size for t in TRACKS)
    assert data.f_bsize == data.f_frsize == STATFS_BLOCK
    assert data.f_blocks == -(-total // STATFS_BLOCK)
    assert data.f_bfree == data.f_bavail == 0
    assert data.f_files == len(fs.tree.nodes) == 1 + 3 + 3  # root, Artist, two albums; 3 files
    assert data.f_namemax == NAME_MAX


def test_xattrs_are_empty(fs: Fs) -> None:
    inode = fs.inode("Artist")
    assert run(lambda: fs.ops.listxattr(inode, CTX)) == []
    assert fuse_errno(lambda: fs.ops.getxattr(inode, b"user.x", CTX)) == errno.ENODATA


# --- files that are not tracks -------------------------------------------------------

COVER_BYTES = bytes(range(256)) * 40  # 10 KiB: three cache blocks


def fs_with_extras(store: GatedStore | None = None) -> Fs:
    fs = Fs(store)
    cover_sha = hashlib.sha256(COVER_BYTES).hexdigest()
    cover = stored_object(cover_sha, len(COVER_BYTES), "jpg")
    fs.store.put_bytes(cover.key, COVER_BYTES)
    fs.tree.rebuild(PATHS, {("Artist", "Album", "cover.jpg"): ExtraFile.of_object(cover, 1_700_000_009.0, "cover"),
                            ("Playlists", "Mix.m3u8"): ExtraFile.of_bytes(PLAYLIST, 1_700_000_010.0, "playlist")})
    return fs


PLAYLIST = b"#EXTM3U\n#EXTINF:60,A - B\n../Artist/Album/01.flac\n"


def test_other_files_have_exact_attributes() -> None:
    fs = fs_with_extras()
    cover = run(lambda: fs.ops.getattr(fs.inode("Artist", "Album", "cover.jpg"), CTX))
    assert cover.st_mode == stat.S_IFREG | 0o444 and cover.st_size == len(COVER_BYTES)
    assert cover.st_mtime_ns == int(1_700_000_009.0 * 1e9)
    playlist = run(lambda: fs.ops.lookup(fs.inode("Playlists"), b"Mix.m3u8", CTX))
    assert playlist.st_size == len(PLAYLIST) and playlist.st_nlink == 1


def test_generated_and_stored_files_read_byte_exact() -> None:
    fs = fs_with_extras()
    opened: list[object] = []
    fs.prefetcher.opened = lambda node: opened.append(node)  # type: ignore[method-assign]

    async def go() -> None:
        for path, data in ((("Playlists", "Mix.m3u8"), PLAYLIST), (("Artist", "Album", "cover.jpg"), COVER_BYTES)):
            info = await fs.ops.open(fs.inode(*path), os.O_RDONLY, CTX)
            assert info.keep_cache and not info.direct_io
            for off, size in [(0, 5), (3, 4096), (BS - 1, BS + 2), (len(data) - 1, 10), (len(data), 10), (0, 1 << 20)]:
                assert await fs.ops.read(info.fh, off, size) == data[off:off + size], (path, off, size)
            await fs.ops.release(info.fh)

    run(go)
    assert opened == []  # prefetch follows tracks only
    assert any(key.endswith(".jpg") for key, _, _ in fs.store.ranges)


def test_other_files_are_read_only_and_a_failed_object_read_is_eio() -> None:
    fs = fs_with_extras(FailingStore())
    cover = fs.inode("Artist", "Album", "cover.jpg")
    assert fuse_errno(lambda: fs.ops.open(cover, os.O_WRONLY, CTX)) == errno.EROFS

    async def go() -> None:
        fh = (await fs.ops.open(cover, os.O_RDONLY, CTX)).fh
        await fs.ops.read(fh, 0, 4096)

    assert fuse_errno(go) == errno.EIO


def test_failed_reads_are_logged_once_a_minute_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    """Offline, every uncached read fails: the log gets a line, not a flood."""
    failures = FailedReads()
    with caplog.at_level(logging.WARNING, logger="lockerfs.fs"):
        for n in range(50):
            failures.note("01.flac", n, FetchError("cannot connect"))
    assert len(caplog.records) == 1
    failures._logged_at -= FailedReads.LOG_EVERY
    with caplog.at_level(logging.WARNING, logger="lockerfs.fs"):
        failures.note("02.flac", 0, FetchError("cannot connect"))
    assert "49 more reads failed" in caplog.records[-1].getMessage()
