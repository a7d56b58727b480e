"""Deterministic test music: every format lockerfs reads, tagged the ways real libraries are.

Tests and benchmarks need music with known tags and known bytes, and the project
never downloads any. soundfile (libsndfile) encodes FLAC, MP3, Ogg Vorbis, Opus,
WAV and AIFF; ffmpeg, when installed, encodes M4A (AAC and ALAC); Pillow encodes
JPEG covers; mutagen writes the tags. The same seed gives the same bytes on every
run, and every track's audio differs so that no two tracks share a SHA-256.

Usable as a module (``write_track``, ``synthesize_library``, ``write_big_flac``,
``write_big_mp3``) and as a command:

    python scripts/synth_library.py OUT_DIR [--profile small|bench|large|purchased|purchased-small]
                                    [--seed N] [--big-flac-mb MB]

Profiles: "small" (every format and tagging habit, a few seconds each),
"bench" (about 400 tracks, 1 GB), "large" (two big files that take uploads
past the multipart threshold and reads past the memory cache: a FLAC of
LARGE_FLAC_MB and an MP3 of LARGE_MP3_MB MiB, about 25 s to write),
"purchased" (112 tracks, 320 MB, shaped like bought music: VBR MP3 with and
without a Xing frame, FLAC, M4A with moov last and first, Ogg, Opus, embedded
JPEG/PNG art of 50 KB to 1.5 MB, cover.jpg side files, one 24-bit/96 kHz
FLAC) and "purchased-small" (the same albums, two shorter tracks each, for
tests).

which also writes OUT_DIR/manifest.json for shell scripts.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import mutagen.id3
import numpy as np
import soundfile as sf
from mutagen.aiff import AIFF
from mutagen.apev2 import APEv2
from mutagen.flac import FLAC, Picture
from mutagen.mp4 import MP4, MP4Cover
from mutagen.ogg import OggPage
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

import synth_formats

log = logging.getLogger("synth_library")

FFMPEG = shutil.which("ffmpeg")

# write_track's fmt -> (container reported by SynthTrack.format, codec)
FORMATS: dict[str, tuple[str, str]] = {
    "flac": ("flac", "flac"),
    "mp3": ("mp3", "mp3"),
    "ogg": ("ogg", "vorbis"),
    "opus": ("opus", "opus"),
    "wav": ("wav", "pcm"),
    "aiff": ("aiff", "pcm"),
    "m4a": ("m4a", "aac"),
    "alac": ("m4a", "alac"),
}
M4A_FORMATS = frozenset({"m4a", "alac"})
EXTENSIONS = {"flac": "flac", "mp3": "mp3", "ogg": "ogg", "opus": "opus",
              "wav": "wav", "aiff": "aiff", "m4a": "m4a", "alac": "m4a"}
# The other containers (WMA, APE, WavPack, Musepack, DSD, TTA, ...) come from synth_formats.
FORMATS |= {fmt: (container, codec) for fmt, (container, codec, _) in synth_formats.FORMATS.items()}
EXTENSIONS |= {fmt: ext for fmt, (_, _, ext) in synth_formats.FORMATS.items()}

_SOUNDFILE_ARGS = {  # fmt -> (libsndfile format, subtype)
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "wav": ("WAV", "PCM_16"),
    "aiff": ("AIFF", "PCM_16"),
}
_OPUS_RATE = 48000  # libopus accepts only 8/12/16/24/48 kHz
_RATE = 44100
_HIRES_RATE = 96000
_OGG_BLOCK_S = 10


@dataclass(frozen=True)
class SynthTrack:
    """One synthesized file and the tags that were written into it."""

    path: pathlib.Path  # absolute path written
    format: str  # container, as lockerfs.tags should report it
    codec: str  # flac mp3 vorbis opus pcm aac alac
    tags: dict[str, object]  # absent keys were not tagged


# --------------------------------------------------------------------------
# audio and cover bytes


def _samples(frames: int, rate: int, seed: int, noise: bool) -> np.ndarray:
    """Stereo float32 audio: a seed-specific chord (compresses well) or noise (does not).

    Float, not int16: libsndfile's MP3 encoder gives different bytes on every
    run when fed int16 (seen with libsndfile 1.2.2), and the same bytes for float.
    """
    rng = np.random.default_rng(seed)
    if noise:
        return rng.uniform(-0.37, 0.37, size=(frames, 2)).astype(np.float32)
    t = np.arange(frames) / rate
    freqs = rng.uniform(110.0, 880.0, size=2)
    left = np.sin(2 * np.pi * freqs[0] * t) + 0.5 * np.sin(2 * np.pi * freqs[1] * t)
    right = np.sin(2 * np.pi * freqs[1] * t)
    hiss = rng.normal(0.0, 0.01, size=(frames, 2))
    return (np.stack([left, right], axis=1) * 0.3 + hiss).astype(np.float32)


def _dynamic_samples(frames: int, rate: int, seed: int) -> np.ndarray:
    """Stereo float32 audio that changes loudness and texture every few seconds:
    encoders then write frames of varying size, as they do for music (noise
    alone gives every VBR MP3 frame the top bitrate)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    freqs = rng.uniform(110.0, 880.0, size=3)
    tone = sum(np.sin(2 * np.pi * f * t) for f in freqs) / 3
    period, phase = rng.uniform(5.0, 12.0), rng.uniform(0.0, 2 * np.pi)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * t / period + phase)
    hiss = rng.uniform(-0.25, 0.25, size=(frames, 2)) * envelope[:, None]
    return (hiss + 0.2 * tone[:, None]).astype(np.float32)


