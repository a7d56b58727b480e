"""retag.py: FIELD=VALUE parsing, and rewrites that read back as asked in every format and tag habit."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from mutagen.apev2 import APEv2
from mutagen.id3 import ID3

from lockerfs import retag
from lockerfs.retag import Edit, TagError, parse_edits
from lockerfs.tags import read_track_info
from lockerfs.trackinfo import TrackInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from synth_formats import needs_tool  # noqa: E402
from synth_library import FFMPEG, write_track  # noqa: E402

BASE = {"artist": "Old Artist", "albumartist": "Old Band", "album": "Old Album", "title": "Old Title",
        "track": 2, "tracktotal": 9, "disc": 1, "disctotal": 2, "date": "1971-03-04", "genre": "Jazz"}

# (write_track fmt, variant, file extension)
KINDS = [("flac", "", "flac"), ("flac", "aliases", "flac"), ("mp3", "", "mp3"), ("mp3", "id3v23", "mp3"),
         ("mp3", "id3v1", "mp3"), ("mp3", "apev2", "mp3"), ("ogg", "", "ogg"), ("ogg", "aliases", "ogg"),
         ("opus", "", "opus"), ("wav", "", "wav"), ("aiff", "", "aiff")]
if FFMPEG:
    KINDS += [("m4a", "", "m4a"), ("alac", "faststart", "m4a")]
# the containers of scripts/synth_formats.py, where this machine has their encoders (setup.sh installs them)
KINDS += [(fmt, variant, fmt) for fmt, variant in [
    ("wma", ""), ("aac", ""), ("tta", ""), ("wv", ""), ("spx", ""), ("oga", ""), ("m4b", ""), ("mpc", ""),
    ("mpc", "sv7"), ("ape", ""), ("dsf", ""), ("dff", ""), ("ofr", "")] if needs_tool(fmt) is None]


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("retag")
    made = {}
    for n, (fmt, variant, ext) in enumerate(KINDS):
        path = folder / f"{fmt}-{variant or 'plain'}.{ext}"
        write_track(path, fmt, 0.5, BASE, seed=n, variant=variant)
        made[(fmt, variant)] = path
    return made


def edited(originals: dict[tuple[str, str], Path], kind: tuple[str, str], tmp_path: Path,
           assignments: list[str]) -> tuple[Path, Path]:
    source = originals[kind]
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)
    old = read_track_info(source)
    retag.rewrite(copy, old.format, parse_edits(assignments), old)
    return source, copy


@pytest.mark.parametrize("kind", [(fmt, variant) for fmt, variant, _ in KINDS], ids=lambda k: "-".join(filter(None, k)))
def test_every_field_reads_back_as_set(originals, kind, tmp_path) -> None:
    assignments = ["artist=New Artist", "albumartist=New Band", "album=New Album", "title=New Title",
                   "track=5", "disc=2/2", "year=1999", "genre=Ambient"]
    source, copy = edited(originals, kind, tmp_path, assignments)
    before, after = read_track_info(source), read_track_info(copy)
    if kind == ("mp3", "id3v1"):  # ID3v1 has no album artist, disc or total: the rewrite adds ID3v2
        assert ID3(copy).version >= (2, 3, 0)
    assert (after.artist, after.albumartist, after.album, after.title) == ("New Artist", "New Band",
                                                                            "New Album", "New Title")
    assert (after.track, after.disc, after.disctotal, after.year, after.genre) == (5, 2, 2, 1999, "Ambient")
    assert retag.mismatch(after, parse_edits(assignments)) is None
    if before.tracktotal:  # a number without a total keeps the file's total
        assert after.tracktotal == before.tracktotal
    assert (after.format, after.codec, after.sample_rate, after.channels) == (
        before.format, before.codec, before.sample_rate, before.channels)
    assert after.duration == pytest.approx(before.duration, abs=0.01)


@pytest.mark.parametrize("kind", [(fmt, variant) for fmt, variant, _ in KINDS], ids=lambda k: "-".join(filter(None, k)))
def test_cleared_fields_read_back_empty_and_others_stay(originals, kind, tmp_path) -> None:
    source, copy = edited(originals, kind, tmp_path, ["albumartist=", "year=", "genre=", "track="])
    before, after = read_track_info(source), read_track_info(copy)
    assert (after.albumartist, after.year, after.date, after.genre, after.track) == (None, None, None, None, None)
    assert (after.artist, after.album, after.title) == (before.artist, before.album, before.title)


def test_an_apev2_mp3_keeps_its_id3v1_and_all_three_tags_agree(originals, tmp_path) -> None:
    """foobar2000's layout (APEv2 then ID3v1): a player reading either must see the new album."""
    _, copy = edited(originals, ("mp3", "apev2"), tmp_path, ["album=New Album"])
    assert str(APEv2(copy)["Album"]) == "New Album"
    data = copy.read_bytes()
    assert data[-128:-125] == b"TAG" and data[-128 + 63:-128 + 93].rstrip(b"\0") == b"New Album"
    assert ID3(copy)["TALB"].text == ["New Album"]


