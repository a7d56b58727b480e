"""What a music player does to a mount, one measurement per run, for scripts/bench.

Each measurement runs in its own process (`python bench_steps.py STEP JSON-ARGS`,
JSON result on stdout) so that the benchmark can time it out and kill it
without hanging on a stuck FUSE request, and so that no measurement shares a
Python interpreter with the benchmark itself. Times are taken inside the
process: interpreter start-up is never counted.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

BLOCK = 64 * 1024
SEQ_BLOCK = 1024 * 1024
STALL_S = 0.100


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def discover(root: str) -> dict[str, Any]:
    """Every file under the mount with its size: how the benchmark finds the
    same track in each system's tree (paths differ, sizes do not)."""
    files = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            files.append([os.path.relpath(path, root), os.stat(path).st_size])
    return {"files": files}


def find(root: str) -> dict[str, Any]:
    """`find` over the whole mount, as a file manager's or indexer's walk."""
    start = time.perf_counter()
    done = subprocess.run(["find", root], capture_output=True, check=True)
    return {"seconds": time.perf_counter() - start, "entries": done.stdout.count(b"\n")}


def ready(root: str, timeout: float) -> dict[str, Any]:
    """Lists the mount's root until it shows something: when the mount answers `ls`.
    The wall clock time is returned, to be set against the mount process's start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = os.listdir(root)
        if entries:
            return {"wall": time.time(), "entries": len(entries)}
        time.sleep(0.005)
    raise SystemExit(f"the mount listed nothing for {timeout:.0f} s")


def find_files(root: str) -> dict[str, Any]:
    """`find MNT -type f | wc -l`: every file of the mount, counted."""
    start = time.perf_counter()
    done = subprocess.run(["find", root, "-type", "f"], capture_output=True, check=True)
    return {"seconds": time.perf_counter() - start, "files": done.stdout.count(b"\n")}


def ls_album(root: str) -> dict[str, Any]:
    """A cold `ls -l` of one album folder, timed around the command; the folders above
    it are listed first (untimed) to find it: the middle artist's first album."""
    artists = sorted(os.listdir(root))
    artist = os.path.join(root, artists[len(artists) // 2])
    album = os.path.join(artist, sorted(os.listdir(artist))[0])
    start = time.perf_counter()
    done = subprocess.run(["ls", "-l", album], capture_output=True, check=True)
    return {"ms": _ms(time.perf_counter() - start), "entries": done.stdout.count(b"\n") - 1,
            "album": os.path.relpath(album, root)}


def appear(path: str, timeout: float) -> dict[str, Any]:
    """Polls (every 10 ms, a lookup each) until the path exists: when a refresh has been
    applied and its folders invalidated. The wall clock time is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return {"wall": time.time()}
        time.sleep(0.01)
    raise SystemExit(f"{path} did not appear within {timeout:.0f} s")


def first_byte(paths: list[str], gap_s: float) -> dict[str, Any]:
    """Open each track and read its first 64 KiB: what starting playback costs.

    `gap_s` apart, as a listener picks one track, then another: opens in quick
    succession look like a library scan to a system that tells them apart
    (lockerfs does), and would measure that instead.
    """
    return _timed_opens(paths, gap_s, lambda track: track.read(BLOCK))


def covers(paths: list[str], gap_s: float) -> dict[str, Any]:
    """Read each album's cover.* whole, `gap_s` apart, as a file manager or a player showing
    an album does: compare with first_byte, a track's first block."""
    def whole(cover: Any) -> None:
        while cover.read(BLOCK):
            pass
    return _timed_opens(paths, gap_s, whole)


def _timed_opens(paths: list[str], gap_s: float, read: Callable[[Any], object]) -> dict[str, Any]:
    """Seconds from open to the end of `read(file)`, per path, `gap_s` apart."""
    times = []
    for number, path in enumerate(paths):
        if number:
            time.sleep(gap_s)
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as opened:
            read(opened)
        times.append(time.perf_counter() - start)
    return {"ms": [_ms(t) for t in times], "median_ms": _ms(statistics.median(times)) if times else None}


def scan(root: str) -> dict[str, Any]:
    """A player's library import: walk the tree and read every file's tags with mutagen."""
    import mutagen  # imported here: other steps do not pay for it

    start = time.perf_counter()
    files = errors = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            files += 1
            try:
                if mutagen.File(os.path.join(folder, name)) is None:
                    errors += 1
            except Exception:  # a player skips a file it cannot read; so do we, counting it
                errors += 1
    return {"seconds": time.perf_counter() - start, "files": files, "unreadable": errors}


def sequential(path: str) -> dict[str, Any]:
    """Read a whole file front to back in 1 MiB reads (like cp or a media server's copy)."""
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as big:
        while chunk := big.read(SEQ_BLOCK):
            total += len(chunk)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": total, "mb_per_s": total / 1e6 / seconds}


def seek(path: str, count: int, seed: int) -> dict[str, Any]:
    """64 KiB reads at random offsets: a listener scrubbing through a long track."""
    size = os.stat(path).st_size
    offsets = random.Random(seed).sample(range(0, size - BLOCK, 4096), count)
    times = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in offsets:
            start = time.perf_counter()
            os.pread(fd, BLOCK, offset)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    return {"ms": [_ms(t) for t in times], "median_ms": _ms(statistics.median(times)),
            "max_ms": _ms(max(times))}


def ffmpeg(paths: list[str]) -> dict[str, Any]:
    """A real decoder reading each track from the mount as fast as it can."""
    times = []
    for path in paths:
        start = time.perf_counter()
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-f", "null", "-"],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"seconds": [round(t, 3) for t in times], "median_s": statistics.median(times)}


def copy(folder: str, target: str, expected: dict[str, str]) -> dict[str, Any]:
    """`cp -r` of one album folder to local disk, as a user saving an album would;
    then every copied track is checked against its sha256 (keyed by size in
    `expected`), so that a fast copy of wrong bytes cannot pass."""
    import hashlib

    os.makedirs(os.path.dirname(target), exist_ok=True)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", folder, target], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    matched = copied = 0
    for here, _dirs, names in os.walk(target):
        for name in names:
            path = os.path.join(here, name)
            copied += os.path.getsize(path)
            want = expected.get(str(os.path.getsize(path)))
            if want is None:
                continue
            with open(path, "rb") as copy_file:
                if hashlib.file_digest(copy_file, "sha256").hexdigest() != want:
                    raise RuntimeError(f"{name}: the copy differs from the original")
            matched += 1
    if matched != len(expected):
        raise RuntimeError(f"copied {matched} of the album's {len(expected)} tracks")
    return {"seconds": seconds, "bytes": copied, "mb_per_s": copied / 1e6 / seconds}


def playback(tracks: list[list[Any]], seconds: float, speed: float) -> dict[str, Any]:
    """Play consecutive tracks: 64 KiB reads paced at each track's byte rate.

    `tracks` holds [path, bytes per second]. The first `seconds` of each track
    are played (0: the whole track), `speed` times faster than real time. A
    read is due when the previous one's audio would have been consumed; one
    that takes over 100 ms is a stall. The very first read is start-up, not a
    stall; opening the next track is counted, since a gapless player needs it
    on time. `next_first_ms` gives, for each track after the first, its open
    plus first read: under half a round trip it came from the cache.
    """
    reads: list[float] = []
    firsts: list[float] = []  # each track's first read, open included: gapless needs it at once
    for path, byte_rate in tracks:
        limit = byte_rate * seconds if seconds else float("inf")
        opened = time.perf_counter()
        with open(path, "rb", buffering=0) as track:
            start = time.perf_counter()
            played = 0
            while played < limit:
                due = start + played / byte_rate / speed
                time.sleep(max(0.0, due - time.perf_counter()))
                began = time.perf_counter()
                chunk = track.read(BLOCK)
                reads.append(time.perf_counter() - began)
                if played == 0:
                    firsts.append(time.perf_counter() - opened)
                if not chunk:
                    break
                played += len(chunk)
    waits = reads[1:]
    return {"startup_ms": _ms(reads[0]), "reads": len(reads),
            "stalls": sum(wait > STALL_S for wait in waits),
            "max_wait_ms": _ms(max(waits, default=0.0)),
            "next_first_ms": [_ms(first) for first in firsts[1:]]}


STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "discover": discover, "find": find, "first_byte": first_byte, "covers": covers, "scan": scan,
    "sequential": sequential, "seek": seek, "ffmpeg": ffmpeg, "copy": copy, "playback": playback,
    "ready": ready, "find_files": find_files, "ls_album": ls_album, "appear": appear,
}


def main() -> None:
    step, arguments = sys.argv[1], json.loads(sys.argv[2])
    json.dump(STEPS[step](**arguments), sys.stdout)


if __name__ == "__main__":
    main()
