"""Which process serves a mount point, and how it was mounted: two small files in the state dir.

`lockerfs mount` writes, per mount point, under $XDG_STATE_HOME/lockerfs/mounts/
(private to the user), once it is mounted, and removes them when it ends:

    <id>.pid    its process id: `lockerfs umount` waits for it to exit
    <id>.json   how it was mounted: what a command given a path inside the
                mount needs to know without asking the mount or the bucket
                (`lockerfs share`): the locker, the endpoint and region it
                talks to, where its catalog copy is, and the layout that
                turns that catalog into the mount's paths. No credentials.

<id> is derived from the mount point's canonical path, as the kernel lists it
in /proc/self/mountinfo.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from lockerfs import config


@dataclass(frozen=True)
class MountDescription:
    mountpoint: str
    locker: str
    endpoint: str  # the endpoint URL the mount resolved (boto3's chain or --endpoint-url)
    region: str | None
    catalog_copy: str  # the mount's local catalog copy (kept current by the mount)
    template: str  # --layout
    names: str  # --names
    pid: int


def _entry(mountpoint: str) -> Path:
    return config.state_dir() / "mounts" / config.locker_id(mountpoint, None)


def pid_path(mountpoint: Path) -> Path:
    return _entry(str(mountpoint.resolve())).with_suffix(".pid")


def description_path(mountpoint: str) -> Path:
    """`mountpoint` canonical, as mountinfo lists it."""
    return _entry(mountpoint).with_suffix(".json")


def write_description(description: MountDescription) -> Path:
    """Written whole or not at all (temp file, rename): a reader never sees half of it."""
    path = description_path(description.mountpoint)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(description)))
    os.replace(temporary, path)
    return path


def read_description(mountpoint: str) -> MountDescription | None:
    """The description the mount on `mountpoint` wrote; None if there is none or it is unusable."""
    try:
        raw = json.loads(description_path(mountpoint).read_text())
        return MountDescription(**{f.name: raw[f.name] for f in fields(MountDescription)})  # newer keys ignored
    except (OSError, ValueError, TypeError, KeyError):
        return None
