"""Which audio container a file is, from its first bytes; and what each container is called.

The container is decided from content, never from the file's name: a player
sees the extension the locker gives it, so that extension must match the
bytes. Every container lockerfs stores has one canonical extension
(FORMAT_EXTENSIONS) and one MIME type (CONTENT_TYPES), so that an object
fetched through a presigned URL plays in a browser.

Container names are TrackInfo.format values; they follow the canonical
extension (Ogg Opus is "opus", FLAC in Ogg "oga", Speex in Ogg "spx", WMA in
ASF "wma"), so that the layout's {format} reads as users know it.

An MPEG audio or ADTS sync is only 12 bits, and an AC-3 sync 16: a lone
header proves little, so those need the next frame to follow, unless an
ID3v2 tag already said "audio".
"""

from __future__ import annotations

import io
from typing import NamedTuple

# Extensions a file may carry and be taken for audio before its content is
# read; files with other extensions are sniffed too (see upload).
AUDIO_EXTENSIONS: frozenset[str] = frozenset({
    "mp3", "mp2", "mpga", "flac", "ogg", "oga", "opus", "spx", "m4a", "m4b", "mp4",
    "aac", "adts", "alac", "wav", "wave", "aif", "aiff", "aifc", "wma", "asf", "ape",
    "wv", "mpc", "mp+", "mpp", "dsf", "dff", "tta", "ofr", "ofs", "ac3", "eac3",
})

# Canonical extension per container; "aac" is a raw ADTS stream.
FORMAT_EXTENSIONS: dict[str, str] = {
    "flac": "flac", "mp3": "mp3", "ogg": "ogg", "opus": "opus", "m4a": "m4a",
    "wav": "wav", "aiff": "aiff", "aac": "aac", "wma": "wma", "ape": "ape", "wv": "wv",
    "mpc": "mpc", "dsf": "dsf", "dff": "dff", "tta": "tta", "ofr": "ofr", "spx": "spx",
    "oga": "oga", "ac3": "ac3", "m4b": "m4b",
}

# Extensions kept as the file had them: a name the content cannot tell apart
# from the canonical one (OptimFROG DualStream files carry the same header).
KEPT_EXTENSIONS: dict[str, frozenset[str]] = {"ofr": frozenset({"ofs"})}

CONTENT_TYPES: dict[str, str] = {
    "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg", "opus": "audio/ogg",
    "oga": "audio/ogg", "spx": "audio/ogg", "m4a": "audio/mp4", "m4b": "audio/mp4",
    "wav": "audio/wav", "aiff": "audio/aiff", "aac": "audio/aac", "ac3": "audio/ac3",
    "wma": "audio/x-ms-wma", "ape": "audio/x-ape", "wv": "audio/x-wavpack",
    "mpc": "audio/x-musepack", "dsf": "audio/x-dsf", "dff": "audio/x-dff",
    "tta": "audio/x-tta", "ofr": "audio/x-optimfrog",
}

SNIFF_SIZE = 64 * 1024  # enough of a file's start to tell its container
PEEK = 16 * 1024  # enough to see two MPEG, ADTS or AC-3 frames after a tag

_ASF_HEADER_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


def canonical_extension(fmt: str, name_ext: str) -> str:
    """The extension a file of container `fmt` is stored under, given the one it had."""
    name_ext = name_ext.lower()
    if name_ext in KEPT_EXTENSIONS.get(fmt, ()):
        return name_ext
    return FORMAT_EXTENSIONS[fmt]


def name_extension(name: str) -> str:
    """A file name's extension as a user meant it: lower case, without trailing dots or spaces."""
    stem = name.rstrip(". ")
    dot = stem.rfind(".")
    return stem[dot + 1:].lower() if dot > 0 else ""


def sniff_format(head: bytes) -> str:
    """Container of a file from its first bytes (~64 KiB); "" if not audio.

    An ID3v2 tag is skipped first (it may precede MP3, ADTS, FLAC, TTA,
    Musepack); when the tag runs past `head`, MP3 is the answer, as for
    almost every such file.
    """
    reader = Reader(io.BytesIO(head), len(head))
    start = id3v2_end(reader, 0)
    if start == 0:
        return container(head[:PEEK])
    return container(head[start:start + PEEK], after_id3=True) or "mp3"


class Reader:
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