def _image_mime(data: bytes) -> str:
    return "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"


def make_jpeg(target_bytes: int, seed: int = 0) -> bytes:
    """A square RGB JPEG of about `target_bytes` (within a few percent).

    A gradient under noise at quality 90 costs about half a byte a pixel, so
    the side follows from the target; two corrections home in on it. Pillow's
    encoder (libjpeg) gives the same bytes for the same pixels.
    """
    import io

    from PIL import Image  # only the purchased profile needs a JPEG encoder

    side = max(16, int((target_bytes / 0.53) ** 0.5))
    for _attempt in range(3):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:side, 0:side]
        base = np.stack([x, y, (x + y) // 2], axis=2) * 255 // side + rng.integers(0, 64, size=3)
        pixels = np.clip(base + rng.integers(-40, 40, size=(side, side, 3)), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=90)
        data = out.getvalue()
        if abs(len(data) - target_bytes) < target_bytes * 0.03:
            break
        side = max(16, int(side * (target_bytes / len(data)) ** 0.5))
    return data


def make_png(width: int, height: int, seed: int = 0, noise: bool = False) -> bytes:
    """A valid RGB PNG built by hand: a gradient (tiny) or noise (about 3*w*h bytes)."""
    rng = np.random.default_rng(seed)
    if noise:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    else:
        y, x = np.mgrid[0:height, 0:width]
        base = rng.integers(0, 256, size=3)
        pixels = ((np.stack([x, y, x + y], axis=2) * 8 + base) % 256).astype(np.uint8)
    rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _encode(path: pathlib.Path, fmt: str, audio: np.ndarray, rate: int, seed: int, variant: str) -> None:
    """Write the audio stream; tags come afterwards."""
    if fmt in M4A_FORMATS:
        _encode_m4a(path, fmt, audio, faststart=variant == "faststart")
        return
    container, subtype = _SOUNDFILE_ARGS[fmt]
    if variant == "hires":
        subtype = "PCM_24"
    extra = {"bitrate_mode": "CONSTANT", "compression_level": 0.0} if variant == "cbr320" else {}
    if container == "OGG" and len(audio) > _OGG_BLOCK_S * rate:
        # libsndfile's Vorbis encoder copies a whole write onto the stack: a
        # minute of audio in one write overflows it (a segfault), so long
        # tracks go in blocks (short ones keep their one-write bytes)
        with sf.SoundFile(path, "w", rate, audio.shape[1], format=container, subtype=subtype) as out:
            for start in range(0, len(audio), _OGG_BLOCK_S * rate):
                out.write(audio[start:start + _OGG_BLOCK_S * rate])
    else:
        sf.write(path, audio, rate, format=container, subtype=subtype, **extra)
    if container == "OGG":
        _set_ogg_serial(path, seed & 0xFFFFFFFF)
    if variant == "noxing":
        _strip_xing_frame(path)


def _encode_m4a(path: pathlib.Path, fmt: str, audio: np.ndarray, faststart: bool) -> None:
    """AAC or ALAC in an M4A via ffmpeg; bitexact so that no version or date is written."""
    if FFMPEG is None:
        raise RuntimeError("ffmpeg not installed")
    codec = ["-c:a", "aac", "-b:a", "128k"] if fmt == "m4a" else ["-c:a", "alac"]
    cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "s16le", "-ar", str(_RATE), "-ac", "2", "-i", "pipe:0", *codec,
           "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
           *(["-movflags", "+faststart"] if faststart else []), "-f", "ipod", str(path)]
    subprocess.run(cmd, input=(audio * 32767).astype(np.int16).tobytes(), check=True)


def _set_ogg_serial(path: pathlib.Path, serial: int) -> None:
    """libsndfile picks a random Ogg stream serial; fix it so the bytes repeat."""
    pages = []
    with path.open("rb") as f:
        while True:
            try:
                page = OggPage(f)
            except EOFError:
                break
            page.serial = serial
            pages.append(page.write())
    path.write_bytes(b"".join(pages))


def _strip_xing_frame(path: pathlib.Path) -> None:
    """Drop the first MPEG frame when it is a Xing/Info (LAME) frame.

    What is left is a VBR stream whose first frame is audio: a duration
    reader finds no frame count and must estimate or walk the frames.
    Handles the MPEG-1 Layer III that libsndfile writes; anything else raises.
    """
    data = path.read_bytes()
    header = int.from_bytes(data[:4], "big")
    if header >> 21 != 0x7FF or (header >> 19) & 3 != 3 or (header >> 17) & 3 != 1:
        raise ValueError(f"{path}: not MPEG-1 Layer III at offset 0")
    bitrate = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)[(header >> 12) & 15]
    sample_rate = (44100, 48000, 32000)[(header >> 10) & 3]
    length = 144_000 * bitrate // sample_rate + ((header >> 9) & 1)
    if data[4:length].find(b"Xing") < 0 and data[4:length].find(b"Info") < 0:
        raise ValueError(f"{path}: the first frame is not a Xing/Info frame")
    path.write_bytes(data[length:])


# --------------------------------------------------------------------------
# tags


def _number(value: object, total: object) -> str:
    """"3/12" style for ID3 and APEv2; a str value is written verbatim (edge-case tests)."""
    if isinstance(value, str):
        return value
    return f"{value}/{total}" if total else str(value)


def _picture(cover: bytes) -> Picture:
    pic = Picture()
    pic.type, pic.mime, pic.desc, pic.data = 3, _image_mime(cover), "Cover", cover
    return pic


