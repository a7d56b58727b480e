"""The catalog's track entries in columns: one row per sha256 ever seen, add or tombstone.

A 300,000-track locker held as Track and TrackInfo objects costs about 1 KiB
a track and seconds of object creation on every mount. Here each field is a
column (arrays of machine numbers, lists of shared strings), a row costs
about 500 bytes, a snapshot's columns load without a Python object per
track, and a Track is made only when something asks for one (the file being
opened, a record being written).

Rows are never reused or removed: a removed track keeps its row as a
tombstone (live false), so a row number names one sha256 for the life of
the table and the layout and the tree may hold row numbers.

The table is also the Mapping sha256 -> Entry that CatalogState exposed
before (entries materialized on access), so code that reads single entries
is unchanged. `changed` collects the rows a merge changed, for the mount's
incremental refresh.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterator, Mapping
from typing import Any
from dataclasses import dataclass

from lockerfs.asset import object_key
from lockerfs.objectref import Inset, ObjectRef
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo

Stamp = tuple[str, int]

NONE = 0  # an unknown tag number; the columns hold value + 1, so that every stored number is >= 0
SHARED_TEXT = ("format", "codec", "artist", "albumartist", "album", "date", "genre")
NUMBERS = ("track", "tracktotal", "disc", "disctotal", "year", "bitrate", "sample_rate", "channels")
REGIONS = ("head_size", "tail_size")


_SIGN = bytes(0 if byte < 0x80 else 0xFF for byte in range(256))  # a top byte -> its sign extension
_NARROW = (("b", 1), ("h", 2), ("i", 4))


def narrowest(values: array[int]) -> array[int]:
    """A 64-bit column in the narrowest signed type that holds all its values (tag numbers
    fit a byte or two: 17 MB less at 300,000 tracks). Its bytes are copied plane by plane
    in C, no Python object per value; a later value that does not fit widens the column
    (TrackTable._put)."""
    if values.typecode != "q" or sys.byteorder != "little" or not values:
        return values
    lowest, highest = min(values), max(values)
    raw = memoryview(values).cast("B")
    for code, width in _NARROW:
        if -(1 << (8 * width - 1)) <= lowest and highest < 1 << (8 * width - 1):
            narrow = bytearray(len(values) * width)
            for plane in range(width):  # little-endian: the low bytes, the sign in the top one kept
                narrow[plane::width] = raw[plane::8]
            found = array(code)
            found.frombytes(narrow)
            return found
    return values


def widened(values: array[int]) -> array[int]:
    """A column as 64-bit numbers again (what the columnar file holds), sign extended in C."""
    if values.typecode == "q":
        return values
    if sys.byteorder != "little" or not values:
        return array("q", values)
    width, raw = values.itemsize, memoryview(values).cast("B")
    wide = bytearray(len(values) * 8)
    for plane in range(width):
        wide[plane::8] = raw[plane::width]
    sign = bytes(raw[width - 1::width]).translate(_SIGN)
    for plane in range(width, 8):
        wide[plane::8] = sign
    found = array("q")
    found.frombytes(wide)
    return found


@dataclass(slots=True)
class Entry:
    stamp: Stamp
    track: Track | None  # None: removed


class TrackTable(Mapping[str, Entry]):
    """Columns of track entries; see the module docstring."""

    def __init__(self) -> None:
        self.shas: list[str] = []
        self._rows: dict[str, int] = {}
        self.files: list[str] = []  # stamp file ids, each once
        self._file_index: dict[str, int] = {}
        self.stamp_file = array("I")
        self.stamp_pos = array("q")
        self.live = bytearray()
        self.size = array("q")
        self.mtime = array("d")
        self.ext: list[str] = []
        self.source: list[str] = []
        self.title: list[str | None] = []
        self.text: dict[str, list[str | None]] = {name: [] for name in SHARED_TEXT}
        self.numbers: dict[str, array[int]] = {name: array("q") for name in (*NUMBERS, *REGIONS)}
        self.duration = array("d")  # NaN: unknown
        self.compilation = bytearray()
        # a track's embedded cover held as its own object (Track.art): the object, shared by
        # the tracks of an album, and where the track holds it (-1: no such cover)
        self.art: list[ObjectRef | None] = []
        self.art_at = array("q")
        self._shared: dict[str, str] = {}
        self._art_objects: dict[str, ObjectRef] = {}
        self.changed: set[int] = set()  # rows changed since the last take_changed()
        self.live_count = 0

    # --- Mapping[str, Entry] --------------------------------------------------

    def __getitem__(self, sha: str) -> Entry:
        row = self._rows[sha]
        return Entry(self.stamp(row), self.track(row) if self.live[row] else None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self.shas)

    def __contains__(self, sha: object) -> bool:
        return sha in self._rows

    # --- rows -------------------------------------------------------------------

    def row(self, sha: str) -> int | None:
        return self._rows.get(sha)

    @property
    def rows_by_sha(self) -> Mapping[str, int]:
        """sha256 -> row, for loops that look up many (a call of row() each costs more)."""
        return self._rows

    def stamp(self, row: int) -> Stamp:
        return self.files[self.stamp_file[row]], self.stamp_pos[row]

    def is_live(self, sha: str) -> bool:
        row = self._rows.get(sha)
        return row is not None and bool(self.live[row])

    def live_rows(self) -> Iterator[int]:
        live = self.live
        return (row for row in range(len(live)) if live[row])

    def track(self, row: int) -> Track:
        """The Track of a live row (a tombstone's columns hold no record)."""
        sha, ext = self.shas[row], self.ext[row]
        numbers = self.numbers
        text = self.text

        def number(name: str) -> int | None:
            value = numbers[name][row]
            return None if value == NONE else value - 1

        duration = self.duration[row]
        info = TrackInfo(
            format=text["format"][row] or "", codec=text["codec"][row] or "",
            artist=text["artist"][row], albumartist=text["albumartist"][row], album=text["album"][row],
            title=self.title[row], track=number("track"), tracktotal=number("tracktotal"),
            disc=number("disc"), disctotal=number("disctotal"), date=text["date"][row], year=number("year"),
            genre=text["genre"][row], compilation=bool(self.compilation[row]),
            duration=None if math.isnan(duration) else duration, bitrate=number("bitrate"),
            sample_rate=number("sample_rate"), channels=number("channels"),
            head_size=numbers["head_size"][row], tail_size=numbers["tail_size"][row])
        return Track(sha256=sha, key=object_key(sha, ext), size=self.size[row], ext=ext,
                     source=self.source[row], mtime=self.mtime[row], info=info, art=self.inset(row))

    def inset(self, row: int) -> Inset | None:
        art = self.art[row]
        return None if art is None else Inset(self.art_at[row], art)

    def tracks(self) -> list[Track]:
        return [self.track(row) for row in self.live_rows()]

    def take_changed(self) -> set[int]:
        changed, self.changed = self.changed, set()
        return changed

    # --- merging ------------------------------------------------------------------

    def put(self, sha: str, stamp: Stamp, track: Track | None) -> bool:
        """Keep the record if it is newer than the row's; True if it was."""
        row = self._rows.get(sha)
        if row is None:
            if track is not None:  # the common case of a merge: a new track
                self._append_track(sha, stamp, track)
                return True
            row = self._append(sha)
        elif self.stamp(row) >= stamp:
            return False
        self._set_stamp(row, stamp)
        was_live = self.live[row]
        if track is None:
            self.live[row] = 0
        else:
            self.live[row] = 1
            self._fill(row, track)
        self.live_count += self.live[row] - was_live
        self.changed.add(row)
        return True

    def _append(self, sha: str) -> int:
        """A new row: a tombstone with no stamp yet, filled by the caller."""
        row = len(self.shas)
        self.shas.append(sha)
        self._rows[sha] = row
        self.stamp_file.append(self._file(""))
        self.stamp_pos.append(-1)
        self.live.append(0)
        self.size.append(0)
        self.mtime.append(0.0)
        self.ext.append("")
        self.source.append("")
        self.title.append(None)
        for column in self.text.values():
            column.append(None)
        for name, values in self.numbers.items():
            values.append(0 if name in REGIONS else NONE)
        self.duration.append(math.nan)
        self.compilation.append(0)
        self.art.append(None)
        self.art_at.append(-1)
        return row

    def _append_track(self, sha: str, stamp: Stamp, track: Track) -> None:
        """A new live row, each column appended once (half the work of _append and _fill)."""
        row = len(self.shas)
        info = track.info
        self.shas.append(sha)
        self._rows[sha] = row
        self.stamp_file.append(self._file(stamp[0]))
        self.stamp_pos.append(stamp[1])
        self.live.append(1)
        self.size.append(track.size)
        self.mtime.append(track.mtime)
        share = self._shared.setdefault
        self.ext.append(share(track.ext, track.ext))
        self.source.append(track.source)
        self.title.append(info.title)
        text = self.text
        for name, value in (("format", info.format), ("codec", info.codec), ("artist", info.artist),
                            ("albumartist", info.albumartist), ("album", info.album), ("date", info.date),
                            ("genre", info.genre)):
            text[name].append(None if value is None else share(value, value))
        for name, value in (("track", info.track), ("tracktotal", info.tracktotal), ("disc", info.disc),
                            ("disctotal", info.disctotal), ("year", info.year), ("bitrate", info.bitrate),
                            ("sample_rate", info.sample_rate), ("channels", info.channels)):
            self._append_number(name, NONE if value is None else value + 1)
        self._append_number("head_size", info.head_size)
        self._append_number("tail_size", info.tail_size)
        self.duration.append(math.nan if info.duration is None else info.duration)
        self.compilation.append(1 if info.compilation else 0)
        self.art.append(self.share_art(track.art.object) if track.art else None)
        self.art_at.append(track.art.offset if track.art else -1)
        self.live_count += 1
        self.changed.add(row)

    def _file(self, file_id: str) -> int:
        index = self._file_index.get(file_id)
        if index is None:
            index = self._file_index[file_id] = len(self.files)
            self.files.append(file_id)
        return index

    def _set_stamp(self, row: int, stamp: Stamp) -> None:
        self.stamp_file[row] = self._file(stamp[0])
        self.stamp_pos[row] = stamp[1]

    def _append_number(self, name: str, value: int) -> None:
        try:
            self.numbers[name].append(value)
        except OverflowError:  # past a narrowed column's type
            self._widen(name).append(value)

    def _put(self, name: str, row: int, value: int) -> None:
        try:
            self.numbers[name][row] = value
        except OverflowError:
            self._widen(name)[row] = value

    def _widen(self, name: str) -> array[int]:
        """A narrowed column (see narrowest) back in 64 bits, for a value that does not fit."""
        column = self.numbers[name] = array("q", self.numbers[name])
        return column

    def share(self, text: str | None) -> str | None:
        """One object per distinct value: artists, albums and dates repeat across rows."""
        if text is None:
            return None
        return self._shared.setdefault(text, text)

    def share_art(self, art: ObjectRef) -> ObjectRef:
        """One ObjectRef per cover: the tracks of an album hold the same one."""
        return self._art_objects.setdefault(art.sha256, art)

    def _fill(self, row: int, track: Track) -> None:
        info = track.info
        self.size[row] = track.size
        self.mtime[row] = track.mtime
        self.ext[row] = self.share(track.ext) or ""
        self.source[row] = track.source
        self.title[row] = info.title
        for name in SHARED_TEXT:
            self.text[name][row] = self.share(getattr(info, name))
        for name in NUMBERS:
            value = getattr(info, name)
            self._put(name, row, NONE if value is None else value + 1)
        for name in REGIONS:
            self._put(name, row, getattr(info, name))
        self.duration[row] = math.nan if info.duration is None else info.duration
        self.compilation[row] = 1 if info.compilation else 0
        self.art[row] = self.share_art(track.art.object) if track.art else None
        self.art_at[row] = track.art.offset if track.art else -1

    # --- bulk loading (columnar snapshots) -------------------------------------------

    def merge_columns(self, shas: list[str], columns: dict[str, object], files: list[str],
                      rejected: set[int]) -> None:
        """Merge decoded snapshot columns (lockerfs.columnar) row by row, newest stamp wins;
        into an empty table, without a loop over rows in Python."""
        if not self.shas and not rejected and len(set(shas)) == len(shas):
            self._adopt(shas, columns, files)
            return
        stamp_file, stamp_pos, live = columns["stamp_file"], columns["stamp_pos"], columns["live"]
        for source_row, sha in enumerate(shas):
            if source_row in rejected:
                continue
            stamp = (files[stamp_file[source_row]], stamp_pos[source_row])  # type: ignore[index]
            row = self._rows.get(sha)
            if row is None:
                row = self._append(sha)
            elif self.stamp(row) >= stamp:
                continue
            self._set_stamp(row, stamp)
            was_live = self.live[row]
            self.live[row] = live[source_row]  # type: ignore[index]
            if self.live[row]:
                self._copy_row(row, columns, source_row)
            self.live_count += self.live[row] - was_live
            self.changed.add(row)

    def _copy_row(self, row: int, columns: dict[str, Any], source: int) -> None:
        self.size[row] = columns["size"][source]
        self.mtime[row] = columns["mtime"][source]
        self.ext[row] = self.share(columns["ext"][source]) or ""
        self.source[row] = columns["source"][source] or ""
        self.title[row] = columns["title"][source]
        for name in SHARED_TEXT:
            self.text[name][row] = self.share(columns[name][source])
        for name in (*NUMBERS, *REGIONS):
            self._put(name, row, columns[name][source])
        self.duration[row] = columns["duration"][source]
        self.compilation[row] = columns["compilation"][source]
        art = columns["art"][source]
        self.art[row] = self.share_art(art) if art else None
        self.art_at[row] = columns["art_at"][source]

    def _adopt(self, shas: list[str], columns: dict[str, Any], files: list[str]) -> None:
        rows = len(shas)
        self.shas = shas
        self._rows = dict(zip(shas, range(rows)))
        self.files = list(files)
        self._file_index = {file_id: index for index, file_id in enumerate(self.files)}
        self.stamp_file = array("I", columns["stamp_file"])
        self.stamp_pos = columns["stamp_pos"]
        self.live = columns["live"]
        self.size = columns["size"]
        self.mtime = columns["mtime"]
        self.ext = [text or "" for text in columns["ext"]]
        self.source = [text or "" for text in columns["source"]]
        self.title = columns["title"]
        self.text = {name: columns[name] for name in SHARED_TEXT}
        self.numbers = {name: narrowest(columns[name]) for name in (*NUMBERS, *REGIONS)}
        self.duration = columns["duration"]
        self.compilation = columns["compilation"]
        self.art = columns["art"]
        self.art_at = columns["art_at"]
        self._art_objects = {art.sha256: art for art in self.art if art is not None}
        self.live_count = sum(self.live)
        self.changed = set(range(rows))

    def copy(self) -> TrackTable:
        """An independent table with the same rows (a few copies of columns, no per-row work):
        what a mount shows while more is merged into the original in another thread."""
        other = TrackTable()
        other.shas, other._rows = list(self.shas), dict(self._rows)
        other.files, other._file_index = list(self.files), dict(self._file_index)
        other.stamp_file, other.stamp_pos = array("I", self.stamp_file), array("q", self.stamp_pos)
        other.live, other.size, other.mtime = bytearray(self.live), array("q", self.size), array("d", self.mtime)
        other.ext, other.source, other.title = list(self.ext), list(self.source), list(self.title)
        other.text = {name: list(column) for name, column in self.text.items()}
        other.numbers = {name: array(column.typecode, column) for name, column in self.numbers.items()}
        other.duration, other.compilation = array("d", self.duration), bytearray(self.compilation)
        other.art, other.art_at = list(self.art), array("q", self.art_at)
        other._shared, other._art_objects = dict(self._shared), dict(self._art_objects)
        other.changed, other.live_count = set(self.changed), self.live_count
        return other
