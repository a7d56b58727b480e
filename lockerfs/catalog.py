"""The locker's catalog: an append-only log of records in the bucket.

Layout under the locker prefix (docs/FORMAT.md has every field):

    locker.json                          {"format": "lockerfs", "version": 1}
    catalog/journal/<id>.json            track records (add/remove), format version 1
    catalog/snapshot/<id>.json.gz        every track's latest record, compacted, version 1
    catalog/journal2/<id>.json           format 2 records: assets, playlists, removal details
    catalog/snapshot2/<id>.json.gz       their compacted form, version 2

Format 2 puts its new record kinds in files of their own (journal2/,
snapshot2/) that version 1 never lists: a version 1 mount keeps running and
showing tracks, a version 1 compactor never drops records it cannot read,
and nobody is forced to upgrade (docs/FORMAT.md, "Versions").

An <id> is `<13-digit milliseconds>-<16 random hex digits>`: sortable by time,
and no two writers pick the same one, so concurrent writers never overwrite
each other and need neither locks nor conditional writes.

Each record carries a stamp (file id, index in the file). The catalog is,
per record kind, a map id -> newest-stamped record (add or tombstone):
tracks by sha256, assets by their id, playlists by their folded name.
Merging those maps is commutative, associative and idempotent, so a reader
may apply snapshots and journal files in any order, any number of times,
and always gets the same catalog. That is what makes compaction safe without
coordination: a compactor writes snapshots of everything it read, and only
then deletes what it read (and only what is older than a grace period, for
readers still listing).

Everything read from the bucket is untrusted: records are validated field by
field and a bad one is skipped with a warning, never allowed to crash or
mislead the mount. The record builders below (the writer API) validate with
the same code, so a writer cannot write what a reader would refuse.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import secrets
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

from lockerfs import columnar
from lockerfs.durable import write_atomically
from lockerfs.asset import SHA_RE, Asset, asset_from_dict, asset_to_dict, object_key
from lockerfs.insets import inset_from_dict, inset_to_dict
from lockerfs.playlist import Playlist, playlist_from_dict, playlist_key, playlist_name, playlist_to_dict
from lockerfs.store import NotFound, Store
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo
from lockerfs.tracktable import Entry, TrackTable  # noqa: F401 - Entry: catalog.Entry, as before

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # the newest catalog format this code reads and writes
TRACK_FORMAT_VERSION = 1  # files of track records only: what version 1 reads
EXTRAS_FORMAT_VERSION = 2  # journal2/ and snapshot2/: the record kinds format 2 added
COLUMNAR_FORMAT_VERSION = columnar.VERSION  # snapshot3/ and the local catalog copy
LOCKER_VERSION = 1  # locker.json: the oldest lockerfs that may read and write this locker
LOCKER_KEY = "locker.json"
CATALOG_PREFIX = "catalog/"
JOURNAL_PREFIX = "catalog/journal/"
SNAPSHOT_PREFIX = "catalog/snapshot/"
JOURNAL2_PREFIX = "catalog/journal2/"
SNAPSHOT2_PREFIX = "catalog/snapshot2/"
SNAPSHOT3_PREFIX = "catalog/snapshot3/"  # the columnar snapshot (format 3) of what snapshot/ and snapshot2/ hold
# Listing these prefixes (no trailing slash) finds journal/ and journal2/ in one
# request, and snapshot/ and snapshot2/ in another: all journals are listed
# before all snapshots, as the compaction rule needs.
_LISTED = ("catalog/journal", "catalog/snapshot")
_FOLDERS = frozenset({"journal", "journal2", "snapshot", "snapshot2", "snapshot3"})
MAX_CHAIN = 64  # replacements followed from a removed track to its successor

MAX_CATALOG_FILE_BYTES = 512 * 1024 * 1024  # refuse to inflate a snapshot past this
MAX_OBJECT_SIZE = 1 << 40
MAX_TEXT = 1024
_ID_RE = re.compile(r"^\d{13}-[0-9a-f]{16}$")
_SHA_RE = SHA_RE
_EXT_RE = re.compile(r"^[a-z0-9]{1,8}$")

Stamp = tuple[str, int]
T = TypeVar("T")


class FormatError(Exception):
    """The locker cannot be read by this version of lockerfs, or is not a locker."""


class CorruptCatalogFile(FormatError):
    """One catalog file cannot be decoded; readers skip it (with a warning) and go on."""


_last_millis = 0
_id_lock = threading.Lock()


def new_id(now: float | None = None) -> str:
    """A time-sortable id that no other writer will choose.

    Ids this process makes for the current time increase strictly: two ids of
    one millisecond would otherwise be ordered by their random part, and a
    record written right after another could lose to it."""
    global _last_millis
    if now is not None:
        return f"{int(now * 1000):013d}-{secrets.token_hex(8)}"
    with _id_lock:
        _last_millis = max(int(time.time() * 1000), _last_millis + 1)
        millis = _last_millis
    return f"{millis:013d}-{secrets.token_hex(8)}"


# --- the locker marker --------------------------------------------------------

def ensure_locker(store: Store) -> None:
    """Create locker.json if it is missing; refuse a locker of a newer format.

    Two writers creating it at once write equivalent content, so the race is
    harmless without conditional writes.
    """
    try:
        check_locker(store)
    except NotFound:
        marker = {"format": "lockerfs", "version": LOCKER_VERSION,
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
    record = {"sha256": track.sha256, "key": track.key, "size": track.size, "ext": track.ext,
              "source": track.source, "mtime": track.mtime,
              "info": {name: value for name in _INFO_NAMES if (value := getattr(info, name)) is not None}}
    if track.art is not None:
        record["art"] = inset_to_dict(track.art)
    return record


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
                 mtime=float(mtime), info=info, art=inset_from_dict(record.get("art"), size))


# --- the writer API: records, validated as a reader will validate them ------------------

def add_record(track: Track) -> dict[str, Any]:
    """Add (or replace) a track. Raises ValueError for a track no reader would accept."""
    record = {"op": "add", "track": track_to_dict(track)}
    track_from_dict(record["track"])
    return record


def remove_record(sha256: str, *, replaced_by: str | None = None, track: Track | None = None) -> dict[str, Any]:
    """Remove a track. Format 2 details, for `lockerfs tag` and `restore`: `replaced_by` names
    the track that takes its place (its assets and playlist entries follow it there),
    and `track` keeps the removed record so it can be added back. A remove carrying
    details is written to both namespaces (see append_records)."""
    record: dict[str, Any] = {"op": "remove", "sha256": _checked_sha(sha256, "sha256")}
    if replaced_by is not None:
        if _checked_sha(replaced_by, "replaced_by") == sha256:
            raise ValueError("a track cannot be replaced by itself")
        record["replaced_by"] = replaced_by
    if track is not None:
        if track.sha256 != sha256:
            raise ValueError("the removed track's record must have the removed sha256")
        record["track"] = add_record(track)["track"]
    return record


def asset_record(asset: Asset) -> dict[str, Any]:
    """Add (or replace, by asset.id) an asset. Its object must be stored first."""
    return {"op": "asset", "asset": asset_to_dict(asset_from_dict(asset_to_dict(asset)))}


def remove_asset_record(asset_id: str) -> dict[str, Any]:
    return {"op": "remove_asset", "id": _checked_sha(asset_id, "asset id")}


def playlist_record(playlist: Playlist) -> dict[str, Any]:
    """Add a playlist, replacing any of the same name (compared case-insensitively, after NFC).

    Normalized on the way: entries a reader would drop are dropped here, so
    the record says exactly what every reader will see."""
    return {"op": "playlist", "playlist": playlist_to_dict(playlist_from_dict(playlist_to_dict(playlist)))}


def remove_playlist_record(name: str) -> dict[str, Any]:
    return {"op": "remove_playlist", "name": playlist_name(name)}


def _checked_sha(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SHA_RE.match(value):
        raise ValueError(f"bad {what}: not 64 lower-case hex digits")
    return value


# --- the merged catalog ---------------------------------------------------------

@dataclass(slots=True)
class Versioned(Generic[T]):
    """The newest record of one asset or playlist; value None: removed (a tombstone)."""

    stamp: Stamp
    value: T | None


@dataclass(frozen=True, slots=True)
class Removal:
    """What a format 2 remove record says beyond "gone". It describes the track's current
    state only while its stamp is the track entry's stamp (a later add or remove wins)."""

    stamp: Stamp
    replaced_by: str | None  # the track that took this one's place (`lockerfs tag`)
    track: Track | None  # the removed record, for `lockerfs restore`