def _id3_frames(tags: dict) -> list[mutagen.id3.Frame]:
    text = {"artist": mutagen.id3.TPE1, "albumartist": mutagen.id3.TPE2,
            "album": mutagen.id3.TALB, "title": mutagen.id3.TIT2,
            "date": mutagen.id3.TDRC, "genre": mutagen.id3.TCON}
    frames = [cls(encoding=3, text=[str(tags[k])]) for k, cls in text.items() if k in tags]
    if "track" in tags:
        frames.append(mutagen.id3.TRCK(encoding=3, text=[_number(tags["track"], tags.get("tracktotal"))]))
    if "disc" in tags:
        frames.append(mutagen.id3.TPOS(encoding=3, text=[_number(tags["disc"], tags.get("disctotal"))]))
    if tags.get("compilation"):
        frames.append(mutagen.id3.TCMP(encoding=3, text=["1"]))
    return frames


def _tag_id3(path: pathlib.Path, tags: dict, cover: bytes | None, version: int,
             opener: Callable[[pathlib.Path], mutagen.FileType] | None) -> None:
    """ID3v2 in an MP3 (opener None) or in a WAV/AIFF chunk (opener WAVE/AIFF)."""
    if opener is None:
        id3 = mutagen.id3.ID3()
    else:
        audio = opener(path)
        audio.add_tags()
        id3 = audio.tags
    for frame in _id3_frames(tags):
        id3.add(frame)
    if cover:
        id3.add(mutagen.id3.APIC(encoding=3, mime=_image_mime(cover), type=3, desc="Cover", data=cover))
    if version == 3:
        id3.update_to_v23()
    id3.save(path, v2_version=version)


_ID3V1_FIELDS = ("artist", "album", "title", "track", "date", "genre")


def _tag_id3v1(path: pathlib.Path, tags: dict) -> dict:
    """An ID3v1.1 tag only: mutagen writes v1 next to v2, so write both and drop v2."""
    id3 = mutagen.id3.ID3()
    for frame in _id3_frames({k: v for k, v in tags.items() if k in _ID3V1_FIELDS}):
        id3.add(frame)
    id3.save(path, v1=mutagen.id3.ID3v1SaveOptions.CREATE)
    mutagen.id3.delete(path, delete_v1=False, delete_v2=True)
    written = {k: tags[k] for k in _ID3V1_FIELDS if k in tags}
    for key in ("artist", "album", "title"):
        if key in written:
            written[key] = str(written[key])[:30]
    if "date" in written:
        written["date"] = str(written["date"])[:4]
    if "genre" in written and written["genre"] not in mutagen.id3.TCON.GENRES:
        del written["genre"]
    return written


def _tag_apev2(path: pathlib.Path, tags: dict) -> None:
    """APEv2 followed by ID3v1, as foobar2000 and Mp3tag write MP3s by default.

    APEv2 first: mutagen drops an existing ID3v1 when it saves an APEv2 tag.
    """
    keys = {"artist": "Artist", "albumartist": "Album Artist", "album": "Album",
            "title": "Title", "date": "Year", "genre": "Genre"}
    ape = APEv2()
    for key, name in keys.items():
        if key in tags:
            ape[name] = str(tags[key])
    if "track" in tags:
        ape["Track"] = _number(tags["track"], tags.get("tracktotal"))
    if "disc" in tags:
        ape["Disc"] = _number(tags["disc"], tags.get("disctotal"))
    if tags.get("compilation"):
        ape["Compilation"] = "1"
    ape.save(path)
    _tag_id3v1(path, tags)


def _vorbis_comments(tags: dict, aliases: bool) -> dict[str, str]:
    """Vorbis comment fields; aliases=True uses the other spellings found in the wild."""
    names = {"artist": "ARTIST", "albumartist": "ALBUM ARTIST" if aliases else "ALBUMARTIST",
             "album": "ALBUM", "title": "TITLE", "track": "TRACKNUMBER",
             "tracktotal": "TOTALTRACKS" if aliases else "TRACKTOTAL",
             "disc": "DISCNUMBER", "disctotal": "TOTALDISCS" if aliases else "DISCTOTAL",
             "date": "DATE", "genre": "GENRE"}
    comments = {names[k]: str(v) for k, v in tags.items() if k in names}
    if tags.get("compilation"):
        comments["COMPILATION"] = "1"
    return comments


def _tag_vorbis(path: pathlib.Path, fmt: str, tags: dict, cover: bytes | None, aliases: bool) -> None:
    audio = {"flac": FLAC, "ogg": OggVorbis, "opus": OggOpus}[fmt](path)
    if audio.tags is None:
        audio.add_tags()
    for name, value in _vorbis_comments(tags, aliases).items():
        audio[name] = value
    if cover and fmt == "flac":
        audio.add_picture(_picture(cover))
    elif cover:
        audio["METADATA_BLOCK_PICTURE"] = base64.b64encode(_picture(cover).write()).decode("ascii")
    audio.save()


def _tag_mp4(path: pathlib.Path, tags: dict, cover: bytes | None) -> None:
    names = {"artist": "\xa9ART", "albumartist": "aART", "album": "\xa9alb",
             "title": "\xa9nam", "date": "\xa9day", "genre": "\xa9gen"}
    audio = MP4(path)
    for key, atom in names.items():
        if key in tags:
            audio[atom] = [str(tags[key])]
    for key, atom in (("track", "trkn"), ("disc", "disk")):
        if key in tags:
            audio[atom] = [(int(tags[key]), int(tags.get(key + "total") or 0))]
    if tags.get("compilation"):
        audio["cpil"] = True
    if cover:
        kind = MP4Cover.FORMAT_JPEG if _image_mime(cover) == "image/jpeg" else MP4Cover.FORMAT_PNG
        audio["covr"] = [MP4Cover(cover, imageformat=kind)]
    audio.save()


