"""What gc, the writers' confirm step and share cost over the emulated WAN.

    lockerfs -> wanproxy.py (RTT, bandwidth) -> rclone serve s3

  gc        `lockerfs gc --grace 0` of --garbage unnamed objects (64 KiB to 1 MiB
            each) in a locker whose catalog names --live others: wall time
            (the command's, Python's start included), objects a second, and
            the requests by method that crossed the WAN
  dry-run   `lockerfs gc --dry-run` of the same locker: time and requests
  confirm   the writers' step after recording (writeorder.append_confirmed):
            one HEAD per object the records name, 16 in flight; the time of
            appending 100 records, and of confirming their objects, measured
            apart in this process
  refused   every command's time to report a refused connection (no WAN)

Run:

    .venv/bin/python scripts/bench_gc.py [--rtt-ms 30] [--mbit 200] [--garbage 500] [--live 200]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(ROOT)]

import wanproxy  # noqa: E402
from lockerfs import catalog, writeorder  # noqa: E402
from lockerfs.store import S3Store  # noqa: E402
from lockerfs.track import Track  # noqa: E402
from lockerfs.trackinfo import TrackInfo  # noqa: E402
from tests.support.mounting import LOCKERFS  # noqa: E402
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server  # noqa: E402

BUCKET = "bench-gc"
LOCKER = f"s3://{BUCKET}/music"


def fill(store: S3Store, garbage: int, live: int, rng: random.Random) -> list[Track]:
    """A locker with `live` named objects and `garbage` unnamed ones."""
    catalog.ensure_locker(store)
    tracks = []
    for n in range(garbage + live):
        data = rng.randbytes(rng.randrange(64 * 1024, 1024 * 1024))
        sha = hashlib.sha256(data).hexdigest()
        key = catalog.object_key(sha, "flac")
        store.put_bytes(key, data)
        if n < live:
            tracks.append(Track(sha256=sha, key=key, size=len(data), ext="flac", source=f"bench/{n}.flac",
                                mtime=0.0, info=TrackInfo(format="flac", codec="flac", title=f"T{n}")))
    catalog.append_records(store, [catalog.add_record(track) for track in tracks])
    return tracks


def timed_command(args: list[str], env: dict[str, str], wan: wanproxy.WanProxy) -> tuple[float, dict[str, int], str]:
    before = wan.stats()
    started = time.monotonic()
    result = subprocess.run([LOCKERFS, *args], env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"lockerfs {' '.join(args)} failed: {result.stderr}")
    used = (wan.stats() - before).as_dict()
    return seconds, used, result.stdout.strip().splitlines()[-1]


def requests(used: dict[str, int]) -> str:
    """By method: GET includes LISTs, PUT includes server-side copies."""
    return ", ".join(f"{name.upper()} {used[name]}" for name in ("get", "head", "put", "delete", "other") if used[name])


def refused_times(env: dict[str, str], folder: Path) -> dict[str, float]:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        refused_env = dict(env, AWS_ENDPOINT_URL=endpoint)
        (folder / "music").mkdir()
        (folder / "mnt").mkdir()
        commands = {"upload": ["upload", str(folder / "music"), LOCKER], "ls": ["ls", LOCKER],
                    "stats": ["stats", LOCKER], "playlists": ["playlists", LOCKER], "compact": ["compact", LOCKER],
                    "gc": ["gc", LOCKER],
                    "mount": ["mount", "--cache-dir", str(folder / "cache"), LOCKER, str(folder / "mnt")]}
        times = {}
        for name, args in commands.items():
            started = time.monotonic()
            subprocess.run([LOCKERFS, *args], env=refused_env, capture_output=True, timeout=120)
            times[name] = time.monotonic() - started
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=30.0)
    parser.add_argument("--mbit", type=float, default=200.0)
    parser.add_argument("--garbage", type=int, default=500)
    parser.add_argument("--live", type=int, default=200)
    options = parser.parse_args()
    rng = random.Random(12)
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as scratch:
        server = S3Server(Path(scratch) / "data", remember_md5=True)
        server.start()
        try:
            server.make_bucket(BUCKET)
            direct = S3Store(LOCKER, endpoint_url=server.endpoint)
            live = fill(direct, options.garbage, options.live, rng)
            with wanproxy.WanProxy(server.port, options.rtt_ms, options.mbit) as wan:
                env = server.env(wan.endpoint)
                env.update(XDG_CACHE_HOME=str(Path(scratch) / "cache"), XDG_STATE_HOME=str(Path(scratch) / "state"))
                print(f"WAN: RTT {options.rtt_ms:g} ms, {options.mbit:g} Mbit/s; locker: {options.live} named objects, "
                      f"{options.garbage} unnamed")
                seconds, used, last = timed_command(["gc", "--dry-run", "--grace", "0", LOCKER], env, wan)
                print(f"gc --dry-run: {seconds:.2f} s; requests: {requests(used)}; {last}")
                seconds, used, last = timed_command(["gc", "--grace", "0", LOCKER], env, wan)
                print(f"gc: {seconds:.2f} s, {options.garbage / seconds:.0f} objects/s; requests: {requests(used)}; {last}")

                through_wan = S3Store(LOCKER, endpoint_url=wan.endpoint, pool_size=32)
                records = [catalog.add_record(track) for track in live[:100]]
                started = time.monotonic()
                catalog.append_records(through_wan, records)
                appended = time.monotonic() - started
                started = time.monotonic()
                writeorder.append_confirmed(through_wan, records, lambda key: None)
                both = time.monotonic() - started
                print(f"confirm: appending 100 records {appended * 1000:.0f} ms; appending and confirming their "
                      f"objects {both * 1000:.0f} ms (confirming: {(both - appended) * 1000:.0f} ms, "
                      f"{(both - appended) / (options.rtt_ms / 1000):.1f} RTT)")
            times = refused_times(env, Path(scratch))
            print("refused connection reported in: " + ", ".join(f"{name} {t:.2f} s" for name, t in times.items()))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
