"""Reading one audio file: its container, normalized tags, audio facts and tag regions.

The container is decided from the file's first bytes, never from its name: a
player sees the extension the locker gives it, so it must match the content.
mutagen then reads tags and stream facts with the parser for that container
(mutagen.File would pick by extension and fail on a mismatch).

Failure policy (mediafile's habit): a file whose content is no audio container
raises NotAudioError; a file whose container is known but whose tags or stream
cannot be parsed still yields a TrackInfo with what could be read, so it is
uploaded and named from its path; reading one field never raises.

Tag regions: head_size and tail_size are the bytes a tag reader needs from each
end of the file, computed by walking the container's own headers (a few reads
of a few bytes, whatever the file size). The mount fetches both ends at open so
that a player's tag scan costs one round trip per file, not one per read.
tests/unit/test_tags.py proves, for every format, that mutagen reads nothing
outside them.
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import mutagen
from mutagen.aac import AAC
from mutagen.aiff import AIFF
from mutagen.apev2 import APEBinaryValue, APENoHeaderError, APETextValue, APEv2
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TCON, ID3NoHeaderError
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, MP4Tags
from mutagen.oggflac import OggFLAC
from mutagen.oggopus import OggOpus
from mutagen.oggspeex import OggSpeex
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from lockerfs.trackinfo import TrackInfo

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS: frozenset[str] = frozenset({
    "mp3", "mp2", "mpga", "flac", "ogg", "oga", "opus", "m4a", "m4b", "mp4",
    "aac", "adts", "alac", "wav", "wave", "aif", "aiff", "aifc",
})

# Canonical extension per TrackInfo.format; "aac" is a raw ADTS stream (.aac).
FORMAT_EXTENSIONS: dict[str, str] = {
    "flac": "flac", "mp3": "mp3", "ogg": "ogg", "opus": "opus", "m4a": "m4a",
    "wav": "wav", "aiff": "aiff", "aac": "aac",
}

_SNIFF_SIZE = 64 * 1024  # what read_track_info reads up front
_PEEK = 16 * 1024  # enough to see two MPEG or ADTS frames after a tag
# mutagen.File() reads the first 128 bytes to pick a parser and, for every
# file, the last 160 (APEv2File.score); TagLib looks for ID3v1 in the last 128
# of MP3 and FLAC. Regions never go below these, so a scan never misses.
_PROBE_HEAD = 128
_PROBE_TAIL = 160
# A reader cannot know where the last Ogg page starts, so it reads the largest
# possible page (27 + 255 + 255 * 255 = 65,307 bytes) from the end; mutagen
# reads 64 KiB, libavformat 65,307.
_OGG_TAIL = 64 * 1024


class NotAudioError(Exception):
    """The file is empty or its content is no audio container we read; str() says which."""


def sniff_format(head: bytes) -> str:
    """Container of a file from its first bytes (~64 KiB); "" if not audio.

    An ID3v2 tag is skipped first (it may precede MP3, ADTS or FLAC); when the
    tag runs past `head`, MP3 is the answer, as for almost every such file.
    """
    reader = _Reader(io.BytesIO(head), len(head))
    start = _id3v2_end(reader, 0)
    if start == 0:
        return _container(head[:_PEEK])
    return _container(head[start:start + _PEEK], after_id3=True) or "mp3"


def read_track_info(path: pathlib.Path) -> TrackInfo:
    """Container, tags, audio facts and tag regions of one file.

    Raises NotAudioError for an empty or non-audio file; OSError as raised.
    """
    with _WatchedFile(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise NotAudioError("empty file")
        reader = _Reader(f, size)
        start = _id3v2_end(reader, 0)
        peek = reader.at(start, _PEEK)
        fmt = _container(peek, after_id3=start > 0) or ("mp3" if start else "")
        if not fmt:
            raise NotAudioError("not an audio file (content not recognized)")
        audio, views = _load(fmt, f, peek, path)
        codec = _codec(fmt, audio, reader)
        head, tail = _regions(fmt, reader, start)
    return _track_info(fmt, codec, audio, views, head, tail)


# --------------------------------------------------------------------------
# files and container recognition


class _WatchedFile(io.FileIO):
    """A file that remembers an OS read error, which mutagen re-raises as a tag error.

    read_track_info must let OSError through unchanged, but mutagen converts
    IOError into MutagenError; this keeps the original to re-raise.
    """

    os_error: OSError | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            return super().read(size)
        except OSError as exc:
            self.os_error = exc
            raise

    def readinto(self, buffer: Any) -> int:
        try:
            return super().readinto(buffer)
        except OSError as exc:
            self.os_error = exc
            raise


class _Reader:
    """Positional reads, so that the structure walkers hop from header to header."""

    def __init__(self, f: io.RawIOBase | io.BufferedIOBase, size: int) -> None:
        self._f = f
        self.size = size

    def at(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`; fewer past either end of the file."""
        if offset < 0:
            length, offset = length + offset, 0
        if offset >= self.size or length <= 0:
            return b""
        self._f.seek(offset)
        return self._f.read(length)