@dataclass(frozen=True, slots=True)
class PlacedAsset:
    asset: Asset
    stamp: Stamp
    tracks: tuple[str, ...]  # the live tracks it belongs to now, replacements followed; never empty
    files: tuple[tuple[str, str | None], ...] = ()  # a cue sheet's FILE names -> live track now (or None)


@dataclass(frozen=True, slots=True)
class PlacedPlaylist:
    playlist: Playlist
    stamp: Stamp
    tracks: tuple[str | None, ...]  # per entry, the live track it leads to now; None: not in the locker


@dataclass
class Library:
    """What the catalog says now, resolved: live tracks, and the assets and playlists
    that lead to them. The mount lays this out; nothing in it needs the bucket."""

    tracks: list[Track]
    assets: list[PlacedAsset]
    playlists: list[PlacedPlaylist]


@dataclass
class CatalogState:
    """Per record kind, id -> newest-stamped record. Merging is order-independent (last writer wins)."""

    entries: TrackTable = field(default_factory=TrackTable)  # tracks, by sha256, in columns
    removals: dict[str, Removal] = field(default_factory=dict)  # remove details, by sha256
    assets: dict[str, Versioned[Asset]] = field(default_factory=dict)  # by asset id
    playlists: dict[str, Versioned[Playlist]] = field(default_factory=dict)  # by playlist_key(name)
    rejected: int = 0  # records skipped as invalid

    def apply(self, stamp: Stamp, record: Any) -> None:
        try:
            self._apply(stamp, record)
        except ValueError as exc:
            self.rejected += 1
            log.warning("skipping an invalid catalog record (%s)", exc)

    def _apply(self, stamp: Stamp, record: Any) -> None:
        if not isinstance(record, dict):
            raise ValueError("record is not an object")
        op = record.get("op")
        if op == "add":
            track = track_from_dict(record.get("track"))
            self.entries.put(track.sha256, stamp, track)
        elif op == "remove":
            sha, removal = _parse_remove(stamp, record)
            self.entries.put(sha, stamp, None)
            if removal is not None:
                current = self.removals.get(sha)
                if current is None or current.stamp < stamp:
                    self.removals[sha] = removal
        elif op == "asset":
            asset = asset_from_dict(record.get("asset"))
            _put_versioned(self.assets, asset.id, stamp, asset)
        elif op == "remove_asset":
            _put_versioned(self.assets, _checked_sha(record.get("id"), "asset id"), stamp, None)
        elif op == "playlist":
            playlist = playlist_from_dict(record.get("playlist"))
            _put_versioned(self.playlists, playlist_key(playlist.name), stamp, playlist)
        elif op == "remove_playlist":
            _put_versioned(self.playlists, playlist_key(playlist_name(record.get("name"))), stamp, None)
        else:
            raise ValueError(f"unknown op {str(op)[:40]!r}")

    def merge_file(self, file_id: str, document: dict[str, Any] | columnar.Decoded) -> None:
        """Apply a journal file or snapshot document (validated here)."""
        if isinstance(document, columnar.Decoded):
            self.entries.merge_columns(document.shas, document.columns, document.header["files"],
                                       document.rejected)
            self.rejected += len(document.rejected) + document.bad_assets
            for stamp, asset in document.assets:
                _put_versioned(self.assets, asset.id, stamp, asset)
            self._merge_entries(file_id, document.other)
            return
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
            self._merge_entries(file_id, entries)
        else:
            raise CorruptCatalogFile(f"catalog file {file_id} is of unknown kind {kind!r}")

    def _merge_entries(self, file_id: str, entries: list[Any]) -> None:
        """Apply a snapshot's entries: each a record with the stamp it was first written under."""
        for item in entries:
            stamp = item.get("stamp") if isinstance(item, dict) else None
            if (not isinstance(stamp, list) or len(stamp) != 2 or not isinstance(stamp[0], str)
                    or not isinstance(stamp[1], int)):
                self.rejected += 1
                continue
            self.apply((stamp[0], stamp[1]), item.get("record"))

    def tracks(self) -> list[Track]:
        return self.entries.tracks()

    # --- following removals ---------------------------------------------------------

    def current(self, sha256: str) -> str | None:
        """The live track that stands for sha256 now: itself, or the end of its chain of
        replacements; None if it (or where its chain leads) is not in the locker."""
        seen: set[str] = set()
        sha = sha256
        entries = self.entries
        while len(seen) < MAX_CHAIN:
            row = entries.row(sha)
            if row is None:
                return None
            if entries.live[row]:
                return sha
            successor = self._current_removal(sha)
            if successor is None or successor.replaced_by is None:
                return None
            seen.add(sha)
            sha = successor.replaced_by
            if sha in seen:
                return None  # a cycle of removed tracks: nothing live at its end
        return None

    def restorable(self) -> list[Track]:
        """Removed tracks `lockerfs restore` can add back: their removal kept their record,
        and nothing took their place (`lockerfs tag`'s removals name a replacement)."""
        found = []
        for sha in self.removals:
            removal = self._current_removal(sha)
            if removal is not None and removal.track is not None and removal.replaced_by is None:
                found.append(removal.track)
        return found

    def removed_track(self, sha256: str) -> Track | None:
        """The record of a removed track as its removal kept it (for `lockerfs restore`)."""
        removal = self._current_removal(sha256)
        return removal.track if removal is not None else None

    def _current_removal(self, sha: str) -> Removal | None:
        removal = self.removals.get(sha)
        if removal is None:
            return None
        row = self.entries.row(sha)
        if row is None or self.entries.live[row] or removal.stamp != self.entries.stamp(row):
            return None
        return removal

    def library(self) -> Library:
        """Live tracks, and the live assets and playlists resolved to live tracks."""
        assets = []
        for versioned in self.assets.values():
            asset = versioned.value
            if asset is None:
                continue
            live = {sha for sha in map(self.current, asset.tracks) if sha is not None}
            if live:  # an asset vanishes with the last of its tracks
                files = tuple((name, self.current(sha)) for name, sha in asset.cue.files) if asset.cue else ()
                assets.append(PlacedAsset(asset, versioned.stamp, tuple(sorted(live)), files))
        playlists = [PlacedPlaylist(versioned.value, versioned.stamp,
                                    tuple(self.current(entry.sha256) if entry.sha256 else None
                                          for entry in versioned.value.entries))
                     for versioned in self.playlists.values() if versioned.value is not None]
        return Library(self.tracks(), assets, playlists)

    # --- snapshots ------------------------------------------------------------------

    def to_columnar(self, snapshot_id: str, extra_header: dict[str, Any] | None = None, level: int = 6) -> bytes:
        """Everything as one columnar snapshot (snapshot3/, and the local catalog copy)."""
        assets = [(versioned.stamp, versioned.value) for _, versioned in sorted(self.assets.items())
                  if versioned.value is not None and versioned.value.role in columnar.ROLE_CODES]
        return columnar.encode(self.entries, snapshot_id, assets, self._other_entries(in_columns=True),
                               extra_header, level)

    def snapshots(self, snapshot_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The compacted catalog as two documents: the tracks (format 1, for snapshot/) and
        everything format 2 added (for snapshot2/). Together they hold every current record."""
        entries = self.entries
        track_entries = []
        for row in sorted(range(len(entries.shas)), key=entries.shas.__getitem__):
            sha = entries.shas[row]
            record = ({"op": "add", "track": track_to_dict(entries.track(row))} if entries.live[row]  # valid: read
                      else {"op": "remove", "sha256": sha})
            track_entries.append({"stamp": list(entries.stamp(row)), "record": record})
        return ({"kind": "snapshot", "version": TRACK_FORMAT_VERSION, "id": snapshot_id, "entries": track_entries},
                {"kind": "snapshot", "version": EXTRAS_FORMAT_VERSION, "id": snapshot_id,
                 "entries": self._other_entries()})

    def _other_entries(self, in_columns: bool = False) -> list[dict[str, Any]]:
        """Snapshot entries of everything but the tracks: current removal details, assets, playlists
        (`in_columns`: but the assets a columnar snapshot holds in columns)."""
        extra_entries = []
        for sha in sorted(self.removals):
            removal = self._current_removal(sha)
            if removal is not None:  # the details; stale ones (a later add or remove) are dropped
                detailed: dict[str, Any] = {"op": "remove", "sha256": sha}
                if removal.replaced_by is not None:
                    detailed["replaced_by"] = removal.replaced_by
                if removal.track is not None:
                    detailed["track"] = track_to_dict(removal.track)
                extra_entries.append({"stamp": list(removal.stamp), "record": detailed})
        for ident, versioned in sorted(self.assets.items()):
            if in_columns and versioned.value is not None and versioned.value.role in columnar.ROLE_CODES:
                continue
            record = ({"op": "asset", "asset": asset_to_dict(versioned.value)} if versioned.value is not None
                      else {"op": "remove_asset", "id": ident})
            extra_entries.append({"stamp": list(versioned.stamp), "record": record})
        for key, playlist in sorted(self.playlists.items()):
            record = ({"op": "playlist", "playlist": playlist_to_dict(playlist.value)} if playlist.value is not None
                      else {"op": "remove_playlist", "name": key})
            extra_entries.append({"stamp": list(playlist.stamp), "record": record})
        return extra_entries


def _put_versioned(table: dict[str, Versioned[T]], key: str, stamp: Stamp, value: T | None) -> None:
    current = table.get(key)
    if current is None or current.stamp < stamp:
        table[key] = Versioned(stamp, value)


def _parse_remove(stamp: Stamp, record: dict[str, Any]) -> tuple[str, Removal | None]:
    """A remove record's sha256 and its format 2 details; a bad detail is dropped, not the removal."""
    sha = record.get("sha256")
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise ValueError("bad sha256 in remove record")
    replaced_by = record.get("replaced_by")
    if not (isinstance(replaced_by, str) and _SHA_RE.match(replaced_by) and replaced_by != sha):
        replaced_by = None
    track = None
    if record.get("track") is not None:
        try:
            track = track_from_dict(record["track"])
        except ValueError:
            track = None
        if track is not None and track.sha256 != sha:
            track = None
    if replaced_by is None and track is None:
        return sha, None
    return sha, Removal(stamp, replaced_by, track)


# --- reading and writing catalog files ---------------------------------------------

def _file_id(key: str) -> str | None:
    name = key.rsplit("/", 1)[-1]
    stem = name.split(".", 1)[0]
    return stem if _ID_RE.match(stem) else None


def decode_catalog_file(key: str, raw: bytes) -> dict[str, Any] | columnar.Decoded:
    """Parse (and for snapshots, inflate with a size cap) one catalog file."""
    if key.startswith(SNAPSHOT3_PREFIX) or columnar.is_columnar(raw):
        try:
            return columnar.decode(raw, MAX_CATALOG_FILE_BYTES, lambda version: _check_version(version, key))
        except columnar.ColumnError as exc:
            raise CorruptCatalogFile(f"{key}: {exc}") from None
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


def append_records(store: Store, records: list[dict[str, Any]], written: list[str] | None = None) -> list[str]:
    """Write `records` as journal files; returns their keys. Callers must have stored
    every object the records point at first. `written`, if given, gets each key as soon
    as its file is stored, so that a caller can tell what a failure left behind.

    Records version 1 reads (track adds, plain removes) go to journal/, the
    rest to journal2/, which version 1 never lists. A remove with format 2
    details goes to both: a plain copy to journal/ (so version 1 mounts drop
    the track), then the whole record to journal2/ under a later id (new_id
    increases strictly), so it is the newest record of that track. Every record is validated before
    anything is written: a bad one raises ValueError and nothing is stored.
    """
    for index, record in enumerate(records):
        try:
            CatalogState()._apply(("", 0), record)
        except ValueError as exc:
            raise ValueError(f"catalog record {index} is invalid: {exc}") from None
    tracks: list[dict[str, Any]] = []
    extras: list[dict[str, Any]] = []
    for record in records:
        if record["op"] == "add":
            tracks.append(record)
        elif record["op"] == "remove":
            tracks.append({"op": "remove", "sha256": record["sha256"]})
            if "replaced_by" in record or "track" in record:
                extras.append(record)
        else:
            extras.append(record)
    keys = written if written is not None else []
    for prefix, version, batch in ((JOURNAL_PREFIX, TRACK_FORMAT_VERSION, tracks),
                                   (JOURNAL2_PREFIX, EXTRAS_FORMAT_VERSION, extras)):
        if batch:
            file_id = new_id()
            key = f"{prefix}{file_id}.json"
            document = {"kind": "journal", "version": version, "id": file_id, "records": batch}
            store.put_bytes(key, json.dumps(document, separators=(",", ":")).encode())
            keys.append(key)
    return keys


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
            listed = [item for prefix in _LISTED for item in self._list(prefix)]
            new = [item for item in listed if item.key not in self.seen]
            vanished = self._apply_all(new)
            changed = changed or len(new) > len(vanished)
            if not vanished:
                break
            log.info("%d catalog files vanished while reading (compaction); listing again", len(vanished))
        return changed

    def apply_keys(self, keys: list[str]) -> bool:
        """Fetch and apply the named catalog files (ones a command just wrote) without
        listing; True if the catalog changed. Keys that are not catalog files are refused."""
        for key in keys:
            folder = key[len(CATALOG_PREFIX):].partition("/")[0] if key.startswith(CATALOG_PREFIX) else ""
            if folder not in _FOLDERS or _file_id(key) is None:
                raise ValueError(f"not a catalog file: {key[:200]!r}")
        now = datetime.now(timezone.utc)
        new = [CatalogFile(key, now) for key in dict.fromkeys(keys) if key not in self.seen]
        return len(new) > len(self._apply_all(new))

    def _list(self, prefix: str) -> Iterator[CatalogFile]:
        for item in self.store.list(prefix):
            folder = item.key[len(CATALOG_PREFIX):].partition("/")[0]
            if folder in _FOLDERS and _file_id(item.key) is not None:  # journal3/ is not ours to read
                yield CatalogFile(item.key, item.last_modified)

    def _apply_all(self, files: list[CatalogFile]) -> list[CatalogFile]:
        """Apply the columnar snapshots first: the JSON snapshots written with the same id
        hold nothing more, so they count as applied without being fetched."""
        columns = [item for item in files if item.key.startswith(SNAPSHOT3_PREFIX)]
        vanished = self._fetch_and_apply(columns)
        covered = {_file_id(key) for key in self.seen if key.startswith(SNAPSHOT3_PREFIX) and key not in self.corrupt}
        rest = []
        for item in files:
            if item.key.startswith(SNAPSHOT3_PREFIX):
                continue
            if item.key.startswith((SNAPSHOT_PREFIX, SNAPSHOT2_PREFIX)) and _file_id(item.key) in covered:
                self.seen[item.key] = item
            else:
                rest.append(item)
        return vanished + self._fetch_and_apply(rest)

    def _fetch_and_apply(self, files: list[CatalogFile]) -> list[CatalogFile]:
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
        """Write the merged catalog (a columnar snapshot) and the list of applied files,
        atomically and durably.

        Temp file, fsync, rename, fsync of the folder: a crash or a power cut at
        any moment leaves either the previous copy or this one, whole. The columns
        are written as the table holds them (C-level copies, zlib without the GIL);
        only the text columns take a pass in Python, during which the mount's
        threads take turns with this one at the interpreter's switch interval.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        seen = [[item.key, item.last_modified.isoformat()] for item in self.seen.values()]
        write_atomically(path, lambda out: out.write(self.state.to_columnar("local", {"seen": seen}, level=1)))

    def load_local(self, path: Path) -> bool:
        """Load a copy written by save(); False (and an empty catalog) if it is missing or bad."""
        try:
            document = decode_catalog_file(str(path), path.read_bytes())
            state = CatalogState()
            state.merge_file("local", document)
            listed = document.header.get("seen", []) if isinstance(document, columnar.Decoded) else document.get("seen", [])
            seen = {key: CatalogFile(key, datetime.fromisoformat(stamp)) for key, stamp in listed}
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
    extras_key: str | None = None  # the snapshot2/ file, when there is anything format 2 to keep
    columns_key: str | None = None  # the snapshot3/ file: everything, in columns
    assets: int = 0
    playlists: int = 0


def compact(store: Store, grace: timedelta = timedelta(hours=1)) -> CompactResult:
    """Write snapshots of the whole catalog, then delete merged files older than `grace`.

    Only files this compaction read are deleted, and only after its snapshots
    are stored, so no record is ever lost, whatever runs concurrently. The
    grace period lets readers that listed before the snapshots existed finish.
    Tracks go to snapshot/ (format 1, so version 1 readers keep reading them),
    everything else to snapshot2/.
    """
    reader = load_catalog(store)
    snapshot_id = new_id()
    tracks, extras = reader.state.snapshots(snapshot_id)
    key = f"{SNAPSHOT_PREFIX}{snapshot_id}.json.gz"
    store.put_bytes(key, gzip.compress(json.dumps(tracks, separators=(",", ":")).encode()))
    extras_key = None
    if extras["entries"]:
        extras_key = f"{SNAPSHOT2_PREFIX}{snapshot_id}.json.gz"
        store.put_bytes(extras_key, gzip.compress(json.dumps(extras, separators=(",", ":")).encode()))
    # Last: a reader that finds it skips the two above, so they must exist before it does.
    columns_key = f"{SNAPSHOT3_PREFIX}{snapshot_id}.columns.gz"
    store.put_bytes(columns_key, reader.state.to_columnar(snapshot_id))
    cutoff = datetime.now(timezone.utc) - grace
    deleted = 0
    for item in reader.seen.values():
        if item.last_modified < cutoff and item.key not in reader.corrupt:
            store.delete(item.key)
            deleted += 1
    state = reader.state
    return CompactResult(key, state.entries.live_count, len(reader.seen), deleted, extras_key, columns_key,
                         sum(v.value is not None for v in state.assets.values()),
                         sum(v.value is not None for v in state.playlists.values()))
