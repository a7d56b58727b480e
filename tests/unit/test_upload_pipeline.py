"""upload.py's pipeline against MemoryStore: one read per file, odd names sniffed,
Content-Type per container, and a walk and a rerun whose memory does not grow with the tree.

Real S3 behaviour (Content-MD5, ETags, faults, kills) is in tests/integration.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import sys
import threading
import tracemalloc
from collections.abc import Iterator

import pytest

from lockerfs import catalog, upload
from lockerfs.containers import CONTENT_TYPES
from lockerfs.store import MemoryStore
from lockerfs.upload import UploadState, Uploader, prefetched
from lockerfs.walk import count, walk

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import synth_library as synth  # noqa: E402

TAGS = {"artist": "Pipeline", "album": "One Read", "title": "Once", "track": 1}


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def state(tmp_path: pathlib.Path) -> Iterator[UploadState]:
    opened = UploadState(tmp_path / "state" / "upload.sqlite", "memory://locker")
    yield opened
    opened.close()


def run_upload(store: MemoryStore, state: UploadState, *paths: pathlib.Path, jobs: int = 2) -> upload.UploadSummary:
    uploader = Uploader(store, state, jobs)
    uploader.prepare()
    sources = prefetched(walk(paths))
    try:
        return uploader.run(sources, threading.Event())
    finally:
        sources.close()


def recorded(store: MemoryStore) -> dict[str, dict]:
    """source path -> catalog record, for every track the run recorded."""
    return {catalog.track_to_dict(t)["source"]: catalog.track_to_dict(t)
            for t in catalog.load_catalog(store).tracks()}


# --------------------------------------------------------------------------
# what is audio, and under which name it is stored


ODD_NAMES = [
    ("no-extension", "flac", "flac"),
    ("LOUD.FLAC", "flac", "flac"),
    ("trailing-space.flac ", "flac", "flac"),
    ("trailing-dot.mp3.", "mp3", "mp3"),
    ("wrong.wav", "flac", "flac"),
    ("notes.txt", "mp3", "mp3"),  # audio behind a name no one would call audio
    ("old.mp+", "mpc", "mpc"),
    ("dual.ofs", "ofr", "ofs"),  # OptimFROG DualStream keeps its own extension
    ("book.m4a", "m4b", "m4b"),
]


@pytest.mark.parametrize(("name", "fmt", "ext"), ODD_NAMES, ids=[n for n, _, _ in ODD_NAMES])
def test_audio_with_an_odd_name_is_sniffed_and_stored_canonically(
        tmp_path: pathlib.Path, store: MemoryStore, state: UploadState, name: str, fmt: str, ext: str) -> None:
    if synth.synth_formats.needs_tool(fmt):
        pytest.skip(f"{synth.synth_formats.needs_tool(fmt)} not installed")
    track = synth.write_track(tmp_path / "lib" / name, fmt, 0.5, TAGS, seed=3)
    summary = run_upload(store, state, tmp_path / "lib")
    assert (summary.uploaded, summary.skipped, summary.failed) == (1, [], [])
    record = recorded(store)[name]
    sha = hashlib.sha256(track.path.read_bytes()).hexdigest()
    assert (record["ext"], record["key"]) == (ext, catalog.object_key(sha, ext))
    assert record["info"]["title"] == "Once"


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("cover.jpg", synth.make_png(8, 8), "an image with no track in its folder, the folder above or the folders below"),
    ("Thumbs.db", b"\x00" * 512, "not audio (.db)"),
    (".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(100), "not audio (.no extension)"),
    ("rip.log", b"Exact Audio Copy V1.6\r\n", "not audio (.log)"),
    ("album.nfo", b"Ripped by someone\n", "not audio (.nfo)"),
    ("README", b"Ripped with love\n" * 10, "not audio (.no extension)"),
    ("notes.mp3", b"not an mp3 at all\n" * 100, "not an audio file (content not recognized)"),
    ("empty.flac", b"", "empty file"),
    ("empty.txt", b"", "empty file"),
])
def test_what_is_not_audio_is_skipped_with_its_reason(tmp_path: pathlib.Path, store: MemoryStore,
                                                      state: UploadState, name: str, content: bytes,
                                                      reason: str) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / name).write_bytes(content)
    summary = run_upload(store, state, tmp_path / "lib")
    assert summary.skipped == [(name, reason)]
    assert not any(key.startswith("objects/") for key in store.objects)


def test_a_large_non_audio_file_costs_one_small_read(tmp_path: pathlib.Path, store: MemoryStore,
                                                     state: UploadState, monkeypatch: pytest.MonkeyPatch) -> None:
    video = tmp_path / "lib" / "concert.mkv"
    video.parent.mkdir()
    video.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(8 * 1024 * 1024))
    reads = CountingOpen()
    monkeypatch.setattr(upload, "open", reads, raising=False)
    summary = run_upload(store, state, tmp_path / "lib")
    assert summary.skipped == [("concert.mkv", "not audio (.mkv)")]
    assert reads.bytes_read[str(video)] == upload.SNIFF_SIZE


# --------------------------------------------------------------------------
# one read per file, and what each object is sent with


class CountingOpen:
    """Stands in for open() in upload.py: counts opens and the bytes asked of the OS, per path."""

    def __init__(self) -> None:
        self.opens: dict[str, int] = {}
        self.bytes_read: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, path: object, mode: str = "rb") -> io.FileIO:
        assert mode == "rb"
        key = os.fspath(path)  # type: ignore[arg-type]
        with self._lock:
            self.opens[key] = self.opens.get(key, 0) + 1
        return _CountedFile(self, key)

    def add(self, key: str, count: int) -> None:
        with self._lock:
            self.bytes_read[key] = self.bytes_read.get(key, 0) + count


class _CountedFile(io.FileIO):
    def __init__(self, counter: CountingOpen, key: str) -> None:
        super().__init__(key, "rb")
        self.counter, self.key = counter, key

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.counter.add(self.key, len(data or b""))
        return data

    def readall(self) -> bytes:
        data = super().readall()
        self.counter.add(self.key, len(data))
        return data


def test_each_file_is_read_once_and_sent_from_memory(tmp_path: pathlib.Path, store: MemoryStore,
                                                     state: UploadState, monkeypatch: pytest.MonkeyPatch) -> None:
    tracks = [synth.write_track(tmp_path / "lib" / f"{n}.{synth.EXTENSIONS[fmt]}", fmt, 1.0, TAGS, seed=n)
              for n, fmt in enumerate(["flac", "mp3", "ogg", "wav"])]
    reads = CountingOpen()
    monkeypatch.setattr(upload, "open", reads, raising=False)
    sent_from_files: list[str] = []
    monkeypatch.setattr(store, "put_file", lambda key, *a, **k: sent_from_files.append(key))
    summary = run_upload(store, state, tmp_path / "lib")
    assert summary.uploaded == len(tracks)
    assert sent_from_files == []
    for track in tracks:
        assert reads.opens[str(track.path)] == 1
        assert reads.bytes_read[str(track.path)] == track.path.stat().st_size


def test_objects_carry_their_containers_content_type(tmp_path: pathlib.Path, store: MemoryStore,
                                                     state: UploadState) -> None:
    formats = ["flac", "mp3", "ogg", "opus", "wav", "aiff", "ape", "dsf", "dff", "ofr"]
    formats += [f for f in ("wma", "m4a", "m4b", "aac", "ac3", "mpc", "wv", "tta", "spx", "oga")
                if f not in synth.M4A_FORMATS or synth.FFMPEG]
    formats = [f for f in formats if not synth.synth_formats.needs_tool(f)]
    for n, fmt in enumerate(formats):
        synth.write_track(tmp_path / "lib" / f"{n}.{synth.EXTENSIONS[fmt]}", fmt, 0.5, TAGS, seed=n)
    summary = run_upload(store, state, tmp_path / "lib")
    assert summary.uploaded == len(formats), summary
    types = {record["info"]["format"]: store.content_types[record["key"]] for record in recorded(store).values()}
    assert types == {synth.FORMATS[fmt][0]: CONTENT_TYPES[synth.FORMATS[fmt][0]] for fmt in formats}
    assert types["flac"] == "audio/flac" and types["mp3"] == "audio/mpeg" and types["ogg"] == "audio/ogg"


def test_a_file_above_the_threshold_is_hashed_then_sent_from_the_file(
        tmp_path: pathlib.Path, store: MemoryStore, state: UploadState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload, "MEMORY_THRESHOLD", 4096)
    track = synth.write_track(tmp_path / "lib" / "big.flac", "flac", 2.0, TAGS, seed=9, noise=True)
    sent_from_files: list[str] = []
    original = store.put_file
    monkeypatch.setattr(store, "put_file", lambda key, *args, **kw: (
        sent_from_files.append(key), original(key, *args, **kw)))
    summary = run_upload(store, state, tmp_path / "lib")
    record = recorded(store)["big.flac"]
    assert summary.uploaded == 1 and sent_from_files == [record["key"]]
    assert store.objects[record["key"]][0] == track.path.read_bytes()
    assert store.content_types[record["key"]] == "audio/flac"


# --------------------------------------------------------------------------
# a tree of any size: the walk and a rerun hold no more memory for more files


@pytest.fixture(scope="module")
def tree_100k(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """100,000 entries: 100 album folders of 1,000 one-byte files (hard links, quick to make)."""
    base = tmp_path_factory.mktemp("tree")
    root = base / "tree"
    for f in range(100):
        source = base / f"source-{f}"
        source.write_bytes(b"x")
        folder = root / f"artist {f // 10:03d}" / f"album {f:04d}"
        folder.mkdir(parents=True)
        for n in range(1000):
            os.link(source, folder / f"{n:04d} a track with a longish name.flac")
    return root


def peak_while(consume: object) -> int:
    tracemalloc.start()
    try:
        consume()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_walking_100k_entries_holds_no_list_of_them(tree_100k: pathlib.Path) -> None:
    seen = 0

    def stream() -> None:
        nonlocal seen
        for _ in walk([tree_100k]):
            seen += 1

    streamed = peak_while(stream)
    held = peak_while(lambda: list(walk([tree_100k])))
    assert seen == 100_000
    # a list of every entry takes tens of MB; the walk itself holds one folder's
    # listing state (CPython's table of interned path parts may grow by a few MB)
    assert streamed < 5 * 1024 * 1024, streamed
    assert held > 5 * streamed, (held, streamed)


def test_prefetched_walk_stays_a_bounded_distance_ahead(tree_100k: pathlib.Path) -> None:
    sources = prefetched(walk([tree_100k]), ahead=1024)
    try:
        first = next(sources)
        assert first.path.is_file()
        # the walker thread fills its queue (4 batches of 256) and then waits: 1,024 ahead, not 100,000
        for _ in range(100):
            if sources.buffer.full():
                break
            threading.Event().wait(0.02)
        threading.Event().wait(0.2)  # time to overrun its bound, if it could
        assert sources.buffer.qsize() == 1024 // prefetched.BATCH
        assert sum(1 for _ in sources) == 100_000 - 1  # and then hands out every entry, once
    finally:
        sources.close()


def test_count_streams_totals(tree_100k: pathlib.Path) -> None:
    totals = list(count([tree_100k]))
    assert totals[-1] == (100_000, 100_000)
    assert len(totals) > 100  # reported as it goes, not once at the end


def test_rerun_over_100k_unchanged_files_keeps_memory_flat(tree_100k: pathlib.Path, store: MemoryStore,
                                                           state: UploadState) -> None:
    """Every file already recorded: each is stat'ed and looked up, none is opened, and memory stays flat."""
    sha = hashlib.sha256(b"x").hexdigest()  # every file holds b"x"
    state.remember((source.path, source.path.stat(), sha) for source in walk([tree_100k]))
    uploader = Uploader(store, state, jobs=2)
    uploader.prepare()
    uploader._known.add(sha)  # the catalog names that track
    summary = None

    def rerun() -> None:
        nonlocal summary
        sources = prefetched(walk([tree_100k]))
        try:
            summary = uploader.run(sources, threading.Event())
        finally:
            sources.close()

    peak = peak_while(rerun)
    assert summary is not None and summary.unchanged == 100_000
    assert [op for op, key in store.requests if key.startswith("objects/") and op != "LIST"] == []
    assert peak < 8 * 1024 * 1024, peak  # the prefetch queue (4,096 entries) and the thread pool


