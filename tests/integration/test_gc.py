"""`lockerfs gc` for real: next to uploads, compactions and a mount, it never takes an object a record names.

The safety test runs rounds of: objects left by "interrupted uploads" (stored,
never recorded) and tracks removed since the last round (garbage), then at
once an upload of the interrupted files (which matches those very objects by
HEAD and records them), `gc --grace 0` over and over, and compactions, while
a mounted locker is read in a loop. Afterwards every record's object exists,
a last gc leaves exactly the named objects, and a fresh mount reads every
track byte-exact. The exact interleavings are forced one by one in
tests/unit/test_gc.py; here they happen as the scheduler pleases, and the
report says how often each of gc's and the writers' repairs was needed.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockerfs import catalog, gc
from lockerfs.store import MOUNT_RETRIES, S3Store
from tests.support.faultproxy import FaultProxy
from tests.support.library import (SIDE_SUFFIXES, assert_serves_sources, expected_paths, load_manifest,
                                   mounted_files)
from tests.support.mounting import LOCKERFS, lockerfs, mounted, wait_until
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

from synth_library import write_track

ROUNDS = 4
PER_ROUND = 6


@pytest.fixture
def writer(s3_server: S3Server, locker: str, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """This process's own view of the bucket (boto3's chain, as lockerfs runs it), not through the proxy."""
    for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                        ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(name, value)
    return S3Store(locker, endpoint_url=s3_server.endpoint, retries=MOUNT_RETRIES)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def new_tracks(folder: Path, round_number: int) -> list[Path]:
    return [write_track(folder / f"{n:02d}.flac", "flac", seconds=1.0, noise=True, seed=7000 + round_number * 100 + n,
                        tags={"artist": f"GC Artist {round_number}", "album": f"Round {round_number}",
                              "title": f"Piece {n}", "track": n + 1}).path
            for n in range(PER_ROUND)]


def leave_unrecorded(store: S3Store, files: list[Path]) -> None:
    """What an upload killed between its objects and its record leaves: objects no record names."""
    for path in files:
        store.put_bytes(catalog.object_key(sha256_file(path), "flac"), path.read_bytes())


def named_keys(store: S3Store) -> set[str]:
    return gc.referenced_keys(catalog.load_catalog(store).state)


def shas_of(keys: set[str]) -> set[str]:
    return {key.rsplit("/", 1)[1].partition(".")[0] for key in keys}


def stored_keys(store: S3Store, prefix: str = "objects/") -> set[str]:
    return {item.key for item in store.list(prefix)}


class Loop:
    """Run one lockerfs command over and over in a thread until stopped; keep every result."""

    def __init__(self, args: list[str], env: dict[str, str], pause: float = 0.0) -> None:
        self.args, self.env, self.pause = args, env, pause
        self.results: list[subprocess.CompletedProcess[str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.results.append(lockerfs(*self.args, env=self.env, check=False, timeout=120))
            self.stop.wait(self.pause)

    def __enter__(self) -> Loop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(150)


class Reader:
    """Reads the given mounted files in a loop, each checked against its source's SHA-256."""

    def __init__(self, files: dict[Path, str]) -> None:
        self.files = files
        self.reads = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for path, sha in self.files.items():
                try:
                    if hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                        self.failures.append(f"{path}: other bytes")
                except OSError as exc:
                    self.failures.append(f"{path}: {exc}")
                self.reads += 1
                if self.stop.is_set():
                    return

    def __enter__(self) -> Reader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def counted(pattern: str, outputs: Iterator[str]) -> int:
    return sum(int(m) for text in outputs for m in re.findall(pattern, text))


