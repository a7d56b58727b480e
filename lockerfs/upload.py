"""Upload: scan -> tags -> hash -> match -> put object -> append record.

Crash safety comes from write order: an object is stored before the journal
record that names it, and the local state file learns a file only after its
record is stored. A run killed at any point leaves at worst an object without
a record, which the next run finds (HEAD: size, and an ETag that is the MD5 of
the file) and records without re-uploading; an object whose ETag is not an MD5
(multipart, SSE-KMS) proves nothing about its bytes and is uploaded again. Every PUT is verified by the server
(Content-MD5, see S3Store._verified_put): an object that did not arrive intact
is sent again or reported as failed, never recorded.

Matching happens at three levels, cheapest first:
  unchanged - same path, size and mtime as a file already recorded: not even hashed;
  matched   - its SHA-256 is already in the catalog (or its object already
              exists in the bucket): nothing uploaded;
  uploaded  - everything else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from lockerfs import catalog
from lockerfs.store import CorruptUpload, Store, StoreError, Unreachable
from lockerfs.tags import AUDIO_EXTENSIONS, FORMAT_EXTENSIONS, NotAudioError, read_track_info
from lockerfs.track import Track

log = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024
FLUSH_RECORDS = 100  # records per journal file at most
FLUSH_SECONDS = 5.0  # and no record waits longer than this for its journal file


@dataclass(frozen=True, slots=True)
class SourceFile:
    root: Path  # the folder (or file) named on the command line
    path: Path

    @property
    def relative(self) -> str:
        """The path below the given folder, as valid text (undecodable bytes become U+FFFD)."""
        relative = self.path.name if self.root == self.path else self.path.relative_to(self.root).as_posix()
        return os.fsencode(relative).decode("utf-8", "replace")


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

    def known_sha(self, path: Path, stat: os.stat_result) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM files WHERE locker=? AND path=? AND size=? AND mtime_ns=?",
                (self.locker, os.fsencode(path), stat.st_size, stat.st_mtime_ns)).fetchone()
        return row[0] if row else None

    def remember(self, entries: Iterable[tuple[Path, os.stat_result, str]]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                [(self.locker, os.fsencode(p), s.st_size, s.st_mtime_ns, sha) for p, s, sha in entries])
            self._db.commit()

    def close(self) -> None:
        self._db.close()


def scan(paths: Iterable[Path]) -> Iterator[SourceFile]:
    """Every file under the given paths, in a stable order; symlinked folders are not followed.

    Entries that are not regular files (FIFOs, sockets, devices, broken
    symlinks) are yielded too, so that the run reports them as skipped rather
    than leaving them out without a word; nothing opens them.
    """
    for given in paths:
        root = given.absolute()
        if not root.is_dir():
            yield SourceFile(root, root)
            continue
        for folder, dirnames, filenames in os.walk(root, onerror=_report_walk_error):
            dirnames.sort()
            for name in sorted(filenames):
                yield SourceFile(root, Path(folder, name))


def _report_walk_error(error: OSError) -> None:
    log.warning("cannot read folder %s: %s", error.filename, error.strerror)


def sha256_of(path: Path) -> str:
    return digests_of(path)[0]


def digests_of(path: Path) -> tuple[str, str]:
    """(SHA-256, MD5) of a file in one read: the key, and what the server is asked to verify."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


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
                 on_file: Callable[[_Outcome], None] | None = None) -> None:
        self.store = store
        self.state = state
        self.jobs = jobs
        self.on_bytes = on_bytes or (lambda n: None)
        self.on_file = on_file or (lambda outcome: None)
        self.summary = UploadSummary()
        self._known: set[str] = set()  # sha256 in the catalog (added or removed) or recorded this run
        self._known_lock = threading.Lock()
        self._pending: list[_Outcome] = []
        self._pending_since = 0.0

    def prepare(self) -> None:
        """Create the locker if needed and learn which tracks it holds."""
        catalog.ensure_locker(self.store)
        reader = catalog.load_catalog(self.store)
        self._known = set(reader.state.entries)

    def run(self, sources: list[SourceFile], stop: threading.Event) -> UploadSummary:
        """Process every source; returns early (interrupted) when `stop` is set."""
        queue = iter(sources)
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="upload") as pool:
            running: set[Future[_Outcome]] = set()
            while True:
                while not stop.is_set() and not self.summary.stopped and len(running) < self.jobs * 2:
                    source = next(queue, None)
                    if source is None:
                        break
                    running.add(pool.submit(self._process, source))
                if not running:
                    break
                done, running = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    self._finish(future.result())
                if self._pending and time.monotonic() - self._pending_since > FLUSH_SECONDS:
                    self._flush()
        self._flush()
        self.summary.interrupted = stop.is_set()
        if self.summary.stopped:
            self.summary.not_attempted = sum(1 for _ in queue)
        return self.summary

    def _process(self, source: SourceFile) -> _Outcome:
        path = source.path
        try:
            try:
                stat = path.stat()
            except FileNotFoundError:
                reason = "broken symbolic link" if path.is_symlink() else "vanished before it was read"
                return _Outcome(source, "skipped", reason)
            if not stat_module.S_ISREG(stat.st_mode):
                return _Outcome(source, "skipped", f"not a regular file ({_kind_of(stat.st_mode)})")
            if self.state.known_sha(path, stat) in self._known:
                self.on_bytes(stat.st_size)
                return _Outcome(source, "unchanged", stat=stat, size=stat.st_size)
            ext = path.suffix.lower().lstrip(".")
            if ext not in AUDIO_EXTENSIONS:
                return _Outcome(source, "skipped", f"not audio (.{ext or 'no extension'})")
            info = read_track_info(path)
            sha, md5 = digests_of(path)
            after = path.stat()
            if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                return _Outcome(source, "failed", "file changed while it was being read")
            ext = FORMAT_EXTENSIONS.get(info.format, ext)
            track = Track(sha256=sha, key=catalog.object_key(sha, ext), size=stat.st_size, ext=ext,
                          source=source.relative, mtime=stat.st_mtime, info=info)
            return self._store_object(source, track, stat, md5)
        except NotAudioError as exc:
            return _Outcome(source, "skipped", str(exc))
        except FileNotFoundError:
            return _Outcome(source, "skipped", "vanished while it was being read")
        except OSError as exc:
            # the user meant this file to be uploaded and it was not: a failure, not a skip
            return _Outcome(source, "failed", f"cannot read it ({exc.strerror or exc})")
        except Unreachable as exc:
            return _Outcome(source, "failed", str(exc), unreachable=True)
        except CorruptUpload as exc:
            return _Outcome(source, "failed", "file changed while it was being uploaded"
                            if _changed(path, stat) else str(exc))
        except StoreError as exc:
            return _Outcome(source, "failed", str(exc))

    def _store_object(self, source: SourceFile, track: Track, stat: os.stat_result, md5: str) -> _Outcome:
        with self._known_lock:
            if track.sha256 in self._known:
                self.on_bytes(track.size)
                return _Outcome(source, "matched", "already in the locker", track, stat, track.size)
            self._known.add(track.sha256)  # a duplicate later in this run matches this one
        try:
            # size alone would trust an object a broken upload left behind; the
            # ETag, where it is an MD5, says whether it holds these bytes
            if self.store.holds(track.key, track.size, md5):
                self.on_bytes(track.size)
                return _Outcome(source, "matched", "object already stored", track, stat, track.size,
                                needs_record=True)
            self.store.put_file(track.key, source.path, self.on_bytes, md5=md5)
            # a single-part PUT is verified against `md5`; the parts of a big
            # file are verified as sent, so a file changed meanwhile is caught here
            if _changed(source.path, stat):
                raise CorruptUpload("file changed while it was being uploaded")
        except BaseException:
            with self._known_lock:
                self._known.discard(track.sha256)
            raise
        return _Outcome(source, "uploaded", track=track, stat=stat, size=track.size, needs_record=True)

    def _finish(self, outcome: _Outcome) -> None:
        summary = self.summary
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
                catalog.append_records(self.store, records)
        except StoreError as exc:
            for outcome in pending:
                if outcome.needs_record:
                    self.summary.failed.append((outcome.source.relative, f"not recorded: {exc}"))
            return
        self.state.remember((o.source.path, o.stat, o.track.sha256) for o in pending)
