"""tags.py: container from content, normalized tags, audio facts, and tag regions that hold.

Every file here is synthesized (scripts/synth_library.py) into tmp_path. The
region tests are the contract the mount's prefetch relies on: whatever mutagen
reads from a file lies inside its head and tail regions.
"""

from __future__ import annotations

import errno
import io
import pathlib
import struct
import sys

import mutagen
import pytest
from mutagen.apev2 import APEv2
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TIT2

from lockerfs import containers, tags
from lockerfs.containers import canonical_extension, name_extension
from lockerfs.tags import (
    AUDIO_EXTENSIONS,
    CONTENT_TYPES,
    FORMAT_EXTENSIONS,
    NotAudioError,
    read_track_info,
    sniff_format,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import synth_library as synth  # noqa: E402

requires_ffmpeg = pytest.mark.skipif(synth.FFMPEG is None, reason="ffmpeg not installed")


def tool_marks(fmt: str) -> tuple:
    """Skip a case only when the encoder it needs is missing (scripts/setup.sh installs them)."""
    if fmt in synth.M4A_FORMATS:
        return (requires_ffmpeg,)
    missing = synth.synth_formats.needs_tool(fmt)
    return (pytest.mark.skipif(missing is not None, reason=f"{missing} not installed"),) if missing else ()

FULL_TAGS = {
    "artist": "Miles Synth", "albumartist": "Miles Synth Quintet", "album": "Kind of Sine",
    "title": "So What If", "track": 3, "tracktotal": 12, "disc": 1, "disctotal": 2,
    "date": "1959-08-17", "genre": "Jazz", "compilation": True,
}

# (write_track fmt, variant, test id): every container and tagging habit we read
FORMATS = [
    ("flac", "", "flac"),
    ("mp3", "", "mp3-id3v24"),
    ("mp3", "id3v23", "mp3-id3v23"),
    ("mp3", "id3v1", "mp3-id3v1"),
    ("mp3", "apev2", "mp3-apev2"),
    ("mp3", "cbr320", "mp3-cbr"),
    ("ogg", "", "ogg-vorbis"),
    ("ogg", "aliases", "ogg-aliases"),
    ("opus", "", "opus"),
    ("wav", "", "wav"),
    ("aiff", "", "aiff"),
    ("m4a", "", "m4a-aac"),
    ("m4a", "faststart", "m4a-aac-faststart"),
    ("alac", "", "m4a-alac"),
    ("alac", "faststart", "m4a-alac-faststart"),
    # the containers of scripts/synth_formats.py
    ("wma", "", "wma"),
    ("ac3", "", "ac3"),
    ("aac", "", "aac-adts"),
    ("tta", "", "tta"),
    ("wv", "", "wavpack"),
    ("spx", "", "speex"),
    ("oga", "", "ogg-flac"),
    ("m4b", "", "m4b"),
    ("mpc", "", "musepack-sv8"),
    ("mpc", "sv7", "musepack-sv7"),
    ("ape", "", "ape"),
    ("dsf", "", "dsf"),
    ("dff", "", "dff"),
    ("ofr", "", "optimfrog"),
]


def format_params(pack: bool = False) -> list:
    """FORMATS as pytest params, (fmt, variant) packed in one value for a fixture."""
    return [pytest.param(*(((fmt, variant),) if pack else (fmt, variant)), id=ident, marks=tool_marks(fmt))
            for fmt, variant, ident in FORMATS]


def write(folder: pathlib.Path, fmt: str, variant: str = "", tags: dict | None = None,
          name: str | None = None, seconds: float = 1.5, **kwargs: object) -> synth.SynthTrack:
    path = folder / (name or f"track.{synth.EXTENSIONS[fmt]}")
    return synth.write_track(path, fmt, seconds, FULL_TAGS if tags is None else tags,
                             variant=variant, **kwargs)


@pytest.fixture(scope="module", params=format_params(pack=True))
def tagged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> synth.SynthTrack:
    """One fully tagged file with a cover, per format case, shared by the tests below."""
    fmt, variant = request.param
    return write(tmp_path_factory.mktemp(fmt), fmt, variant, cover=synth.make_png(16, 16, 7), seed=7)


# --------------------------------------------------------------------------
# every format: tags, facts, container


def test_reads_the_tags_that_were_written(tagged: synth.SynthTrack) -> None:
    info = read_track_info(tagged.path)
    read = {key: getattr(info, key) for key in FULL_TAGS}
    expected = {key: tagged.tags.get(key, False if key == "compilation" else None) for key in FULL_TAGS}
    assert read == expected


def test_year_comes_from_the_date(tagged: synth.SynthTrack) -> None:
    assert read_track_info(tagged.path).year == 1959


def test_reports_container_and_codec_from_content(tagged: synth.SynthTrack) -> None:
    info = read_track_info(tagged.path)
    assert (info.format, info.codec) == (tagged.format, tagged.codec)
    assert info.format in FORMAT_EXTENSIONS


# mutagen guesses a raw AC-3 stream's length from the file size, tags included
DURATION_SLACK = {"ac3": 0.1}
# DSD64 is 2.8 Mbit/s a channel, uncompressed
MAX_BITRATE = {"dsf": 6_000_000, "dff": 6_000_000}


def test_reports_sensible_audio_facts(tagged: synth.SynthTrack) -> None:
    info = read_track_info(tagged.path)
    # AAC adds ~23 ms of priming
    assert info.duration == pytest.approx(1.5, abs=DURATION_SLACK.get(tagged.format, 0.05))
    assert info.sample_rate == (48000 if tagged.format == "opus"
                                else synth.synth_formats.SAMPLE_RATES.get(tagged.format, 44100))
    assert info.channels == 2
    assert info.bitrate is not None and 24_000 <= info.bitrate <= MAX_BITRATE.get(tagged.format, 1_600_000)


def test_regions_fit_in_the_file(tagged: synth.SynthTrack) -> None:
    info = read_track_info(tagged.path)
    assert info.head_size >= 128 and info.tail_size >= 0
    assert info.head_size + info.tail_size <= tagged.path.stat().st_size


def test_small_library_reads_back_as_written(tmp_path: pathlib.Path) -> None:
    """Multi-disc, compilation, missing tags, loose files: all fields of every track at once."""
    mismatches = []
    for track in synth.synthesize_library(tmp_path, "small"):
        info = read_track_info(track.path)
        for key in FULL_TAGS:
            expected = track.tags.get(key, False if key == "compilation" else None)
            if getattr(info, key) != expected:
                mismatches.append((track.path.name, key, getattr(info, key), expected))
        if (info.format, info.codec) != (track.format, track.codec):
            mismatches.append((track.path.name, "format", info.format, track.format))
    assert mismatches == []


# --------------------------------------------------------------------------
# content decides, not the name


def test_mp3_named_flac_is_mp3(tmp_path: pathlib.Path) -> None:
    track = write(tmp_path, "mp3", name="really-an-mp3.flac")
    info = read_track_info(track.path)
    assert (info.format, info.codec, info.title) == ("mp3", "mp3", FULL_TAGS["title"])


def test_flac_named_mp3_is_flac(tmp_path: pathlib.Path) -> None:
    track = write(tmp_path, "flac", name="really-a-flac.mp3")
    info = read_track_info(track.path)
    assert (info.format, info.title) == ("flac", FULL_TAGS["title"])


def test_opus_named_ogg_is_opus(tmp_path: pathlib.Path) -> None:
    assert read_track_info(write(tmp_path, "opus", name="x.ogg").path).format == "opus"


def test_uppercase_extension(tmp_path: pathlib.Path) -> None:
    info = read_track_info(write(tmp_path, "flac", name="LOUD.FLAC").path)
    assert (info.format, info.artist) == ("flac", FULL_TAGS["artist"])


@pytest.mark.parametrize(("head", "expected"), [
    (b"fLaC\x00\x00\x00\x22", "flac"),
    (b"OggS\x00\x02" + bytes(20) + b"\x01\x1e\x01vorbis", "ogg"),
    (b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead", "opus"),
    (b"OggS\x00\x02" + bytes(20) + b"\x01\x33\x7fFLAC", "oga"),
    (b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00", "m4a"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
    (b"FORM\x00\x00\x00\x2eAIFFCOMM", "aiff"),
    (b"FORM\x00\x00\x00\x2eAIFCFVER", "aiff"),
    (b"ID3\x04\x00\x00\x00\x00\x10\x00", "mp3"),  # tag runs past the head: MP3
    (b"ID3\x04\x00\x00\x00\x00\x00\x00fLaC\x00\x00\x00\x22", "flac"),
    (bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c") + bytes(14), "wma"),
    (b"MAC \xa6\x0f\x00\x00\x34\x00\x00\x00", "ape"),
    (b"wvpk\x00\x10\x00\x00\x10\x04", "wv"),
    (b"MPCK\x53\x48", "mpc"),
    (b"MP+\x17\x3a\x00\x00\x00", "mpc"),
    (b"MP+\x04\x3a\x00\x00\x00", ""),  # SV4 has no such header: not Musepack
    (b"DSD \x1c\x00\x00\x00\x00\x00\x00\x00", "dsf"),
    (b"FRM8\x00\x00\x00\x00\x00\x00\x10\x00DSD FVER", "dff"),
    (b"TTA1\x01\x00\x02\x00\x10\x00", "tta"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00TTA1\x01\x00", "tta"),
    (b"OFR \x0f\x00\x00\x00", "ofr"),
    (b"OggS\x00\x02" + bytes(20) + b"\x01\x50Speex   ", "spx"),
    (b"\x00\x00\x00\x20ftypM4B \x00\x00\x02\x00", "m4b"),
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00", ""),  # a QuickTime movie
    (b"\x00\x00\x00\x14ftypM4V \x00\x00\x02\x00", ""),
    (b"\x00\x00\x00\x14ftyp3gp5\x00\x00\x02\x00", ""),
    # AC-3, 48 kHz, 192 kbit/s: two frames of 768 bytes in a row
    ((b"\x0b\x77\x00\x00\x14\x40" + bytes(762)) * 2, "ac3"),
    (b"\x0b\x77\x00\x00\x14\x40" + bytes(762) + b"junk", ""),  # a lone sync proves nothing
    (b"Just some text, not music.\n", ""),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ""),
    (b"", ""),
])
def test_sniff_format(head: bytes, expected: str) -> None:
    assert sniff_format(head) == expected


def test_every_format_has_an_extension_we_read() -> None:
    assert set(FORMAT_EXTENSIONS.values()) <= AUDIO_EXTENSIONS


def test_every_format_has_a_content_type() -> None:
    assert set(CONTENT_TYPES) == set(FORMAT_EXTENSIONS)
    assert all(kind.startswith("audio/") for kind in CONTENT_TYPES.values())


@pytest.mark.parametrize(("fmt", "name_ext", "expected"), [
    ("flac", "flac", "flac"), ("flac", "FLAC", "flac"), ("flac", "mp3", "flac"), ("flac", "", "flac"),
    ("mpc", "mp+", "mpc"), ("ofr", "ofs", "ofs"), ("ofr", "OFS", "ofs"), ("ofr", "wav", "ofr"),
    ("wma", "asf", "wma"), ("m4b", "m4a", "m4b"),
])
def test_canonical_extension(fmt: str, name_ext: str, expected: str) -> None:
    assert canonical_extension(fmt, name_ext) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("a.flac", "flac"), ("A.FLAC", "flac"), ("a.flac ", "flac"), ("a.flac.", "flac"), ("a.flac. . ", "flac"),
    ("noext", ""), (".hidden", ""), ("a.tar.mp3", "mp3"), ("a.", ""), ("a.mp+", "mp+"),
])
def test_name_extension(name: str, expected: str) -> None:
    assert name_extension(name) == expected


# --------------------------------------------------------------------------
# what is not audio, and what is broken audio


def test_empty_file_is_not_audio(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.mp3"
    path.touch()
    with pytest.raises(NotAudioError, match="^empty file$"):
        read_track_info(path)


@pytest.mark.parametrize("content", [b"Track listing:\n1. So What\n" * 20, synth.make_png(8, 8)],
                         ids=["text", "png"])
def test_other_content_is_not_audio(tmp_path: pathlib.Path, content: bytes) -> None:
    path = tmp_path / "x.mp3"
    path.write_bytes(content)
    with pytest.raises(NotAudioError, match=r"^not an audio file \(content not recognized\)$"):
        read_track_info(path)


def test_missing_file_raises_oserror(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_track_info(tmp_path / "gone.flac")


def test_directory_raises_oserror(tmp_path: pathlib.Path) -> None:
    with pytest.raises(IsADirectoryError):
        read_track_info(tmp_path)


def test_read_error_inside_mutagen_propagates_unchanged(tmp_path: pathlib.Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """mutagen turns IOError into MutagenError; the caller must still see the OSError."""
    path = write(tmp_path, "mp3").path
    size = path.stat().st_size
    failure = OSError(errno.EIO, "Input/output error")

    class FailingDisk(io.FileIO):
        """The first read near the end fails, as mutagen's ID3v1 probe is; later reads work."""

        failed = False

        def read(self, n: int = -1) -> bytes:
            if not self.failed and self.tell() >= size - 1024:
                self.failed = True
                raise failure
            return super().read(n)

    class Watched(tags._WatchedFile, FailingDisk):  # FailingDisk sits under _WatchedFile
        pass

    monkeypatch.setattr(tags, "_WatchedFile", Watched)
    with pytest.raises(OSError) as caught:
        read_track_info(path)
    assert caught.value is failure


@pytest.mark.parametrize(("fmt", "variant"), format_params())
@pytest.mark.parametrize("keep", [0.5, 0.03], ids=["half", "3pct"])
def test_truncated_file_keeps_its_format(tmp_path: pathlib.Path, fmt: str, variant: str, keep: float) -> None:
    track = write(tmp_path, fmt, variant, cover=synth.make_png(64, 64, 3, noise=True))
    data = track.path.read_bytes()
    cut = int(len(data) * keep)
    track.path.write_bytes(data[:cut])
    info = read_track_info(track.path)
    # cut inside a leading ID3v2 tag, nothing says what followed it; MP3 is the usual answer
    inside_id3 = data[:3] == b"ID3" and cut <= 10 + containers._syncsafe(data[6:10])
    assert info.format == ("mp3" if inside_id3 else track.format)
    assert info.head_size + info.tail_size <= int(len(data) * keep)


@pytest.mark.parametrize(("content", "fmt"), [
    (b"fLaC", "flac"),
    (b"fLaC\x80\x00\x00\x22", "flac"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
    (b"\xff\xfb\x90\x64", "mp3"),
    (b"OggS\x00\x02" + bytes(20) + b"\x01\x1e\x01vorbis", "ogg"),
    (b"\x00\x00\x00\x20ftypM4A ", "m4a"),
    (b"RIFF\x24\x00\x00\x00WAVE", "wav"),
    (b"FORM\x00\x00\x00\x2eAIFF", "aiff"),
    (b"MAC \xa6\x0f", "ape"),
    (b"wvpk", "wv"),
    (b"DSD \x1c\x00\x00\x00\x00\x00\x00\x00", "dsf"),
    (b"OFR ", "ofr"),
    (bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"), "wma"),
], ids=["flac-magic", "flac-block", "id3", "mpeg-header", "ogg-page", "ftyp", "riff", "form",
        "ape", "wavpack", "dsf", "optimfrog", "asf-guid"])
def test_tiny_file_of_a_known_format(tmp_path: pathlib.Path, content: bytes, fmt: str) -> None:
    path = tmp_path / "tiny"
    path.write_bytes(content)
    info = read_track_info(path)
    assert (info.format, info.head_size + info.tail_size) == (fmt, len(content))


def test_mp3_cut_after_its_id3_tag_still_has_tags(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "mp3").path
    tag_size = ID3(path).size
    path.write_bytes(path.read_bytes()[:tag_size])
    info = read_track_info(path)
    assert (info.format, info.title, info.duration) == ("mp3", FULL_TAGS["title"], None)


def test_corrupt_flac_metadata_gives_format_without_tags(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "flac").path
    data = bytearray(path.read_bytes())
    data[8 + 34:8 + 34 + 64] = b"\xff" * 64  # smash the block header after STREAMINFO
    path.write_bytes(bytes(data))
    info = read_track_info(path)
    assert (info.format, info.title) == ("flac", None)


# --------------------------------------------------------------------------
# normalization


@pytest.mark.parametrize(("fmt", "raw", "track", "total"), [
    ("mp3", "3/12", 3, 12),
    ("mp3", "03", 3, None),
    ("mp3", " 7 / 9 ", 7, 9),
    ("mp3", "A1", None, None),
    ("mp3", "", None, None),
    ("mp3", "x", None, None),
    ("mp3", "0", None, None),
    ("mp3", "4/x", 4, None),
    ("flac", "3/12", 3, 12),
    ("flac", "A1", None, None),
])
def test_track_numbers(tmp_path: pathlib.Path, fmt: str, raw: str,
                       track: int | None, total: int | None) -> None:
    info = read_track_info(write(tmp_path, fmt, tags={"title": "t", "track": raw}, seconds=0.2).path)
    assert (info.track, info.tracktotal) == (track, total)


def test_separate_total_wins_over_the_slash_form(tmp_path: pathlib.Path) -> None:
    info = read_track_info(write(tmp_path, "flac", tags={"track": "2/5", "tracktotal": 10}, seconds=0.2).path)
    assert (info.track, info.tracktotal) == (2, 10)


@pytest.mark.parametrize(("date", "stored", "year"), [
    ("0000", "0000", None),
    ("1959-08-17", "1959-08-17", 1959),
    (" 2001 ", "2001", 2001),
    ("17.08.1959", "17.08.1959", 1959),
    ("someday", "someday", None),
    ("999", "999", None),
])
def test_dates_and_years(tmp_path: pathlib.Path, date: str, stored: str, year: int | None) -> None:
    info = read_track_info(write(tmp_path, "flac", tags={"date": date}, seconds=0.2).path)
    assert (info.date, info.year) == (stored, year)


@pytest.mark.parametrize(("genre", "expected"), [
    ("(17)", "Rock"), ("17", "Rock"), ("(17)(18)", "Rock; Techno"), ("Free Jazz", "Free Jazz"),
])
def test_numeric_id3_genres(tmp_path: pathlib.Path, genre: str, expected: str) -> None:
    info = read_track_info(write(tmp_path, "mp3", tags={"genre": genre}, seconds=0.2).path)
    assert info.genre == expected


def test_id3v1_only_file(tmp_path: pathlib.Path) -> None:
    long_title = "A Title Longer Than Thirty Characters"
    track = write(tmp_path, "mp3", "id3v1", tags={**FULL_TAGS, "title": long_title})
    info = read_track_info(track.path)
    assert (info.artist, info.title, info.track, info.year, info.albumartist) == (
        FULL_TAGS["artist"], "A Title Longer Than Thirty Cha", 3, 1959, None)


def test_apev2_wins_over_the_id3v1_next_to_it(tmp_path: pathlib.Path) -> None:
    title = "A Title Longer Than Thirty Characters"
    info = read_track_info(write(tmp_path, "mp3", "apev2", tags={**FULL_TAGS, "title": title}).path)
    assert (info.title, info.albumartist, info.track, info.tracktotal) == (
        title, FULL_TAGS["albumartist"], 3, 12)


def test_id3v2_wins_over_apev2(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "mp3", "apev2").path
    id3 = ID3()
    id3.add(TIT2(encoding=3, text=["From ID3v2"]))
    id3.save(path)
    assert read_track_info(path).title == "From ID3v2"


def test_multiple_values_are_joined(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "flac", tags={"title": "Duet"}).path
    audio = FLAC(path)
    audio["ARTIST"] = ["Ella", "  ", "Louis"]
    audio.save()
    assert read_track_info(path).artist == "Ella; Louis"


def test_whitespace_is_stripped_and_blank_is_none(tmp_path: pathlib.Path) -> None:
    info = read_track_info(write(tmp_path, "mp3", tags={"artist": "  Nina  ", "album": "   "}).path)
    assert (info.artist, info.album) == ("Nina", None)


def test_untagged_file_has_no_tags(tmp_path: pathlib.Path) -> None:
    info = read_track_info(write(tmp_path, "mp3", tags={}).path)
    assert (info.artist, info.title, info.track, info.compilation) == (None, None, None, False)
    assert info.duration == pytest.approx(1.5, abs=0.05)


def test_adts_aac_stream(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "raw.aac"
    path.write_bytes(adts_stream(300))
    info = read_track_info(path)
    assert (info.format, info.codec, info.sample_rate, info.channels) == ("aac", "aac", 44100, 2)


# --------------------------------------------------------------------------
# tag regions: everything mutagen reads lies in [0, head) + [size - tail, size)


class RecordingFile(io.FileIO):
    """A file that remembers every byte range read from it."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(path, "rb")
        self.ranges: list[tuple[int, int]] = []

    def read(self, size: int = -1) -> bytes:
        start = self.tell()
        data = super().read(size)
        if data:
            self.ranges.append((start, start + len(data)))
        return data

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        start = self.tell()
        count = super().readinto(buffer) or 0
        if count:
            self.ranges.append((start, start + count))
        return count


def reads_outside_regions(path: pathlib.Path, load: object) -> list[tuple[int, int]]:
    """Byte ranges `load(fileobj)` reads that fall in the gap between head and tail."""
    info = read_track_info(path)
    gap_start, gap_end = info.head_size, path.stat().st_size - info.tail_size
    with RecordingFile(path) as f:
        load(f)  # type: ignore[operator]
    return [(a, b) for a, b in f.ranges if a < gap_end and b > gap_start]


def adts_stream(frames: int) -> bytes:
    """Raw AAC (ADTS) framing around dummy payloads: mutagen reads headers, never payloads."""
    out = bytearray()
    for n in range(frames):
        payload = bytes((n * 7 + i) % 251 for i in range(200 + n % 50))
        length = 7 + len(payload)
        # sync, MPEG-4, no CRC | LC, 44.1 kHz | 2 channels, length | fullness 0x7FF, 1 block
        header = struct.pack(">BBBBBBB", 0xFF, 0xF1, 0x50, 0x80 | (length >> 11),
                             (length >> 3) & 0xFF, ((length & 7) << 5) | 0x1F, 0xFC)
        out += header + payload
    return bytes(out)


def strip_first_frame(path: pathlib.Path) -> None:
    """Remove the Info frame of an untagged 320 kbit/s 44.1 kHz MP3: a CBR file with no VBR header."""
    data = path.read_bytes()
    length = 144 * 320_000 // 44_100 + ((data[2] >> 1) & 1)
    path.write_bytes(data[length:])


def region_case(tmp_path: pathlib.Path, case: str) -> pathlib.Path:
    """Files much bigger than their regions (seconds of noise), for the region proof."""
    if case == "mp3-no-vbr-header":
        path = write(tmp_path, "mp3", "cbr320", tags={}, seconds=8, noise=True).path
        strip_first_frame(path)
        id3 = ID3()
        id3.add(TIT2(encoding=3, text=["Old CBR rip"]))
        id3.save(path)
        return path
    if case == "mp3-junk-before-first-frame":
        path = write(tmp_path, "mp3", seconds=8, noise=True).path
        tag_size = ID3(path).size
        data = path.read_bytes()
        path.write_bytes(data[:tag_size] + bytes(3000) + data[tag_size:])
        return path
    if case == "flac-after-id3v2":
        path = write(tmp_path, "flac", seconds=8, noise=True).path
        prefix = tmp_path / "tag.id3"
        prefix.touch()
        id3 = ID3()
        id3.add(TIT2(encoding=3, text=["ID3 before fLaC"]))
        id3.save(prefix)
        path.write_bytes(prefix.read_bytes() + path.read_bytes())
        return path
    if case == "adts":
        path = tmp_path / "raw.aac"
        path.write_bytes(adts_stream(400))
        return path
    fmt, variant, cover = case.split(":")
    # Ogg's tail is 64 KiB and raw AAC's head 100 frames: make the file long
    # enough for them to be a small part
    seconds = {"ogg": 20, "opus": 20, "oga": 20, "spx": 90, "aac": 16}.get(fmt, 8)
    # a 77 kB cover: Vorbis comments then span two Ogg pages
    picture = synth.make_png(160, 160, 5, noise=True) if cover else None
    return write(tmp_path, fmt, variant, seconds=seconds, noise=True, cover=picture).path


COVER_CASES = {"flac", "mp3-id3v24", "mp3-id3v23", "ogg-vorbis", "opus", "wav", "aiff", "m4a-aac",
               "m4a-aac-faststart", "wma", "ac3", "aac-adts", "tta", "wavpack", "speex", "ogg-flac",
               "m4b", "musepack-sv8", "musepack-sv7", "ape", "dsf", "dff", "optimfrog"}
REGION_CASES = [
    pytest.param(f"{fmt}:{variant}:{cover}", id=ident + ("+cover" if cover else ""), marks=tool_marks(fmt))
    for fmt, variant, ident in FORMATS for cover in ("", "cover") if not cover or ident in COVER_CASES
] + ["mp3-no-vbr-header", "mp3-junk-before-first-frame", "flac-after-id3v2", "adts"]


@pytest.fixture(scope="module", params=REGION_CASES)
def region_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return region_case(tmp_path_factory.mktemp("regions"), request.param)


def test_mutagen_file_reads_only_the_regions(region_file: pathlib.Path) -> None:
    """What a player's scan does: mutagen.File (type probe included) on the open file.

    mutagen.File takes a leading ID3v2 tag for MP3: on raw AAC behind one it
    hunts for MPEG frames through the whole stream, which no region can
    cover; there the container's parser (the next test) is what counts.
    """
    with region_file.open("rb") as f:
        id3_then_aac = f.read(3) == b"ID3" and read_track_info(region_file).format == "aac"
    load = tags._PARSERS["aac"] if id3_then_aac else mutagen.File
    assert reads_outside_regions(region_file, load) == []


def test_the_containers_parser_reads_only_the_regions(region_file: pathlib.Path) -> None:
    """The parser lockerfs picks from the content (what a scanner that sniffs does)."""
    fmt = read_track_info(region_file).format
    assert reads_outside_regions(region_file, tags._PARSERS[fmt]) == []


def test_regions_are_a_small_part_of_the_file(region_file: pathlib.Path) -> None:
    """Otherwise the proof above would hold trivially."""
    info = read_track_info(region_file)
    assert info.head_size + info.tail_size < region_file.stat().st_size / 2


@pytest.mark.parametrize("variant", ["apev2", "id3v1", ""], ids=["apev2", "id3v1", "id3v24"])
@pytest.mark.parametrize("reader", [APEv2, ID3], ids=["APEv2", "ID3"])
def test_mp3_tag_readers_stay_in_the_regions(tmp_path: pathlib.Path, variant: str, reader: type) -> None:
    """mutagen.File never looks for APEv2 on an MP3, but taggers and lockerfs do."""
    path = write(tmp_path, "mp3", variant, seconds=8, noise=True).path

    def load(f: io.FileIO) -> None:
        try:
            reader(f)
        except mutagen.MutagenError:  # no such tag in this file
            pass

    assert reads_outside_regions(path, load) == []
