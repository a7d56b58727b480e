"""Running the lockerfs command and real FUSE mounts from tests, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCKERFS = str(Path(sys.executable).with_name("lockerfs"))


def lockerfs(*args: str, env: dict[str, str], check: bool = True, timeout: float = 300,
             ) -> subprocess.CompletedProcess[str]:
    """Run the lockerfs command; on unexpected failure the assertion shows its output."""
    result = subprocess.run([LOCKERFS, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"lockerfs {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def mount_pids(mountpoint: Path) -> list[int]:
    """Processes whose command line mounts this mount point (daemonized mounts included)."""
    pids = []
    target = str(mountpoint)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(b"lockerfs" in a for a in argv[:2]) and target.encode() in argv:
            pids.append(int(entry.name))
    return pids


def force_unmount(mountpoint: Path) -> None:
    """Last-resort cleanup: lazy unmount and kill whatever serves the mount point."""
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
    for pid in mount_pids(mountpoint):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def readable(path: Path) -> bool:
    """Whether the whole file can be read now (a mount recovering from an outage)."""
    try:
        path.read_bytes()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def mounted(locker: str, mountpoint: Path, env: dict[str, str], *extra: str) -> Iterator[Path]:
    """`lockerfs mount` (daemonized) for the block; unmounted and stopped afterwards, even on failure."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        lockerfs("mount", *extra, locker, str(mountpoint), env=env, timeout=60)
        assert os.path.ismount(mountpoint), "lockerfs mount returned but nothing is mounted"
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run([LOCKERFS, "umount", str(mountpoint)], env=env, capture_output=True, timeout=60)
        force_unmount(mountpoint)
