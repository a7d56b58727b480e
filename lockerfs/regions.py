"""Tag regions: the bytes a tag reader needs from each end of an audio file.

head_size and tail_size are computed by walking the container's own headers
(a few reads of a few bytes, whatever the file size). The mount fetches both
ends at open so that a player's tag scan costs one round trip per file, not
one per read. tests/unit/test_tags.py proves, for every container, that
mutagen reads nothing outside them.

Where mutagen would read all through a file (a WavPack stream of unknown
length, a DST-compressed DSDIFF), the head is the whole file: honest, and rare.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator

from lockerfs.containers import (
    SNIFF_SIZE,
    Reader,
    ac3_frame_length,
    adts_frames,
    has_vbr_header,
    mpeg_chain,
    mpeg_frame,
    ogg_codec,
)

log = logging.getLogger(__name__)

# mutagen.File() reads the first 128 bytes to pick a parser and, for every
# file, the last 160 (APEv2File.score); TagLib looks for ID3v1 in the last 128
# of MP3 and FLAC. Regions never go below these, so a scan never misses.
PROBE_HEAD = 128
PROBE_TAIL = 160
# A reader cannot know where the last Ogg page starts, so it reads the largest
# possible page (27 + 255 + 255 * 255 = 65,307 bytes) from the end; mutagen
# reads 64 KiB, libavformat 65,307.
OGG_TAIL = 64 * 1024


def tag_regions(fmt: str, reader: Reader, start: int) -> tuple[int, int]:
    """(head_size, tail_size) of a file of container `fmt` whose ID3v2 tags end at `start`.

    Each is widened to what mutagen.File probes; they never overlap.
    """
    try:
        head, tail = _WALKERS[fmt](reader, start)
    except (struct.error, ValueError, IndexError) as exc:  # garbage headers: the whole file
        log.debug("cannot walk %s structure: %s", fmt, exc)
        head, tail = reader.size, 0
    size = reader.size
    head = min(size, max(head, PROBE_HEAD))
    tail = min(size - head, max(tail, PROBE_TAIL))
    return head, tail


def _mp3_regions(reader: Reader, start: int) -> tuple[int, int]:
    """ID3v2 tags plus the frames mutagen inspects; ID3v1/APEv2/Lyrics3 at the end.

    mutagen syncs on the first frame after the tag and stops there if it holds
    a Xing/Info or VBRI header (length and bitrate come from it); otherwise it
    checks four frames in a row. TagLib also checks that the next frame header
    follows, hence 4 more bytes. mutagen searches for the sync in doubling
    chunks (2, 4, 8 ... bytes), so with junk before the first frame it may read
    up to twice that gap plus 2.
    """
    data = reader.at(start, SNIFF_SIZE)
    pos = data.find(b"\xff")
    while 0 <= pos < len(data) - 3:
        frame = mpeg_frame(data, pos)
        if frame is not None:
            end = pos + frame.length if has_vbr_header(data, pos, frame) else mpeg_chain(data, 4, pos)
            if end is not None:
                return max(start + end + 4, start + 2 * pos + 2), trailing_tags_size(reader)
        pos = data.find(b"\xff", pos + 1)
    return start, trailing_tags_size(reader)


def _adts_regions(reader: Reader, start: int) -> tuple[int, int]:
    """ID3v2 plus the first 100 ADTS frames, from which mutagen averages the bitrate.

    mutagen then syncs on the next frame (its first bytes), so its header is included.
    """
    pos = start
    for _ in range(100):
        end = adts_frames(reader.at(pos, 7), 0, 1)
        if end is None:
            break
        pos += end
    return pos + 7, trailing_tags_size(reader)


def _ac3_regions(reader: Reader, start: int) -> tuple[int, int]:
    """The first frame, whose header mutagen parses bit by bit; APEv2/ID3v1 at the end."""
    length = ac3_frame_length(reader.at(start, 6))
    return start + (length or 0), trailing_tags_size(reader)


def _flac_regions(reader: Reader, start: int) -> tuple[int, int]:
    """"fLaC" and the metadata blocks up to the one flagged last (an ID3v2 may precede)."""
    pos = start + 4
    while pos < reader.size:
        header = reader.at(pos, 4)
        if len(header) < 4:
            break
        pos += 4 + int.from_bytes(header[1:4], "big")
        if header[0] & 0x80:
            break
    return pos, trailing_tags_size(reader)


def _ogg_regions(reader: Reader, start: int) -> tuple[int, int]:
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
    return pos, OGG_TAIL


def _ogg_header_packets(page: bytes) -> int:
    """Header packets of the stream whose first page this is.

    Vorbis: identification, comments, setup. Opus: OpusHead, OpusTags. Speex:
    header, comments and the extra headers it counts. FLAC-in-Ogg: its first
    packet counts the metadata packets after it (0: unknown, assume comments).
    """
    codec = ogg_codec(page)
    packet = page[27 + page[26]:] if len(page) > 27 else b""
    if codec == "flac" and len(packet) >= 9:
        return 1 + (int.from_bytes(packet[7:9], "big") or 1)
    if codec == "speex" and len(packet) >= 72:
        return 2 + int.from_bytes(packet[68:72], "little")
    return {"vorbis": 3, "opus": 2}.get(codec, 1)


def _mp4_regions(reader: Reader, start: int) -> tuple[int, int]:
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


def iff_chunks(reader: Reader, big_endian: bool, wide: bool = False) -> Iterator[tuple[bytes, int, int]]:
    """(id, payload offset, payload size) of each top-level chunk after the form header.

    RIFF/AIFF have 32-bit sizes after a 12-byte header; DSDIFF (wide) 64-bit
    sizes after a 16-byte one.
    """
    fmt = (">" if big_endian else "<") + ("4sQ" if wide else "4sI")
    step = struct.calcsize(fmt)
    pos = 16 if wide else 12
    while pos + step <= reader.size:
        kind, size = struct.unpack(fmt, reader.at(pos, step))
        yield kind, pos + step, size
        pos += step + size + (size & 1)  # chunks are padded to even lengths


def _iff_regions(reader: Reader, big_endian: bool, audio_id: bytes, preamble: int,
                 wide: bool = False) -> tuple[int, int]:
    """Chunks before the audio payload; chunks after it (where taggers append ID3 and LIST)."""
    for kind, offset, size in iff_chunks(reader, big_endian, wide):
        if kind == audio_id:
            end = offset + size + (size & 1)
            return offset + preamble, max(0, reader.size - end)
    return reader.size, 0


def _wav_regions(reader: Reader, start: int) -> tuple[int, int]:
    return _iff_regions(reader, False, b"data", 0)


def _aiff_regions(reader: Reader, start: int) -> tuple[int, int]:
    # SSND opens with offset and block-size words (8 bytes) before the samples.
    return _iff_regions(reader, True, b"SSND", 8)


def _dff_regions(reader: Reader, start: int) -> tuple[int, int]:
    """DSDIFF: FVER and PROP before the "DSD " sound data; the ID3 chunk after it.

    DST-compressed sound sits in a "DST " chunk whose frames mutagen walks one
    by one: no pair of regions covers that.
    """
    for kind, _, _ in iff_chunks(reader, big_endian=True, wide=True):
        if kind == b"DST ":
            return reader.size, 0
    return _iff_regions(reader, True, b"DSD ", 0, wide=True)


def _dsf_regions(reader: Reader, start: int) -> tuple[int, int]:
    """DSF: the DSD, fmt and data chunk headers; the ID3v2 tag the DSD chunk points at."""
    header = reader.at(0, 28 + 52 + 12)
    metadata = struct.unpack("<Q", header[20:28])[0]
    tail = reader.size - metadata if 0 < metadata < reader.size else 0
    return len(header), tail


def _asf_regions(reader: Reader, start: int) -> tuple[int, int]:
    """ASF (WMA): the Header Object, where every tag lives, and the Data Object's own header."""
    size = struct.unpack("<Q", reader.at(16, 8))[0]
    return size + 50, trailing_tags_size(reader)


