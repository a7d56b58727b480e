"""The catalog code of lockerfs format version 1, frozen as it was released.

Kept so that tests run the real version 1 reader, writer and compactor
against lockers that version 2 writes (an old mount or compactor must keep
working and must lose nothing) and produce real version 1 lockers for the
new reader. Its Track and TrackInfo are frozen here too, so that fields
added to today's TrackInfo do not change what version 1 does. Do not edit
except to follow a change of the Store interface.
"""

from __future__ import annotations

from dataclasses import dataclass


# --- trackinfo.py (v1) ---


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """Normalized tags, audio facts and tag-region sizes of one audio file.

    Every tag field is optional: a file with no readable tags still has a
    TrackInfo (all None) and is named from its path by the layout.
    """

    format: str  # container: flac, mp3, ogg, opus, m4a, aac (raw ADTS), wav, aiff; "" if unknown
    codec: str  # flac, mp3, vorbis, opus, aac, alac, pcm; "" if unknown
    artist: str | None = None
    albumartist: str | None = None
    album: str | None = None
    title: str | None = None
    track: int | None = None
    tracktotal: int | None = None
    disc: int | None = None
    disctotal: int | None = None
    date: str | None = None  # as tagged, e.g. "1959", "1959-08-17"
    year: int | None = None  # parsed from date when it holds a plausible year
    genre: str | None = None
    compilation: bool = False
    duration: float | None = None  # seconds
    bitrate: int | None = None  # bits per second
    sample_rate: int | None = None  # Hz
    channels: int | None = None
    # Bytes a tag reader needs from each end of the file. head_size covers
    # everything before the audio frames (ID3v2 tag, FLAC metadata blocks, Ogg
    # header pages, MP4 boxes up to and including a leading moov); tail_size
    # covers what sits after them (ID3v1, APEv2, Lyrics3, a trailing moov).
    head_size: int = 0
    tail_size: int = 0


# --- track.py (v1) ---



@dataclass(frozen=True, slots=True)
class Track:
    """One audio object in the locker and its description.

    A track is identified by the SHA-256 of its bytes: the same file uploaded
    from two paths or two machines is one track.
    """

    sha256: str  # lower-case hex of the object's bytes; the track's identity
    key: str  # object key relative to the locker prefix
    size: int  # bytes
    ext: str  # lower-case extension without the dot, e.g. "flac"
    source: str  # path of the uploaded file relative to the folder given to upload
    mtime: float  # modification time of the uploaded file (seconds since the epoch)
    info: TrackInfo


# --- catalog.py (v1) ---

import gzip
import io
import json
import logging
import os
import re
import secrets
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from lockerfs.store import NotFound, Store

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCKER_KEY = "locker.json"
JOURNAL_PREFIX = "catalog/journal/"
SNAPSHOT_PREFIX = "catalog/snapshot/"
OBJECT_PREFIX = "objects/sha256/"

