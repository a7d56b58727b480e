"""From a path on this machine to the track uploaded from it: what playlists and cue sheets need.

A playlist entry or a cue sheet's FILE line names a file by its path; the
catalog names tracks by SHA-256. The local upload state knows path, size,
mtime and SHA-256 of every file recorded, by this run (looked up once its
tracks are recorded) or an earlier one: the file must still be the one that
was uploaded, and its track still known to the catalog. A file it does not
know was never uploaded (missing, outside the folders given, not audio): the
entry is kept unresolved and reported.

Windows wrote most playlists: names compare case-insensitively there, and
an absolute path (`D:\\Music\\Artist\\Album\\01.mp3`) names a disk that is
now mounted somewhere else. EntryResolver re-roots such a path's folder by
trying its tails (`Music\\Artist\\Album`, then `Artist\\Album`, ...) below
the playlist's folder, each folder above it and the folders given to
upload, longest tail first, and remembers what it found per folder, so the
rest of a playlist costs one lookup per entry.
"""

from __future__ import annotations

import os
import posixpath
import stat as stat_module
import unicodedata
from collections.abc import Callable
from pathlib import Path

from lockerfs.m3u import EntryPath, literal, parse_entry
from lockerfs.sidefiles import fold_name as fold

MAX_SEARCH_PARTS = 16  # tails of a foreign absolute path tried, and folders above the playlist

_AMBIGUOUS = ""  # two names that differ only in case: no case-insensitive match


def nfc(path: str) -> str:
    return unicodedata.normalize("NFC", path)




class TrackPaths:
    """path -> sha256 of the track uploaded from it, by this run or an earlier one (the local state)."""

    def __init__(self, state_sha: Callable[[Path, os.stat_result], str | None], known: Callable[[str], bool]) -> None:
        """state_sha: the local state's lookup (UploadState.known_sha), which knows this run's
        files too once they are recorded; known: whether the catalog holds a track."""
        self._state_sha = state_sha
        self._known = known
        self._listings: dict[str, tuple[dict[str, str], dict[str, str]]] = {}

    def find(self, path: str, fold_case: bool = False) -> str | None:
        """The track uploaded from `path` (absolute, normalized); None if none was."""
        real = self.on_disk(path, fold_case)
        return self._from_state(real) if real is not None else None

    def on_disk(self, path: str, fold_case: bool = False) -> str | None:
        """The path of the file on disk as it is spelled there, or None if there is none.
        Names match after NFC (a Mac wrote NFD), and case-insensitively if `fold_case`."""
        try:
            if os.path.lexists(path):
                return path
        except ValueError:  # a NUL, from a hostile playlist
            return None
        real = "/"
        for part in path.split("/"):
            if not part:
                continue
            exact, folded = self._listing(real)
            match = exact.get(nfc(part)) or (folded.get(fold(part)) if fold_case else None)
            if not match:
                return None
            real = posixpath.join(real, match)
        return real

    def _from_state(self, path: str) -> str | None:
        try:
            stat = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat_module.S_ISREG(stat.st_mode):
            return None
        sha = self._state_sha(Path(path), stat)
        return sha if sha is not None and self._known(sha) else None

    def _listing(self, folder: str) -> tuple[dict[str, str], dict[str, str]]:
        """A folder's names by NFC and by folded spelling (cached: a playlist's entries share folders)."""
        cached = self._listings.get(folder)
        if cached is None:
            try:
                names = os.listdir(folder)
            except (OSError, ValueError):
                names = []
            exact: dict[str, str] = {}
            folded: dict[str, str] = {}
            for name in names:
                for table, key in ((exact, nfc(name)), (folded, fold(name))):
                    table[key] = _AMBIGUOUS if key in table else name
            cached = self._listings[folder] = (exact, folded)
        return cached


class EntryResolver:
    """Playlist entries and cue FILE names -> tracks, relative to the folder of the file naming them."""

    def __init__(self, paths: TrackPaths, roots: list[str] | None = None) -> None:
        """roots: the folders given to upload, where a foreign path's tail is looked for too."""
        self.paths = paths
        self._roots = list(dict.fromkeys(roots or []))
        self._folders: dict[tuple[tuple[str, ...], str], str | None] = {}  # (folded foreign folder, base) -> here

    def resolve(self, entry: str, base: str) -> tuple[str | None, str]:
        """(sha256, "") for an entry that leads to an uploaded track; else (None, why not)."""
        parsed = parse_entry(entry)
        if parsed is None:
            return None, "a stream URL, not a file"
        tried: list[tuple[str, bool]] = []
        if parsed.windows and not parsed.absolute and "/" not in entry:
            sha = self._at(literal(entry), base, tried)  # a Linux file name may hold a backslash
            if sha is not None:
                return sha, ""
        if parsed.windows and parsed.absolute:
            sha = self._foreign(parsed, base, tried)
        else:
            sha = self._at(parsed, base, tried)
        if sha is not None:
            return sha, ""
        if any(self.paths.on_disk(path, fold_case) for path, fold_case in tried):
            return None, "not uploaded (outside the folders given, or not audio)"
        return None, "no such file"

    def _at(self, path: EntryPath, base: str, tried: list[tuple[str, bool]]) -> str | None:
        candidate = posixpath.normpath(posixpath.join("/" if path.absolute else base, *path.parts))
        tried.append((candidate, path.windows))
        return self.paths.find(candidate, path.windows)

    def _foreign(self, path: EntryPath, base: str, tried: list[tuple[str, bool]]) -> str | None:
        """An absolute Windows path: the same file name in the folder here that the longest
        tail of its folder path leads to, below the playlist's folder, a folder above it, or
        a folder given to upload (found once per folder of the playlist)."""
        if not path.parts or any(part in (".", "..") for part in path.parts):
            return None
        folder, name = path.parts[:-1], path.parts[-1]
        key = (tuple(fold(part) for part in folder), base)
        if key not in self._folders:
            self._folders[key] = self._find_folder(folder, base)
        local = self._folders[key]
        if local is None:
            return None
        candidate = posixpath.join(local, name)
        tried.append((candidate, True))
        return self.paths.find(candidate, True)

    def _find_folder(self, folder: tuple[str, ...], base: str) -> str | None:
        anchors = [base]
        while anchors[-1] != "/" and len(anchors) < MAX_SEARCH_PARTS:
            anchors.append(posixpath.dirname(anchors[-1]))
        anchors += [root for root in self._roots if root not in anchors]
        for skip in range(max(0, len(folder) - MAX_SEARCH_PARTS), len(folder)):
            for anchor in anchors:
                found = self.paths.on_disk(posixpath.join(anchor, *folder[skip:]), fold_case=True)
                if found is not None and os.path.isdir(found):
                    return found
        return None if folder else base  # a file at a drive's root: beside the playlist, if anywhere
