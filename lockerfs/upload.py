"""Upload: walk -> tags -> hash -> match -> put object -> append record; one read per file.

The pipeline, and why it is shaped so:
  walk      a thread lists the given folders into a bounded queue (walk.py):
            the first file is uploading within moments of the start, and a
            tree of any size costs the same memory;
  unchanged the main thread stats each file; one already recorded with the
            same path, size and mtime is done without being opened;
  read      worker threads (--jobs) read a file once: whole into memory when it
            is at most MEMORY_THRESHOLD (so at most jobs x MEMORY_THRESHOLD
            bytes are held), else in chunks; SHA-256 (the key) and MD5 (the
            Content-MD5 every PUT carries) are computed from those bytes, and
            hashlib lets go of the GIL while it hashes;
  tags      mutagen runs in worker processes (tagpool.py, started when the
            first file needs them): it is pure Python
            and would hold the GIL; it reads only the head and tail of the
            file, which the read above has just brought into the page cache;
  match     the catalog, then a HEAD of the object key (a locker of at most
            LISTING_LIMIT objects is listed once, when the first file needs
            it, and a key missing from that listing needs no HEAD: a first
            upload sends no HEADs);
  put       from memory, with Content-MD5 and Content-Type; a file above the
            threshold goes through the multipart upload from the file, whose
            pages its hashing pass has just cached (docs/UPLOAD-NOTES.md says
            why this and not a temporary key);
  record    journal files of up to FLUSH_RECORDS records, then the local state.

Crash safety comes from write order: an object is stored before the journal
record that names it, and the local state file learns a file only after its
record is stored. A run killed at any point leaves at worst an object without
a record, which the next run finds (HEAD: size, and an ETag that is the MD5 of
the file) and records without re-uploading; an object whose ETag is not an MD5
(multipart, SSE-KMS) proves nothing about its bytes and is uploaded again. Every PUT is verified by the server
(Content-MD5, see S3Store._verified_put): an object that did not arrive intact
is sent again or reported as failed, never recorded.

Matching happens at three levels, cheapest first:
  unchanged - same path, size and mtime as a file already recorded: not even opened;
  matched   - its SHA-256 is already in the catalog (or its object already
              exists in the bucket): nothing uploaded;
  uploaded  - everything else.

What is audio: a file whose extension is an audio one is read as audio (and
reported if its content is not); any other file is sniffed from its first
64 KiB and uploaded under its container's canonical extension if it is audio,
so files named oddly (no extension, "Track.FLAC ", "x.mp3.", a wrong
extension) are not left behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import sqlite3
import stat as stat_module
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from lockerfs import catalog, sidefiles, writeorder
from lockerfs.albumassets import RunExtras
from lockerfs.asset import StoredObject, image_type, stored_object
from lockerfs.containers import (
    AUDIO_EXTENSIONS,
    CONTENT_TYPES,
    SNIFF_SIZE,
    canonical_extension,
    name_extension,
    sniff_format,
)
from lockerfs.insets import EdgeKeeper, Edges, locate, make_inset
from lockerfs.store import CorruptUpload, Store, StoreError, Unreachable
from lockerfs.tagpool import TagReader
from lockerfs.sidefiles import ChangedWhileRead, NotASideFile, SideFile, read_side_file, side_kind
from lockerfs.tags import NotAudioError, read_track_and_art
from lockerfs.track import Track
from lockerfs.trackpaths import EntryResolver, TrackPaths
from lockerfs.walk import SourceFile, walk

__all__ = ["SourceFile", "UploadState", "UploadSummary", "Uploader", "prefetched", "walk"]

log = logging.getLogger(__name__)

HASH_CHUNK = 8 * 1024 * 1024
# Files up to this size are read into memory once and sent from there; it is
# also the store's multipart threshold, so everything held in memory goes in
# one PUT with one Content-MD5.
MEMORY_THRESHOLD = 16 * 1024 * 1024
FLUSH_RECORDS = 100  # records per journal file at most
FLUSH_SECONDS = 5.0  # and no record waits longer than this for its journal file
WALK_AHEAD = 4096  # directory entries the walker may list ahead of the upload
IN_FLIGHT_PER_JOB = 4  # files handed to the read and send stages per --jobs; a stop lets these finish
# A locker with at most this many objects is listed once at the start (a
# request per 1,000), so that objects it does not hold need no HEAD each.
LISTING_LIMIT = 10_000


@dataclass
class UploadSummary:
    uploaded: int = 0
    uploaded_bytes: int = 0
    matched: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    stopped: str = ""  # why the run gave up before the end (the bucket became unreachable)
    not_attempted: int = 0
    # The music's other files (albumassets.py): side files sent, found stored, found unchanged;
    # records written per kind (cover, embedded cover, image, lyrics, cue, playlist).
    side_uploaded: int = 0
    side_uploaded_bytes: int = 0
    side_matched: int = 0
    side_unchanged: int = 0
    extras: Counter[str] = field(default_factory=Counter)
    extras_deferred: bool = False  # the run stopped early: they are recorded by a run that ends
    unresolved: list[tuple[str, str, str]] = field(default_factory=list)  # (playlist or cue sheet, entry, why)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (path, what of it was left out)


class UploadState:
    """The local record of files already in the locker: path -> (size, mtime_ns, sha256).

    SQLite, so several uploads on one machine can share it safely and a
    killed run leaves it consistent.
    """

    def __init__(self, path: Path, locker: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.locker = locker
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        # Paths are stored as their bytes: a file name need not be valid UTF-8.
        self._db.execute("CREATE TABLE IF NOT EXISTS files (locker TEXT, path BLOB, size INTEGER, "
                         "mtime_ns INTEGER, sha256 TEXT, PRIMARY KEY (locker, path))")
        self._db.commit()
        self._lock = threading.Lock()
        self._folder = b""  # the folder whose rows _rows holds
        self._rows: dict[bytes, tuple[int, int, str]] = {}

    def known_sha(self, path: Path, stat: os.stat_result) -> str | None:
        """The SHA-256 recorded for this path, if its size and mtime are still the recorded ones.

        Rows are fetched a folder at a time (the walk yields a folder's files
        together): one query per folder instead of one per file, which is
        most of what a rerun over unchanged files costs.
        """
        raw = os.fsencode(path)
        folder = raw[:raw.rfind(b"/") + 1]
        with self._lock:
            if folder != self._folder:
                self._folder, self._rows = folder, self._folder_rows(folder)
            row = self._rows.get(raw)
        if row is None or row[:2] != (stat.st_size, stat.st_mtime_ns):
            return None
        return row[2]

    def _folder_rows(self, folder: bytes) -> dict[bytes, tuple[int, int, str]]:
        """path -> (size, mtime_ns, sha256) of the files directly in `folder` (bytes ending in "/")."""
        upper = folder[:-1] + b"0"  # the byte after "/": every path under the folder sorts below it
        rows = self._db.execute(
            "SELECT path, size, mtime_ns, sha256 FROM files WHERE locker=? AND path>? AND path<? "
            "AND instr(substr(path, ?), X'2F')=0", (self.locker, folder, upper, len(folder) + 1))
        return {path: (size, mtime_ns, sha) for path, size, mtime_ns, sha in rows}

    def files_in(self, folder: Path) -> dict[str, str]:
        """File name -> sha256 of every file recorded directly in `folder` (tracks and side files)."""
        prefix = os.fsencode(folder).rstrip(b"/") + b"/"
        with self._lock:
            rows = self._folder_rows(prefix)
        return {os.fsdecode(path[len(prefix):]): sha for path, (_size, _mtime, sha) in rows.items()}

    def remember(self, entries: Iterable[tuple[Path, os.stat_result, str]]) -> None:
        with self._lock:
            self._folder = b""  # what known_sha had fetched may be out of date now
            self._db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                [(self.locker, os.fsencode(p), s.st_size, s.st_mtime_ns, sha) for p, s, sha in entries])
            self._db.commit()

    def close(self) -> None:
        self._db.close()


class prefetched(Iterator[SourceFile]):  # noqa: N801 - used like a function, as iter() is
    """`items`, produced by a thread of its own up to about `ahead` entries in advance.

    The walk runs while the upload waits on the network or the disk, and
    memory stays bounded: the thread blocks when it is `ahead` entries ahead.
    Entries travel in batches (up to BATCH, or what 50 ms gathered), so that
    a tree of unchanged files does not pay a thread handoff per file.
    close() stops the thread; an error in the walk is raised to the consumer.
    """

    BATCH = 256
    _DONE = object()

    def __init__(self, items: Iterator[SourceFile], ahead: int = WALK_AHEAD) -> None:
        self.buffer: queue.Queue[object] = queue.Queue(maxsize=max(1, ahead // self.BATCH))
        self._batch: Iterator[SourceFile] = iter(())
        self._closed = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(items,), name="walk", daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator[SourceFile]) -> None:
        batch: list[SourceFile] = []
        started = time.monotonic()
        try:
            for item in items:
                batch.append(item)
                if len(batch) >= self.BATCH or time.monotonic() - started > 0.05:
                    if not self._put(batch):
                        return
                    batch, started = [], time.monotonic()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(batch)
            self._put(exc)
            return
        self._put(batch)
        self._put(self._DONE)

    def _put(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self.buffer.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> SourceFile:
        while not self._finished:
            item = next(self._batch, None)
            if item is not None:
                return item
            got = self.buffer.get()
            if got is self._DONE:
                self._finished = True
            elif isinstance(got, Exception):
                self._finished = True
                raise got
            else:
                self._batch = iter(got)  # type: ignore[call-overload]
        raise StopIteration

    def close(self) -> None:
        self._closed.set()
        self._finished = True
        self._thread.join()


class _Digests:
    """SHA-256 and MD5 together; hashlib releases the GIL on each update of more than 2 KiB."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def update(self, data: bytes | memoryview) -> _Digests:
        self.sha256.update(data)
        self.md5.update(data)
        return self

    def feed_stream(self, stream: object, edges: EdgeKeeper | None = None) -> _Digests:
        while chunk := stream.read(HASH_CHUNK):  # type: ignore[attr-defined]
            self.update(chunk)
            if edges is not None:
                edges.feed(chunk)
        return self

    def hexdigests(self) -> tuple[str, str]:
        return self.sha256.hexdigest(), self.md5.hexdigest()