MAX_CATALOG_FILE_BYTES = 512 * 1024 * 1024  # refuse to inflate a snapshot past this
MAX_OBJECT_SIZE = 1 << 40
MAX_TEXT = 1024
_ID_RE = re.compile(r"^\d{13}-[0-9a-f]{16}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_EXT_RE = re.compile(r"^[a-z0-9]{1,8}$")

Stamp = tuple[str, int]


class FormatError(Exception):
    """The locker cannot be read by this version of lockerfs, or is not a locker."""


class CorruptCatalogFile(FormatError):
    """One catalog file cannot be decoded; readers skip it (with a warning) and go on."""


def new_id(now: float | None = None) -> str:
    """A time-sortable id that no other writer will choose."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis:013d}-{secrets.token_hex(8)}"


def object_key(sha256: str, ext: str) -> str:
    return f"{OBJECT_PREFIX}{sha256[:2]}/{sha256}.{ext}"


# --- the locker marker --------------------------------------------------------

def ensure_locker(store: Store) -> None:
    """Create locker.json if it is missing; refuse a locker of a newer format.

    Two writers creating it at once write equivalent content, so the race is
    harmless without conditional writes.
    """
    try:
        check_locker(store)
    except NotFound:
        marker = {"format": "lockerfs", "version": FORMAT_VERSION,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        store.put_bytes(LOCKER_KEY, json.dumps(marker).encode())


def check_locker(store: Store) -> None:
    """Raise NotFound if there is no locker here, FormatError if we cannot read it."""
    raw = store.get(LOCKER_KEY)
    try:
        marker = json.loads(raw)
    except ValueError:
        raise FormatError("locker.json is not valid JSON: this is not a lockerfs locker") from None
    if not isinstance(marker, dict) or marker.get("format") != "lockerfs":
        raise FormatError("locker.json does not describe a lockerfs locker")
    _check_version(marker.get("version"), LOCKER_KEY)


def _check_version(version: object, where: str) -> None:
    if not isinstance(version, int) or version < 1:
        raise FormatError(f"{where} has no valid format version")
    if version > FORMAT_VERSION:
        raise FormatError(f"{where} was written in locker format version {version}; this lockerfs "
                          f"reads versions up to {FORMAT_VERSION}: upgrade lockerfs")


# --- records ------------------------------------------------------------------

def track_to_dict(track: Track) -> dict[str, Any]:
    """The JSON form of a track (unknown info fields left out). Hand-written: asdict() is
    slow enough to matter when a 100k-track catalog is saved."""
    info = track.info
    return {"sha256": track.sha256, "key": track.key, "size": track.size, "ext": track.ext,
            "source": track.source, "mtime": track.mtime,
            "info": {name: value for name in _INFO_NAMES if (value := getattr(info, name)) is not None}}


_TEXT, _INT, _REAL, _FLAG = (str,), (int,), (int, float), (bool,)
_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "format": _TEXT, "codec": _TEXT, "artist": _TEXT, "albumartist": _TEXT, "album": _TEXT,
    "title": _TEXT, "track": _INT, "tracktotal": _INT, "disc": _INT, "disctotal": _INT,
    "date": _TEXT, "year": _INT, "genre": _TEXT, "compilation": _FLAG, "duration": _REAL,
    "bitrate": _INT, "sample_rate": _INT, "channels": _INT, "head_size": _INT, "tail_size": _INT,
}
_INFO_NAMES = tuple(f.name for f in fields(TrackInfo))
assert set(_INFO_TYPES) == set(_INFO_NAMES), "keep _INFO_TYPES in step with TrackInfo"


_SHARED_TEXT = frozenset({"format", "codec", "artist", "albumartist", "album", "date", "genre"})


def _clean_info(raw: dict[str, Any], size: int) -> TrackInfo:
    """TrackInfo from untrusted JSON: wrong types, absurd values and unknown keys are dropped.

    One pass over the keys present, since this runs once per track on every
    cold mount. Values repeated across tracks (artist, album, ...) are
    interned so a large library holds each once.
    """
    clean: dict[str, Any] = {}
    for name, value in raw.items():
        kinds = _INFO_TYPES.get(name)
        if kinds is None or value is None:
            continue  # unknown keys may come from a newer minor writer: ignore them
        kind = type(value)
        if kind is str and kinds is _TEXT:
            if len(value) > MAX_TEXT or "\x00" in value:
                value = value[:MAX_TEXT].replace("\x00", "")
            clean[name] = sys.intern(value) if name in _SHARED_TEXT else value
        elif kind is bool:
            if kinds is _FLAG:
                clean[name] = value
        elif (kind is int and kinds is not _TEXT and kinds is not _FLAG) or (kind is float and kinds is _REAL):
            if 0 <= value < 1e12:
                clean[name] = value
    for region in ("head_size", "tail_size"):
        if clean.get(region, 0) > size:
            del clean[region]
    clean.setdefault("format", "")
    clean.setdefault("codec", "")
    return TrackInfo(**clean)


def track_from_dict(record: Any) -> Track:
    """Validate an untrusted record; raises ValueError saying what is wrong."""
    if not isinstance(record, dict):
        raise ValueError("track record is not an object")
    sha = record.get("sha256")
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise ValueError("bad sha256")
    ext = record.get("ext")
    if not isinstance(ext, str) or not _EXT_RE.match(ext):
        raise ValueError("bad ext")
    key = record.get("key")
    if key != object_key(sha, ext):
        raise ValueError("object key does not match sha256 and ext")
    size = record.get("size")
    if type(size) is not int or not 0 <= size <= MAX_OBJECT_SIZE:
        raise ValueError("bad size")
    source = record.get("source")
    source = source[:4096].replace("\x00", "") if isinstance(source, str) else ""
    mtime = record.get("mtime")
    if type(mtime) not in (int, float) or not 0 <= mtime < 1e11:
        mtime = 0.0
    raw_info = record.get("info")
    info = _clean_info(raw_info if isinstance(raw_info, dict) else {}, size)
    return Track(sha256=sha, key=key, size=size, ext=sys.intern(ext), source=source,
                 mtime=float(mtime), info=info)


def add_record(track: Track) -> dict[str, Any]:
    return {"op": "add", "track": track_to_dict(track)}


def remove_record(sha256: str) -> dict[str, Any]:
    return {"op": "remove", "sha256": sha256}


# --- the merged catalog ---------------------------------------------------------

@dataclass(slots=True)
class Entry:
    stamp: Stamp
    track: Track | None  # None: removed


@dataclass
class CatalogState:
    """sha256 -> newest-stamped entry. Merging is order-independent (last writer wins)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    rejected: int = 0  # records skipped as invalid

    def apply(self, stamp: Stamp, record: Any) -> None:
        try:
            sha, track = _parse_record(record)
        except ValueError as exc:
            self.rejected += 1
            log.warning("skipping an invalid catalog record (%s)", exc)
            return
        self._put(sha, Entry(stamp, track))

    def _put(self, sha: str, entry: Entry) -> None:
        current = self.entries.get(sha)
        if current is None or current.stamp < entry.stamp:
            self.entries[sha] = entry

    def merge_file(self, file_id: str, document: dict[str, Any]) -> None:
        """Apply a journal file or snapshot document (validated here)."""
        kind = document.get("kind")
        if kind == "journal":
            records = document.get("records")
            if not isinstance(records, list):
                raise CorruptCatalogFile(f"journal file {file_id} has no record list")
            for index, record in enumerate(records):
                self.apply((file_id, index), record)
        elif kind == "snapshot":
            entries = document.get("entries")
            if not isinstance(entries, list):
                raise CorruptCatalogFile(f"snapshot {file_id} has no entry list")
            for item in entries:
                stamp = item.get("stamp") if isinstance(item, dict) else None
                if (not isinstance(stamp, list) or len(stamp) != 2 or not isinstance(stamp[0], str)
                        or not isinstance(stamp[1], int)):
                    self.rejected += 1
                    continue
                self.apply((stamp[0], stamp[1]), item.get("record"))
        else:
            raise CorruptCatalogFile(f"catalog file {file_id} is of unknown kind {kind!r}")

    def tracks(self) -> list[Track]:
        return [entry.track for entry in self.entries.values() if entry.track is not None]

    def to_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        entries = []
        for sha, entry in sorted(self.entries.items()):
            record = add_record(entry.track) if entry.track else remove_record(sha)
            entries.append({"stamp": list(entry.stamp), "record": record})
        return {"kind": "snapshot", "version": FORMAT_VERSION, "id": snapshot_id, "entries": entries}


def _parse_record(record: Any) -> tuple[str, Track | None]:
    if not isinstance(record, dict):
        raise ValueError("record is not an object")
    op = record.get("op")
    if op == "add":
        track = track_from_dict(record.get("track"))
        return track.sha256, track
    if op == "remove":
        sha = record.get("sha256")
        if not isinstance(sha, str) or not _SHA_RE.match(sha):
            raise ValueError("bad sha256 in remove record")
        return sha, None
    raise ValueError(f"unknown op {op!r}")


# --- reading and writing catalog files ---------------------------------------------

def _file_id(key: str) -> str | None:
    name = key.rsplit("/", 1)[-1]
    stem = name.split(".", 1)[0]
    return stem if _ID_RE.match(stem) else None


def decode_catalog_file(key: str, raw: bytes) -> dict[str, Any]:
    """Parse (and for snapshots, inflate with a size cap) one catalog file."""
    if key.endswith(".gz"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
                raw = stream.read(MAX_CATALOG_FILE_BYTES + 1)
        except (OSError, EOFError, zlib.error):
            raise CorruptCatalogFile(f"{key} is not valid gzip") from None
        if len(raw) > MAX_CATALOG_FILE_BYTES:
            raise CorruptCatalogFile(f"{key} inflates past {MAX_CATALOG_FILE_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise CorruptCatalogFile(f"{key} is not valid JSON") from None
    if not isinstance(document, dict):
        raise CorruptCatalogFile(f"{key} is not a JSON object")
    _check_version(document.get("version"), key)
    return document


def append_records(store: Store, records: list[dict[str, Any]]) -> str:
    """Write one journal file holding `records`; returns its key.

    Callers must have stored every object the records point at first.
    """
    file_id = new_id()
    key = f"{JOURNAL_PREFIX}{file_id}.json"
    document = {"kind": "journal", "version": FORMAT_VERSION, "id": file_id, "records": records}
    store.put_bytes(key, json.dumps(document, separators=(",", ":")).encode())
    return key


@dataclass
class CatalogFile:
    key: str
    last_modified: datetime


class CatalogReader:
    """Loads the catalog and keeps it current by applying only files not seen before.

    Journal keys are listed before snapshot keys: a compactor deletes journal
    files only after writing the snapshot that holds them, so whatever vanished
    from the first listing is already in the second.
    """

    def __init__(self, store: Store, parallel: int = 16) -> None:
        self.store = store
        self.parallel = parallel
        self.state = CatalogState()
        self.seen: dict[str, CatalogFile] = {}
        self.corrupt: set[str] = set()  # keys skipped as undecodable; compaction keeps them

    def refresh(self) -> bool:
        """Fetch and apply catalog files not applied yet; True if the catalog changed."""
        changed = False
        for _attempt in range(3):
            listed = list(self._list(JOURNAL_PREFIX)) + list(self._list(SNAPSHOT_PREFIX))
            new = [item for item in listed if item.key not in self.seen]
            vanished = self._apply_all(new)
            changed = changed or len(new) > len(vanished)
            if not vanished:
                break
            log.info("%d catalog files vanished while reading (compaction); listing again", len(vanished))
        return changed

    def _list(self, prefix: str) -> Iterator[CatalogFile]:
        for item in self.store.list(prefix):
            if _file_id(item.key) is not None:
                yield CatalogFile(item.key, item.last_modified)

    def _apply_all(self, files: list[CatalogFile]) -> list[CatalogFile]:
        def fetch(item: CatalogFile) -> tuple[CatalogFile, dict[str, Any] | None | CorruptCatalogFile]:
            try:
                return item, decode_catalog_file(item.key, self.store.get(item.key))
            except NotFound:
                return item, None
            except CorruptCatalogFile as exc:
                return item, exc

        vanished = []
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            for item, document in pool.map(fetch, files):
                if document is None:
                    vanished.append(item)
                    continue
                try:
                    if isinstance(document, CorruptCatalogFile):
                        raise document
                    self.state.merge_file(_file_id(item.key) or "", document)
                except CorruptCatalogFile as exc:
                    # One damaged file must not make the whole locker unreadable.
                    self.corrupt.add(item.key)
                    log.warning("skipping a damaged catalog file: %s", exc)
                self.seen[item.key] = item
        return vanished

    def tracks(self) -> list[Track]:
        return self.state.tracks()

    # --- the local copy that lets a mount start and list offline ---------------

    def save(self, path: Path) -> None:
        """Write the merged catalog and the list of applied files, atomically."""
        document = self.state.to_snapshot("local")
        document["seen"] = [[item.key, item.last_modified.isoformat()] for item in self.seen.values()]
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with gzip.open(temporary, "wt", compresslevel=1) as out:
            json.dump(document, out, separators=(",", ":"))
        os.replace(temporary, path)

    def load_local(self, path: Path) -> bool:
        """Load a copy written by save(); False (and an empty catalog) if it is missing or bad."""
        try:
            document = decode_catalog_file(str(path), path.read_bytes())
            state = CatalogState()
            state.merge_file("local", document)
            seen = {key: CatalogFile(key, datetime.fromisoformat(stamp))
                    for key, stamp in document.get("seen", [])}
        except (OSError, ValueError, FormatError, TypeError, EOFError) as exc:
            log.info("no usable local catalog copy at %s (%s)", path, exc)
            return False
        self.state, self.seen = state, seen
        return True


def load_catalog(store: Store) -> CatalogReader:
    """Read the locker's whole catalog (after checking its format)."""
    check_locker(store)
    reader = CatalogReader(store)
    reader.refresh()
    return reader


@dataclass
class CompactResult:
    snapshot_key: str
    tracks: int
    files_merged: int
    files_deleted: int


def compact(store: Store, grace: timedelta = timedelta(hours=1)) -> CompactResult:
    """Write a snapshot of the whole catalog, then delete merged files older than `grace`.

    Only files this compaction read are deleted, and only after its snapshot
    is stored, so no record is ever lost, whatever runs concurrently. The
    grace period lets readers that listed before the snapshot existed finish.
    """
    reader = load_catalog(store)
    snapshot_id = new_id()
    key = f"{SNAPSHOT_PREFIX}{snapshot_id}.json.gz"
    document = reader.state.to_snapshot(snapshot_id)
    store.put_bytes(key, gzip.compress(json.dumps(document, separators=(",", ":")).encode()))
    cutoff = datetime.now(timezone.utc) - grace
    deleted = 0
    for item in reader.seen.values():
        if item.last_modified < cutoff and item.key not in reader.corrupt:
            store.delete(item.key)
            deleted += 1
    return CompactResult(key, len(reader.tracks()), len(reader.seen), deleted)

