"""M3U playlists as people have them: which lines are entries, and what path each entry names.

An .m3u or .m3u8 is a list of lines: `#EXTM3U`, `#EXTINF:...` and other
`#` lines are directives or comments; every other non-blank line is an
entry. An entry is a path or a URL, written the way the machine that made
the playlist writes paths:

- POSIX: `Artist/Album/01 Song.flac` (relative to the playlist's folder),
  `/home/me/Music/...` (absolute);
- Windows: `Artist\\Album\\01 Song.mp3`, `..\\Album\\01.mp3`, `\\Music\\x.mp3`
  (the drive's root), `D:\\Music\\x.mp3`, `D:Music\\x.mp3` (relative to the
  drive's current folder), `\\\\server\\share\\x.mp3` (UNC);
- `file://` URLs: `file:///home/me/x.flac`, `file:///C:/Music/x.mp3`,
  `file://server/share/x.mp3`, percent-encoded;
- URLs of any other scheme (`http://`, `rtsp://`): a stream, not a file.

parse_entry turns an entry into an EntryPath (its components and how to
anchor them); lockerfs/trackpaths.py finds the uploaded file it names. Pure:
nothing here touches the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class EntryPath:
    """What an entry names, before it is looked up."""

    parts: tuple[str, ...]  # components in order; "." and ".." kept for the lookup to apply
    absolute: bool  # from a root (POSIX "/", a Windows drive or share) rather than the playlist's folder
    windows: bool  # written the Windows way: compared case-insensitively; an absolute one names another disk


def entries(text: str) -> list[str]:
    """The playlist's entries in order: every line that is neither blank nor a `#` directive/comment."""
    found = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            found.append(entry)
    return found


def parse_entry(entry: str) -> EntryPath | None:
    """The path an entry names; None for a URL that names no file (a stream)."""
    if _URL.match(entry):
        return _file_url(entry)
    if _DRIVE.match(entry) or entry.startswith("\\\\"):
        return _windows(entry)
    if "\\" in entry and "/" not in entry:
        # "Album\01.mp3": a Windows path (a POSIX name may hold "\" too: the lookup tries it as one first)
        return _windows(entry)
    return EntryPath(_split(entry, "/"), entry.startswith("/"), False)


def literal(entry: str) -> EntryPath:
    """The entry read as one POSIX path, backslashes and all (a Linux file may be named "a\\b.flac")."""
    return EntryPath(_split(entry, "/"), entry.startswith("/"), False)


def _windows(entry: str) -> EntryPath:
    if entry.startswith("\\\\"):  # \\server\share\folder\file: the share is the root
        return EntryPath(_split(entry[2:], "\\/"), True, True)
    if _DRIVE.match(entry):
        # "D:\x" is absolute; "D:x" is relative to D:'s current folder, which only that
        # machine knew: both name a place on another disk, found by the same search
        return EntryPath(_split(entry[2:], "\\/"), True, True)
    return EntryPath(_split(entry, "\\/"), entry[:1] in ("\\", "/"), True)


def _file_url(entry: str) -> EntryPath | None:
    url = urlsplit(entry)
    if url.scheme.lower() != "file":
        return None
    path = unquote(url.path, errors="surrogateescape")
    if url.netloc and url.netloc.lower() != "localhost":  # file://server/share/x: a Windows share
        return EntryPath((unquote(url.netloc), *_split(path, "/")), True, True)
    if re.match(r"^/[A-Za-z]:", path):  # file:///C:/Music/x.mp3
        return EntryPath(_split(path[3:], "/\\"), True, True)
    return EntryPath(_split(path, "/"), True, False)


def _split(path: str, separators: str) -> tuple[str, ...]:
    """Components, without the empty ones that doubled or leading/trailing separators leave."""
    for separator in separators[1:]:
        path = path.replace(separator, separators[0])
    return tuple(part for part in path.split(separators[0]) if part)