def _write_tags(path: pathlib.Path, fmt: str, tags: dict, cover: bytes | None, variant: str) -> dict:
    """Tag the encoded file; returns the tags as actually written."""
    if not tags and not cover:
        return {}
    if fmt == "mp3" and variant == "id3v1":
        return _tag_id3v1(path, tags)
    if fmt == "mp3" and variant == "apev2":
        _tag_apev2(path, tags)
    elif fmt in ("mp3", "wav", "aiff"):
        opener = {"mp3": None, "wav": WAVE, "aiff": AIFF}[fmt]
        _tag_id3(path, tags, cover, 3 if variant == "id3v23" else 4, opener)
    elif fmt in ("flac", "ogg", "opus"):
        _tag_vorbis(path, fmt, tags, cover, aliases=variant == "aliases")
    else:
        _tag_mp4(path, tags, cover)
    return dict(tags)


def write_track(path: pathlib.Path, fmt: str, seconds: float, tags: dict,
                cover: bytes | None = None, seed: int = 0, noise: bool = False,
                variant: str = "", dynamic: bool = False) -> SynthTrack:
    """Encode `seconds` of seed-specific audio as `fmt` at `path` and tag it.

    fmt is a key of FORMATS ("alac" is ALAC in an M4A). The container follows
    fmt whatever the path's extension, so mismatches can be tested. variant:
    mp3 "id3v23", "id3v1" (ID3v1 only), "apev2" (APEv2 + ID3v1), "cbr320";
    "noxing" (libsndfile's LAME writes VBR with a Xing/LAME frame first; this
    drops that frame, as some rippers and tag editors do); flac/ogg/opus
    "aliases" (TOTALTRACKS, ALBUM ARTIST...); flac "hires" (24-bit, 96 kHz);
    m4a/alac "faststart" (moov before mdat; ffmpeg puts it last by default).
    dynamic: audio whose loudness and texture change every few seconds, so
    VBR frame sizes and FLAC frames vary as in real music (else `noise`). A str
    track or disc is written verbatim ("A1", "3/12"; not in MP4, whose numbers
    are integers). ID3v1 and APEv2 carry no cover; ID3v1 keeps what fits.
    The containers of synth_formats.FORMATS are written there (mpc "sv7":
    Musepack SV7).
    """
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = _OPUS_RATE if fmt == "opus" else _HIRES_RATE if variant == "hires" else _RATE
    frames = max(1, int(seconds * rate))
    audio = _dynamic_samples(frames, rate, seed) if dynamic else _samples(frames, rate, seed, noise)
    if fmt in synth_formats.FORMATS:
        clean = {k: v for k, v in tags.items() if v is not None}
        written = synth_formats.write(path, fmt, audio, seconds, seed, variant, clean, cover)
        container, codec = FORMATS[fmt]
        return SynthTrack(path=path, format=container, codec=codec, tags=written)
    _encode(path, fmt, audio, rate, seed, variant)
    written = _write_tags(path, fmt, {k: v for k, v in tags.items() if v is not None}, cover, variant)
    container, codec = FORMATS[fmt]
    return SynthTrack(path=path, format=container, codec=codec, tags=written)


def write_big_flac(path: pathlib.Path, megabytes: int = 200, seed: int = 0) -> SynthTrack:
    """One tagged FLAC of about `megabytes` MiB, written in blocks to keep memory flat.

    Full-scale white noise defeats FLAC's predictor, so libFLAC stores it
    verbatim and the size follows from the duration (176,400 bytes a second).
    """
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    remaining = megabytes * 1024 * 1024 // 4  # stereo int16 frames
    with sf.SoundFile(path, "w", _RATE, 2, format="FLAC", subtype="PCM_16") as out:
        while remaining > 0:
            block = min(remaining, _RATE * 10)
            out.write(rng.uniform(-1.0, 1.0, size=(block, 2)).astype(np.float32))
            remaining -= block
    tags = {"artist": "Big Files", "album": "Huge", "title": f"{megabytes} MB of noise",
            "track": 1, "tracktotal": 1, "date": "2024", "genre": "Noise"}
    _tag_vorbis(path, "flac", tags, make_png(64, 64, seed), aliases=False)
    return SynthTrack(path=path, format="flac", codec="flac", tags=tags)


_BIG_MP3_RATE = 32000  # Hz, mono: LAME's work per byte is least at 320 kbit/s with few samples


def write_big_mp3(path: pathlib.Path, megabytes: int = 20, seed: int = 0) -> SynthTrack:
    """One tagged 320 kbit/s CBR MP3 of about `megabytes` MiB, encoded in blocks (flat memory).

    Mono 32 kHz noise: the size follows from the duration (40,000 bytes a
    second) and LAME encodes it several times faster than 44.1 kHz stereo.
    """
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    remaining = megabytes * 1024 * 1024 * _BIG_MP3_RATE // 40_000  # frames
    with sf.SoundFile(path, "w", _BIG_MP3_RATE, 1, format="MP3", subtype="MPEG_LAYER_III",
                      bitrate_mode="CONSTANT", compression_level=0.0) as out:
        while remaining > 0:
            block = min(remaining, _BIG_MP3_RATE * 10)
            out.write(rng.uniform(-0.37, 0.37, size=(block, 1)).astype(np.float32))
            remaining -= block
    tags = {"artist": "Big Files", "album": "Long Mix", "title": f"{megabytes} MB mix",
            "track": 1, "tracktotal": 1, "date": "2024", "genre": "Noise"}
    _tag_id3(path, tags, make_png(64, 64, seed + 1), 4, None)
    return SynthTrack(path=path, format="mp3", codec="mp3", tags=tags)


