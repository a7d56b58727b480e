"""A read-only passthrough FUSE filesystem that counts (and can record) every read.

    python scripts/countfs.py SOURCE MOUNTPOINT --report FILE [--trace] [--blksize N]

It mirrors the folder SOURCE at MOUNTPOINT and, once unmounted (or on
SIGTERM/SIGINT), writes a JSON report to FILE: per file, its size, opens,
reads and bytes read; with --trace also every open, read and release in the
order they arrived. This is how the benchmark measures what a reader asks for
when it reads a local copy of the library (the "floor" a mount is compared
with), and how scripts/record_traces.py records read traces.

Why a filesystem and not strace: MPD reads local files through io_uring,
which strace does not see; every read of a FUSE file reaches the daemon,
whoever issues it. Files are opened with direct_io, so each read arrives as
the reader made it (no kernel read-ahead, no page cache): the counts are what
the reader requested. The kernel still cuts a larger read into pieces of
the connection's maximum (1 MiB here); the trace shows the pieces.

pyfuse3 hands `read` no request context, so a read is attributed to the
thread that opened its file handle (ctx.pid at open is the caller's thread
id). Disk reads run in worker threads, never on the trio loop.

Report schema (JSON):
    {"source": str, "blksize": int,
     "files": {relpath: {"size": int, "opens": int, "reads": int,
                         "requested": int, "bytes": int, "unique": int}},
     "total": {"opens": int, "reads": int, "requested": int, "bytes": int, "unique": int},
    (requested: sizes asked for; bytes: returned; unique: bytes of the file
    covered by some read, what a perfect cache fetches once)
     "events": [  # only with --trace; t is seconds since mount
        ["open", t, fh, relpath, tid], ["read", t, fh, offset, size], ["close", t, fh]]}
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("countfs")

ATTR_TIMEOUT = 3600.0  # the mirrored folder does not change while it is counted


@dataclass
class FileCount:
    """`requested` sums the sizes asked for, `bytes` what was returned (a read
    past the end returns less), `unique` the bytes of the file that any read
    returned: what a mount with a perfect cache would have had to fetch."""

    size: int
    opens: int = 0
    reads: int = 0
    requested: int = 0
    bytes: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {"size": self.size, "opens": self.opens, "reads": self.reads,
                "requested": self.requested, "bytes": self.bytes, "unique": covered(self.ranges)}


def covered(ranges: list[tuple[int, int]]) -> int:
    """Bytes in the union of [start, end) ranges."""
    total, reach = 0, 0
    for start, end in sorted(ranges):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@dataclass
class Counter:
    """What readers asked for, per file; the event list only when tracing."""

    trace: bool
    started: float = field(default_factory=time.monotonic)
    files: dict[str, FileCount] = field(default_factory=dict)
    events: list[list[Any]] = field(default_factory=list)

    def opened(self, fh: int, relpath: str, size: int, tid: int) -> None:
        self.files.setdefault(relpath, FileCount(size)).opens += 1
        if self.trace:
            self.events.append(["open", self._now(), fh, relpath, tid])

    def arrived(self, fh: int, offset: int, size: int) -> None:
        """Traced on arrival, so the trace keeps the order in which reads were made."""
        if self.trace:
            self.events.append(["read", self._now(), fh, offset, size])

    def read(self, relpath: str, offset: int, size: int, returned: int) -> None:
        counted = self.files[relpath]
        counted.reads += 1
        counted.requested += size
        counted.bytes += returned
        if returned:
            counted.ranges.append((offset, offset + returned))

    def closed(self, fh: int) -> None:
        if self.trace:
            self.events.append(["close", self._now(), fh])

    def _now(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def report(self, source: Path, blksize: int) -> dict[str, Any]:
        files = {path: count.summary() for path, count in sorted(self.files.items())}
        total = {key: sum(count[key] for count in files.values())
                 for key in ("opens", "reads", "requested", "bytes", "unique")}
        report: dict[str, Any] = {"source": str(source), "blksize": blksize, "files": files, "total": total}
        if self.trace:
            report["events"] = self.events
        return report


def serve(source: Path, mountpoint: Path, report_path: Path, trace: bool, blksize: int | None) -> None:
    """Mount, serve until unmounted or signalled, then write the report."""
    import pyfuse3
    import trio

    class CountingOperations(pyfuse3.Operations):
        """Read-only passthrough: names and attributes from SOURCE, bytes by pread."""

        supports_dot_lookup = True
        enable_writeback_cache = False
        enable_acl = False

        def __init__(self) -> None:
            super().__init__()
            self.counter = Counter(trace)
            self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
            self._inodes: dict[str, int] = {"": pyfuse3.ROOT_INODE}
            self._next_inode = itertools.count(pyfuse3.ROOT_INODE + 1)
            self._next_handle = itertools.count(1)
            self._files: dict[int, tuple[int, str]] = {}  # fh -> (fd, relpath)

        def _inode(self, relpath: str) -> int:
            if relpath not in self._inodes:
                inode = next(self._next_inode)
                self._inodes[relpath], self._paths[inode] = inode, relpath
            return self._inodes[relpath]

        def _relpath(self, inode: int) -> str:
            try:
                return self._paths[inode]
            except KeyError:
                raise pyfuse3.FUSEError(errno.ENOENT) from None

        def _attributes(self, relpath: str) -> pyfuse3.EntryAttributes:
            try:
                st = os.lstat(source / relpath)
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = self._inode(relpath)
            attrs.st_mode = (st.st_mode & ~0o222) if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) \
                else stat.S_IFREG | 0o444  # read-only; anything odd shows as an empty file
            attrs.st_nlink, attrs.st_uid, attrs.st_gid = st.st_nlink, st.st_uid, st.st_gid
            attrs.st_size = st.st_size if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else 0
            attrs.st_blksize = blksize or st.st_blksize
            attrs.st_blocks = st.st_blocks
            attrs.st_atime_ns, attrs.st_mtime_ns, attrs.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
            attrs.entry_timeout = attrs.attr_timeout = ATTR_TIMEOUT
            return attrs

        async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                         ) -> pyfuse3.EntryAttributes:
            parent = self._relpath(parent_inode)
            text = os.fsdecode(name)
            if text == ".":
                return self._attributes(parent)
            if text == "..":
                return self._attributes(os.path.dirname(parent))
            return self._attributes(os.path.join(parent, text) if parent else text)

        async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            return self._attributes(self._relpath(inode))

        async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
            self._relpath(inode)
            return inode

        async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
            parent = self._relpath(fh)
            try:
                names = sorted(os.listdir(source / parent))
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
            for index, name in enumerate(names[start_id:], start_id + 1):
                relpath = os.path.join(parent, name) if parent else name
                try:
                    attrs = self._attributes(relpath)
                except pyfuse3.FUSEError:
                    continue  # vanished meanwhile
                if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index):
                    return

        async def releasedir(self, fh: int) -> None:
            pass

        async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
                raise pyfuse3.FUSEError(errno.EROFS)
            relpath = self._relpath(inode)
            try:
                fd = await trio.to_thread.run_sync(os.open, source / relpath, os.O_RDONLY)
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
            fh = next(self._next_handle)
            self._files[fh] = (fd, relpath)
            self.counter.opened(fh, relpath, os.fstat(fd).st_size, ctx.pid)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            fd, relpath = self._files[fh]
            self.counter.arrived(fh, off, size)
            try:
                data = await trio.to_thread.run_sync(os.pread, fd, size, off)
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
            self.counter.read(relpath, off, size, len(data))
            return data

        async def release(self, fh: int) -> None:
            fd, _relpath = self._files.pop(fh)
            self.counter.closed(fh)
            os.close(fd)

        async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
            st = os.statvfs(source)
            data = pyfuse3.StatvfsData()
            for name in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
                setattr(data, name, getattr(st, name))
            data.f_bfree = data.f_bavail = data.f_ffree = data.f_favail = 0
            return data

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _signum in signals:
                        pyfuse3.terminate()
                        return
            nursery.start_soon(stop_on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    operations = CountingOperations()
    options = {"fsname=countfs", "subtype=countfs", "ro", "default_permissions"}
    if os.getuid() == 0:  # MPD or a test may read as another user; only root may allow that unasked
        options.add("allow_other")
    pyfuse3.init(operations, str(mountpoint), options)
    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)
        partial = report_path.with_name(report_path.name + ".partial")
        partial.write_text(json.dumps(operations.counter.report(source, blksize or 0)))
        partial.rename(report_path)


# --- use from other scripts and tests ---------------------------------------------

def _is_mounted(mountpoint: Path) -> bool:
    """From /proc/self/mountinfo: never touches the mount, so never hangs on it."""
    target = str(mountpoint).replace(" ", "\\040")
    with open("/proc/self/mountinfo") as table:
        return any(line.split()[4] == target for line in table)


class CountedMount:
    """A running countfs: `report()` is available once `stop()` has returned."""

    def __init__(self, source: Path, mountpoint: Path, report_path: Path, trace: bool = False,
                 blksize: int | None = None) -> None:
        self.source, self.mountpoint, self.report_path = source, mountpoint, report_path
        argv = [sys.executable, str(Path(__file__).resolve()), str(source), str(mountpoint),
                "--report", str(report_path)]
        argv += ["--trace"] if trace else []
        argv += ["--blksize", str(blksize)] if blksize else []
        self.argv = argv
        self.process: Any = None

    def start(self, timeout: float = 30.0) -> None:
        import subprocess

        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.report_path.unlink(missing_ok=True)
        log_path = self.report_path.with_name(self.report_path.name + ".log")
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _is_mounted(self.mountpoint):
            if self.process.poll() is not None:
                raise RuntimeError(f"countfs exited with {self.process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"countfs not mounted after {timeout:.0f} s; see {log_path}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Unmount (lazily if busy) and wait for the report; kill only as a last resort."""
        import subprocess

        if self.process is None:
            return
        if _is_mounted(self.mountpoint):
            done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
            if done.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def report(self) -> dict[str, Any]:
        return json.loads(self.report_path.read_text())


@contextmanager
def counted(source: Path, mountpoint: Path, report_path: Path, trace: bool = False,
            blksize: int | None = None) -> Iterator[CountedMount]:
    """A countfs mount for the block, unmounted however the block ends."""
    mount = CountedMount(source, mountpoint, report_path, trace, blksize)
    mount.start()
    try:
        yield mount
    finally:
        mount.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder to mirror")
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--report", type=Path, required=True, help="JSON report, written at unmount")
    parser.add_argument("--trace", action="store_true", help="also record every open, read and release")
    parser.add_argument("--blksize", type=int, help="st_blksize to report (default: the source file's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="countfs: %(message)s")
    if not args.source.is_dir():
        parser.error(f"{args.source} is not a folder")
    serve(args.source.resolve(), args.mountpoint.resolve(), args.report.resolve(), args.trace, args.blksize)
    return 0


if __name__ == "__main__":
    sys.exit(main())