def _id3v2_end(reader: _Reader, offset: int) -> int:
    """Offset after the ID3v2 tags stacked at `offset` (some taggers write several)."""
    while True:
        header = reader.at(offset, 10)
        if not _is_id3v2_header(header):
            return offset
        size = _syncsafe(header[6:10])
        footer = 10 if header[5] & 0x10 else 0
        offset += 10 + size + footer


def _is_id3v2_header(header: bytes) -> bool:
    return (len(header) == 10 and header[:3] == b"ID3" and header[3] in (2, 3, 4)
            and header[4] != 0xFF and all(b < 0x80 for b in header[6:10]))


def _syncsafe(data: bytes) -> int:
    value = 0
    for byte in data:
        value = (value << 7) | (byte & 0x7F)
    return value


def _container(data: bytes, after_id3: bool = False) -> str:
    """Container whose header starts `data` ("" if none); after_id3 relaxes MPEG checks."""
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "opus" if _ogg_codec(data) == "opus" else "ogg"
    if data[4:8] == b"ftyp":
        return "m4a"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if _adts_frames(data, 0, 1 if after_id3 else 2) is not None:
        return "aac"
    # An MPEG sync is two bytes, so a lone header proves little: require the
    # next frame to follow, unless an ID3v2 tag already said "MP3".
    if _mpeg_chain(data, 1 if after_id3 else 2) is not None:
        return "mp3"
    return ""


def _ogg_codec(page: bytes) -> str:
    """Codec of the first packet of an Ogg page: vorbis, opus, flac, speex or ""."""
    if len(page) < 27:
        return ""
    packet = page[27 + page[26]:]
    for magic, codec in ((b"\x01vorbis", "vorbis"), (b"OpusHead", "opus"),
                         (b"\x7fFLAC", "flac"), (b"Speex   ", "speex")):
        if packet.startswith(magic):
            return codec
    return ""


# --------------------------------------------------------------------------
# MPEG audio and ADTS frames

