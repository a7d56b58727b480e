"""Deterministic test files for the containers beyond synth_library's own.

Encoded where a tool exists here: ffmpeg (WMA, AC-3, raw ADTS AAC, TrueAudio,
WavPack, Speex, FLAC in Ogg, M4B) and mpcenc from musepack-tools (Musepack
SV8). Built by hand from each format's documented header layout where none
does (Monkey's Audio, Musepack SV7, DSF, DSDIFF, OptimFROG): a header a
decoder and mutagen parse, then seeded noise where the compressed frames
would be. mutagen writes the tags, the way the usual taggers do for each
container (ASF attributes, APEv2, ID3v2, Vorbis comments, MP4 atoms).

synth_library.write_track hands these formats here; use it, not this module,
from tests and scripts.
"""

from __future__ import annotations

import base64
import math
import pathlib
import shutil
import struct
import subprocess
import tempfile

import mutagen.id3
import numpy as np
import soundfile as sf
from mutagen.apev2 import APEv2
from mutagen.asf import ASF, ASFByteArrayAttribute
from mutagen.dsdiff import DSDIFF
from mutagen.dsf import DSF
from mutagen.flac import Picture
from mutagen.oggflac import OggFLAC
from mutagen.oggspeex import OggSpeex

FFMPEG = shutil.which("ffmpeg")
MPCENC = shutil.which("mpcenc")

# write_track's fmt -> (container as lockerfs reports it, codec, extension)
FORMATS: dict[str, tuple[str, str, str]] = {
    "wma": ("wma", "wma", "wma"),
    "ac3": ("ac3", "ac3", "ac3"),
    "aac": ("aac", "aac", "aac"),
    "tta": ("tta", "tta", "tta"),
    "wv": ("wv", "wavpack", "wv"),
    "spx": ("spx", "speex", "spx"),
    "oga": ("oga", "flac", "oga"),
    "m4b": ("m4b", "aac", "m4b"),
    "mpc": ("mpc", "musepack", "mpc"),
    "ape": ("ape", "ape", "ape"),
    "dsf": ("dsf", "dsd", "dsf"),
    "dff": ("dff", "dsd", "dff"),
    "ofr": ("ofr", "optimfrog", "ofr"),
}
FFMPEG_FORMATS = frozenset({"wma", "ac3", "aac", "tta", "wv", "spx", "oga", "m4b"})
SAMPLE_RATES = {"spx": 32000, "dsf": 2_822_400, "dff": 2_822_400}  # others: 44,100 Hz
VARIANTS = {"mpc": ("sv7",)}  # Musepack SV7, the older stream the .mp+ extension names

_RATE = 44100
DSD_RATE = 2_822_400  # DSD64: 64 x 44.1 kHz, one bit a sample


def needs_tool(fmt: str) -> str | None:
    """The missing program that `fmt` needs here, or None."""
    if fmt in FFMPEG_FORMATS and FFMPEG is None:
        return "ffmpeg"
    if fmt == "mpc" and MPCENC is None:
        return "mpcenc (musepack-tools)"
    return None


def write(path: pathlib.Path, fmt: str, audio: np.ndarray, seconds: float, seed: int, variant: str,
          tags: dict, cover: bytes | None) -> dict:
    """Encode (or build) `path` as `fmt` from float stereo `audio` at 44.1 kHz, then tag it.

    Returns the tags as written (the fields the container's usual tag has).
    """
    rng = np.random.default_rng([seed, 7])
    if fmt in FFMPEG_FORMATS:
        _ffmpeg(path, fmt, audio)
    elif fmt == "mpc" and variant == "sv7":
        path.write_bytes(_musepack_sv7(seconds, rng))
    elif fmt == "mpc":
        _mpcenc(path, audio)
    else:
        path.write_bytes({"ape": _monkeys_audio, "dsf": _dsf, "dff": _dsdiff, "ofr": _optimfrog}[fmt](
            seconds, rng))
    return _tag(path, fmt, tags, cover)


# --------------------------------------------------------------------------
# encoders

_FFMPEG_CODECS = {  # fmt -> output options
    "wma": ["-c:a", "wmav2", "-b:a", "128k", "-f", "asf"],
    "ac3": ["-c:a", "ac3", "-b:a", "192k", "-f", "ac3"],
    "aac": ["-c:a", "aac", "-b:a", "128k", "-f", "adts"],
    "tta": ["-c:a", "tta", "-f", "tta"],
    "wv": ["-c:a", "wavpack", "-f", "wv"],
    "spx": ["-c:a", "libspeex", "-ar", "32000", "-f", "spx"],
    "oga": ["-c:a", "flac", "-f", "oga"],
    "m4b": ["-c:a", "aac", "-b:a", "128k", "-f", "mp4", "-brand", "M4B "],
}


