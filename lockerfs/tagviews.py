"""Tag views: mutagen's tag objects -> one set of normalized fields (TrackInfo).

Each tag source (ID3v2, APEv2, ID3v1, Vorbis comments, MP4 atoms, ASF
attributes) becomes a view: raw values per field under our field names. A
file's views are ordered most trusted first; each field is taken from the
first view that has a usable value, then cleaned (numbers, years, flags).

Reading one field never raises (mediafile's habit): one odd frame, atom or
attribute costs that field only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import mutagen
from mutagen.apev2 import APEBinaryValue, APETextValue, APEv2
from mutagen.asf import ASFTags
from mutagen.id3 import ID3, TCON
from mutagen.mp4 import MP4Tags

from lockerfs.trackinfo import TrackInfo

log = logging.getLogger(__name__)

Views = list[dict[str, list[str]]]  # raw values per field, most trusted source first


def id3_ape_views(id3: ID3 | None, ape: APEv2 | None) -> Views:
    """ID3v2 over APEv2 over ID3v1: an ID3v1 tag (30 characters a field) is the last resort.

    mutagen merges ID3v1 frames into the ID3 object where v2 lacks them, and
    reports version 1.x when there was no v2 at all.
    """
    views = []
    if id3 is not None and id3.version >= (2, 0):
        views.append(id3_view(id3))
    if ape is not None:
        views.append(ape_view(ape))
    if id3 is not None and id3.version < (2, 0):
        views.append(id3_view(id3))
    return views


def _collect(getters: dict[str, Callable[[], Any]]) -> dict[str, list[str]]:
    """Each field's values as strings; a field whose getter fails or finds nothing is absent.

    One odd frame or atom costs that field only (mediafile's habit).
    """
    view = {}
    for name, getter in getters.items():
        try:
            values = getter()
        except Exception as exc:  # noqa: BLE001 - a malformed value of any kind
            log.debug("unreadable %s value: %r", name, exc)
            continue
        if values is not None:
            view[name] = [str(v) for v in values]
    return view


def _first(fields: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((fields[k] for k in keys if k in fields), None)


_ID3_KEYS = {
    "artist": ("TPE1",), "albumartist": ("TPE2", "TXXX:ALBUM ARTIST", "TXXX:ALBUMARTIST"),
    "album": ("TALB",), "title": ("TIT2",), "track": ("TRCK",), "disc": ("TPOS",),
    "date": ("TDRC", "TDOR"), "genre": ("TCON",), "compilation": ("TCMP", "TXXX:COMPILATION"),
}


def id3_view(id3: ID3) -> dict[str, list[str]]:
    frames = {key.upper(): frame for key, frame in id3.items()}

    def values(name: str, keys: tuple[str, ...]) -> list[Any] | None:
        frame = _first(frames, keys)
        if frame is None:
            return None
        return frame.genres if name == "genre" else frame.text  # genres: "(17)" -> "Rock"

    return _collect({name: (lambda n=name, k=keys: values(n, k)) for name, keys in _ID3_KEYS.items()})


_VORBIS_KEYS = {
    "artist": ("artist",), "albumartist": ("albumartist", "album artist", "album_artist"),
    "album": ("album",), "title": ("title",), "track": ("tracknumber",),
    "tracktotal": ("tracktotal", "totaltracks"), "disc": ("discnumber",),
    "disctotal": ("disctotal", "totaldiscs"), "date": ("date", "year"), "genre": ("genre",),
    "compilation": ("compilation",),
}


def vorbis_view(tags: mutagen.Tags) -> dict[str, list[str]]:
    fields = {key.lower(): value for key, value in tags.items()}
    return _collect({name: (lambda k=keys: _first(fields, k)) for name, keys in _VORBIS_KEYS.items()})


_APE_KEYS = {
    "artist": ("artist",), "albumartist": ("album artist", "albumartist"), "album": ("album",),
    "title": ("title",), "track": ("track",), "disc": ("disc", "discnumber"),
    "date": ("year", "date"), "genre": ("genre",), "compilation": ("compilation",),
}


def ape_view(ape: APEv2) -> dict[str, list[str]]:
    fields = {key.lower(): value for key, value in ape.items() if not isinstance(value, APEBinaryValue)}

    def values(keys: tuple[str, ...]) -> list[str] | None:
        value = _first(fields, keys)
        if value is None:
            return None
        return list(value) if isinstance(value, APETextValue) else [value]  # text splits on NUL

    return _collect({name: (lambda k=keys: values(k)) for name, keys in _APE_KEYS.items()})


_MP4_KEYS = {"artist": "\xa9ART", "albumartist": "aART", "album": "\xa9alb",
             "title": "\xa9nam", "date": "\xa9day", "genre": "\xa9gen"}


def mp4_view(tags: MP4Tags) -> dict[str, list[str]]:
    getters: dict[str, Callable[[], Any]] = {
        name: (lambda a=atom: tags.get(a)) for name, atom in _MP4_KEYS.items()}
    getters |= {
        "track": lambda: _mp4_pair(tags, "trkn", 0), "tracktotal": lambda: _mp4_pair(tags, "trkn", 1),
        "disc": lambda: _mp4_pair(tags, "disk", 0), "disctotal": lambda: _mp4_pair(tags, "disk", 1),
        "compilation": lambda: ["1"] if tags.get("cpil") else None,
    }
    view = _collect(getters)
    if "genre" not in view:
        view |= _collect({"genre": lambda: _mp4_numeric_genre(tags)})
    return view


def _mp4_numeric_genre(tags: MP4Tags) -> list[str] | None:
    """iTunes' older genre atom: the ID3v1 genre number plus one."""
    return TCON(text=[str(tags["gnre"][0] - 1)]).genres if "gnre" in tags else None


def _mp4_pair(tags: MP4Tags, atom: str, index: int) -> list[int] | None:
    """Number or total of trkn/disk, stored as [(number, total)] with 0 for unknown."""
    return [tags[atom][0][index]] if atom in tags else None


_ASF_KEYS = {
    "artist": ("Author", "WM/Composer"), "albumartist": ("WM/AlbumArtist", "AlbumArtist"),
    "album": ("WM/AlbumTitle",), "title": ("Title",), "disc": ("WM/PartOfSet",),
    "date": ("WM/Year", "WM/OriginalReleaseYear"), "genre": ("WM/Genre",),
    "compilation": ("WM/IsCompilation",), "tracktotal": ("TotalTracks", "WM/TrackTotal"),
    "disctotal": ("TotalDiscs", "WM/DiscTotal"),
}


def asf_view(tags: ASFTags) -> dict[str, list[str]]:
    """WMA attributes. WM/TrackNumber counts from 1; the older WM/Track from 0."""
    fields: dict[str, list[Any]] = {}
    for key, value in tags.items():  # ASFTags.items() yields (key, [values]) per key
        fields.setdefault(key, []).extend(value)

    def values(keys: tuple[str, ...]) -> list[str] | None:
        found = _first(fields, keys)
        return None if found is None else [str(v.value) for v in found]

    def track() -> list[str] | None:
        if "WM/TrackNumber" in fields:
            return values(("WM/TrackNumber",))
        if "WM/Track" in fields:
            return [str(int(str(fields["WM/Track"][0].value)) + 1)]
        return None

    getters: dict[str, Callable[[], Any]] = {name: (lambda k=keys: values(k)) for name, keys in _ASF_KEYS.items()}
    return _collect(getters | {"track": track})


# --------------------------------------------------------------------------
# normalization


def track_info(fmt: str, codec: str, audio: mutagen.FileType | None, views: Views,
               head: int, tail: int) -> TrackInfo:
    """TrackInfo from the views and the stream facts mutagen found (None: it found none)."""
    info = audio.info if audio is not None else None
    track, tracktotal = _numbers(views, "track", "tracktotal")
    disc, disctotal = _numbers(views, "disc", "disctotal")
    date = _text(views, "date")
    return TrackInfo(
        format=fmt, codec=codec,
        artist=_text(views, "artist"), albumartist=_text(views, "albumartist"),
        album=_text(views, "album"), title=_text(views, "title"),
        track=track, tracktotal=tracktotal, disc=disc, disctotal=disctotal,
        date=date, year=_year(date), genre=_text(views, "genre"),
        compilation=_flag(views, "compilation"),
        duration=_positive(info, "length", float), bitrate=_positive(info, "bitrate", int),
        # Opus always decodes at 48 kHz; OpusHead's rate is only the input's
        sample_rate=48000 if fmt == "opus" and info else _positive(info, "sample_rate", int),
        channels=_positive(info, "channels", int),
        head_size=head, tail_size=tail,
    )


def _values(views: Views, name: str) -> list[str]:
    """Cleaned non-empty values of the first source that has any."""
    for view in views:
        values = [v.strip().strip("\x00").strip() for v in view.get(name, [])]
        values = [v for v in values if v]
        if values:
            return values
    return []


def _text(views: Views, name: str) -> str | None:
    return "; ".join(_values(views, name)) or None


def _numbers(views: Views, name: str, total_name: str) -> tuple[int | None, int | None]:
    """Number and total from "3/12", "3" plus a separate total, or None where unreadable."""
    values = _values(views, name)
    number, _, total = values[0].partition("/") if values else ("", "", "")
    totals = _values(views, total_name)
    return _count(number), (_count(totals[0]) if totals else _count(total))


def _count(text: str) -> int | None:
    """A positive decimal number; "A1", "", "x" and 0 are no number."""
    text = text.strip()
    if not re.fullmatch(r"[0-9]{1,6}", text):
        return None
    return int(text) or None


_YEAR = re.compile(r"(?<![0-9])[0-9]{4}(?![0-9])")


def _year(date: str | None) -> int | None:
    """The first four-digit group of a date ("1959-08-17", "17.08.1959"), if 1000..9999."""
    match = _YEAR.search(date or "")
    year = int(match.group()) if match else 0
    return year if 1000 <= year <= 9999 else None


def _flag(views: Views, name: str) -> bool:
    values = _values(views, name)
    return bool(values) and values[0].lower() in ("1", "true", "yes")


def _positive(info: Any, attr: str, kind: type[int] | type[float]) -> Any:
    """A stream fact as `kind` if mutagen knows it (0 and absent mean unknown)."""
    value = getattr(info, attr, None)
    try:
        return kind(value) if value and value > 0 else None
    except (TypeError, ValueError):
        return None
