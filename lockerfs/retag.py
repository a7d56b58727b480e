"""Rewriting a track's embedded tags for `lockerfs tag`, with mutagen, on a copy of its bytes.

The tags are rewritten where players read them, so that every player agrees
with the mount's folder names: each tag the file carries (an MP3's ID3v2,
its APEv2 and ID3v1; FLAC and Ogg Vorbis comments; MP4 atoms; WMA attributes; the ID3 chunk
of WAV and AIFF; APEv2 of Monkey's Audio, WavPack, Musepack) gets the new
value, and the other spellings of a field that tags.py would read instead
(ALBUM ARTIST next to ALBUMARTIST, TDOR next to TDRC, ...) are removed, so a
cleared field does not come back from an alias. Nothing else in the file
changes: mutagen rewrites only the tag.

A rewrite is checked by reading the file back with tags.read_track_info:
if a field does not read as asked (an odd tag mutagen keeps, a value a
format cannot hold) the edit is refused rather than uploaded half right.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mutagen
from mutagen import id3 as id3frames
from mutagen._vorbis import VCommentDict  # the Vorbis comments of FLAC and every Ogg codec
from mutagen.apev2 import APENoHeaderError, APEv2
from mutagen.asf import ASFTags
from mutagen.id3 import ID3, ID3NoHeaderError, ID3v1SaveOptions
from mutagen.mp4 import MP4Tags

from lockerfs.editfields import FIELDS
from lockerfs.trackinfo import TrackInfo

NUMBERED = frozenset({"track", "disc"})
# Containers whose tags sit around a raw stream: ID3v2 in front, APEv2 and ID3v1 at the end.
STREAM_FORMATS = frozenset({"mp3", "aac", "tta"})
UNTAGGABLE = {"ac3": "an AC-3 stream"}  # containers with no tag of any kind mutagen can write
_NUMBER_RE = re.compile(r"^\s*([0-9]{1,6})\s*(?:/\s*([0-9]{1,6})\s*)?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class TagError(ValueError):
    """An edit that cannot be made; str() is one sentence for the user."""


@dataclass(frozen=True, slots=True)
class Edit:
    """One FIELD=VALUE: a text (None clears the field), or for track and disc a number and
    maybe a total, for year a year."""

    field: str
    text: str | None
    number: int | None = None
    total: int | None = None

    @property
    def clears(self) -> bool:
        return self.text is None


def parse_edits(assignments: Sequence[str]) -> list[Edit]:
    """`FIELD=VALUE` arguments -> edits; raises TagError naming the first bad one."""
    edits: dict[str, Edit] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        field = name.strip().lower()
        if not sep or field not in FIELDS:
            raise TagError(f"unknown field {name!r}: lockerfs tag sets {', '.join(FIELDS)} (FIELD=VALUE; "
                           "FIELD= clears it)")
        if field in edits:
            raise TagError(f"{field} is given twice")
        edits[field] = _edit(field, value)
    return list(edits.values())


def _edit(field: str, value: str) -> Edit:
    if _CONTROL_RE.search(value):
        raise TagError(f"the {field} may not contain control characters (a tab, a line break ...)")
    if not value.strip():
        return Edit(field, None)
    if field in NUMBERED:
        match = _NUMBER_RE.match(value)
        if match is None or int(match[1]) == 0 or (match[2] is not None and int(match[2]) == 0):
            raise TagError(f"the {field} must be a number like 3 or 3/12, not {value!r}")
        total = int(match[2]) if match[2] is not None else None
        return Edit(field, value.strip(), int(match[1]), total)
    if field == "year":
        if not re.fullmatch(r"\s*[0-9]{4}\s*", value) or int(value) < 1000:
            raise TagError(f"the year must be a four-digit year like 1959, not {value!r}")
        return Edit(field, value.strip(), int(value))
    return Edit(field, value.strip())


def rewrite(path: Path, fmt: str, edits: Sequence[Edit], old: TrackInfo) -> None:
    """Rewrite the tags of the file at `path` (a copy: it is changed in place).

    `fmt` is the container (TrackInfo.format) and `old` what the file said before,
    for the totals an edit keeps. Raises TagError if mutagen cannot do it.
    """
    if fmt in UNTAGGABLE:
        raise TagError(f"{UNTAGGABLE[fmt]} has no place for tags (players name it from its file name)")
    try:
        if fmt in STREAM_FORMATS:
            _rewrite_stream(path, edits, old)
        else:
            _rewrite_container(path, edits, old)
    except TagError:
        raise
    except (mutagen.MutagenError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise TagError(f"mutagen cannot rewrite its tags ({exc})") from None


def _rewrite_stream(path: Path, edits: Sequence[Edit], old: TrackInfo) -> None:
    """MP3, ADTS, TTA: ID3v2 (made if there is none), APEv2 if there is one, ID3v1 if there was one.

    APEv2 first: mutagen drops a trailing ID3v1 when it saves an APEv2 tag, and
    the ID3 save puts it back (from the new ID3v2 values) after it."""
    with open(path, "rb") as f:
        f.seek(-128, 2)
        had_v1 = f.read(3) == b"TAG"
    try:
        ape = APEv2(path)
    except APENoHeaderError:
        ape = None
    if ape is not None:
        _edit_ape(ape, edits, old)
        ape.save(path)
    try:
        tags = ID3(path)
    except ID3NoHeaderError:
        tags = ID3()
    version = 3 if tags.version[:2] == (2, 3) else 4
    _edit_id3(tags, edits, old)
    tags.save(path, v1=ID3v1SaveOptions.CREATE if had_v1 else ID3v1SaveOptions.REMOVE, v2_version=version)


def _rewrite_container(path: Path, edits: Sequence[Edit], old: TrackInfo) -> None:
    audio = mutagen.File(path)
    if audio is None:
        raise TagError("lockerfs tag does not know how to write tags into this kind of file")
    if audio.tags is None:
        audio.add_tags()
    tags = audio.tags
    if isinstance(tags, ID3):  # WAV, AIFF, DSF: an ID3 chunk
        version = 3 if tags.version[:2] == (2, 3) else 4
        _edit_id3(tags, edits, old)
        audio.save(v2_version=version)
    elif isinstance(tags, MP4Tags):
        _edit_mp4(tags, edits, old)
        audio.save()
    elif isinstance(tags, APEv2):
        _edit_ape(tags, edits, old)
        audio.save()
    elif isinstance(tags, VCommentDict):  # FLAC, Ogg Vorbis, Opus, Speex, Ogg FLAC
        _edit_vorbis(tags, edits, old)
        audio.save()
    elif isinstance(tags, ASFTags):  # WMA
        _edit_asf(tags, edits, old)
        audio.save()
    else:
        raise TagError(f"lockerfs tag does not know how to write {type(tags).__name__} tags")


def _total(edit: Edit, old: TrackInfo) -> int | None:
    """The total to write with a number: the one given, else the one the file had."""
    if edit.total is not None:
        return edit.total
    return old.tracktotal if edit.field == "track" else old.disctotal


def _fraction(edit: Edit, old: TrackInfo) -> str:
    total = _total(edit, old)
    return f"{edit.number}/{total}" if total else str(edit.number)


# --- ID3 -------------------------------------------------------------------------------------

_ID3_FRAMES = {"artist": "TPE1", "albumartist": "TPE2", "album": "TALB", "title": "TIT2",
               "track": "TRCK", "disc": "TPOS", "year": "TDRC", "genre": "TCON"}
# frames tags.py reads a field from when the main one is missing: cleared with it
_ID3_ALIASES = {"albumartist": ("TXXX:ALBUM ARTIST", "TXXX:ALBUMARTIST"), "year": ("TDOR",)}


def _edit_id3(tags: ID3, edits: Sequence[Edit], old: TrackInfo) -> None:
    for edit in edits:
        frame_id = _ID3_FRAMES[edit.field]
        # A year keeps the original release date (TDOR) unless it is cleared: TDRC is read first.
        if edit.clears or edit.field != "year":
            aliases = _ID3_ALIASES.get(edit.field, ())
            for key in [key for key in tags if key.upper() in aliases]:  # tags.py reads them case-blind
                del tags[key]
        if edit.clears:
            tags.delall(frame_id)
            continue
        text = _fraction(edit, old) if edit.field in NUMBERED else edit.text
        tags.setall(frame_id, [getattr(id3frames, frame_id)(encoding=3, text=[text])])


# --- Vorbis comments (FLAC, Ogg) ---------------------------------------------------------------

_VORBIS_KEYS = {"artist": "ARTIST", "albumartist": "ALBUMARTIST", "album": "ALBUM", "title": "TITLE",
                "track": "TRACKNUMBER", "disc": "DISCNUMBER", "year": "DATE", "genre": "GENRE"}
_VORBIS_ALIASES = {"albumartist": ("ALBUM ARTIST", "ALBUM_ARTIST"), "year": ("YEAR",)}
_VORBIS_TOTALS = {"track": ("TRACKTOTAL", "TOTALTRACKS"), "disc": ("DISCTOTAL", "TOTALDISCS")}


def _edit_vorbis(tags: mutagen.Tags, edits: Sequence[Edit], old: TrackInfo) -> None:
    for edit in edits:
        key = _VORBIS_KEYS[edit.field]
        for alias in _VORBIS_ALIASES.get(edit.field, ()):
            if alias in tags:
                del tags[alias]
        totals = _VORBIS_TOTALS.get(edit.field, ())
        if edit.clears:
            for name in (key, *totals):
                if name in tags:
                    del tags[name]
            continue
        if edit.field not in NUMBERED:
            tags[key] = [edit.text]
            continue
        # Keep the file's own way of giving the total: "3/12" in the number, or a TOTAL field.
        inline = any("/" in value for value in tags.get(key, []))
        if inline:
            tags[key] = [_fraction(edit, old)]
            continue
        tags[key] = [str(edit.number)]
        if edit.total is not None:
            for name in totals[1:]:
                if name in tags:
                    del tags[name]
            tags[totals[0]] = [str(edit.total)]


# --- MP4 -------------------------------------------------------------------------------------

_MP4_ATOMS = {"artist": "\xa9ART", "albumartist": "aART", "album": "\xa9alb", "title": "\xa9nam",
              "year": "\xa9day", "genre": "\xa9gen", "track": "trkn", "disc": "disk"}


def _edit_mp4(tags: MP4Tags, edits: Sequence[Edit], old: TrackInfo) -> None:
    for edit in edits:
        atom = _MP4_ATOMS[edit.field]
        if edit.field == "genre" and "gnre" in tags:
            del tags["gnre"]  # iTunes' numeric genre, which tags.py reads when ©gen is missing
        if edit.clears:
            if atom in tags:
                del tags[atom]
        elif edit.field in NUMBERED:
            tags[atom] = [(edit.number, _total(edit, old) or 0)]
        else:
            tags[atom] = [edit.text]


# --- APEv2 -----------------------------------------------------------------------------------

_APE_KEYS = {"artist": "Artist", "albumartist": "Album Artist", "album": "Album", "title": "Title",
             "track": "Track", "disc": "Disc", "year": "Year", "genre": "Genre"}
_APE_ALIASES = {"albumartist": ("AlbumArtist",), "disc": ("DiscNumber",), "year": ("Date",)}


def _edit_ape(tags: APEv2, edits: Sequence[Edit], old: TrackInfo) -> None:
    for edit in edits:
        key = _APE_KEYS[edit.field]
        for alias in _APE_ALIASES.get(edit.field, ()):
            if alias in tags:
                del tags[alias]
        if edit.clears:
            if key in tags:
                del tags[key]
        else:
            tags[key] = _fraction(edit, old) if edit.field in NUMBERED else edit.text


# --- ASF (WMA) -------------------------------------------------------------------------------

_ASF_KEYS = {"artist": "Author", "albumartist": "WM/AlbumArtist", "album": "WM/AlbumTitle", "title": "Title",
             "track": "WM/TrackNumber", "disc": "WM/PartOfSet", "year": "WM/Year", "genre": "WM/Genre"}
# attributes tags.py reads a field from when the main one is missing: always dropped where
# they only repeat the field, dropped with a clear where they are data of their own (composer)
_ASF_ALIASES = {"albumartist": ("AlbumArtist",), "track": ("WM/Track",)}
_ASF_CLEARED_WITH = {"artist": ("WM/Composer",), "year": ("WM/OriginalReleaseYear",)}
_ASF_TOTALS = {"track": ("TotalTracks", "WM/TrackTotal"), "disc": ("TotalDiscs", "WM/DiscTotal")}


def _edit_asf(tags: ASFTags, edits: Sequence[Edit], old: TrackInfo) -> None:
    for edit in edits:
        key = _ASF_KEYS[edit.field]
        gone = [*_ASF_ALIASES.get(edit.field, ())]
        if edit.clears:
            gone += [key, *_ASF_CLEARED_WITH.get(edit.field, ()), *_ASF_TOTALS.get(edit.field, ())]
        elif edit.field in NUMBERED and edit.total is not None:
            gone += _ASF_TOTALS[edit.field]
        for name in gone:
            if name in tags:
                del tags[name]
        if edit.clears:
            continue
        if edit.field == "track":  # a number of its own; the total beside it
            tags[key] = [str(edit.number)]
            if edit.total is not None:
                tags[_ASF_TOTALS["track"][0]] = [str(edit.total)]
        elif edit.field == "disc":
            tags[key] = [_fraction(edit, old)]
        else:
            tags[key] = [edit.text]


# --- checking -------------------------------------------------------------------------------

def mismatch(info: TrackInfo, edits: Sequence[Edit]) -> str | None:
    """How the rewritten file reads differently from what was asked, or None."""
    for edit in edits:
        if edit.field in NUMBERED:
            got: object = getattr(info, edit.field)
            want: object = edit.number
            if edit.total is not None and getattr(info, f"{edit.field}total") != edit.total:
                return f"its {edit.field} total reads back as {getattr(info, f'{edit.field}total')}, not {edit.total}"
        elif edit.field == "year":
            got, want = info.year, edit.number
        else:
            got, want = getattr(info, edit.field), edit.text
        if got != want:
            return f"its {edit.field} reads back as {got!r}, not {want!r}"
    return None