# --------------------------------------------------------------------------
# matching: catalog, then HEAD, which a small locker's listing spares


def test_a_first_upload_sends_no_heads(tmp_path: pathlib.Path, store: MemoryStore, state: UploadState) -> None:
    for n in range(3):
        synth.write_track(tmp_path / "lib" / f"{n}.flac", "flac", 0.5, TAGS, seed=n)
    summary = run_upload(store, state, tmp_path / "lib")
    assert summary.uploaded == 3
    before, after = object_ops_around_the_record(store)
    assert sorted(before) == ["LIST", "PUT", "PUT", "PUT"]
    assert after == ["HEAD"] * 3  # the confirm step (writeorder): once each, after the record


def object_ops_around_the_record(store: MemoryStore) -> tuple[list[str], list[str]]:
    """Requests for objects before the run's journal file was written, and after it."""
    ops = [(op, key) for op, key in store.requests
           if key.startswith("objects/") or (op == "PUT" and key.startswith("catalog/journal"))]
    record = next(n for n, (_, key) in enumerate(ops) if key.startswith("catalog/"))
    assert all(key.startswith("objects/") for _, key in ops[record + 1:]), "one journal file"
    return [op for op, _ in ops[:record]], [op for op, _ in ops[record + 1:]]


def test_an_object_stored_before_the_run_is_matched_not_sent(tmp_path: pathlib.Path, store: MemoryStore,
                                                             state: UploadState) -> None:
    """What a run killed between its PUT and its record leaves: the listing names it, a HEAD proves it."""
    track = synth.write_track(tmp_path / "lib" / "left.flac", "flac", 0.5, TAGS, seed=4)
    sha = hashlib.sha256(track.path.read_bytes()).hexdigest()
    store.put_bytes(catalog.object_key(sha, "flac"), track.path.read_bytes())
    store.requests.clear()
    summary = run_upload(store, state, tmp_path / "lib")
    assert (summary.uploaded, summary.matched) == (0, 1)
    assert object_ops_around_the_record(store) == (["LIST", "HEAD"], ["HEAD"])
    assert recorded(store)["left.flac"]["sha256"] == sha


