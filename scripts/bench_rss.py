"""Where a large mount's memory goes: RSS and the allocators' figures at each stage of what a
cold mount does with a columnar snapshot, in one process, without FUSE.

    .venv/bin/python scripts/bench_rss.py [--tracks 300000] [--trace] [--copy-after]

Stages: imports and the S3 client; decoding the snapshot (in a worker thread, as
CatalogReader does); merging it; LiveLayout; Tree.use and the mount's settling
(gc.freeze, malloc_trim); listing every folder, with the catalog copy written in another
thread meanwhile (as after a cold start; --copy-after: once the listing is done); a
refresh of 1,000 new tracks. Per stage: RSS and its peak, glibc's heap (in use, free),
pymalloc's arenas (1 MiB each) and the bytes of their used blocks, and with --trace
tracemalloc's current and peak (which slows everything several times, and whose own
tables add to RSS). The catalog is made once by tests/support/scale_catalog.py and kept
in --cache-root.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lockerfs import catalog, heap, layout, mount  # noqa: E402
from lockerfs.catalog import CatalogReader, decode_catalog_file  # noqa: E402
from lockerfs.livelayout import LiveLayout  # noqa: E402
from lockerfs.store import MOUNT_RETRIES, MemoryStore, S3Store  # noqa: E402
from lockerfs.tree import DirNode, Tree  # noqa: E402


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _status() -> dict[str, float]:
    """VmRSS and VmHWM in MB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            found[line[:5]] = int(line.split()[1]) / 1024
    return found


def _pymalloc() -> tuple[int, float]:
    """pymalloc's arenas now and the MB of its used blocks (sys._debugmallocstats writes to fd 2)."""
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    os.dup2(write_end, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    numbers = {line.split("=")[0].strip(): int(line.split("=")[1].replace(",", ""))
               for line in text.splitlines() if line.startswith("#") and "=" in line}
    return numbers["# arenas allocated current"], numbers["# bytes in allocated blocks"] / 2**20


class Stages:
    """Prints one line per stage: its seconds and where the memory is."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _Mallinfo2
        self.mallinfo = libc.mallinfo2
        self.last = time.perf_counter()

    def done(self, name: str) -> None:
        seconds = time.perf_counter() - self.last
        status, malloc_info = _status(), self.mallinfo()
        arenas, used = _pymalloc()
        line = (f"{name:34s} {seconds:6.2f} s  rss {status['VmRSS']:6.1f} (peak {status['VmHWM']:6.1f})  "
                f"heap in use {malloc_info.uordblks / 2**20:6.1f} free {malloc_info.fordblks / 2**20:5.1f}  "
                f"pymalloc arenas {arenas:4d} used {used:6.1f}")
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            line += f"  traced {current / 2**20:6.1f} peak {peak / 2**20:6.1f}"
            tracemalloc.reset_peak()
        print(line, flush=True)
        self.last = time.perf_counter()


def _paths(tracks: int, cache_root: Path) -> tuple[Path, Path]:
    return cache_root / f"rss-{tracks}.columns.gz", cache_root / f"rss-{tracks}-news"


def make_catalog(tracks: int, cache_root: Path) -> None:
    """The scale catalog's columnar snapshot, and a journal of 1,000 new tracks, as files."""
    from tests.support.scale_catalog import append_new_tracks, write_scale_catalog
    snapshot, news = _paths(tracks, cache_root)
    store = MemoryStore()
    write_scale_catalog(store, tracks)
    key = next(item.key for item in store.list(catalog.SNAPSHOT3_PREFIX))
    keys, _ = append_new_tracks(store, 1000, first=10_000_000, seed=1)
    news.mkdir(parents=True, exist_ok=True)
    for written in keys:
        (news / written.replace("/", "+")).write_bytes(store.get(written))
    snapshot.write_bytes(store.get(key))


def catalog_files(tracks: int, cache_root: Path) -> tuple[bytes, dict[str, bytes]]:
    """The snapshot's bytes and the journal's, made once by a child process (whose memory
    is not this one's)."""
    snapshot, news = _paths(tracks, cache_root)
    if not snapshot.exists():
        subprocess.run([sys.executable, __file__, "--make", "--tracks", str(tracks), "--cache-root", str(cache_root)],
                       check=True)
    return snapshot.read_bytes(), {path.name.replace("+", "/"): path.read_bytes() for path in news.iterdir()}


def list_everything(tree: Tree) -> tuple[int, int]:
    """What a cold find makes the mount do: every folder listed, a node per entry and its
    size asked; the files and their bytes."""
    files = size = 0
    for folder in list(tree._dirs.values()):
        for index in range(len(folder.names)):
            node = tree.entry(folder, index)
            if node is not None and not isinstance(node, DirNode):
                files += 1
                size += node.size
    return files, size


def in_thread(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=300_000)
    parser.add_argument("--cache-root", type=Path, default=Path("/var/tmp/lockerfs-bench"))
    parser.add_argument("--trace", action="store_true", help="tracemalloc current and peak per stage")
    parser.add_argument("--copy-after", action="store_true", help="write the catalog copy after the listing")
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)  # the child making the catalog
    args = parser.parse_args()
    if args.make:
        make_catalog(args.tracks, args.cache_root)
        return
    raw, news = catalog_files(args.tracks, args.cache_root)
    heap.map_large_blocks()  # as the mount does
    gc.disable()
    if args.trace:
        tracemalloc.start()
    stages = Stages()
    S3Store("s3://bucket/locker", "http://127.0.0.1:9", MOUNT_RETRIES)
    stages.done("imports + S3 client")
    with ThreadPoolExecutor(1) as pool:
        document = pool.submit(decode_catalog_file, f"{catalog.SNAPSHOT3_PREFIX}x.columns.gz", raw).result()
    del raw
    stages.done("decode")
    reader = CatalogReader(MemoryStore())
    reader.state.merge_file("x", document)
    del document
    stages.done("merge")
    live = LiveLayout(reader.state, layout.parse_template(layout.DEFAULT_TEMPLATE))
    stages.done("LiveLayout")
    tree = Tree()
    tree.use(live)
    mount._settle_memory()
    stages.done("Tree.use, settled (ready)")
    gc.set_threshold(*mount.GC_THRESHOLD)
    gc.enable()
    copy = Path(f"/tmp/bench-rss-{os.getpid()}.columns.gz")
    try:
        writer = None if args.copy_after else in_thread(lambda: mount.write_catalog_copy(reader, copy))
        files, size = list_everything(tree)
        if writer is not None:
            writer.join()
            heap.trim()
        stages.done(f"listed {files} files ({size / 1e12:.1f} TB)" + ("" if writer is None else " + copy"))
        if writer is None:
            mount.write_catalog_copy(reader, copy)
            heap.trim()
            stages.done("catalog copy written")
    finally:
        copy.unlink(missing_ok=True)
    for key, data in news.items():
        reader.state.merge_file(catalog._file_id(key) or "", decode_catalog_file(key, data))
    tree.sync(live.update(reader.state.entries.take_changed()))
    mount._settle_memory()
    stages.done("refresh of 1,000 tracks")


if __name__ == "__main__":
    main()