_MPEG_BITRATES = {  # kbit/s by (version 1 or 2, layer); MPEG 2.5 uses version 2's
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {1: (44100, 48000, 32000), 2: (22050, 24000, 16000), 25: (11025, 12000, 8000)}


class _Frame(NamedTuple):
    length: int  # bytes, header included
    vbr_header_at: tuple[int, ...]  # where a Xing/Info or VBRI header would sit


def _mpeg_frame(data: bytes, pos: int) -> _Frame | None:
    """The MPEG audio frame whose 4-byte header is at data[pos], if valid."""
    header = data[pos:pos + 4]
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = {0: 25, 2: 2, 3: 1}.get((header[1] >> 3) & 3)
    layer = 4 - ((header[1] >> 1) & 3)
    bitrate_index, rate_index = header[2] >> 4, (header[2] >> 2) & 3
    if version is None or layer == 4 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    bitrate = _MPEG_BITRATES[(min(version, 2), layer)][bitrate_index] * 1000
    rate = _MPEG_RATES[version][rate_index]
    padding = (header[2] >> 1) & 1
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    elif layer == 3 and version != 1:
        length = 72 * bitrate // rate + padding
    else:
        length = 144 * bitrate // rate + padding
    mono = header[3] >> 6 == 3
    if layer != 3:
        return _Frame(length, ())
    # Xing/Info sits after the side information; VBRI always at 36.
    side = (21 if mono else 36) if version == 1 else (13 if mono else 21)
    return _Frame(length, (side, 36))


def _has_vbr_header(data: bytes, pos: int, frame: _Frame) -> bool:
    return any(data[pos + at:pos + at + 4] in (b"Xing", b"Info", b"VBRI") for at in frame.vbr_header_at)


def _mpeg_chain(data: bytes, count: int, pos: int = 0) -> int | None:
    """End of `count` consecutive MPEG frames starting at `pos`, or None.

    A chain cut short by the end of `data` counts: a short file is still MP3.
    """
    for index in range(count):
        if index and pos >= len(data):
            return pos
        frame = _mpeg_frame(data, pos)
        if frame is None:
            return None
        pos += frame.length
    return pos


def _adts_frames(data: bytes, pos: int, count: int) -> int | None:
    """End of `count` consecutive ADTS (raw AAC) frames starting at `pos`, or None."""
    for index in range(count):
        if index and pos >= len(data):
            return pos
        header = data[pos:pos + 7]
        # sync 0xFFF, layer 00 (MPEG audio never has layer 00), a valid rate index
        if len(header) < 7 or header[0] != 0xFF or header[1] & 0xF6 != 0xF0:
            return None
        if (header[2] >> 2) & 0xF > 11:
            return None
        length = ((header[3] & 3) << 11) | (header[4] << 3) | (header[5] >> 5)
        if length < 7:
            return None
        pos += length
    return pos


# --------------------------------------------------------------------------
# tag regions


def _regions(fmt: str, reader: _Reader, start: int) -> tuple[int, int]:
    """(head_size, tail_size), each widened to what mutagen.File probes, never overlapping."""
    try:
        head, tail = _REGION_WALKERS[fmt](reader, start)
    except (struct.error, ValueError, IndexError) as exc:  # garbage headers: the whole file
        log.debug("cannot walk %s structure: %s", fmt, exc)
        head, tail = reader.size, 0
    size = reader.size
    head = min(size, max(head, _PROBE_HEAD))
    tail = min(size - head, max(tail, _PROBE_TAIL))
    return head, tail


def _mp3_regions(reader: _Reader, start: int) -> tuple[int, int]:
    """ID3v2 tags plus the frames mutagen inspects; ID3v1/APEv2/Lyrics3 at the end.

    mutagen syncs on the first frame after the tag and stops there if it holds
    a Xing/Info or VBRI header (length and bitrate come from it); otherwise it
    checks four frames in a row. TagLib also checks that the next frame header
    follows, hence 4 more bytes. mutagen searches for the sync in doubling
    chunks (2, 4, 8 ... bytes), so with junk before the first frame it may read
    up to twice that gap plus 2.
    """
    data = reader.at(start, _SNIFF_SIZE)
    pos = data.find(b"\xff")
    while 0 <= pos < len(data) - 3:
        frame = _mpeg_frame(data, pos)
        if frame is not None:
            end = pos + frame.length if _has_vbr_header(data, pos, frame) else _mpeg_chain(data, 4, pos)
            if end is not None:
                return max(start + end + 4, start + 2 * pos + 2), _trailing_tags_size(reader)
        pos = data.find(b"\xff", pos + 1)
    return start, _trailing_tags_size(reader)


def _adts_regions(reader: _Reader, start: int) -> tuple[int, int]:
    """ID3v2 plus the first 100 ADTS frames, from which mutagen averages the bitrate.

    mutagen then syncs on the next frame (its first bytes), so its header is included.
    """
    pos = start
    for _ in range(100):
        end = _adts_frames(reader.at(pos, 7), 0, 1)
        if end is None:
            break
        pos += end
    return pos + 7, _trailing_tags_size(reader)


def _flac_regions(reader: _Reader, start: int) -> tuple[int, int]:
    """"fLaC" and the metadata blocks up to the one flagged last (an ID3v2 may precede)."""
    pos = start + 4
    while pos < reader.size:
        header = reader.at(pos, 4)
        if len(header) < 4:
            break
        pos += 4 + int.from_bytes(header[1:4], "big")
        if header[0] & 0x80:
            break
    return pos, _trailing_tags_size(reader)


def _ogg_regions(reader: _Reader, start: int) -> tuple[int, int]:
    """Pages up to the one completing the codec's header packets; the last 64 KiB.

    Pages of other multiplexed streams are skipped but stay in the head.
    """
    first = reader.at(start, 27 + 255 + 80)
    serial, needed = first[14:18], _ogg_header_packets(first)
    pos, packets = start, 0
    while packets < needed:
        header = reader.at(pos, 27)
        if len(header) < 27 or header[:4] != b"OggS":
            break
        lacing = reader.at(pos + 27, header[26])
        if header[14:18] == serial:
            packets += sum(1 for value in lacing if value < 255)  # a value < 255 ends a packet
        pos += 27 + header[26] + sum(lacing)
    return pos, _OGG_TAIL


def _ogg_header_packets(page: bytes) -> int:
    """Header packets of the stream whose first page this is.

    Vorbis: identification, comments, setup. Opus: OpusHead, OpusTags. Speex:
    header, comments and the extra headers it counts. FLAC-in-Ogg: its first
    packet counts the metadata packets after it (0: unknown, assume comments).
    """
    codec = _ogg_codec(page)
    packet = page[27 + page[26]:] if len(page) > 27 else b""
    if codec == "flac" and len(packet) >= 9:
        return 1 + (int.from_bytes(packet[7:9], "big") or 1)
    if codec == "speex" and len(packet) >= 72:
        return 2 + int.from_bytes(packet[68:72], "little")
    return {"vorbis": 3, "opus": 2}.get(codec, 1)


def _mp4_regions(reader: _Reader, start: int) -> tuple[int, int]:
    """Top-level boxes up to the first mdat's payload; everything after the last mdat.

    mutagen reads the header of every top-level box, so the head includes the
    mdat header whether moov comes before it or not; a trailing moov (and any
    box after the audio) is the tail. A fragmented file (many moof/mdat pairs)
    has box headers in between that no head/tail pair can cover.
    """
    pos, first_mdat, last_mdat_end = start, None, None
    while pos + 8 <= reader.size:
        header = reader.at(pos, 16)
        size, kind = struct.unpack(">I4s", header[:8])
        header_size = 8
        if size == 1:
            size, header_size = struct.unpack(">Q", header[8:16])[0], 16
        elif size == 0:
            size = reader.size - pos
        if size < header_size:
            break
        if kind == b"mdat":
            if first_mdat is None:
                first_mdat = pos + header_size
            last_mdat_end = pos + size
        pos += size
    if first_mdat is None:
        return reader.size, 0
    return first_mdat, max(0, reader.size - last_mdat_end)


def _iff_chunks(reader: _Reader, big_endian: bool) -> Iterator[tuple[bytes, int, int]]:
    """(id, payload offset, payload size) of each RIFF/IFF chunk after the 12-byte form header."""
    fmt = ">4sI" if big_endian else "<4sI"
    pos = 12
    while pos + 8 <= reader.size:
        kind, size = struct.unpack(fmt, reader.at(pos, 8))
        yield kind, pos + 8, size
        pos += 8 + size + (size & 1)  # chunks are padded to even lengths


def _iff_regions(reader: _Reader, big_endian: bool, audio_id: bytes, preamble: int) -> tuple[int, int]:
    """Chunks before the audio payload; chunks after it (where taggers append ID3 and LIST)."""
    for kind, offset, size in _iff_chunks(reader, big_endian):
        if kind == audio_id:
            end = offset + size + (size & 1)
            return offset + preamble, max(0, reader.size - end)
    return reader.size, 0


def _wav_regions(reader: _Reader, start: int) -> tuple[int, int]:
    return _iff_regions(reader, False, b"data", 0)


def _aiff_regions(reader: _Reader, start: int) -> tuple[int, int]:
    # SSND opens with offset and block-size words (8 bytes) before the samples.
    return _iff_regions(reader, True, b"SSND", 8)


def _trailing_tags_size(reader: _Reader) -> int:
    """Bytes of [APEv2][Lyrics3v2][ID3v1] at the end of the file, in that order."""
    end = reader.size
    if reader.at(end - 128, 3) == b"TAG" and end >= 128:
        end -= 128
        lyrics = reader.at(end - 15, 15)
        if lyrics[6:] == b"LYRICS200" and lyrics[:6].isdigit():
            end -= 15 + int(lyrics[:6])
    footer = reader.at(end - 32, 32)
    if len(footer) == 32 and footer[:8] == b"APETAGEX":
        tag_size, flags = struct.unpack("<I4xI", footer[12:24])  # size counts items + footer
        end -= tag_size + (32 if flags & 0x80000000 else 0)
        # mutagen peeks 24 bytes before the tag for a stray header that old
        # PyMusepack left behind.
        end -= 24
    return max(0, reader.size - end)


_REGION_WALKERS: dict[str, Callable[[_Reader, int], tuple[int, int]]] = {
    "mp3": _mp3_regions, "aac": _adts_regions, "flac": _flac_regions, "ogg": _ogg_regions,
    "opus": _ogg_regions, "m4a": _mp4_regions, "wav": _wav_regions, "aiff": _aiff_regions,
}


# --------------------------------------------------------------------------
# loading with mutagen

_Views = list[dict[str, list[str]]]  # raw values per field, most trusted source first


def _load(fmt: str, f: _WatchedFile, peek: bytes, path: pathlib.Path,
          ) -> tuple[mutagen.FileType | None, _Views]:
    """mutagen's object for the container (None if it fails) and the tag views.

    A failure to parse is logged, not raised: the file is still audio.
    """
    kind = _mutagen_class(fmt, peek)
    audio = None
    if kind is not None:
        audio = _attempt(lambda: kind(f), f, path, fmt)
    tags = audio.tags if audio is not None else None
    if fmt in ("mp3", "aac"):
        if tags is None:  # MP3 fails whole when its stream does; the ID3 tag may be fine
            tags = _attempt(lambda: ID3(f), f, path, "ID3")
        ape = _attempt(lambda: APEv2(f), f, path, "APEv2")
        return audio, _id3_ape_views(tags, ape)
    if isinstance(tags, ID3):
        return audio, [_id3_view(tags)]
    if isinstance(tags, MP4Tags):
        return audio, [_mp4_view(tags)]
    if tags is not None:
        return audio, [_vorbis_view(tags)]
    return audio, []


def _mutagen_class(fmt: str, peek: bytes) -> type[mutagen.FileType] | None:
    if fmt == "ogg":
        return {"vorbis": OggVorbis, "flac": OggFLAC, "speex": OggSpeex}.get(_ogg_codec(peek))
    return {"mp3": MP3, "aac": AAC, "flac": FLAC, "opus": OggOpus, "m4a": MP4,
            "wav": WAVE, "aiff": AIFF}[fmt]


def _attempt(load: Callable[[], Any], f: _WatchedFile, path: pathlib.Path, what: str) -> Any:
    """load() or None if the content defeats it; a real OS read error is re-raised as is."""
    f.os_error = None
    f.seek(0)  # mutagen's parsers read from the current position, not from 0
    try:
        return load()
    except Exception as exc:  # noqa: BLE001 - corrupt input makes mutagen raise almost anything
        if f.os_error is not None:
            raise f.os_error from None
        if not _is_missing_tag(exc):
            log.warning("%s: cannot read %s (%s); keeping what was read", path, what, exc)
        return None


def _is_missing_tag(exc: Exception) -> bool:
    """A missing ID3/APEv2 tag is normal, not worth a warning."""
    return isinstance(exc, (ID3NoHeaderError, APENoHeaderError))


# --------------------------------------------------------------------------
# tag views: each source's raw values under our field names


def _id3_ape_views(id3: ID3 | None, ape: APEv2 | None) -> _Views:
    """ID3v2 over APEv2 over ID3v1: an ID3v1 tag (30 characters a field) is the last resort.

    mutagen merges ID3v1 frames into the ID3 object where v2 lacks them, and
    reports version 1.x when there was no v2 at all.
    """
    views = []
    if id3 is not None and id3.version >= (2, 0):
        views.append(_id3_view(id3))
    if ape is not None:
        views.append(_ape_view(ape))
    if id3 is not None and id3.version < (2, 0):
        views.append(_id3_view(id3))
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


def _id3_view(id3: ID3) -> dict[str, list[str]]:
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


def _vorbis_view(tags: mutagen.Tags) -> dict[str, list[str]]:
    fields = {key.lower(): value for key, value in tags.items()}
    return _collect({name: (lambda k=keys: _first(fields, k)) for name, keys in _VORBIS_KEYS.items()})


_APE_KEYS = {
    "artist": ("artist",), "albumartist": ("album artist", "albumartist"), "album": ("album",),
    "title": ("title",), "track": ("track",), "disc": ("disc", "discnumber"),
    "date": ("year", "date"), "genre": ("genre",), "compilation": ("compilation",),
}


def _ape_view(ape: APEv2) -> dict[str, list[str]]:
    fields = {key.lower(): value for key, value in ape.items() if not isinstance(value, APEBinaryValue)}

    def values(keys: tuple[str, ...]) -> list[str] | None:
        value = _first(fields, keys)
        if value is None:
            return None
        return list(value) if isinstance(value, APETextValue) else [value]  # text splits on NUL

    return _collect({name: (lambda k=keys: values(k)) for name, keys in _APE_KEYS.items()})


_MP4_KEYS = {"artist": "\xa9ART", "albumartist": "aART", "album": "\xa9alb",
             "title": "\xa9nam", "date": "\xa9day", "genre": "\xa9gen"}


def _mp4_view(tags: MP4Tags) -> dict[str, list[str]]:
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


# --------------------------------------------------------------------------
# normalization


def _track_info(fmt: str, codec: str, audio: mutagen.FileType | None, views: _Views,
                head: int, tail: int) -> TrackInfo:
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


def _values(views: _Views, name: str) -> list[str]:
    """Cleaned non-empty values of the first source that has any."""
    for view in views:
        values = [v.strip().strip("\x00").strip() for v in view.get(name, [])]
        values = [v for v in values if v]
        if values:
            return values
    return []


def _text(views: _Views, name: str) -> str | None:
    return "; ".join(_values(views, name)) or None


def _numbers(views: _Views, name: str, total_name: str) -> tuple[int | None, int | None]:
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


def _flag(views: _Views, name: str) -> bool:
    values = _values(views, name)
    return bool(values) and values[0].lower() in ("1", "true", "yes")


def _positive(info: Any, attr: str, kind: type[int] | type[float]) -> Any:
    """A stream fact as `kind` if mutagen knows it (0 and absent mean unknown)."""
    value = getattr(info, attr, None)
    try:
        return kind(value) if value and value > 0 else None
    except (TypeError, ValueError):
        return None


def _codec(fmt: str, audio: mutagen.FileType | None, reader: _Reader) -> str:
    """Codec from the parsed stream; "" when mutagen could not tell."""
    if fmt == "aiff":
        return _aiff_codec(reader)
    if audio is None:
        return {"flac": "flac", "opus": "opus", "aac": "aac"}.get(fmt, "")
    info = audio.info
    if isinstance(audio, MP3):
        return f"mp{info.layer}"
    if isinstance(audio, MP4):
        codec = (info.codec or "").lower()
        if codec.startswith("mp4a.40"):
            return "aac"
        return {"mp4a.69": "mp3", "mp4a.6b": "mp3"}.get(codec, codec)
    if isinstance(audio, WAVE):
        return "pcm" if info.audio_format in (1, 3, 0xFFFE) else ""
    return {OggVorbis: "vorbis", OggFLAC: "flac", OggSpeex: "speex", OggOpus: "opus",
            FLAC: "flac", AAC: "aac"}.get(type(audio), "")


_AIFC_PCM = frozenset({b"NONE", b"sowt", b"twos", b"raw ", b"in24", b"in32", b"fl32", b"fl64"})


def _aiff_codec(reader: _Reader) -> str:
    """AIFF is PCM; AIFC names its compression in COMM, after 18 bytes of stream facts."""
    if reader.at(8, 4) == b"AIFF":
        return "pcm"
    for kind, offset, size in _iff_chunks(reader, big_endian=True):
        if kind == b"COMM":
            return "pcm" if size >= 22 and reader.at(offset + 18, 4) in _AIFC_PCM else ""
    return ""
