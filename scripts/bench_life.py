"""What the library's life costs over the emulated WAN: rm, restore, tag, pin, and offline play of a pin.

    mount and commands -> wanproxy.py (RTT, bandwidth) -> faultproxy -> rclone serve s3

One mount of a synthesized library (the small test library and one album of
noise-filled FLAC, --album-mb in all, which compresses to nothing) with an
empty cache. Every figure is the wall time of the real `lockerfs` command,
which returns once the running mount shows the change (so "rm" is how long a
removal takes to show); the floor of any command is Python starting and
importing lockerfs, measured as `lockerfs --version`.

  rm / restore   one track, then the album; each undone before the next run
  tag            one track's title; then the whole album's album tag (fetch,
                 rewrite, store, record: the album's bytes cross the link twice)
  pin            the album, cold: MB/s against the link's rate
  offline play   the link refuses connections; every track of the pinned album
                 is played start to end with bench_steps.playback (64 KiB reads
                 paced at the track's byte rate, --speed times real time); a
                 read that waits over 100 ms is a stall. Then again after an
                 unmount and an offline mount.

Run as root (FUSE):

    .venv/bin/python scripts/bench_life.py [--rtt-ms 30] [--mbit 200] [--album-mb 64]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mutagen

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(ROOT)]

import wanproxy  # noqa: E402
from bench_steps import playback  # noqa: E402
from synth_library import synthesize_library, write_track  # noqa: E402
from tests.support.faultproxy import FaultProxy  # noqa: E402
from tests.support.mounting import LOCKERFS, force_unmount, lockerfs  # noqa: E402
from tests.support.s3server import S3Server  # noqa: E402

ALBUM = "Pin Band/Carry-On Album (2024)"
TRACK = "The Synthetics/Waveforms (2019)/01 Sine of the Times.flac"
SECONDS_PER_MB = 5.9  # of noise-filled 44.1 kHz stereo 16-bit FLAC
TRACKS = 8
RUNS = 3


class Rig:
    def __init__(self, work: Path, rtt_ms: float, mbit: float, album_mb: float) -> None:
        self.work = work
        self.server = S3Server(work / "s3", remember_md5=True)
        self.server.start()
        self.fault = FaultProxy(self.server.port)
        self.fault.start()
        self.wan = wanproxy.WanProxy(self.fault.port, rtt_ms, mbit)
        self.wan.__enter__()
        bucket = f"life{uuid.uuid4().hex[:6]}"
        self.server.make_bucket(bucket)
        self.locker = f"s3://{bucket}/music"
        library = work / "library"
        synthesize_library(library, profile="small")
        seconds = album_mb * SECONDS_PER_MB / TRACKS
        for n in range(1, TRACKS + 1):
            write_track(library / "album" / f"{n:02d}.flac", "flac", seconds,
                        {"artist": "Pin Band", "album": "Carry-On Album", "date": "2024", "track": n,
                         "title": f"Gate {n}"}, seed=500 + n, noise=True)
        self.album_bytes = sum(p.stat().st_size for p in (library / "album").iterdir())
        lockerfs("upload", str(library), self.locker, env=self.server.env())  # not over the WAN: set-up only
        self.env = self.server.env(self.wan.endpoint)
        self.env["XDG_STATE_HOME"] = str(work / "state")

    def close(self) -> None:
        self.wan.__exit__(None, None, None)
        self.fault.stop()
        self.server.stop()

    @contextmanager
    def mount(self, *options: str) -> Iterator[Path]:
        mnt = self.work / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        try:
            lockerfs("mount", "--cache-dir", str(self.work / "cache"), "--memory-cache", "16M", *options,
                     self.locker, str(mnt), env=self.env, timeout=120)
            yield mnt
        finally:
            subprocess.run([LOCKERFS, "umount", str(mnt)], env=self.env, capture_output=True, timeout=60)
            force_unmount(mnt)

    def timed(self, *args: str) -> float:
        started = time.monotonic()
        lockerfs(*args, env=self.env, timeout=600)
        return time.monotonic() - started


def play(mnt: Path, speed: float) -> dict[str, object]:
    """Every track of the pinned album, start to end, paced at its own byte rate."""
    tracks = sorted((mnt / ALBUM).glob("*.flac"))
    return playback([[str(path), path.stat().st_size / mutagen.File(path).info.length] for path in tracks],
                    seconds=0, speed=speed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=30.0)
    parser.add_argument("--mbit", type=float, default=200.0)
    parser.add_argument("--album-mb", type=float, default=64.0, help="size of the album pinned and re-tagged")
    parser.add_argument("--speed", type=float, default=8.0, help="offline playback, times real time")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (mount log)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lockerfs-life-"))
    print(f"work folder {folder}", file=sys.stderr)
    figures: dict[str, object] = {}
    try:
        rig = Rig(folder, args.rtt_ms, args.mbit, args.album_mb)
        try:
            figures["floor"] = statistics.median(rig.timed("--version") for _ in range(RUNS))
            with rig.mount("--cache-size", f"{int(rig.album_bytes * 3)}") as mnt:
                rm, restore = [], []
                for _ in range(RUNS):
                    rm.append(rig.timed("rm", str(mnt / TRACK)))
                    assert not (mnt / TRACK).exists()
                    restore.append(rig.timed("restore", str(mnt / TRACK)))
                    assert (mnt / TRACK).exists()
                figures["rm track"], figures["restore track"] = statistics.median(rm), statistics.median(restore)
                figures["rm album"] = rig.timed("rm", str(mnt / ALBUM))
                figures["restore album"] = rig.timed("restore", str(mnt / ALBUM))
                figures["tag track"] = rig.timed("tag", str(mnt / TRACK), "title=Sine Wave")
                before = rig.wan.stats()
                figures["tag album"] = rig.timed("tag", str(mnt / ALBUM), "album=Carry On Album")
                moved = rig.wan.stats() - before
                figures["tag album MB"] = (moved.bytes_down + moved.bytes_up) / 1e6
                rig.timed("tag", str(mnt / "Pin Band" / "Carry On Album (2024)"), "album=Carry-On Album")
                assert (mnt / ALBUM).is_dir()
                before = rig.wan.stats()
                started = time.monotonic()
                output = lockerfs("pin", str(mnt / ALBUM), env=rig.env, timeout=600).stdout
                figures["pin"] = time.monotonic() - started
                figures["pin in mount"] = float(re.search(r"in ([0-9.]+) s", output)[1])
                figures["pin GETs"] = (rig.wan.stats() - before).get
                rig.fault.set_down(True)
                try:
                    figures["offline"] = play(mnt, args.speed)
                finally:
                    rig.fault.set_down(False)
            rig.fault.set_down(True)
            try:
                with rig.mount("--cache-size", f"{int(rig.album_bytes * 3)}") as mnt:
                    figures["offline remount"] = play(mnt, args.speed)
            finally:
                rig.fault.set_down(False)
        finally:
            rig.close()
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    report(args, rig.album_bytes, figures)
    return 0


def report(args: argparse.Namespace, album_bytes: int, figures: dict) -> None:  # type: ignore[type-arg]
    link = args.mbit / 8
    pin_rate = album_bytes / 1e6 / figures["pin in mount"]
    print(f"WAN: RTT {args.rtt_ms:g} ms, {args.mbit:g} Mbit/s; album {TRACKS} tracks, {album_bytes / 1e6:.1f} MB")
    print("| command | wall s | note |")
    print("| --- | --- | --- |")
    print(f"| `lockerfs --version` (Python + imports: every command's floor) | {figures['floor']:.2f} | |")
    for name in ("rm track", "restore track", "rm album", "restore album"):
        print(f"| {name} | {figures[name]:.2f} | until the mount shows it |")
    print(f"| tag track (title) | {figures['tag track']:.2f} | |")
    print(f"| tag album (album) | {figures['tag album']:.2f} | {figures['tag album MB']:.1f} MB over the link |")
    print(f"| pin album, cold | {figures['pin']:.2f} | in the mount {figures['pin in mount']:.2f} s: {pin_rate:.1f} MB/s = "
          f"{pin_rate / link:.0%} of the link's {link:.1f} MB/s; {figures['pin GETs']} GETs |")
    for name in ("offline", "offline remount"):
        run = figures[name]
        print(f"| play the pinned album {name}, {args.speed:g}x | — | {run['stalls']} stalls in {run['reads']} reads, "
              f"longest wait {run['max_wait_ms']} ms |")


if __name__ == "__main__":
    sys.exit(main())
