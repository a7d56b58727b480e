"""What is mounted on a folder, and whether it is still alive.

A FUSE filesystem whose process died (a crash, the OOM killer, kill -9) stays
mounted: every access to it fails with ENOTCONN ("Transport endpoint is not
connected") until someone unmounts it. The kernel's table of mounts,
/proc/self/mountinfo, still names its filesystem type, which tells a dead
lockerfs mount (ours to clean up) from anyone else's (never ours to touch).
"""

from __future__ import annotations

import enum
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
LOCKERFS_TYPE = "fuse.lockerfs"  # pyfuse3.init(..., "subtype=lockerfs")
_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


class State(enum.Enum):
    NOT_MOUNTED = enum.auto()
    LIVE = enum.auto()
    STALE = enum.auto()  # mounted, but nothing answers for it


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The lines of a mountinfo file (proc(5)), in order; later lines are mounted on top."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            mountpoint = fields[4]
            fstype, source = fields[separator + 1], fields[separator + 2]
        except (ValueError, IndexError):
            continue  # a line we do not understand is not one we may act on
        entries.append(MountEntry(_unescape(mountpoint), _unescape(fstype), _unescape(source)))
    return entries


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return _ESCAPE_RE.sub(lambda m: chr(int(m[1], 8)), field)


def mounted_at(path: Path, mountinfo: Path = MOUNTINFO) -> MountEntry | None:
    """The topmost mount on `path`, or None. Only its parent is resolved: a stale
    mount point itself cannot be looked at."""
    path = Path(os.path.abspath(path))
    target = os.path.join(os.path.realpath(path.parent), path.name)
    try:
        table = mountinfo.read_text(errors="surrogateescape")
    except OSError:  # no /proc: nothing known, and nothing done on a guess
        return None
    found = None
    for entry in parse_mountinfo(table):
        if entry.mountpoint == target:
            found = entry
    return found


def state(path: Path) -> tuple[State, MountEntry | None]:
    """Whether `path` is a mount point, and if it is, whether its filesystem still answers."""
    entry = mounted_at(path)
    if entry is None:
        return State.NOT_MOUNTED, None
    try:
        os.statvfs(path)  # always asks the filesystem: stat() may be answered from the kernel's cache
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return State.STALE, entry
        raise
    return State.LIVE, entry