# --------------------------------------------------------------------------
# libraries

# The "large" profile: past the upload's 16 MiB multipart threshold (3 and 2
# parts) and past a small --memory-cache, yet cheap enough for every CI run.
LARGE_FLAC_MB = 44
LARGE_MP3_MB = 20


@dataclass(frozen=True)
class _Spec:
    """A track to write: picklable, so that bench can fan out to processes."""

    relpath: str
    fmt: str
    seconds: float
    tags: dict
    cover: bytes | None = None
    noise: bool = False
    variant: str = ""
    dynamic: bool = False


def _small_specs() -> Iterator[_Spec]:
    """Every format and tagging habit, a few seconds of audio each."""
    cover = make_png(16, 16, 1)
    cover2 = make_png(24, 24, 2)
    album = {"artist": "The Synthetics", "albumartist": "The Synthetics", "album": "Waveforms",
             "date": "2019-05-01", "genre": "Electronic", "tracktotal": 4}
    for n, title in enumerate(["Sine of the Times", "Square One", "Saw Point", "Triangle Man"], 1):
        yield _Spec(f"The Synthetics - Waveforms/{n:02d}.flac", "flac", 1.0 + n / 4,
                    {**album, "track": n, "title": title}, cover if n == 1 else None)

    album = {"artist": "Nyquist", "album": "Sampling Theorem", "date": "2021", "genre": "Ambient",
             "tracktotal": 3, "disc": 1, "disctotal": 1}
    yield _Spec("Nyquist/Sampling Theorem/01 Aliasing.mp3", "mp3", 2.0,
                {**album, "track": 1, "title": "Aliasing"}, cover2)
    yield _Spec("Nyquist/Sampling Theorem/02 Folding.mp3", "mp3", 1.5,
                {**album, "track": 2, "title": "Folding"}, cover2, variant="id3v23")
    yield _Spec("Nyquist/Sampling Theorem/03 Reconstruction.MP3", "mp3", 1.2,
                {**album, "track": 3, "title": "Reconstruction"}, variant="cbr320")

    album = {"artist": "Ogg Valley", "album": "Vorbis Nights", "date": "2008", "tracktotal": 2}
    yield _Spec("ogg/Ogg Valley - Vorbis Nights - 1.ogg", "ogg", 1.5,
                {**album, "track": 1, "title": "Codebook"}, cover)
    yield _Spec("ogg/Ogg Valley - Vorbis Nights - 2.oga", "ogg", 1.0,
                {**album, "track": 2, "title": "Floor Zero", "genre": "Rock"}, variant="aliases")

    album = {"artist": "Opus Dei Machina", "album": "Low Latency", "date": "2012-09-10"}
    yield _Spec("Opus Dei Machina/Low Latency/1.opus", "opus", 1.5, {**album, "track": 1, "title": "CELT"})
    yield _Spec("Opus Dei Machina/Low Latency/2.opus", "opus", 1.0,
                {**album, "track": 2, "title": "SILK"}, cover2)

    album = {"artist": "Pulse Code", "album": "RIFF Raff", "date": "1991", "genre": "Industrial"}
    yield _Spec("Pulse Code/RIFF Raff/a.wav", "wav", 1.0, {**album, "track": 1, "title": "Chunky"})
    yield _Spec("Pulse Code/RIFF Raff/b.wav", "wav", 1.2,
                {**album, "track": 2, "title": "Little Endian"}, cover)
    album = {"artist": "Apple Seed", "album": "Interchange", "date": "1988", "tracktotal": 2}
    yield _Spec("Apple Seed/Interchange/01.aiff", "aiff", 1.0, {**album, "track": 1, "title": "Big Endian"})
    yield _Spec("Apple Seed/Interchange/02.aif", "aiff", 1.3,
                {**album, "track": 2, "title": "Extended Float"})

    album = {"artist": "Advanced Audio", "album": "Container Box", "date": "2004", "tracktotal": 2}
    yield _Spec("Advanced Audio/Container Box/01.m4a", "m4a", 1.5,
                {**album, "track": 1, "title": "Atom Heart"}, cover)
    yield _Spec("Advanced Audio/Container Box/02.m4a", "m4a", 1.0,
                {**album, "track": 2, "title": "Fast Start"}, variant="faststart")
    album = {"artist": "Advanced Audio", "album": "Lossless Apples", "date": "2011", "tracktotal": 2}
    yield _Spec("Advanced Audio/Lossless Apples/01.m4a", "alac", 1.0,
                {**album, "track": 1, "title": "Predictor"})
    yield _Spec("Advanced Audio/Lossless Apples/02.m4a", "alac", 1.2,
                {**album, "track": 2, "title": "Rice Coding"}, cover2, variant="faststart")

    album = {"artist": "The Long Player", "albumartist": "The Long Player", "album": "Double Album",
             "date": "1973", "genre": "Rock", "disctotal": 2, "tracktotal": 3}
    for disc in (1, 2):
        for n in (1, 2, 3):
            yield _Spec(f"The Long Player/Double Album/CD{disc}/{n:02d}.flac", "flac", 1.0,
                        {**album, "disc": disc, "track": n, "title": f"Side {'AB'[disc - 1]} Part {n}"},
                        cover if disc == 1 and n == 1 else None)

    comp = {"album": "Synth Hits Vol. 1", "date": "2020", "compilation": True, "tracktotal": 5}
    va = {**comp, "albumartist": "Various Artists"}
    yield _Spec("Compilations/Synth Hits/01.flac", "flac", 1.0,
                {**va, "track": 1, "artist": "The Synthetics", "title": "Hit One"})
    yield _Spec("Compilations/Synth Hits/02.mp3", "mp3", 1.0,
                {**va, "track": 2, "artist": "Nyquist", "title": "Hit Two"})
    yield _Spec("Compilations/Synth Hits/03.ogg", "ogg", 1.0,
                {**comp, "track": 3, "artist": "Ogg Valley", "title": "Hit Three"})
    yield _Spec("Compilations/Synth Hits/04.m4a", "m4a", 1.0,
                {**comp, "track": 4, "artist": "Advanced Audio", "title": "Hit Four"})
    yield _Spec("Compilations/Synth Hits/05.opus", "opus", 1.0,
                {**va, "track": 5, "artist": "Opus Dei Machina", "title": "Hit Five"})

    yield _Spec("Old Rips/winamp.mp3", "mp3", 1.5,
                {"artist": "Llama Whippers", "album": "It Really Whips", "title": "Intro",
                 "track": 1, "date": "1998", "genre": "Rock"}, variant="id3v1")
    yield _Spec("Old Rips/foobar.mp3", "mp3", 1.5,
                {"artist": "Ape Escape", "albumartist": "Ape Escape", "album": "Monkey Business",
                 "title": "Footer First", "track": 4, "tracktotal": 9, "date": "2003", "genre": "Jazz"},
                variant="apev2")
    yield _Spec("Mœbius Strip - Café Ünïcode/01 Naïve.flac", "flac", 1.0,
                {"artist": "Mœbius Strip", "album": "Café Ünïcode", "title": "Naïve / Über",
                 "track": 1, "date": "2015"})

    yield _Spec("untitled.mp3", "mp3", 1.0, {})
    yield _Spec("mystery.wav", "wav", 1.0, {})
    yield _Spec("demo.flac", "flac", 1.0, {"title": "Demo Take 3"})
    yield _Spec("jam session.ogg", "ogg", 2.0, {"artist": "Garage Band", "title": "Jam"})