def _ape_regions(reader: Reader, start: int) -> tuple[int, int]:
    """Monkey's Audio: descriptor, header, seek table and stored WAV header; APEv2 at the end.

    mutagen reads 76 bytes; a player also needs the seek table to find frames.
    Files older than version 3.98 have no descriptor: their 76 bytes suffice.
    """
    descriptor = reader.at(start, 24)
    version = struct.unpack("<H", descriptor[4:6])[0]
    if version < 3980:
        return start + 76, trailing_tags_size(reader)
    sizes = struct.unpack("<IIII", descriptor[8:24])  # descriptor, header, seek table, WAV header
    return start + max(76, sum(sizes)), trailing_tags_size(reader)


def _wavpack_regions(reader: Reader, start: int) -> tuple[int, int]:
    """WavPack: the first block header, which holds the stream's length.

    A stream whose length is unknown (or that does not start at sample 0)
    makes mutagen add up every block's header: then the whole file is needed.
    """
    header = reader.at(start, 32)
    total_samples, block_index = struct.unpack("<II", header[12:20])
    if total_samples == 0xFFFFFFFF or block_index != 0:
        return reader.size, 0
    return start + 32, trailing_tags_size(reader)


def _musepack_regions(reader: Reader, start: int) -> tuple[int, int]:
    """Musepack: SV7's 32-byte header, or SV8's packets up to the first audio packet's key."""
    if reader.at(start, 4) != b"MPCK":
        return start + 32, trailing_tags_size(reader)
    pos = start + 4
    while pos < reader.size:
        packet = reader.at(pos, 11)  # key (2 bytes) and size (up to 9 bytes)
        if len(packet) < 2 or packet[:2] in (b"AP", b"SE"):
            return pos + 2, trailing_tags_size(reader)
        size = 0
        for index, byte in enumerate(packet[2:], 2):
            size = (size << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        else:
            raise ValueError("Musepack packet size runs on")
        if size < index + 1:
            raise ValueError("Musepack packet shorter than its header")
        pos += size
    return pos, trailing_tags_size(reader)


def _tta_regions(reader: Reader, start: int) -> tuple[int, int]:
    """TrueAudio: ID3v2, the 22-byte header and the seek table after it; APEv2/ID3v1 at the end."""
    header = reader.at(start, 22)
    rate, samples = struct.unpack("<II", header[10:18])
    frame_samples = rate * 256 // 245 if rate else 0
    frames = -(-samples // frame_samples) if frame_samples else 0
    seek_table = 4 * frames + 4 if 22 + 4 * frames + 4 <= reader.size - start else 0
    return start + 22 + seek_table, trailing_tags_size(reader)


def _optimfrog_regions(reader: Reader, start: int) -> tuple[int, int]:
    """OptimFROG: mutagen reads the first 76 bytes (the "OFR " header and what follows)."""
    return start + 76, trailing_tags_size(reader)


def trailing_tags_size(reader: Reader) -> int:
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


_WALKERS: dict[str, Callable[[Reader, int], tuple[int, int]]] = {
    "mp3": _mp3_regions, "aac": _adts_regions, "ac3": _ac3_regions, "flac": _flac_regions,
    "ogg": _ogg_regions, "opus": _ogg_regions, "oga": _ogg_regions, "spx": _ogg_regions,
    "m4a": _mp4_regions, "m4b": _mp4_regions, "wav": _wav_regions, "aiff": _aiff_regions,
    "dff": _dff_regions, "dsf": _dsf_regions, "wma": _asf_regions, "ape": _ape_regions,
    "wv": _wavpack_regions, "mpc": _musepack_regions, "tta": _tta_regions, "ofr": _optimfrog_regions,
}
