"""The floor of a cold `find` through pyfuse3 on this machine: a filesystem that does nothing.

    python scripts/bench_fuse_floor.py [--top 8000] [--albums 3] [--files 12] [--runs 2]

Mounts a read-only pyfuse3 filesystem whose every answer is made before the
mount (names, attributes: no lookup, no naming, no catalog), shaped like the
scale step's library (TOP artist folders of ALBUMS album folders of FILES
files), runs `find MNT -type f | wc -l` on it with the kernel's caches
dropped, and prints the seconds, the FUSE requests by kind and the time per
request. Nothing a lockerfs mount does can make its cold `find` cheaper
than this: the difference between the two is what our handlers cost.

The filesystem runs in a child process (as a mount does); the requests are
counted there and reported through a pipe when it is unmounted.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE


class NothingFS(pyfuse3.Operations):
    """Folders and files whose attributes and listings are all made up front."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, top: int, albums: int, files: int) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {ROOT: self._attrs(ROOT, True)}
        self.listings: dict[int, list[tuple[bytes, int]]] = {ROOT: []}
        self.by_name: dict[tuple[int, bytes], int] = {}
        inode = ROOT + 1
        for a in range(top):
            artist, inode = inode, inode + 1
            self._add(ROOT, f"Artist {a:05d}".encode(), artist, True)
            for b in range(albums):
                album, inode = inode, inode + 1
                self._add(artist, f"Album {b} (2001)".encode(), album, True)
                for c in range(files):
                    self._add(album, f"{c + 1:02d} A title of a track.flac".encode(), inode, False)
                    inode += 1

    def _attrs(self, inode: int, folder: bool) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.entry_timeout = attrs.attr_timeout = 3600.0
        attrs.st_mode = (stat.S_IFDIR | 0o555) if folder else (stat.S_IFREG | 0o444)
        attrs.st_nlink = 2 if folder else 1
        attrs.st_size = 4096 if folder else 30 << 20
        attrs.st_uid, attrs.st_gid = os.getuid(), os.getgid()
        return attrs

    def _add(self, parent: int, name: bytes, inode: int, folder: bool) -> None:
        self.attrs[inode] = self._attrs(inode, folder)
        self.listings[parent].append((name, inode))
        self.by_name[(parent, name)] = inode
        if folder:
            self.listings[inode] = []
            self.attrs[parent].st_nlink += 1

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.counts["lookup"] += 1
        inode = self.by_name.get((parent_inode, name))
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[inode]

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.counts["getattr"] += 1
        return self.attrs[inode]

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self.counts["opendir"] += 1
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self.counts["readdir"] += 1
        listing = self.listings[fh]
        for index in range(start_id, len(listing)):
            name, inode = listing[index]
            if not pyfuse3.readdir_reply(token, name, self.attrs[inode], index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self.counts["releasedir"] += 1

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        self.counts["statfs"] += 1
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 65536
        data.f_namemax = 255
        return data


def serve(mountpoint: str, top: int, albums: int, files: int, report_fd: int) -> None:
    """The child: mount, serve until unmounted, write the counts to report_fd."""
    fs = NothingFS(top, albums, files)
    pyfuse3.init(fs, mountpoint, {"fsname=floor", "ro", "default_permissions", "noatime"})
    os.write(report_fd, b"ready\n")
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    used = resource.getrusage(resource.RUSAGE_SELF)
    os.write(report_fd, json.dumps({"requests": fs.counts, "cpu_s": used.ru_utime + used.ru_stime - before.ru_utime - before.ru_stime}).encode() + b"\n")


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        print("(cannot drop the kernel's caches: not root; the first run is still cold)", file=sys.stderr)


def measure(top: int, albums: int, files: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="fuse-floor-") as scratch:
        mountpoint = Path(scratch) / "mnt"
        mountpoint.mkdir()
        read_end, write_end = os.pipe()
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(mountpoint), str(top), str(albums),
                                  str(files), str(write_end)], pass_fds=(write_end,))
        os.close(write_end)
        pipe = os.fdopen(read_end)
        try:
            if pipe.readline().strip() != "ready":
                raise SystemExit("the floor filesystem did not mount")
            drop_caches()
            began = time.monotonic()
            found = subprocess.run(f"find {mountpoint} -type f | wc -l", shell=True, capture_output=True, text=True,
                                   check=True)
            seconds = time.monotonic() - began
        finally:
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
            child.wait(60)
        served = json.loads(pipe.readline() or "{}")
        pipe.close()
    counts = served.get("requests", {})
    requests = sum(counts.values())
    return {"folders": 1 + top + top * albums, "files": int(found.stdout), "find_s": round(seconds, 3),
            "requests": counts, "requests_total": requests, "daemon_cpu_s": round(served.get("cpu_s", 0.0), 2),
            "us_per_request": round(seconds / requests * 1e6, 1) if requests else None}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], *map(int, sys.argv[3:7]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=8000, help="artist folders in the root (8000)")
    parser.add_argument("--albums", type=int, default=3, help="album folders per artist (3)")
    parser.add_argument("--files", type=int, default=12, help="files per album (12)")
    parser.add_argument("--runs", type=int, default=2, help="cold finds, each on a fresh mount (2)")
    args = parser.parse_args()
    for _ in range(args.runs):
        print(json.dumps(measure(args.top, args.albums, args.files)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
