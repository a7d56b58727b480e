"""The local catalog copy: what save() writes is what load_local() reads, and a save
killed midway leaves the previous copy whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lockerfs.catalog import CatalogReader
from lockerfs.store import MemoryStore

# Builds a catalog of N tracks and saves it to PATH: big enough that the save takes a while.
SAVER = """
import sys
from pathlib import Path
from lockerfs.catalog import CatalogReader, add_record, object_key
from lockerfs.store import MemoryStore
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo

count, path = int(sys.argv[1]), Path(sys.argv[2])
reader = CatalogReader(MemoryStore())
records = []
for i in range(count):
    sha = f"{i:064x}"
    info = TrackInfo(format="flac", codec="flac", artist=f"Artist {i // 48}", album=f"Album {i // 12}",
                     title=f"Title {i}", track=i % 12 + 1)
    records.append(add_record(Track(sha256=sha, key=object_key(sha, "flac"), size=1000 + i, ext="flac",
                                    source=f"{i}.flac", mtime=1.7e9, info=info)))
reader.state.merge_file(f"{'1' * 13}-{'0' * 16}", {"kind": "journal", "records": records})
print("saving", flush=True)
reader.save(path)
print("saved", flush=True)
"""


def save_in_a_process(count: int, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SAVER, str(count), str(path)], stdout=subprocess.PIPE, text=True)


def load(path: Path) -> CatalogReader:
    reader = CatalogReader(MemoryStore())
    assert reader.load_local(path)
    return reader


def test_a_saved_copy_loads_back(tmp_path: Path) -> None:
    copy = tmp_path / "copy.json.gz"
    process = save_in_a_process(300, copy)
    assert process.wait(60) == 0
    reader = load(copy)
    assert len(reader.tracks()) == 300
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_save_killed_midway_leaves_the_previous_copy(tmp_path: Path) -> None:
    copy = tmp_path / "copy.json.gz"
    assert save_in_a_process(10, copy).wait(60) == 0
    previous = copy.read_bytes()

    process = save_in_a_process(60_000, copy)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".copy.json.gz.*.tmp")):  # the save has begun: its temp file exists
            assert process.poll() is None, "the save ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert copy.read_bytes() == previous
    assert len(load(copy).tracks()) == 10