def test_aliases_are_replaced_not_left_to_contradict(originals, tmp_path) -> None:
    from mutagen.flac import FLAC

    _, copy = edited(originals, ("flac", "aliases"), tmp_path, ["albumartist=New Band", "track=3/12"])
    tags = FLAC(copy).tags
    assert tags["ALBUMARTIST"] == ["New Band"] and "ALBUM ARTIST" not in tags
    assert tags["TRACKNUMBER"] == ["3"] and tags["TRACKTOTAL"] == ["12"] and "TOTALTRACKS" not in tags


def test_an_untagged_file_gets_tags(tmp_path) -> None:
    source = tmp_path / "bare.mp3"
    write_track(source, "mp3", 0.5, {}, seed=3)
    copy = tmp_path / "copy.mp3"
    shutil.copyfile(source, copy)
    old = read_track_info(source)
    retag.rewrite(copy, old.format, parse_edits(["title=Named At Last"]), old)
    assert read_track_info(copy).title == "Named At Last"


@pytest.mark.parametrize("assignments, message", [
    (["colour=blue"], "unknown field 'colour'"),
    (["album"], "unknown field 'album'"),
    (["track=three"], "the track must be a number"),
    (["track=0"], "the track must be a number"),
    (["disc=1/0"], "the disc must be a number"),
    (["year=99"], "four-digit year"),
    (["album=a", "album=b"], "album is given twice"),
    (["title=two\nlines"], "control characters"),
])
def test_bad_input_is_one_sentence(assignments, message) -> None:
    with pytest.raises(TagError) as failure:
        parse_edits(assignments)
    assert message in str(failure.value) and "\n" not in str(failure.value)


def test_edits_parse() -> None:
    assert parse_edits(["Album=  Kind of Blue ", "track=3/12", "year=1959", "genre="]) == [
        Edit("album", "Kind of Blue"), Edit("track", "3/12", 3, 12), Edit("year", "1959", 1959), Edit("genre", None)]


def test_a_wma_file_loses_the_attributes_that_would_contradict_it(originals, tmp_path) -> None:
    if ("wma", "") not in originals:
        pytest.fail("ffmpeg is needed for WMA test files: run scripts/setup.sh")
    from mutagen.asf import ASF

    _, copy = edited(originals, ("wma", ""), tmp_path, ["track=4/10", "albumartist=New Band"])
    tags = ASF(copy).tags
    assert [str(v) for v in tags["WM/TrackNumber"]] == ["4"] and [str(v) for v in tags["TotalTracks"]] == ["10"]
    assert "WM/Track" not in tags and "AlbumArtist" not in tags
    assert [str(v) for v in tags["WM/AlbumArtist"]] == ["New Band"]


def test_an_ac3_stream_is_refused_in_one_sentence(tmp_path) -> None:
    if needs_tool("ac3"):
        pytest.fail("ffmpeg is needed for AC-3 test files: run scripts/setup.sh")
    source = tmp_path / "x.ac3"
    write_track(source, "ac3", 0.5, BASE, seed=1)
    before = source.read_bytes()
    with pytest.raises(TagError, match="^an AC-3 stream has no place for tags"):
        retag.rewrite(source, "ac3", parse_edits(["album=x"]), read_track_info(source))
    assert source.read_bytes() == before


def test_a_file_mutagen_cannot_write_is_refused(tmp_path) -> None:
    bogus = tmp_path / "x.flac"
    bogus.write_bytes(b"fLaC" + b"\x00" * 100)
    with pytest.raises(TagError):
        retag.rewrite(bogus, "flac", parse_edits(["album=x"]), TrackInfo("flac", "flac"))
