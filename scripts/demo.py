"""The built-in default: local S3 server, synthesized library, upload, mount, list.

Run through scripts/demo.sh (which sets up the environment first). Everything
lives in a temporary folder and is stopped and removed at the end, even on
failure; --keep leaves the mount up until Enter is pressed.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from synth_library import synthesize_library  # noqa: E402
from tests.support.s3server import S3Server  # noqa: E402

LOCKERFS = str(Path(sys.executable).with_name("lockerfs"))


def run(args: list[str], env: dict[str, str]) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run(args, env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the mount up until Enter")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lockerfs-demo-") as temp:
        work = Path(temp)
        server = S3Server(work / "s3")
        server.make_bucket("demo")
        server.start()
        mountpoint = work / "Music"
        mountpoint.mkdir()
        env = server.env()
        locker = "s3://demo/music"
        try:
            library = work / "library"
            tracks = synthesize_library(library, profile="small")
            print(f"synthesized {len(tracks)} files in {library}")
            run([LOCKERFS, "upload", str(library), locker], env)
            run([LOCKERFS, "stats", locker], env)
            run([LOCKERFS, "mount", "--cache-dir", str(work / "cache"), locker, str(mountpoint)], env)
            try:
                print(f"$ cd {mountpoint} && find . -type f | sort", flush=True)
                listing = subprocess.run(["find", ".", "-type", "f"], cwd=mountpoint, check=True,
                                         capture_output=True, text=True).stdout
                print("".join(sorted(listing.splitlines(keepends=True))), end="")
                first = next(p for p in sorted(mountpoint.rglob("*")) if p.is_file())
                digest = hashlib.sha256(first.read_bytes()).hexdigest()
                print(f"read {first.relative_to(mountpoint)}: sha256 {digest[:16]}...")
                if args.keep:
                    input(f"mounted at {mountpoint}; press Enter to unmount ")
            finally:
                run([LOCKERFS, "umount", str(mountpoint)], env)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
