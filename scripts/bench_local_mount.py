"""Mount figures against the local server with no WAN in between (issue 3's closing figures).

    .venv/bin/python scripts/bench_local_mount.py [--megabytes 100]

Uploads a synthesized ~100 MB FLAC and the small library to `rclone serve s3`
on 127.0.0.1, mounts with an empty cache and measures: first byte (open +
64 KiB read) of every cold track, median; cold sequential read of the large
file (1 MiB reads); warm re-read from lockerfs's own cache (kernel page cache
dropped first); and a re-read served by the kernel's page cache (keep_cache).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from synth_library import synthesize_library, write_big_flac  # noqa: E402
from tests.support.mounting import lockerfs, mounted  # noqa: E402
from tests.support.s3server import S3Server  # noqa: E402


def drop_page_cache() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def read_all(path: Path) -> float:
    """Seconds to read the file front to back in 1 MiB reads."""
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as stream:
        while stream.read(1 << 20):
            pass
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lockerfs-local-bench-") as temp:
        work = Path(temp)
        library = work / "library"
        synthesize_library(library, profile="small")
        big = write_big_flac(library / "big" / "big.flac", megabytes=args.megabytes)
        server = S3Server(work / "s3", remember_md5=True)
        server.make_bucket("bench")
        server.start()
        try:
            env = server.env()
            env["XDG_STATE_HOME"] = str(work / "state")
            locker = "s3://bench/music"
            lockerfs("upload", str(library), locker, env=env)
            with mounted(locker, work / "mnt", env, "--cache-dir", str(work / "cache")) as mnt:
                files = sorted(p for p in mnt.rglob("*") if p.is_file())
                big_path = next(p for p in files if p.stat().st_size == big.path.stat().st_size)
                first_bytes = []
                for path in files:
                    if path == big_path:
                        continue
                    started = time.perf_counter()
                    with open(path, "rb", buffering=0) as stream:
                        stream.read(64 * 1024)
                    first_bytes.append(time.perf_counter() - started)
                size_mb = big_path.stat().st_size / 1e6
                cold = read_all(big_path)
                page_cache = read_all(big_path)
                dropped = drop_page_cache()
                warm = read_all(big_path)
        finally:
            server.stop()
    print("| measure (local rclone serve s3, no WAN) | value |")
    print("|---|---|")
    print(f"| first byte, cold track (median of {len(first_bytes)}) | {statistics.median(first_bytes) * 1000:.1f} ms "
          f"(max {max(first_bytes) * 1000:.1f} ms) |")
    print(f"| cold sequential read, {size_mb:.0f} MB | {size_mb / cold:.0f} MB/s |")
    print(f"| warm re-read from lockerfs's cache{'' if dropped else ' (page cache NOT dropped)'} | "
          f"{size_mb / warm:.0f} MB/s |")
    print(f"| re-read from the kernel page cache (keep_cache) | {size_mb / page_cache:.0f} MB/s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