def id3v2_end(reader: Reader, offset: int) -> int:
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


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"fLaC", "flac"), (b"MAC ", "ape"), (b"wvpk", "wv"), (b"MPCK", "mpc"),
    (b"TTA1", "tta"), (b"OFR ", "ofr"), (_ASF_HEADER_GUID, "wma"),
)
_VIDEO_BRANDS = frozenset({b"qt  ", b"M4V ", b"M4VH", b"M4VP"})
_OGG_FORMATS = {"vorbis": "ogg", "opus": "opus", "flac": "oga", "speex": "spx"}


def container(data: bytes, after_id3: bool = False) -> str:
    """Container whose header starts `data` ("" if none); after_id3 relaxes frame checks."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"OggS":
        return _OGG_FORMATS.get(ogg_codec(data), "ogg")
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _VIDEO_BRANDS or brand[:3] in (b"3gp", b"3g2"):
            return ""  # a QuickTime movie, an M4V or a phone video: not music to lay out
        return "m4b" if brand == b"M4B " else "m4a"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if data[:4] == b"DSD " and data[4:12] == (28).to_bytes(8, "little"):
        return "dsf"
    if data[:4] == b"FRM8" and data[12:16] == b"DSD ":
        return "dff"
    if data[:3] == b"MP+" and len(data) > 3 and data[3] & 0x0F >= 7:
        return "mpc"  # Musepack SV7 (.mp+)
    frames = 1 if after_id3 else 2
    if ac3_frames(data, 0, frames) is not None:
        return "ac3"
    if adts_frames(data, 0, frames) is not None:
        return "aac"
    if mpeg_chain(data, frames) is not None:
        return "mp3"
    return ""


def ogg_codec(page: bytes) -> str:
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
# MPEG audio, ADTS and AC-3 frames

_MPEG_BITRATES = {  # kbit/s by (version 1 or 2, layer); MPEG 2.5 uses version 2's
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {1: (44100, 48000, 32000), 2: (22050, 24000, 16000), 25: (11025, 12000, 8000)}


class MpegFrame(NamedTuple):
    length: int  # bytes, header included
    vbr_header_at: tuple[int, ...]  # where a Xing/Info or VBRI header would sit


def mpeg_frame(data: bytes, pos: int) -> MpegFrame | None:
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
        return MpegFrame(length, ())
    # Xing/Info sits after the side information; VBRI always at 36.
    side = (21 if mono else 36) if version == 1 else (13 if mono else 21)
    return MpegFrame(length, (side, 36))


def has_vbr_header(data: bytes, pos: int, frame: MpegFrame) -> bool:
    return any(data[pos + at:pos + at + 4] in (b"Xing", b"Info", b"VBRI") for at in frame.vbr_header_at)


def mpeg_chain(data: bytes, count: int, pos: int = 0) -> int | None:
    """End of `count` consecutive MPEG frames starting at `pos`, or None.

    A chain cut short by the end of `data` counts: a short file is still MP3.
    """
    for index in range(count):
        if index and pos >= len(data):
            return pos
        frame = mpeg_frame(data, pos)
        if frame is None:
            return None
        pos += frame.length
    return pos


def adts_frames(data: bytes, pos: int, count: int) -> int | None:
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


# AC-3 bit rates (kbit/s) by frmsizecod // 2 (ATSC A/52, table 5.18)
_AC3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640)


def ac3_frame_length(header: bytes) -> int | None:
    """Bytes in the AC-3 or E-AC-3 frame whose header starts `header` (6+ bytes), if valid."""
    if len(header) < 6 or header[:2] != b"\x0b\x77":
        return None
    bsid = header[5] >> 3
    if bsid <= 10:  # AC-3: sample rate and frame size code
        fscod, frmsizecod = header[4] >> 6, header[4] & 0x3F
        if fscod == 3 or frmsizecod > 37:
            return None
        kbits = _AC3_BITRATES[frmsizecod >> 1]
        if fscod == 0:  # 48 kHz
            return kbits * 4
        if fscod == 2:  # 32 kHz
            return kbits * 6
        return (kbits * 1000 * 1536 // 44100 // 16 + (frmsizecod & 1)) * 2  # 44.1 kHz
    if 11 <= bsid <= 16:  # E-AC-3 carries its own frame size (in 16-bit words, minus one)
        if header[2] >> 6 == 3:  # reserved stream type
            return None
        return ((((header[2] & 0x07) << 8) | header[3]) + 1) * 2
    return None


def ac3_frames(data: bytes, pos: int, count: int) -> int | None:
    """End of `count` consecutive AC-3 frames starting at `pos`, or None."""
    for index in range(count):
        if index and pos >= len(data):
            return pos
        length = ac3_frame_length(data[pos:pos + 6])
        if length is None:
            return None
        pos += length
    return pos
