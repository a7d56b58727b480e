"""Deterministic test music: every format lockerfs reads, tagged the ways real libraries are.

Tests and benchmarks need music with known tags and known bytes, and the project
never downloads any. soundfile (libsndfile) encodes FLAC, MP3, Ogg Vorbis, Opus,
WAV and AIFF; ffmpeg, when installed, encodes M4A (AAC and ALAC); mutagen writes
the tags. The same seed gives the same bytes on every run, and every track's
audio differs so that no two tracks share a SHA-256.

Usable as a module (``write_track``, ``synthesize_library``, ``write_big_flac``,
``write_big_mp3``) and as a command:

    python scripts/synth_library.py OUT_DIR [--profile small|bench|large] [--seed N]
                                    [--big-flac-mb MB]

Profiles: "small" (every format and tagging habit, a few seconds each),
"bench" (about 400 tracks, 1 GB), "large" (two big files that take uploads
past the multipart threshold and reads past the memory cache: a FLAC of
LARGE_FLAC_MB and an MP3 of LARGE_MP3_MB MiB, about 25 s to write).

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
    extra = {"bitrate_mode": "CONSTANT", "compression_level": 0.0} if variant == "cbr320" else {}
    sf.write(path, audio, rate, format=container, subtype=subtype, **extra)
    if container == "OGG":
        _set_ogg_serial(path, seed & 0xFFFFFFFF)


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


# --------------------------------------------------------------------------
# tags


def _number(value: object, total: object) -> str:
    """"3/12" style for ID3 and APEv2; a str value is written verbatim (edge-case tests)."""
    if isinstance(value, str):
        return value
    return f"{value}/{total}" if total else str(value)


def _picture(cover: bytes) -> Picture:
    pic = Picture()
    pic.type, pic.mime, pic.desc, pic.data = 3, "image/png", "Cover", cover
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
        id3.add(mutagen.id3.APIC(encoding=3, mime="image/png", type=3, desc="Cover", data=cover))
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
        audio["covr"] = [MP4Cover(cover, imageformat=MP4Cover.FORMAT_PNG)]
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
                variant: str = "") -> SynthTrack:
    """Encode `seconds` of seed-specific audio as `fmt` at `path` and tag it.

    fmt is a key of FORMATS ("alac" is ALAC in an M4A). The container follows
    fmt whatever the path's extension, so mismatches can be tested. variant:
    mp3 "id3v23", "id3v1" (ID3v1 only), "apev2" (APEv2 + ID3v1), "cbr320";
    flac/ogg/opus "aliases" (TOTALTRACKS, ALBUM ARTIST...); m4a/alac
    "faststart" (moov before mdat; ffmpeg puts it last by default). A str
    track or disc is written verbatim ("A1", "3/12"; not in MP4, whose numbers
    are integers). ID3v1 and APEv2 carry no cover; ID3v1 keeps what fits.
    """
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = _OPUS_RATE if fmt == "opus" else _RATE
    audio = _samples(max(1, int(seconds * rate)), rate, seed, noise)
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


def _write_spec(job: tuple[pathlib.Path, int, _Spec]) -> SynthTrack:
    out, track_seed, spec = job
    return write_track(out / spec.relpath, spec.fmt, spec.seconds, spec.tags, spec.cover,
                       seed=track_seed, noise=spec.noise, variant=spec.variant)


def synthesize_library(out: pathlib.Path, profile: str = "small", seed: int = 0) -> list[SynthTrack]:
    """Write a whole library under `out` and its manifest.json; M4A is skipped without ffmpeg."""
    out = pathlib.Path(out).absolute()
    if profile == "large":
        return _large_library(out, seed)
    if profile == "small":
        specs = list(_small_specs())
    elif profile == "bench":
        specs = list(_bench_specs(seed))
    else:
        raise ValueError(f"unknown profile {profile!r} (small, bench, large)")
    if FFMPEG is None:
        specs = [s for s in specs if s.fmt not in M4A_FORMATS]
    # Each track's seed mixes the library seed and its index: same run, same
    # bytes; different tracks, different audio.
    jobs = [(out, seed * 100_003 + i, spec) for i, spec in enumerate(specs)]
    if profile == "bench":
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            tracks = list(pool.map(_write_spec, jobs, chunksize=4))
    else:
        tracks = [_write_spec(job) for job in jobs]
    write_manifest(out, tracks)
    return tracks


def _large_library(out: pathlib.Path, seed: int) -> list[SynthTrack]:
    tracks = [write_big_flac(out / "Big Files" / "huge.flac", LARGE_FLAC_MB, seed),
              write_big_mp3(out / "Big Files" / "long mix.mp3", LARGE_MP3_MB, seed)]
    write_manifest(out, tracks)
    return tracks


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(out: pathlib.Path, tracks: list[SynthTrack]) -> pathlib.Path:
    """OUT/manifest.json: a JSON list of {path (relative), format, codec, tags, size, sha256}."""
    entries = [{"path": t.path.relative_to(out).as_posix(), "format": t.format, "codec": t.codec,
                "tags": t.tags, "size": t.path.stat().st_size, "sha256": _sha256(t.path)}
               for t in tracks]
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="folder to write (created)")
    parser.add_argument("--profile", choices=("small", "bench", "large"), default="small")
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
        write_manifest(args.out.absolute(), tracks)
    size = sum(t.path.stat().st_size for t in tracks)
    formats = " ".join(sorted({f"{t.format}/{t.codec}" for t in tracks}))
    print(f"{len(tracks)} files, {size} bytes ({size / 2**20:.1f} MiB) in "
          f"{time.monotonic() - start:.1f} s: {formats}")
    if FFMPEG is None:
        log.warning("ffmpeg not installed: no M4A files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