def test_a_large_locker_is_not_listed(tmp_path: pathlib.Path, store: MemoryStore, state: UploadState,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload, "LISTING_LIMIT", 2)
    for n in range(3):
        store.put_bytes(f"objects/sha256/00/{n:064d}.flac", b"x")
    synth.write_track(tmp_path / "lib" / "new.flac", "flac", 0.5, TAGS, seed=5)
    store.requests.clear()
    summary = run_upload(store, state, tmp_path / "lib")
    assert summary.uploaded == 1
    assert object_ops_around_the_record(store) == (["LIST", "HEAD", "PUT"], ["HEAD"])


# --------------------------------------------------------------------------
# progress: the whole job's totals from the count, rate and ETA


def test_progress_line_shows_totals_rate_and_eta() -> None:
    from lockerfs.cli import Progress

    progress = Progress()  # stderr is not a terminal under pytest: the plain line
    progress.set_totals(500, 10 * 2**20, final=False)
    progress.add_bytes(2**20)
    counting = progress.plain_line()
    assert counting.startswith("upload: 0/500+ files, 1.0 MiB/10.0 MiB+, ") and "ETA" not in counting
    progress.set_totals(1000, 20 * 2**20, final=True)
    progress.add_file()
    counted = progress.plain_line()
    assert counted.startswith("upload: 1/1000 files, 1.0 MiB/20.0 MiB, ") and ", ETA " in counted


