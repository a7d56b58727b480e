"""How fast a lockerfs mount recovers on a laptop, over the emulated WAN.

    mount -> wanproxy.py (RTT, bandwidth) -> faultproxy (kills connections) -> rclone serve s3

Each measure runs on its own fresh mount of the small synthesized library:

  baseline  the first 64 KiB of tracks nobody read yet, nothing wrong: the floor
  suspend   the mount is stopped (SIGSTOP) for --suspend seconds while every
            connection dies silently, then continued: the first read of an
            unread track
  network   every connection dies silently and an address appears on the
            loopback (the laptop joined another network): the first read of an
            unread track
  offline   the server refuses connections; a mount that has a catalog copy
            starts: its own start time (from its log: process start to ready,
            Python's imports excluded) and the `lockerfs mount` command's wall time

Run as root (FUSE mounts, `ip addr`):

    .venv/bin/python scripts/bench_laptop.py [--rtt-ms 30] [--mbit 200] [--suspend 120]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(ROOT)]

import wanproxy  # noqa: E402
from lockerfs.prefetch import SCAN_WINDOW_SECONDS  # noqa: E402
from synth_library import synthesize_library  # noqa: E402
from tests.support.faultproxy import FaultProxy  # noqa: E402
from tests.support.mounting import LOCKERFS, force_unmount, lockerfs, mount_pids  # noqa: E402
from tests.support.s3server import S3Server  # noqa: E402


def cold_tracks(mnt: Path, count: int) -> list[Path]:
    """`count` tracks of the first artist folder, which nothing read yet (a scan warms the
    folders after the ones it reads, not before). Listed before the measure: a listing may
    set prefetch going, which must not share the link with the reads measured."""
    first_artist = sorted(mnt.iterdir())[0]
    return sorted(p for p in first_artist.rglob("*") if p.is_file())[:count]


def first_reads(rig: Rig, tracks: list[Path]) -> list[float]:
    """Seconds for the first 64 KiB of each track, each of which must cost a GET
    (a read served from the cache would measure nothing)."""
    times = []
    for track in tracks:
        gets = rig.fault.count("GET")
        started = time.monotonic()
        with open(track, "rb") as stream:
            stream.read(65536)
        times.append(time.monotonic() - started)
        if rig.fault.count("GET") == gets:
            raise RuntimeError(f"{track} was read from the cache: nothing measured")
    return times


def use_the_mount(rig: Rig, mnt: Path) -> None:
    """Read one track of the last artist: connections in the pool, nothing near the first
    artist. Then wait until prefetch (its next track) is done: the reads measured next
    must have the link to themselves, and must not be taken for the second open of a scan
    (which warms the folders ahead, on the same link)."""
    last_artist = sorted(mnt.iterdir())[-1]
    next(p for p in sorted(last_artist.rglob("*")) if p.is_file()).read_bytes()
    time.sleep(SCAN_WINDOW_SECONDS + 1)
    rig.fault.wait_idle(timeout=120)


class Rig:
    def __init__(self, work: Path, rtt_ms: float, mbit: float) -> None:
        self.work = work
        self.server = S3Server(work / "s3")
        self.server.start()
        self.fault = FaultProxy(self.server.port)
        self.fault.start()
        self.wan = wanproxy.WanProxy(self.fault.port, rtt_ms, mbit)
        self.wan.__enter__()
        bucket = f"laptop{uuid.uuid4().hex[:6]}"
        self.server.make_bucket(bucket)
        self.locker = f"s3://{bucket}/music"
        library = work / "library"
        synthesize_library(library, profile="small")
        lockerfs("upload", str(library), self.locker, env=self.server.env())
        self.env = self.server.env(self.wan.endpoint)
        self.env["XDG_STATE_HOME"] = str(work / "state")
        self.mount_options: list[str] = []

    def close(self) -> None:
        self.wan.__exit__(None, None, None)
        self.fault.stop()
        self.server.stop()

    @contextmanager
    def mount(self, name: str) -> Iterator[Path]:
        mnt = self.work / name / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        try:
            lockerfs("mount", *self.mount_options, "--cache-dir", str(self.work / name / "cache"),
                     self.locker, str(mnt), env=self.env, timeout=120)
            yield mnt
        finally:
            for pid in mount_pids(mnt):
                os.kill(pid, signal.SIGCONT)
            subprocess.run([LOCKERFS, "umount", str(mnt)], env=self.env, capture_output=True, timeout=60)
            force_unmount(mnt)


def baseline(rig: Rig) -> list[float]:
    with rig.mount("baseline") as mnt:
        tracks = cold_tracks(mnt, 1)
        use_the_mount(rig, mnt)
        return first_reads(rig, tracks)


def suspend(rig: Rig, seconds: float) -> float:
    with rig.mount("suspend") as mnt:
        tracks = cold_tracks(mnt, 1)
        use_the_mount(rig, mnt)
        pid = mount_pids(mnt)[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            rig.fault.drop_silently()
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        return first_reads(rig, tracks)[0]


def network(rig: Rig) -> float:
    address = f"127.98.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}/32"
    with rig.mount("network") as mnt:
        tracks = cold_tracks(mnt, 1)
        use_the_mount(rig, mnt)
        rig.fault.drop_silently()
        subprocess.run(["ip", "addr", "add", address, "dev", "lo"], check=True)
        try:
            return first_reads(rig, tracks)[0]
        finally:
            subprocess.run(["ip", "addr", "del", address, "dev", "lo"], capture_output=True)


def offline(rig: Rig) -> tuple[float, float]:
    with rig.mount("offline"):
        pass  # leaves a catalog copy
    rig.fault.set_down(True)
    try:
        started = time.monotonic()
        with rig.mount("offline"):
            wall = time.monotonic() - started
        log = (rig.work / "offline" / "cache" / "mount.log").read_text()
        own = float(re.findall(r"mounted \S+ on \S+ in ([0-9.]+) s", log)[-1])
        assert "offline: " in log
    finally:
        rig.fault.set_down(False)
    return own, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=30.0)
    parser.add_argument("--mbit", type=float, default=200.0)
    parser.add_argument("--suspend", type=float, default=120.0, help="seconds stopped (default 120)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (mount logs)")
    parser.add_argument("--debug-mounts", action="store_true", help="mount with --debug (with --keep)")
    parser.add_argument("--only", default="baseline,suspend,network,offline", help="comma list of measures")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="lockerfs-laptop-")
    print(f"work folder {folder}", file=sys.stderr)
    try:
        rig = Rig(Path(folder), args.rtt_ms, args.mbit)
        if args.debug_mounts:
            rig.mount_options.append("--debug")
        only = set(args.only.split(","))
        nothing = float("nan")
        try:
            floor = baseline(rig) if "baseline" in only else [nothing]
            resumed = suspend(rig, args.suspend) if "suspend" in only else nothing
            changed = network(rig) if "network" in only else nothing
            own, wall = offline(rig) if "offline" in only else (nothing, nothing)
        finally:
            rig.close()
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    rtt = args.rtt_ms
    print(f"WAN: RTT {rtt:g} ms, {args.mbit:g} Mbit/s; small synthesized library")
    print("| measure | ms | RTTs |")
    print("| --- | --- | --- |")
    print(f"| first read, nothing wrong | {floor[0] * 1000:.0f} | {floor[0] * 1000 / rtt:.1f} |")
    print(f"| first read after a {args.suspend:g} s suspend | {resumed * 1000:.0f} | {resumed * 1000 / rtt:.1f} |")
    print(f"| first read after a network change | {changed * 1000:.0f} | {changed * 1000 / rtt:.1f} |")
    print(f"| offline start from the catalog copy (the mount's own figure) | {own * 1000:.0f} | — |")
    print(f"| offline `lockerfs mount` command, imports included | {wall * 1000:.0f} | — |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