def test_gc_next_to_uploads_compactions_and_a_mount_keeps_every_named_object(
        library, locker, env, writer: S3Store, proxy: FaultProxy, tmp_path) -> None:
    root, _ = library
    lockerfs("upload", str(root), locker, env=env)
    library_paths = expected_paths(load_manifest(root))
    sources: dict[str, Path] = {source.sha256: source.path for source in library_paths.values()}
    removed: set[str] = set()
    uploads: list[subprocess.CompletedProcess[str]] = []
    gc_runs: list[subprocess.CompletedProcess[str]] = []
    compactions: list[subprocess.CompletedProcess[str]] = []
    previous: list[Path] = []
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache"), "--refresh", "1") as mnt:
        reader_files = {mnt / name: source.sha256 for name, source in library_paths.items()}
        with Reader(reader_files) as reader:
            for round_number in range(ROUNDS):
                files = new_tracks(tmp_path / f"round{round_number}", round_number)
                sources.update((sha256_file(path), path) for path in files)
                leave_unrecorded(writer, files)
                # garbage for this round's gcs: half of the last round's tracks, removed as rm will
                state = catalog.load_catalog(writer).state
                live = {track.sha256: track for track in state.tracks()}
                going = [live[sha256_file(path)] for path in previous[::2]]
                catalog.append_records(writer, [catalog.remove_record(t.sha256, track=t) for t in going])
                removed.update(t.sha256 for t in going)
                with Loop(["gc", "--grace", "0", locker], env) as gcs, \
                        Loop(["compact", "--grace", "0", locker], env, pause=0.5) as compacts:
                    upload = subprocess.run([LOCKERFS, "upload", str(files[0].parent), locker], env=env,
                                            capture_output=True, text=True, timeout=180)
                    ended = len(gcs.results)
                    wait_until(lambda: len(gcs.results) >= ended + 2, timeout=60)  # a whole gc after the upload
                uploads.append(upload)
                gc_runs += gcs.results
                compactions += compacts.results
                previous = files
        assert reader.failures == [], reader.failures[:5]
    for run in uploads + gc_runs + compactions:
        assert run.returncode == 0, f"{run.args}: {run.stdout}\n{run.stderr}"

    named = named_keys(writer)
    missing = named - stored_keys(writer)
    assert not missing, f"records name objects that are gone: {sorted(missing)}"
    live = shas_of(named)
    covers = {key for key in named if Path(key).suffix in SIDE_SUFFIXES}  # extracted from embedded art
    assert shas_of(named - covers) == set(sources) - removed
    final = lockerfs("gc", "--grace", "0", locker, env=env)
    assert stored_keys(writer) == named, "a last gc with nothing running leaves exactly the named objects"
    assert stored_keys(writer, "trash/") == set()

    # a fresh mount (empty cache) reads every track byte-exact
    with mounted(locker, tmp_path / "fresh", env, "--cache-dir", str(tmp_path / "fresh-cache")) as fresh:
        files = mounted_files(fresh)
        assert_serves_sources(files, library_paths)
        read = {hashlib.sha256(path.read_bytes()).hexdigest() for path in files.values()}
        assert read == live

    deleted = counted(r"deleted (\d+) objects?,", (run.stdout for run in gc_runs))
    put_back = counted(r"put back (\d+) objects", (run.stdout for run in gc_runs))
    stored_again = sum(run.stderr.count("storing it again") for run in uploads)
    matched = counted(r"matched (\d+)", (run.stdout for run in uploads))
    print(f"\n[gc safety] {ROUNDS} rounds: {len(gc_runs)} gc runs (grace 0) deleted {deleted} objects, put back "
          f"{put_back} that records written meanwhile named; uploads matched {matched} left-behind objects and "
          f"stored {stored_again} again after a gc took them; {len(compactions)} compactions; "
          f"{reader.reads} mounted reads, 0 failures; last gc: {final.stdout.splitlines()[-1]!r}")
    assert deleted >= len(removed), "the removed tracks' objects were collected"


def test_dry_run_changes_nothing_and_lists_what_gc_would_delete(library, locker, env, writer: S3Store,
                                                                tmp_path) -> None:
    root, _ = library
    lockerfs("upload", str(root), locker, env=env)
    state = catalog.load_catalog(writer).state
    gone = next(t for t in state.tracks() if t.info.artist and t.info.title)
    catalog.append_records(writer, [catalog.remove_record(gone.sha256, track=gone)])
    left = write_track(tmp_path / "left.flac", "flac", seconds=1.0, noise=True, seed=99, tags={"title": "Left"}).path
    leave_unrecorded(writer, [left])
    before = {item.key: (item.size, item.last_modified) for item in writer.list("")}

    dry = lockerfs("gc", "--dry-run", "--grace", "0", locker, env=env)
    assert {item.key: (item.size, item.last_modified) for item in writer.list("")} == before
    lines = dry.stdout.splitlines()
    assert sorted(line.split()[2] for line in lines if line.startswith("would delete objects/")) == \
        sorted([gone.key, catalog.object_key(sha256_file(left), "flac")])
    assert f"  ({gone.info.artist} - {gone.info.title})" in dry.stdout
    assert re.search(r"^would delete 2 objects, freeing [\d.]+ KiB ", dry.stdout, re.M), dry.stdout

    kept = lockerfs("gc", locker, env=env)  # the default grace keeps both: they were stored just now
    assert "deleted 0 objects" in kept.stdout and "kept 2 unneeded objects" in kept.stdout
    assert re.search(r"younger than 7d$", kept.stdout, re.M)
    done = lockerfs("gc", "--grace", "0", locker, env=env)
    assert "deleted 2 objects" in done.stdout
    assert gone.key not in stored_keys(writer)


def test_a_bad_duration_is_one_sentence_and_changes_nothing(locker, env, writer: S3Store, tmp_path) -> None:
    leave_unrecorded(writer, [write_track(tmp_path / "x.flac", "flac", seconds=1.0, seed=5, tags={}).path])
    before = stored_keys(writer, "")
    refused = lockerfs("gc", "--grace", "7 days", locker, env=env, check=False)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == ("lockerfs gc: error: argument --grace: not a duration: '7 days' "
                                               "(try 90s, 15m, 12h or 7d)")
    assert stored_keys(writer, "") == before