def test_a_stopped_run_resumes_without_reading_what_it_finished(
        tmp_path: pathlib.Path, store: MemoryStore, state: UploadState, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(12):
        synth.write_track(tmp_path / "lib" / f"{n:02d}.flac", "flac", 0.3, TAGS, seed=100 + n)
    stop = threading.Event()
    finished: list[pathlib.Path] = []

    def on_file(outcome: upload._Outcome) -> None:
        finished.append(outcome.source.path)
        if len(finished) == 5:
            stop.set()  # as Ctrl-C does; a SIGKILL after the journal write leaves the same state

    first = Uploader(store, state, jobs=1, on_file=on_file)
    first.prepare()
    sources = prefetched(walk([tmp_path / "lib"]))
    try:
        summary = first.run(sources, stop)
    finally:
        sources.close()
    assert summary.interrupted and 5 <= summary.uploaded < 12
    done = set(finished)
    reads = CountingOpen()
    monkeypatch.setattr(upload, "open", reads, raising=False)
    second = run_upload(store, state, tmp_path / "lib")
    assert (second.unchanged, second.uploaded) == (len(done), 12 - len(done))
    assert not done & {pathlib.Path(p) for p in reads.opens}


def test_state_knows_a_file_only_with_its_recorded_size_and_mtime(tmp_path: pathlib.Path,
                                                                   state: UploadState) -> None:
    """Rows are fetched per folder: names that share a prefix, nested folders and odd bytes stay apart."""
    names = ["a/1.flac", "a/sub/1.flac", "a 2/1.flac", "a0/1.flac", "1.flac", "a/caf\xe9.flac"]
    paths = [tmp_path / name for name in names]
    paths.append(pathlib.Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"a", b"\xff.flac"))))
    for n, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([n]))
    state.remember((path, path.stat(), f"sha{n}") for n, path in enumerate(paths))
    assert [state.known_sha(path, path.stat()) for path in paths] == [f"sha{n}" for n in range(len(paths))]
    touched = paths[1]
    os.utime(touched, ns=(0, touched.stat().st_mtime_ns + 1))
    assert state.known_sha(touched, touched.stat()) is None
    assert state.known_sha(tmp_path / "a" / "new.flac", paths[0].stat()) is None