PROFILES = ("small", "bench", "large", "purchased", "purchased-small")

_WORDS = ("Blue Red Silent Electric Paper Golden Hollow Neon Velvet Iron Glass Midnight "
          "River Echo Signal Static Lantern Harbor Comet Orchard Engine Winter Summer "
          "Atlas Mirror Ghost Circuit Ember Tide Falcon").split()


def _name(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(_WORDS, size=words, replace=False))


def _bench_specs(seed: int) -> Iterator[_Spec]:
    """About 40 albums, 400 tracks, 1 GB of FLAC and MP3 that neither codec can shrink."""
    rng = np.random.default_rng([seed, 40])
    for a in range(40):
        fmt = "mp3" if a % 5 == 4 else "flac"  # 8 MP3 albums: LAME at 30x real time is the slow part
        artist = "The " + _name(rng, 2) + f" {a}"
        album = _name(rng, 2) + f" {a}"
        discs = 2 if a == 0 else 1
        per_disc = 6 if a == 0 else int(rng.integers(8, 13))
        cover = make_png(int(rng.integers(190, 310)), 180, seed * 100 + a, noise=True) if a % 2 == 0 else None
        base = {"album": album, "date": str(1960 + a), "genre": "Rock",
                "tracktotal": per_disc, "disctotal": discs}
        if a == 1:
            base |= {"albumartist": "Various Artists", "compilation": True}
        else:
            base |= {"albumartist": artist}
        for disc in range(1, discs + 1):
            for n in range(1, per_disc + 1):
                track_artist = "The " + _name(rng, 2) if a == 1 else artist
                tags = {**base, "artist": track_artist, "title": _name(rng, 3),
                        "track": n, "disc": disc}
                # ~2.5 MB each: FLAC of this noise is ~150 kB/s, 320 kbit/s MP3 40 kB/s
                seconds = float(rng.uniform(14, 20) if fmt == "flac" else rng.uniform(50, 70))
                folder = f"{artist}/{album}" + (f"/Disc {disc}" if discs > 1 else "")
                yield _Spec(f"{folder}/{n:02d} {tags['title']}.{fmt}", fmt, round(seconds, 2), tags,
                            cover, noise=True, variant="cbr320" if fmt == "mp3" else "")


@dataclass(frozen=True)
class _PurchasedAlbum:
    """One album of the purchased profile: how a store or a ripper would have delivered it."""

    fmt: str
    tracks: int
    variants: tuple[str, ...] = ("",)  # write_track variants, cycled over the tracks
    art: str = ""  # embedded cover: "jpeg", "png", or "" for none
    art_bytes: tuple[int, int] = (0, 0)  # the cover's size is drawn from this range
    art_on_first_only: bool = False  # a tag editor added the cover to track 1 only
    side_files: tuple[str, ...] = ()  # cover.jpg / folder.jpg beside the tracks
    discs: int = 1
    compilation: bool = False