def _ffmpeg(path: pathlib.Path, fmt: str, audio: np.ndarray) -> None:
    """ffmpeg from raw PCM; bitexact so that no version, date or random serial is written."""
    if FFMPEG is None:
        raise RuntimeError("ffmpeg not installed")
    cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "s16le", "-ar", str(_RATE), "-ac", "2", "-i", "pipe:0", *_FFMPEG_CODECS[fmt],
           "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact", str(path)]
    subprocess.run(cmd, input=_pcm16(audio), check=True)


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def _mpcenc(path: pathlib.Path, audio: np.ndarray) -> None:
    """Musepack SV8 through mpcenc, which reads a WAV file."""
    if MPCENC is None:
        raise RuntimeError("mpcenc not installed (Debian: musepack-tools)")
    with tempfile.TemporaryDirectory(prefix="synth-mpc-") as temp:
        wav = pathlib.Path(temp, "in.wav")
        sf.write(wav, audio, _RATE, format="WAV", subtype="PCM_16")
        subprocess.run([MPCENC, "--silent", "--overwrite", str(wav), str(path)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --------------------------------------------------------------------------
# containers built by hand: documented header, seeded noise for the frames


def _noise(rng: np.random.Generator, count: int) -> bytes:
    return rng.integers(0, 256, size=count, dtype=np.uint8).tobytes()


def _monkeys_audio(seconds: float, rng: np.random.Generator) -> bytes:
    """Monkey's Audio 3.99: APE_DESCRIPTOR (52 bytes), APE_HEADER (24), seek table, WAV header, frames."""
    blocks = max(1, round(seconds * _RATE))
    per_frame = 73728 * 4  # blocks per frame since version 3.95
    frames = math.ceil(blocks / per_frame)
    final = blocks - (frames - 1) * per_frame
    frame_data = _noise(rng, blocks * 2)  # about half of 16-bit stereo PCM
    wav_header = _wav_header(blocks * 4)
    seek_table = struct.pack(f"<{frames}I", *(52 + 24 + 4 * frames + len(wav_header) + i * 1000
                                              for i in range(frames)))
    descriptor = b"MAC " + struct.pack("<HHIIIIIII16s", 3990, 0, 52, 24, len(seek_table), len(wav_header),
                                      len(frame_data), 0, 0, bytes(16))
    header = struct.pack("<HHIIIHHI", 2000, 0, per_frame, final, frames, 16, 2, _RATE)
    return descriptor + header + seek_table + wav_header + frame_data


def _wav_header(data_size: int) -> bytes:
    """The 44-byte canonical WAV header (16-bit stereo 44.1 kHz) that APE stores for restoring."""
    return (b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 2, _RATE, _RATE * 4, 4, 16) + b"data" + struct.pack("<I", data_size))


def _musepack_sv7(seconds: float, rng: np.random.Generator) -> bytes:
    """Musepack SV7: "MP+", version 7, frame count, flags (rate index 0: 44.1 kHz), gains, then frames."""
    frames = math.ceil((seconds * _RATE + 576) / 1152)
    header = b"MP+\x17" + struct.pack("<IIHhHh", frames, 0, 0, 0, 0, 0) + bytes(12)
    return header + _noise(rng, frames * 418)  # ~ 160 kbit/s of frames


def _dsf(seconds: float, rng: np.random.Generator) -> bytes:
    """DSF (Sony): DSD chunk, fmt chunk, data chunk of 4096-byte blocks per channel.

    The DSD chunk's metadata pointer stays 0: mutagen appends the ID3v2 tag
    and sets it when the file is tagged.
    """
    samples = max(1, round(seconds * DSD_RATE))
    blocks = math.ceil(samples / 8 / 4096)
    data = _noise(rng, blocks * 4096 * 2)
    total = 28 + 52 + 12 + len(data)
    dsd = b"DSD " + struct.pack("<QQQ", 28, total, 0)
    fmt = b"fmt " + struct.pack("<QIIIIIIQII", 52, 1, 0, 2, 2, DSD_RATE, 1, samples, 4096, 0)
    return dsd + fmt + b"data" + struct.pack("<Q", 12 + len(data)) + data


def _dsdiff(seconds: float, rng: np.random.Generator) -> bytes:
    """DSDIFF (Philips): FRM8 form of FVER, PROP/SND (FS, CHNL, CMPR "DSD ") and the DSD sound chunk."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return kind + struct.pack(">Q", len(payload)) + payload + b"\x00" * (len(payload) & 1)

    samples = max(8, round(seconds * DSD_RATE))
    compression = b"DSD " + bytes([14]) + b"not compressed" + b"\x00"  # pascal string, padded to even
    prop = b"SND " + (chunk(b"FS  ", struct.pack(">I", DSD_RATE))
                      + chunk(b"CHNL", struct.pack(">H", 2) + b"SLFTSRGT")
                      + chunk(b"CMPR", compression))
    body = b"DSD " + chunk(b"FVER", struct.pack(">I", 0x01050000)) + chunk(b"PROP", prop) + chunk(
        b"DSD ", _noise(rng, samples // 8 * 2))
    return b"FRM8" + struct.pack(">Q", len(body)) + body


def _optimfrog(seconds: float, rng: np.random.Generator) -> bytes:
    """OptimFROG: "OFR " header (15 bytes: samples, 16-bit, stereo, rate, encoder 5.100), then frames."""
    samples = max(1, round(seconds * _RATE)) * 2  # counted over both channels
    header = b"OFR " + struct.pack("<IIHBBIHB", 15, samples & 0xFFFFFFFF, samples >> 32, 2, 1, _RATE,
                                   600 << 4, 0x4C)
    payload = _noise(rng, samples)  # about half of 16-bit PCM
    return header + b"COMP" + struct.pack("<I", len(payload)) + payload


# --------------------------------------------------------------------------
# tags

def _tag(path: pathlib.Path, fmt: str, tags: dict, cover: bytes | None) -> dict:
    if not tags and not cover:
        return {}
    if fmt == "wma":
        return _tag_asf(path, tags, cover)
    if fmt in ("ape", "wv", "mpc", "ofr", "ac3"):
        _tag_ape(path, tags, cover)
    elif fmt in ("aac", "tta", "dsf", "dff"):
        _tag_id3(path, fmt, tags, cover)
    elif fmt in ("spx", "oga"):
        _tag_ogg(path, fmt, tags, cover)
    else:  # m4b
        from synth_library import _tag_mp4

        _tag_mp4(path, tags, cover)
    return dict(tags)


def _number(value: object, total: object) -> str:
    if isinstance(value, str):
        return value
    return f"{value}/{total}" if total else str(value)


def _tag_asf(path: pathlib.Path, tags: dict, cover: bytes | None) -> dict:
    """WMA as Windows Media Player tags it: WM/TrackNumber alone, WM/PartOfSet as "1/2"."""
    names = {"artist": "Author", "albumartist": "WM/AlbumArtist", "album": "WM/AlbumTitle",
             "title": "Title", "date": "WM/Year", "genre": "WM/Genre"}
    audio = ASF(path)
    for key, name in names.items():
        if key in tags:
            audio[name] = [str(tags[key])]
    if "track" in tags:
        audio["WM/TrackNumber"] = [str(tags["track"])]
    if "disc" in tags:
        audio["WM/PartOfSet"] = [_number(tags["disc"], tags.get("disctotal"))]
    if tags.get("compilation"):
        audio["WM/IsCompilation"] = ["1"]
    if cover:
        # WM/Picture: type, size, MIME and description (UTF-16, NUL-ended), then the data
        picture = (struct.pack("<BI", 3, len(cover)) + "image/png\0".encode("utf-16-le")
                   + "Cover\0".encode("utf-16-le") + cover)
        audio["WM/Picture"] = [ASFByteArrayAttribute(picture)]
    audio.save()
    return {k: v for k, v in tags.items() if k != "tracktotal"}  # WMA has no standard total


def _tag_ape(path: pathlib.Path, tags: dict, cover: bytes | None) -> None:
    """APEv2 at the end, as foobar2000 writes Monkey's Audio, WavPack, Musepack, OptimFROG, AC-3."""
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
    if cover:
        from mutagen.apev2 import APEValue, BINARY

        ape["Cover Art (Front)"] = APEValue(b"cover.png\x00" + cover, BINARY)
    ape.save(path)


def _tag_id3(path: pathlib.Path, fmt: str, tags: dict, cover: bytes | None) -> None:
    """ID3v2.4: before raw AAC and TrueAudio; where DSF's pointer says; in DSDIFF's "ID3 " chunk."""
    from synth_library import _id3_frames

    if fmt in ("dsf", "dff"):
        audio = (DSF if fmt == "dsf" else DSDIFF)(path)
        audio.add_tags()
        id3 = audio.tags
    else:
        id3 = mutagen.id3.ID3()
    for frame in _id3_frames(tags):
        id3.add(frame)
    if cover:
        id3.add(mutagen.id3.APIC(encoding=3, mime="image/png", type=3, desc="Cover", data=cover))
    id3.save(path, v2_version=4)


def _tag_ogg(path: pathlib.Path, fmt: str, tags: dict, cover: bytes | None) -> None:
    from synth_library import _vorbis_comments

    audio = (OggSpeex if fmt == "spx" else OggFLAC)(path)
    if audio.tags is None:
        audio.add_tags()
    for name, value in _vorbis_comments(tags, aliases=False).items():
        audio[name] = value
    if cover:
        picture = Picture()
        picture.type, picture.mime, picture.desc, picture.data = 3, "image/png", "Cover", cover
        audio["METADATA_BLOCK_PICTURE"] = base64.b64encode(picture.write()).decode("ascii")
    audio.save()
