"""Upload throughput: `lockerfs upload` next to `rclone copy` of the same folder, same local server.

    .venv/bin/python scripts/bench_upload.py [--library DIR] [--jobs N]

Synthesizes the ~1 GB bench library (scripts/synth_library.py, profile
"bench") unless --library is given, starts `rclone serve s3` on 127.0.0.1,
and times: lockerfs upload (cold), lockerfs upload again (fully matched,
local state kept), lockerfs upload again without the local state (matched
by content, every file re-hashed), and `rclone copy` into another bucket.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from synth_library import synthesize_library  # noqa: E402
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, rclone_binary  # noqa: E402

LOCKERFS = str(Path(sys.executable).with_name("lockerfs"))


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", type=Path, help="folder to upload (default: synthesize the bench library)")
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lockerfs-upload-bench-") as temp:
        work = Path(temp)
        library = args.library or work / "library"
        if args.library is None:
            synthesize_library(library, profile="bench")
        size = folder_bytes(library)
        server = S3Server(work / "s3")
        for bucket in ("locker", "plain"):
            server.make_bucket(bucket)
        server.start()
        try:
            env = server.env()
            env["XDG_STATE_HOME"] = str(work / "state")
            upload = [LOCKERFS, "upload", "--jobs", str(args.jobs), str(library), "s3://locker/music"]
            cold = timed(upload, env)
            unchanged = timed(upload, env)
            subprocess.run(["rm", "-rf", str(work / "state")], check=True)
            matched = timed(upload, env)
            # Keys go through the environment, never the command line.
            rclone_env = dict(os.environ, RCLONE_CONFIG="/dev/null", RCLONE_S3_PROVIDER="Other",
                              RCLONE_S3_ENDPOINT=server.endpoint, RCLONE_S3_REGION=REGION,
                              RCLONE_S3_ACCESS_KEY_ID=ACCESS_KEY, RCLONE_S3_SECRET_ACCESS_KEY=SECRET_KEY)
            rclone = timed([rclone_binary(), "copy", "--transfers", str(args.jobs), str(library),
                            ":s3:plain/music"], rclone_env)
        finally:
            server.stop()
    mb = size / 1e6
    print(f"library: {mb:.0f} MB, {args.jobs} parallel transfers each")
    print("| run | seconds | MB/s |")
    print("|---|---|---|")
    print(f"| lockerfs upload (cold) | {cold:.1f} | {mb / cold:.0f} |")
    print(f"| rclone copy (cold) | {rclone:.1f} | {mb / rclone:.0f} |")
    print(f"| lockerfs upload, second run (unchanged) | {unchanged:.2f} | - |")
    print(f"| lockerfs upload, no local state (matched by hash) | {matched:.1f} | - |")
    print(f"ratio lockerfs/rclone time: {cold / rclone:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