# What people who buy music have: store MP3s (VBR, art), FLAC downloads with
# large art, AAC from a phone's store (moov where the encoder left it), Ogg
# and Opus from net labels, an album with no art, a compilation, a box set on
# two discs, one hi-res download. Embedded art ranges from 50 KB to 1.5 MB.
_PURCHASED_ALBUMS = (
    _PurchasedAlbum("mp3", 10, art="jpeg", art_bytes=(100_000, 200_000), side_files=("cover.jpg",)),
    _PurchasedAlbum("mp3", 10, variants=("noxing",), art="jpeg", art_bytes=(200_000, 400_000)),
    _PurchasedAlbum("flac", 10, art="jpeg", art_bytes=(1_300_000, 1_500_000),
                    side_files=("cover.jpg", "folder.jpg")),
    _PurchasedAlbum("flac", 9),
    _PurchasedAlbum("m4a", 10, art="jpeg", art_bytes=(50_000, 80_000), side_files=("folder.jpg",)),
    _PurchasedAlbum("m4a", 8, variants=("faststart",), art="png", art_bytes=(400_000, 700_000)),
    _PurchasedAlbum("ogg", 10, art="jpeg", art_bytes=(100_000, 300_000)),
    _PurchasedAlbum("opus", 10, art="jpeg", art_bytes=(50_000, 150_000)),
    _PurchasedAlbum("mp3", 12, variants=("", "noxing"), art="png", art_bytes=(1_200_000, 1_500_000),
                    compilation=True),
    _PurchasedAlbum("flac", 6, art="png", art_bytes=(50_000, 100_000), side_files=("cover.jpg",), discs=2),
    _PurchasedAlbum("mp3", 10, variants=("id3v23",), art="jpeg", art_bytes=(500_000, 900_000),
                    art_on_first_only=True),
    _PurchasedAlbum("flac", 1, variants=("hires",), art="jpeg", art_bytes=(800_000, 1_200_000),
                    side_files=("cover.jpg",)),
)
# Seconds of audio per track, by format and variant: short enough that the
# library (about 350 MB) synthesizes in minutes and crosses a 20 Mbit/s link
# in a few, with real byte rates (VBR MP3 ~250 kbit/s, FLAC ~1.1 Mbit/s,
# AAC 128 kbit/s, 24/96 FLAC ~4 Mbit/s).
_PURCHASED_SECONDS = {"mp3": (70, 110), "flac": (20, 32), "m4a": (90, 150), "ogg": (90, 150),
                      "opus": (90, 150), "hires": (40, 40)}
# "purchased-small": the same albums, two tracks each, shorter (integration tests).
# Still long enough that a whole track is several times what a scanner reads of
# it (MPD reads 512 KiB past an MP3's tags), or over-fetching would not show.
_PURCHASED_SMALL_TRACKS = 2
_PURCHASED_SMALL_SECONDS = {"mp3": (12, 18), "flac": (20, 30), "m4a": (20, 30), "ogg": (15, 20),
                            "opus": (12, 18), "hires": (6, 6)}


def _cover(kind: str, size: int, seed: int) -> bytes:
    """A cover of about `size` bytes: JPEG, or PNG of noise (which PNG cannot shrink)."""
    if kind == "png":
        side = max(16, int((size / 3) ** 0.5))
        return make_png(side, side, seed, noise=True)
    return make_jpeg(size, seed)


def _purchased_specs(seed: int, small: bool = False) -> tuple[list[_Spec], dict[str, bytes]]:
    """About 110 tracks in 12 album folders shaped like purchased music, and the
    cover.jpg / folder.jpg files some of those folders hold (path -> bytes).
    `small`: two short tracks per album (disc), same art, for integration tests."""
    rng = np.random.default_rng([seed, 12])
    specs: list[_Spec] = []
    side: dict[str, bytes] = {}
    for a, shape in enumerate(_PURCHASED_ALBUMS):
        artist = "The " + _name(rng, 2)
        album, year = _name(rng, 2), int(rng.integers(1965, 2025))
        cover = None
        if shape.art:
            size = int(rng.integers(shape.art_bytes[0], shape.art_bytes[1] + 1))
            cover = _cover(shape.art, size, seed * 1000 + a)
        # half the folders as stores name them, half as rippers do
        folder = f"{artist}/{album}" if a % 2 else f"{artist} - {album} ({year})"
        for name in shape.side_files:
            side[f"{folder}/{name}"] = make_jpeg(int(rng.integers(60_000, 400_000)), seed * 1000 + a + 500)
        base = {"album": album, "date": str(year), "genre": str(rng.choice(["Rock", "Jazz", "Electronic"])),
                "tracktotal": shape.tracks}
        if shape.discs > 1:
            base["disctotal"] = shape.discs
        base |= ({"albumartist": "Various Artists", "compilation": True} if shape.compilation
                 else {"albumartist": artist})
        for disc in range(1, shape.discs + 1):
            for n in range(1, min(shape.tracks, _PURCHASED_SMALL_TRACKS) + 1 if small else shape.tracks + 1):
                variant = shape.variants[(n - 1) % len(shape.variants)]
                low, high = (_PURCHASED_SMALL_SECONDS if small else _PURCHASED_SECONDS)[
                    "hires" if variant == "hires" else shape.fmt]
                tags = {**base, "artist": "The " + _name(rng, 2) if shape.compilation else artist,
                        "title": _name(rng, 3), "track": n}
                if shape.discs > 1:
                    tags["disc"] = disc
                where = f"{folder}/Disc {disc}" if shape.discs > 1 else folder
                has_art = cover is not None and (n == 1 or not shape.art_on_first_only)
                specs.append(_Spec(f"{where}/{n:02d} {tags['title']}.{EXTENSIONS[shape.fmt]}", shape.fmt,
                                   round(float(rng.uniform(low, high)), 2), tags,
                                   cover if has_art else None, variant=variant, dynamic=True))
    return specs, side