def _kind_of(mode: int) -> str:
    for test, name in ((stat_module.S_ISFIFO, "a FIFO"), (stat_module.S_ISSOCK, "a socket"),
                       (stat_module.S_ISCHR, "a character device"), (stat_module.S_ISBLK, "a block device"),
                       (stat_module.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


@dataclass
class _Outcome:
    source: SourceFile
    kind: str  # uploaded, matched, unchanged, skipped, failed
    reason: str = ""
    track: Track | None = None  # set once the file is hashed
    stat: os.stat_result | None = None
    size: int = 0
    needs_record: bool = False  # the catalog does not name this track yet
    unreachable: bool = False  # failed because the bucket could not be reached
    sha256: str = ""  # an unchanged track's, from the local state
    art: StoredObject | None = None  # the track's embedded front cover, stored
    side: SideFile | None = None  # set for an image, lyrics file, cue sheet or playlist


@dataclass(slots=True)
class _Prepared:
    """A file read, hashed and tagged, waiting to be matched by HEAD and sent."""

    source: SourceFile
    stat: os.stat_result
    track: Track
    md5: str
    data: bytes | None  # the file's bytes when held in memory (at most MEMORY_THRESHOLD)
    art: _Art | None = None  # its embedded front cover, if the folder needs one or the track holds it raw
    matched: bool = False  # the catalog has the track already: only its cover is to be stored
    wants_cover: bool = False  # its folder has no image: the embedded cover is to be shown as one
    art_at: int | None = None  # where the track holds the cover's bytes (insets.locate)


@dataclass(slots=True)
class _Art:
    """A track's embedded front cover, extracted by the tag worker, to be stored as its own object."""

    object: StoredObject
    md5: str
    data: bytes


def _art(data: bytes | None) -> _Art | None:
    if data is None:
        return None
    ext = image_type(data[:16])
    if ext is None:  # artwork.front_cover returns images only
        return None
    digests = _Digests().update(data)
    sha, md5 = digests.hexdigests()
    return _Art(stored_object(sha, len(data), ext), md5, data)


def _changed(path: Path, before: os.stat_result) -> bool:
    try:
        after = path.stat()
    except OSError:
        return True
    return (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)


class Uploader:
    """Uploads files to one locker; one instance per run."""

    def __init__(self, store: Store, state: UploadState, jobs: int = 4,
                 on_bytes: Callable[[int], None] | None = None,
                 on_file: Callable[[_Outcome], None] | None = None,
                 tag_reader: TagReader | None = None) -> None:
        self.store = store
        self.state = state
        self.jobs = jobs
        self.on_bytes = on_bytes or (lambda n: None)
        self.on_file = on_file or (lambda outcome: None)
        self.tag_reader = tag_reader
        self.summary = UploadSummary()
        self._known: set[str] = set()  # sha256 of tracks in the locker now, or recorded this run
        self._known_lock = threading.Lock()
        self._pending: list[_Outcome] = []
        self._pending_since = 0.0
        self._stored: set[str] | None = None  # object keys listed before the first HEAD, if listed
        self._listing_due = False
        self._listing_lock = threading.Lock()
        self._tag_reader_lock = threading.Lock()
        self._own_tag_reader = False
        self._extras = RunExtras(catalog.CatalogState(), self._tracks_in)  # what the run saw beside the tracks
        self._stored_extras: set[str] = set()  # keys of side-file and cover objects known to be stored
        self._roots: set[Path] = set()  # the folders given, where foreign playlist paths are looked for
        self._probe = sidefiles.FolderProbe()  # a side file's and a track's neighbours, by folder listings
        self._art_failures: list[tuple[str, str]] = []
        # object key -> the file it came from (a side file, or the track its cover was taken
        # from), for storing it again if a concurrent gc took it before its record was written
        self._extra_sources: dict[str, Path] = {}

    def prepare(self) -> None:
        """Create the locker if needed and learn which tracks it holds."""
        catalog.ensure_locker(self.store)
        reader = catalog.load_catalog(self.store)
        # Removed tracks are not known: uploading a removed file again brings it back (#12).
        self._known = {track.sha256 for track in reader.state.tracks()}
        self._extras = RunExtras(reader.state, self._tracks_in)
        self._stored_extras = _objects_named(reader.state)
        self._listing_due = len(reader.state.entries) <= LISTING_LIMIT

    def _listed(self, key: str) -> bool:
        """Whether `key` may be stored: in the listing, or no listing to tell (then HEAD says).

        The listing is made when the first file needs it, so a rerun that
        sends nothing lists nothing.
        """
        with self._listing_lock:
            if self._listing_due:
                self._listing_due = False
                self._stored = self._list_objects()
        return self._stored is None or key in self._stored

    def _list_objects(self) -> set[str] | None:
        """Keys under objects/, or None if there are more than LISTING_LIMIT.

        Matching stays "catalog, then HEAD": only a key missing from this
        listing skips its HEAD. An object another uploader stores after the
        listing is then sent once more, which content addressing makes harmless.
        """
        keys: set[str] = set()
        for item in self.store.list("objects/"):
            keys.add(item.key)
            if len(keys) > LISTING_LIMIT:
                return None
        return keys

    def _tracks_in(self, folder: str) -> dict[str, str]:
        """The tracks recorded from a folder, this run or before: file name -> sha256."""
        return {name: sha for name, sha in self.state.files_in(Path(folder)).items() if sha in self._known}

    def _tags(self) -> TagReader:
        """The tag reader processes, started when the first file needs them (a rerun may need none)."""
        with self._tag_reader_lock:
            if self.tag_reader is None:
                self.tag_reader = TagReader()
                self._own_tag_reader = True
            return self.tag_reader

    def run(self, sources: Iterable[SourceFile], stop: threading.Event) -> UploadSummary:
        """Process every source, pulling them as capacity frees up; returns early when `stop` is set.

        Two stages of `jobs` threads each: one reads, hashes and tags files,
        the other matches and sends them, so that the disk and the CPU work
        on the next files while the network carries the last ones. At most
        2 x jobs files are held in memory at once (`_held`). Each finished
        piece of work lands in `_done`, where this thread counts it.
        """
        sources = iter(sources)
        self._held = threading.BoundedSemaphore(2 * self.jobs)
        self._done: queue.Queue[Future[_Outcome | None]] = queue.Queue()
        in_flight = 0
        # senders outlive readers, which hand files on to them
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="send") as senders, \
                ThreadPoolExecutor(self.jobs, thread_name_prefix="read") as readers:
            try:
                for source in sources:
                    if stop.is_set() or self.summary.stopped:
                        self.summary.not_attempted += 1
                        break
                    self._roots.add(source.root if source.root != source.path else source.root.parent)
                    checked = self._unchanged(source)
                    if isinstance(checked, _Outcome):
                        self._finish(checked)
                    else:
                        readers.submit(self._prepare, source, checked, senders).add_done_callback(self._done.put)
                        in_flight += 1
                    in_flight -= self._count_done(wait_for_one=in_flight >= IN_FLIGHT_PER_JOB * self.jobs)
                while in_flight:
                    in_flight -= self._count_done(wait_for_one=True)
            finally:
                if self._own_tag_reader:
                    self.tag_reader.close()
                    self.tag_reader = None
        self._flush()
        self.summary.interrupted = stop.is_set()
        if self.summary.stopped:
            self.summary.not_attempted += sum(1 for _ in sources)
        self.summary.failed += self._art_failures
        if self.summary.interrupted or self.summary.stopped:
            self.summary.extras_deferred = True
        else:
            self._record_extras()
        return self.summary

    def _record_extras(self) -> None:
        """The records of covers, images, lyrics, cue sheets and playlists, once every track
        of the run is recorded (their objects were stored as they were walked)."""
        paths = TrackPaths(self.state.known_sha, lambda sha: sha in self._known)
        plan = self._extras.plan(EntryResolver(paths, sorted(str(root) for root in self._roots)))
        summary = self.summary
        summary.skipped += plan.skipped
        summary.notes += plan.notes
        summary.unresolved += plan.unresolved
        try:
            for start in range(0, len(plan.records), FLUSH_RECORDS):
                appended = writeorder.append_confirmed(self.store, plan.records[start:start + FLUSH_RECORDS],
                                                       self._store_extra_again)
                for key, why in appended.failed.items():
                    source = self._extra_sources.get(key)
                    summary.failed.append((str(source or key), f"stored again after a gc: {why}"))
        except StoreError as exc:
            summary.failed.append(("covers, lyrics, cue sheets and playlists", f"not recorded: {exc}"))
            return
        summary.extras = plan.written
        self.state.remember((side.path, side.stat, side.object.sha256) for side in plan.remember)

    def _count_done(self, wait_for_one: bool) -> int:
        """Finish the outcomes that are ready (waiting up to a second for one if asked); how many."""
        finished = 0
        while True:
            try:
                future = self._done.get(timeout=1.0) if wait_for_one and not finished else self._done.get_nowait()
            except queue.Empty:
                break
            outcome = future.result()
            if outcome is not None:  # None: handed on to the send stage, which reports it
                self._finish(outcome)
                finished += 1
        self._flush_if_due()
        return finished

    def _flush_if_due(self) -> None:
        if self._pending and time.monotonic() - self._pending_since > FLUSH_SECONDS:
            self._flush()

    def _unchanged(self, source: SourceFile) -> _Outcome | os.stat_result:
        """The outcome of a file that needs no reading (gone, odd, or already recorded), else its stat."""
        path = source.path
        try:
            stat = path.stat()
        except FileNotFoundError:
            reason = "broken symbolic link" if path.is_symlink() else "vanished before it was read"
            return _Outcome(source, "skipped", reason)
        except OSError as exc:
            return _Outcome(source, "failed", f"cannot read it ({exc.strerror or exc})")
        if not stat_module.S_ISREG(stat.st_mode):
            return _Outcome(source, "skipped", f"not a regular file ({_kind_of(stat.st_mode)})")
        kind = side_kind(path.name)
        if kind is not None:
            sha = self.state.known_sha(path, stat)
            recorded = self._extras.recorded_side(path, source.relative, stat, kind, sha) if sha else None
            if recorded is None:
                return stat
            self.on_bytes(stat.st_size)
            return _Outcome(source, "unchanged", stat=stat, size=stat.st_size, side=recorded)
        if (sha := self.state.known_sha(path, stat)) in self._known:
            self.on_bytes(stat.st_size)
            return _Outcome(source, "unchanged", stat=stat, size=stat.st_size, sha256=sha)
        return stat

    def _prepare(self, source: SourceFile, stat: os.stat_result, senders: ThreadPoolExecutor) -> _Outcome | None:
        """Read stage: read once, hash, tags; then hand the file to the send stage (None).

        A track the catalog already has is matched here, without a request.
        """
        try:
            if stat.st_size == 0:
                return _Outcome(source, "skipped", "empty file")
            self._held.acquire()
            handed_on = False
            try:
                kind = side_kind(source.path.name)
                prepared = self._read_side(source, stat, kind) if kind else self._read(source, stat)
                if isinstance(prepared, _Outcome):
                    return prepared
                if isinstance(prepared, SideFile):
                    senders.submit(self._send_side, source, prepared).add_done_callback(self._done.put)
                    handed_on = True
                    return None
                if not self._claim(prepared.track):  # no record to write: the cover only if shown
                    art = prepared.art = prepared.art if prepared.wants_cover else None
                    if art is None or art.object.key in self._stored_extras:
                        self.on_bytes(stat.st_size)
                        return _Outcome(source, "matched", "already in the locker", prepared.track, stat,
                                        stat.st_size, art=art.object if art else None)
                    prepared.matched = True  # only its cover is to be sent
                senders.submit(self._send, prepared).add_done_callback(self._done.put)
                handed_on = True  # _send lets go of the held bytes
                return None
            finally:
                if not handed_on:
                    self._held.release()
        except Exception as exc:  # noqa: BLE001 - mapped to a skip or failure with one sentence
            return self._failure(source, stat, exc)

    def _read(self, source: SourceFile, stat: os.stat_result) -> _Outcome | _Prepared:
        """Read the file once, hash it, read its tags; or say why it is not uploaded.

        A file whose extension is not audio is sniffed from its first bytes
        first, so a large non-audio file costs one small read.
        """
        path = source.path
        ext = name_extension(path.name)
        digests = _Digests()
        with open(path, "rb") as f:
            first = b""
            if ext not in AUDIO_EXTENSIONS:
                first = f.read(SNIFF_SIZE)
                if not sniff_format(first):
                    return _Outcome(source, "skipped", f"not audio (.{ext or 'no extension'})")
            tag_reader = self._tags()
            # the cover is always taken: where the track holds it raw, it is stored once for
            # every track of the album and the mount reads it from there (insets.py)
            tags = tag_reader.submit(path)
            if stat.st_size <= MEMORY_THRESHOLD:
                data: bytes | None = first + f.read() if first else f.read()
                digests.update(data)
                edges = Edges(data, data, len(data))
            else:
                data = None
                keeper = EdgeKeeper()
                keeper.feed(first)
                digests.update(first).feed_stream(f, keeper)
                edges = keeper.edges()
            after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns) or (
                data is not None and len(data) != stat.st_size):
            tags.cancel()
            return _Outcome(source, "failed", "file changed while it was being read")
        sha, md5 = digests.hexdigests()
        info, picture = tag_reader.result(tags, path)
        ext = canonical_extension(info.format, ext)
        track = Track(sha256=sha, key=catalog.object_key(sha, ext), size=stat.st_size, ext=ext,
                      source=source.relative, mtime=stat.st_mtime, info=info)
        wants_cover = self._probe.wants_art(path.parent)
        at = locate(picture, edges, info.head_size, info.tail_size) if picture else None
        art = _art(picture) if wants_cover or at is not None else None
        return _Prepared(source, stat, track, md5, data, art, wants_cover=wants_cover,
                         art_at=at if art is not None else None)

    def _read_side(self, source: SourceFile, stat: os.stat_result, kind: str) -> _Outcome | SideFile:
        """Read an image, lyrics file, cue sheet or playlist once, checked and hashed; or say why not
        (one that belongs to no track is not read at all)."""
        homeless = self._probe.why_homeless(source.path, kind)
        if homeless is not None:
            return _Outcome(source, "skipped", homeless)
        try:
            return read_side_file(source.path, source.relative, stat, kind)
        except NotASideFile as exc:
            return _Outcome(source, "skipped", str(exc))
        except ChangedWhileRead as exc:
            return _Outcome(source, "failed", str(exc))

    def _claim(self, track: Track) -> bool:
        """Whether this run is the one to store the track (not in the catalog, not claimed before)."""
        with self._known_lock:
            if track.sha256 in self._known:
                return False
            self._known.add(track.sha256)  # a duplicate later in this run matches this one
            return True

    def _send(self, prepared: _Prepared) -> _Outcome:
        """Send stage: match by HEAD, else PUT; then the track's cover; always lets go of the file's bytes."""
        source, track, stat = prepared.source, prepared.track, prepared.stat
        try:
            if prepared.matched:
                self.on_bytes(stat.st_size)
                outcome = _Outcome(source, "matched", "already in the locker", track, stat, stat.st_size)
            else:
                outcome = self._store_object(prepared)
        except Exception as exc:  # noqa: BLE001 - mapped to a failure with one sentence
            with self._known_lock:
                self._known.discard(track.sha256)
            return self._failure(source, stat, exc)
        else:
            art = self._store_art(prepared)
            if art is not None and prepared.art_at is not None and outcome.track is not None:
                outcome.track = replace(outcome.track, art=make_inset(art.sha256, art.ext, art.size, prepared.art_at))
            outcome.art = art if prepared.wants_cover else None
            return outcome
        finally:
            prepared.data = None
            prepared.art = None
            self._held.release()

    def _store_art(self, prepared: _Prepared) -> StoredObject | None:
        """Store the track's embedded cover as its own object; None if there is none or it failed
        (the track stands without it, and the failure is reported)."""
        art = prepared.art
        if art is None:
            return None
        try:
            self._put_extra(art.object, art.md5, art.data)
        except StoreError as exc:
            self._art_failures.append((prepared.source.relative, f"its embedded cover was not stored: {exc}"))
            return None
        return art.object

    def _send_side(self, source: SourceFile, side: SideFile) -> _Outcome:
        """Send stage for a side file: store its object unless stored; always lets go of its bytes."""
        try:
            sent = self._put_extra(side.object, side.md5, side.data, side.path, side.stat)
            side.stored = True
            self.on_bytes(side.stat.st_size)
            return _Outcome(source, "uploaded" if sent else "matched", stat=side.stat, size=side.stat.st_size,
                            side=side)
        except Exception as exc:  # noqa: BLE001 - mapped to a failure with one sentence
            return self._failure(source, side.stat, exc)
        finally:
            side.data = None
            self._held.release()

    def _put_extra(self, obj: StoredObject, md5: str, data: bytes | None, path: Path | None = None,
                   stat: os.stat_result | None = None) -> bool:
        """Store a side file's or cover's object unless it is known to be stored; True if sent.
        Held bytes are sent as they were hashed; a large file is sent from disk and checked."""
        if obj.key in self._stored_extras:
            return False
        if self._listed(obj.key) and self.store.holds(obj.key, obj.size, md5):
            self._stored_extras.add(obj.key)
            return False
        if data is not None:
            self.store.put_bytes(obj.key, data, md5=md5, content_type=obj.content_type)
        else:
            assert path is not None and stat is not None
            self.store.put_file(obj.key, path, None, md5=md5, content_type=obj.content_type)
            if _changed(path, stat):
                raise CorruptUpload("file changed while it was being uploaded")
        self._stored_extras.add(obj.key)
        return True

    def _store_object(self, prepared: _Prepared) -> _Outcome:
        source, track, stat, md5, data = (prepared.source, prepared.track, prepared.stat, prepared.md5,
                                          prepared.data)
        # size alone would trust an object a broken upload left behind; the
        # ETag, where it is an MD5, says whether it holds these bytes
        if self._listed(track.key) and self.store.holds(track.key, track.size, md5):
            self.on_bytes(track.size)
            return _Outcome(source, "matched", "object already stored", track, stat, track.size,
                            needs_record=True)
        content_type = CONTENT_TYPES.get(track.info.format)
        if data is not None:  # the very bytes that were hashed: nothing can have changed them
            self.store.put_bytes(track.key, data, md5=md5, content_type=content_type)
            self.on_bytes(track.size)
        else:
            self.store.put_file(track.key, source.path, self.on_bytes, md5=md5, content_type=content_type)
            # the parts of a big file are verified as sent, so a file changed
            # since it was hashed is caught here
            if _changed(source.path, stat):
                raise CorruptUpload("file changed while it was being uploaded")
        return _Outcome(source, "uploaded", track=track, stat=stat, size=track.size, needs_record=True)

    @staticmethod
    def _failure(source: SourceFile, stat: os.stat_result | None, exc: Exception) -> _Outcome:
        """A file's error as the summary reports it: skipped (not ours to upload) or failed."""
        if isinstance(exc, NotAudioError):
            return _Outcome(source, "skipped", str(exc))
        if isinstance(exc, FileNotFoundError):
            return _Outcome(source, "skipped", "vanished while it was being read")
        if isinstance(exc, OSError):
            # the user meant this file to be uploaded and it was not: a failure, not a skip
            return _Outcome(source, "failed", f"cannot read it ({exc.strerror or exc})")
        if isinstance(exc, Unreachable):
            return _Outcome(source, "failed", str(exc), unreachable=True)
        if isinstance(exc, CorruptUpload):
            changed = stat is not None and _changed(source.path, stat)
            return _Outcome(source, "failed", "file changed while it was being uploaded" if changed else str(exc))
        if isinstance(exc, StoreError):
            return _Outcome(source, "failed", str(exc))
        raise exc

    def _finish(self, outcome: _Outcome) -> None:
        summary = self.summary
        if outcome.side is not None and outcome.kind in ("uploaded", "matched", "unchanged"):
            if outcome.kind == "uploaded":
                summary.side_uploaded += 1
                summary.side_uploaded_bytes += outcome.size
            elif outcome.kind == "matched":
                summary.side_matched += 1
            else:
                summary.side_unchanged += 1
            self._extras.add_side(outcome.side)
            if outcome.side.read:
                self._extra_sources[outcome.side.object.key] = outcome.source.path
            self.on_file(outcome)
            return
        if outcome.kind in ("uploaded", "matched", "unchanged"):
            if outcome.art is not None:
                self._extra_sources.setdefault(outcome.art.key, outcome.source.path)
            self._extras.add_track(str(outcome.source.path), outcome.source.relative,
                                   outcome.track.sha256 if outcome.track else outcome.sha256, outcome.art,
                                   read=outcome.kind != "unchanged")
        if outcome.kind == "uploaded":
            summary.uploaded += 1
            summary.uploaded_bytes += outcome.size
        elif outcome.kind in ("matched", "unchanged"):
            setattr(summary, outcome.kind, getattr(summary, outcome.kind) + 1)
        elif outcome.kind == "skipped":
            summary.skipped.append((outcome.source.relative, outcome.reason))
        else:
            summary.failed.append((outcome.source.relative, outcome.reason))
            if outcome.unreachable and not summary.stopped:
                # every further file would wait out the same retries: stop now, say so
                summary.stopped = outcome.reason
        self.on_file(outcome)
        if outcome.track is not None:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(outcome)
            if len(self._pending) >= FLUSH_RECORDS:
                self._flush()

    def _flush(self) -> None:
        """Record pending tracks in one journal file, then remember their files locally."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        records = [catalog.add_record(o.track) for o in pending if o.needs_record]
        try:
            if records:
                by_key = {o.track.key: o for o in pending if o.needs_record}
                appended = writeorder.append_confirmed(self.store, records, lambda key: self._store_again(by_key[key]))
                for key, why in appended.failed.items():  # recorded, but a concurrent gc took its object
                    self.summary.failed.append((by_key[key].source.relative, f"stored again after a gc: {why}"))
                    pending.remove(by_key[key])  # so not remembered as uploaded
        except StoreError as exc:
            for outcome in pending:
                if outcome.needs_record:
                    self.summary.failed.append((outcome.source.relative, f"not recorded: {exc}"))
            return
        self.state.remember((o.source.path, o.stat, o.track.sha256) for o in pending)

    def _store_extra_again(self, key: str) -> None:
        """Store a side file's or embedded cover's object once more (a concurrent gc deleted it),
        from the file it came from, if that still holds the bytes the record names."""
        path = self._extra_sources.get(key)
        if path is None:  # recorded by an earlier run, and named by the catalog since: gc keeps it
            raise CorruptUpload("its source file was not read by this run")
        kind = side_kind(path.name)
        try:
            if kind is not None:
                side = read_side_file(path, path.name, path.stat(), kind)
                obj, md5, data = side.object, side.md5, side.data
            else:  # rare: read here, the run's tag reader processes have ended
                art = _art(read_track_and_art(path)[1])
        except (NotASideFile, ChangedWhileRead, NotAudioError) as exc:
            raise CorruptUpload(f"the file changed since it was uploaded ({exc})") from exc
        if kind is None:
            if art is None:
                raise CorruptUpload("the track no longer carries its cover")
            obj, md5, data = art.object, art.md5, art.data
        if obj.key != key:
            raise CorruptUpload("the file changed since it was uploaded")
        self._stored_extras.discard(key)
        self._put_extra(obj, md5, data, path, path.stat())

    def _store_again(self, outcome: _Outcome) -> None:
        """Store a recorded track's object once more (a concurrent gc deleted it), if the file
        still holds the bytes its record names."""
        track = outcome.track
        assert track is not None
        with open(outcome.source.path, "rb") as f:
            sha, md5 = _Digests().feed_stream(f).hexdigests()
        if sha != track.sha256:
            raise CorruptUpload("the file changed since it was uploaded")
        self.store.put_file(track.key, outcome.source.path, md5=md5, content_type=CONTENT_TYPES.get(track.info.format))


def _objects_named(state: catalog.CatalogState) -> set[str]:
    """Keys of the objects the catalog's assets and playlists name: stored, since records
    come after their objects, so a rerun sends no request for them."""
    keys = {v.value.object.key for v in state.assets.values() if v.value is not None}
    keys.update(v.value.object.key for v in state.playlists.values() if v.value is not None and v.value.object)
    return keys
