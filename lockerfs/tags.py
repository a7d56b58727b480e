"""Reading one audio file: its container, normalized tags, audio facts and tag regions.

The entry points are read_track_info, and read_track_and_art for upload,
which also takes the embedded front cover from the same parse (artwork.py). The work is split
the way beets keeps mediafile apart:
  containers.py  bytes -> container (sniffed from content, never the name)
  regions.py     container structure -> head/tail tag regions
  tagviews.py    mutagen's tag objects -> normalized fields (TrackInfo)
This module opens the file, picks mutagen's parser for the sniffed container
(mutagen.File would pick by extension and fail on a mismatch) and ties the
three together.

Failure policy (mediafile's habit): a file whose content is no audio container
raises NotAudioError; a file whose container is known but whose tags or stream
cannot be parsed still yields a TrackInfo with what could be read, so it is
uploaded and named from its path; reading one field never raises.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pathlib
from collections.abc import Callable
from typing import Any

import mutagen
from mutagen.aac import AAC
from mutagen.ac3 import AC3
from mutagen.aiff import AIFF
from mutagen.apev2 import APENoHeaderError, APEv2
from mutagen.asf import ASF, ASFTags
from mutagen.dsdiff import DSDIFF
from mutagen.dsf import DSF
from mutagen.flac import FLAC
from mutagen.id3 import ID3, ID3NoHeaderError
from mutagen.monkeysaudio import MonkeysAudio
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, MP4Tags
from mutagen.musepack import Musepack
from mutagen.oggflac import OggFLAC
from mutagen.oggopus import OggOpus
from mutagen.oggspeex import OggSpeex
from mutagen.oggvorbis import OggVorbis
from mutagen.optimfrog import OptimFROG
from mutagen.trueaudio import TrueAudio
from mutagen.wave import WAVE
from mutagen.wavpack import WavPack

from lockerfs import artwork, tagviews
from lockerfs.containers import (  # noqa: F401 - re-exported: callers know them as tags.*
    AUDIO_EXTENSIONS,
    CONTENT_TYPES,
    FORMAT_EXTENSIONS,
    PEEK,
    Reader,
    canonical_extension,
    container,
    id3v2_end,
    sniff_format,
)
from lockerfs.regions import iff_chunks, tag_regions
from lockerfs.trackinfo import TrackInfo

log = logging.getLogger(__name__)


class NotAudioError(Exception):
    """The file is empty or its content is no audio container we read; str() says which."""


def read_track_info(path: pathlib.Path) -> TrackInfo:
    """Container, tags, audio facts and tag regions of one file.

    Raises NotAudioError for an empty or non-audio file; OSError as raised.
    """
    return _read(path, art=False)[0]


def read_track_and_art(path: pathlib.Path) -> tuple[TrackInfo, bytes | None]:
    """read_track_info, and the front cover embedded in the file (artwork.py), from the same parse."""
    return _read(path, art=True)


def _read(path: pathlib.Path, art: bool) -> tuple[TrackInfo, bytes | None]:
    with _WatchedFile(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise NotAudioError("empty file")
        reader = Reader(f, size)
        start = id3v2_end(reader, 0)
        peek = reader.at(start, PEEK)
        fmt = container(peek, after_id3=start > 0) or ("mp3" if start else "")
        if not fmt:
            raise NotAudioError("not an audio file (content not recognized)")
        audio, views, tag_objects = _load(fmt, f, path)
        codec = _codec(fmt, audio, reader)
        head, tail = tag_regions(fmt, reader, start)
        info = tagviews.track_info(fmt, codec, audio, views, head, tail)
        return _fill_gaps(info, fmt, reader, start), artwork.front_cover(audio, tag_objects) if art else None


def _fill_gaps(info: TrackInfo, fmt: str, reader: Reader, start: int) -> TrackInfo:
    """Stream facts mutagen leaves out but the header or the size tell.

    A lossless stream's bitrate is its average, as players show it; TrueAudio's
    header has the channel count (byte 6) that mutagen does not report.
    """
    changes: dict[str, int] = {}
    if info.bitrate is None and info.duration:
        changes["bitrate"] = round(reader.size * 8 / info.duration)
    if fmt == "tta" and info.channels is None:
        header = reader.at(start, 8)
        if len(header) == 8 and 0 < (channels := int.from_bytes(header[6:8], "little")) <= 64:
            changes["channels"] = channels
    return dataclasses.replace(info, **changes) if changes else info


# --------------------------------------------------------------------------
# files


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


# --------------------------------------------------------------------------
# loading with mutagen

_PARSERS: dict[str, type[mutagen.FileType]] = {
    "mp3": MP3, "aac": AAC, "ac3": AC3, "flac": FLAC, "ogg": OggVorbis, "opus": OggOpus,
    "oga": OggFLAC, "spx": OggSpeex, "m4a": MP4, "m4b": MP4, "wav": WAVE, "aiff": AIFF,
    "wma": ASF, "ape": MonkeysAudio, "wv": WavPack, "mpc": Musepack, "dsf": DSF, "dff": DSDIFF,
    "tta": TrueAudio, "ofr": OptimFROG,
}
# Containers that carry no tag structure of their own: taggers put ID3v2 at
# the start and APEv2 and/or ID3v1 at the end (MP3, raw AAC and AC-3, and
# the APEv2 family, where an ID3v1 may still follow the APEv2 tag).
_ID3_APE = frozenset({"mp3", "aac", "ac3", "tta", "ape", "wv", "mpc", "ofr"})


def _load(fmt: str, f: _WatchedFile, path: pathlib.Path
          ) -> tuple[mutagen.FileType | None, tagviews.Views, list[Any]]:
    """mutagen's object for the container (None if it fails), the tag views, and the tag
    objects they were made from (where artwork.py finds pictures).

    A failure to parse is logged, not raised: the file is still audio.
    """
    kind = _PARSERS[fmt]
    audio = _attempt(lambda: kind(f), f, path, fmt)
    tags = audio.tags if audio is not None else None
    if fmt in _ID3_APE:
        # MP3 fails whole when its stream does; the tags may still be fine
        id3 = tags if isinstance(tags, ID3) else _attempt(lambda: ID3(f), f, path, "ID3")
        ape = tags if isinstance(tags, APEv2) else _attempt(lambda: APEv2(f), f, path, "APEv2")
        return audio, tagviews.id3_ape_views(id3, ape), [id3, ape]
    if isinstance(tags, ID3):
        return audio, [tagviews.id3_view(tags)], [tags]
    if isinstance(tags, MP4Tags):
        return audio, [tagviews.mp4_view(tags)], [tags]
    if isinstance(tags, ASFTags):
        return audio, [tagviews.asf_view(tags)], [tags]
    if tags is not None:
        return audio, [tagviews.vorbis_view(tags)], [tags]
    return audio, [], []


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
# codec

# Codec per container where the container admits only one (or the stream could not be parsed).
_SOLE_CODECS = {
    "flac": "flac", "opus": "opus", "aac": "aac", "oga": "flac", "spx": "speex", "ogg": "vorbis",
    "ape": "ape", "wv": "wavpack", "mpc": "musepack", "tta": "tta", "ofr": "optimfrog", "dsf": "dsd",
}


def _codec(fmt: str, audio: mutagen.FileType | None, reader: Reader) -> str:
    """Codec from the parsed stream; "" when mutagen could not tell."""
    if fmt == "aiff":
        return _aiff_codec(reader)
    if audio is None:
        return {"ogg": ""}.get(fmt, _SOLE_CODECS.get(fmt, ""))
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
    if isinstance(audio, ASF):
        return _wma_codec(info.codec_name or "")
    if isinstance(audio, AC3):
        return "eac3" if getattr(info, "codec", "") == "ec-3" else "ac3"
    if isinstance(audio, DSDIFF):
        return {"DSD": "dsd", "DST": "dst"}.get(info.compression or "", "")
    return _SOLE_CODECS.get(fmt, "")


def _wma_codec(name: str) -> str:
    """WMA's flavour from the codec name in its header ("Windows Media Audio 9.2 Lossless")."""
    for word, codec in (("Lossless", "wmalossless"), ("Professional", "wmapro"), ("Voice", "wmavoice")):
        if word in name:
            return codec
    return "wma" if "Windows Media Audio" in name else ""


_AIFC_PCM = frozenset({b"NONE", b"sowt", b"twos", b"raw ", b"in24", b"in32", b"fl32", b"fl64"})


def _aiff_codec(reader: Reader) -> str:
    """AIFF is PCM; AIFC names its compression in COMM, after 18 bytes of stream facts."""
    if reader.at(8, 4) == b"AIFF":
        return "pcm"
    for kind, offset, size in iff_chunks(reader, big_endian=True):
        if kind == b"COMM":
            return "pcm" if size >= 22 and reader.at(offset + 18, 4) in _AIFC_PCM else ""
    return ""