def _write_spec(job: tuple[pathlib.Path, int, _Spec]) -> SynthTrack:
    out, track_seed, spec = job
    return write_track(out / spec.relpath, spec.fmt, spec.seconds, spec.tags, spec.cover,
                       seed=track_seed, noise=spec.noise, variant=spec.variant, dynamic=spec.dynamic)


def synthesize_library(out: pathlib.Path, profile: str = "small", seed: int = 0) -> list[SynthTrack]:
    """Write a whole library under `out` and its manifest.json; M4A is skipped without ffmpeg.

    Returns the tracks; side files (the purchased profile's cover.jpg and
    folder.jpg) are written too and listed in the manifest only.
    """
    out = pathlib.Path(out).absolute()
    if profile == "large":
        return _large_library(out, seed)
    side: dict[str, bytes] = {}
    if profile == "small":
        specs = list(_small_specs())
    elif profile == "bench":
        specs = list(_bench_specs(seed))
    elif profile in ("purchased", "purchased-small"):
        specs, side = _purchased_specs(seed, small=profile == "purchased-small")
    else:
        raise ValueError(f"unknown profile {profile!r} ({', '.join(PROFILES)})")
    if FFMPEG is None:
        specs = [s for s in specs if s.fmt not in M4A_FORMATS]
    # Each track's seed mixes the library seed and its index: same run, same
    # bytes; different tracks, different audio.
    jobs = [(out, seed * 100_003 + i, spec) for i, spec in enumerate(specs)]
    if profile in ("bench", "purchased", "purchased-small"):
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            tracks = list(pool.map(_write_spec, jobs, chunksize=4 if profile == "bench" else 1))
    else:
        tracks = [_write_spec(job) for job in jobs]
    for relpath, data in side.items():
        (out / relpath).write_bytes(data)
    write_manifest(out, tracks, [out / relpath for relpath in side])
    return tracks


def _large_library(out: pathlib.Path, seed: int) -> list[SynthTrack]:
    tracks = [write_big_flac(out / "Big Files" / "huge.flac", LARGE_FLAC_MB, seed),
              write_big_mp3(out / "Big Files" / "long mix.mp3", LARGE_MP3_MB, seed)]
    write_manifest(out, tracks)
    return tracks


_PLACEHOLDER = "#" * 12  # a title of fixed length, patched per copy


def synthesize_small_files(out: pathlib.Path, count: int = 20_000, seed: int = 0) -> int:
    """`count` short tagged FLAC and MP3 files (5 to 35 kB) in album folders of 20; returns their bytes.

    Encoding 20,000 files would take minutes, so each folder's files are
    copies of a few encoded tracks whose title is rewritten in place: the
    same length, so every copy stays valid, and its own bytes (SHA-256).
    FLAC's Vorbis comment and ID3v2 text frames carry no checksum.
    """
    out = pathlib.Path(out).absolute()
    templates = []
    for n, fmt in enumerate(("flac", "mp3", "flac", "mp3")):
        path = out / ".templates" / f"{n}.{fmt}"
        write_track(path, fmt, 0.1 + 0.1 * n, {"artist": f"Small Files {n}", "album": "Many",
                                                "title": _PLACEHOLDER, "track": 1}, seed=seed * 10 + n)
        templates.append((fmt, path.read_bytes()))
    shutil.rmtree(out / ".templates")
    total = 0
    for index in range(count):
        fmt, data = templates[index % len(templates)]
        folder = out / f"Artist {index // 200:03d}" / f"Album {index // 20:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        copy = data.replace(_PLACEHOLDER.encode(), f"{seed:02d}{index:010d}".encode(), 1)
        (folder / f"{index % 20 + 1:02d} Track {index}.{fmt}").write_bytes(copy)
        total += len(copy)
    return total


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(out: pathlib.Path, tracks: list[SynthTrack],
                   side_files: list[pathlib.Path] | None = None) -> pathlib.Path:
    """OUT/manifest.json: a JSON list of {path (relative), format, codec, tags, size, sha256}
    per track, then {path, kind: "side", format: "jpeg", size, sha256} per side file
    (a cover.jpg that is not a track: readers of the manifest skip kind "side")."""
    entries = [{"path": t.path.relative_to(out).as_posix(), "format": t.format, "codec": t.codec,
                "tags": t.tags, "size": t.path.stat().st_size, "sha256": _sha256(t.path)}
               for t in tracks]
    entries += [{"path": f.relative_to(out).as_posix(), "kind": "side", "format": "jpeg",
                 "size": f.stat().st_size, "sha256": _sha256(f)} for f in side_files or []]
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="folder to write (created)")
    parser.add_argument("--profile", choices=PROFILES, default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big-flac-mb", type=int, metavar="MB",
                        help="also write OUT/big/big.flac of about MB MiB")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    start = time.monotonic()
    tracks = synthesize_library(args.out, args.profile, args.seed)
    if args.big_flac_mb:
        big = write_big_flac(args.out / "big" / "big.flac", args.big_flac_mb, args.seed)
        tracks.append(big)
        out = args.out.absolute()
        listed = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        write_manifest(out, tracks, [out / e["path"] for e in listed if e.get("kind") == "side"])
    size = sum(t.path.stat().st_size for t in tracks)
    formats = " ".join(sorted({f"{t.format}/{t.codec}" for t in tracks}))
    print(f"{len(tracks)} files, {size} bytes ({size / 2**20:.1f} MiB) in "
          f"{time.monotonic() - start:.1f} s: {formats}")
    if FFMPEG is None:
        log.warning("ffmpeg not installed: no M4A files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
