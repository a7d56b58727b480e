"""Playlists as the catalog records them: a name, where the file came from, its entries in order.

Each entry was resolved to a track (by SHA-256) when the playlist was
uploaded, or kept unresolved with the line the file had, so nothing the
user wrote is lost and the mount can show it as a comment. A playlist is
identified by its name compared as a case-insensitive client compares
names (NFC, case-folded): uploading "Road Trip.m3u" again, or "road
trip.m3u8" from elsewhere, replaces it.

playlist_from_dict validates untrusted records (and is what the writers
use too); it raises ValueError saying what is wrong.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from lockerfs.asset import (MAX_NAME, MAX_SOURCE, SHA_RE, StoredObject, clean_mtime, clean_text, object_from_dict,
                            object_to_dict)

MAX_ENTRIES = 100_000
MAX_LINE = 4096


@dataclass(frozen=True, slots=True)
class PlaylistEntry:
    sha256: str | None  # the track it was resolved to at upload; None: not resolved
    line: str = ""  # the entry as the playlist file had it (always kept for unresolved ones)


@dataclass(frozen=True, slots=True)
class Playlist:
    name: str  # shown as <name>.m3u8; unique by playlist_key
    source: str  # the playlist file's path relative to the folder given to upload
    entries: tuple[PlaylistEntry, ...]
    mtime: float = 0.0
    object: StoredObject | None = None  # the uploaded file itself, byte for byte, if the writer kept it


def playlist_key(name: str) -> str:
    """The identity of a playlist name: NFC, case-folded, as a case-insensitive client compares."""
    key = unicodedata.normalize("NFC", name)
    for _ in range(4):  # case-folding can undo NFC; repeat until it settles
        folded = unicodedata.normalize("NFC", key.casefold())
        if folded == key:
            break
        key = folded
    return key


def playlist_name(value: object) -> str:
    """A valid playlist name from untrusted input; raises ValueError if none is left."""
    name = clean_text(value, MAX_NAME)
    if not name:
        raise ValueError("a playlist needs a name")
    return name


def playlist_to_dict(playlist: Playlist) -> dict[str, Any]:
    entries = []
    for entry in playlist.entries:
        item: dict[str, str] = {}
        if entry.sha256:
            item["sha256"] = entry.sha256
        if entry.line:
            item["line"] = entry.line
        entries.append(item)
    record: dict[str, Any] = {"name": playlist.name, "source": playlist.source, "mtime": playlist.mtime,
                              "entries": entries}
    if playlist.object is not None:
        record["object"] = object_to_dict(playlist.object)
    return record


def playlist_from_dict(raw: Any) -> Playlist:
    """Validate an untrusted playlist record. A malformed entry is dropped, not the playlist."""
    if not isinstance(raw, dict):
        raise ValueError("playlist is not a JSON object")
    name = playlist_name(raw.get("name"))
    entries = raw.get("entries")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise ValueError(f"playlist entries must be a list of at most {MAX_ENTRIES}")
    kept = []
    for item in entries:
        entry = _entry(item)
        if entry is not None:
            kept.append(entry)
    obj = object_from_dict(raw["object"]) if raw.get("object") is not None else None
    return Playlist(name=name, source=clean_text(raw.get("source"), MAX_SOURCE), entries=tuple(kept),
                    mtime=clean_mtime(raw.get("mtime")), object=obj)


def _entry(item: Any) -> PlaylistEntry | None:
    if not isinstance(item, dict):
        return None
    sha = item.get("sha256")
    if sha is not None and not (isinstance(sha, str) and SHA_RE.match(sha)):
        return None
    line = clean_text(item.get("line"), MAX_LINE)  # one line: a comment can never become an entry
    if sha is None and not line:
        return None
    return PlaylistEntry(sha, line)
