"""Upload throughput: `lockerfs upload` next to `rclone copy` of the same trees, same local server.

    .venv/bin/python scripts/bench_upload.py [--library DIR] [--jobs N] [--small-files N]
                                             [--rerun-files N]

Two trees, each timed for both tools cold (an empty bucket, the page cache
dropped first when we may, as root) and again (everything unchanged):
  - the bench library (~1 GB, 400 tracks; scripts/synth_library.py "bench"),
    or --library DIR;
  - --small-files N short tagged files (default 20,000; 0 skips it).
For lockerfs also: again without the local state (every file re-read and
matched by content). --rerun-files N adds a tree of N tiny tracks, uploaded
once and then timed unchanged (the issue's 100,000-file rerun).

The server is `rclone serve s3` on 127.0.0.1 that keeps each object's MD5
as S3 does (both tools HEAD objects). Both tools get --jobs transfers.
The last line is the bench library's cold ratio:
    ratio lockerfs/rclone time: R
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from synth_library import synthesize_library, synthesize_small_files  # noqa: E402
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, rclone_binary  # noqa: E402

LOCKERFS = str(Path(sys.executable).with_name("lockerfs"))


def drop_page_cache() -> bool:
    """Write dirty pages and drop the page cache, so that "cold" reads come from the disk."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def folder_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


class Bench:
    """One server; a bucket per tree and tool."""

    def __init__(self, work: Path, jobs: int) -> None:
        self.work, self.jobs = work, jobs
        self.server = S3Server(work / "s3", remember_md5=True)
        self.dropped = True

    def __enter__(self) -> Bench:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def lockerfs_env(self, name: str) -> dict[str, str]:
        env = self.server.env()
        env["XDG_STATE_HOME"] = str(self.work / f"state-{name}")
        return env

    def rclone_env(self) -> dict[str, str]:
        # Keys go through the environment, never the command line.
        return dict(os.environ, RCLONE_CONFIG="/dev/null", RCLONE_S3_PROVIDER="Other",
                    RCLONE_S3_ENDPOINT=self.server.endpoint, RCLONE_S3_REGION=REGION,
                    RCLONE_S3_ACCESS_KEY_ID=ACCESS_KEY, RCLONE_S3_SECRET_ACCESS_KEY=SECRET_KEY)

    def cold(self) -> None:
        self.dropped = drop_page_cache() and self.dropped

    def lockerfs(self, name: str, tree: Path) -> dict[str, float]:
        self.server.make_bucket(f"locker-{name}")
        env = self.lockerfs_env(name)
        command = [LOCKERFS, "upload", "--jobs", str(self.jobs), str(tree), f"s3://locker-{name}/music"]
        self.cold()
        times = {"cold": timed(command, env)}
        times["again"] = timed(command, env)
        shutil.rmtree(self.work / f"state-{name}")
        times["matched"] = timed(command, env)
        return times

    def rclone(self, name: str, tree: Path) -> dict[str, float]:
        self.server.make_bucket(f"plain-{name}")
        command = [rclone_binary(), "copy", "--transfers", str(self.jobs), str(tree), f":s3:plain-{name}/music"]
        self.cold()
        times = {"cold": timed(command, self.rclone_env())}
        times["again"] = timed(command, self.rclone_env())
        return times


def report(title: str, tree: Path, ours: dict[str, float], theirs: dict[str, float]) -> float:
    files, size = folder_bytes(tree)
    mb = size / 1e6
    print(f"\n{title}: {files} files, {mb:.0f} MB")
    print("| run | lockerfs s | lockerfs MB/s | rclone s | rclone MB/s | ratio |")
    print("|---|---|---|---|---|---|")
    print(f"| cold | {ours['cold']:.1f} | {mb / ours['cold']:.0f} | {theirs['cold']:.1f} | "
          f"{mb / theirs['cold']:.0f} | {ours['cold'] / theirs['cold']:.2f} |")
    print(f"| again (unchanged) | {ours['again']:.2f} | - | {theirs['again']:.2f} | - | "
          f"{ours['again'] / theirs['again']:.2f} |")
    print(f"| lockerfs without its local state (matched by content) | {ours['matched']:.1f} | "
          f"{mb / ours['matched']:.0f} | - | - | - |")
    return ours["cold"] / theirs["cold"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", type=Path, help="folder to upload (default: synthesize the bench library)")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--small-files", type=int, default=20_000, metavar="N")
    parser.add_argument("--rerun-files", type=int, default=0, metavar="N")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lockerfs-upload-bench-") as temp:
        work = Path(temp)
        library = args.library or work / "library"
        if args.library is None:
            synthesize_library(library, profile="bench")
        trees = [("library", library)]
        if args.small_files:
            synthesize_small_files(work / "small", args.small_files)
            trees.append(("small", work / "small"))
        results = {}
        with Bench(work, args.jobs) as bench:
            for name, tree in trees:
                results[name] = (bench.rclone(name, tree), bench.lockerfs(name, tree))
            rerun = None
            if args.rerun_files:
                synthesize_small_files(work / "rerun", args.rerun_files, seed=7)
                bench.server.make_bucket("locker-rerun")
                env = bench.lockerfs_env("rerun")
                command = [LOCKERFS, "upload", "--jobs", str(args.jobs), str(work / "rerun"), "s3://locker-rerun/m"]
                first = timed(command, env)
                rerun = (first, timed(command, env))
        print(f"{args.jobs} parallel transfers each; load average before: "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg())
              + f"; page cache dropped before cold runs: {'yes' if bench.dropped else 'no'}")
        ratios = {name: report({"library": "Bench library", "small": "Small files"}[name], tree,
                               results[name][1], results[name][0]) for name, tree in trees}
        if rerun is not None:
            print(f"\nRerun of an unchanged {args.rerun_files}-file tree: {rerun[1]:.2f} s "
                  f"(first upload {rerun[0]:.1f} s)")
    if "small" in ratios:
        print(f"\nratio lockerfs/rclone time, small files: {ratios['small']:.2f}")
    print(f"ratio lockerfs/rclone time: {ratios['library']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
