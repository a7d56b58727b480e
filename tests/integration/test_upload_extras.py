"""A real `lockerfs upload` stores covers, images, lyrics, cue sheets and playlists; a real mount shows them.

One library is synthesized in code (tracks by the synthesizer, images by
PIL and by hand, text files written here), uploaded once to a real S3
server, and mounted. The tests then read the mount: covers chosen from side
files, from the art embedded in each container, none where there is
neither; other images; lyrics beside their track; cue sheets whose FILE
lines lead to mounted files; playlists in every spelling people have, their
entries opened with ffmpeg through the mount; a rerun that sends nothing;
a playlist replaced by a second upload.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.mounting import lockerfs, mounted
from tests.support.s3server import S3Server

from synth_library import make_jpeg, make_png, write_track

SIDE = "Side Band/Side Album (2001)"
SCANNED = "Scans Band/Scans Album (2005)"
PLAIN = "Plain Band/Plain Album (2003)"
CUES = "Cue Band/Cue Album (2006)"
RIP = "Rip Band/Rip Album (2007)"
UNICODE = "Caf\u00e9 Band/Caf\u00e9 Album (2008)"
EMBEDDED_FORMATS = ("mp3", "flac", "m4a", "ogg")  # ID3 APIC, FLAC PICTURE, MP4 covr, Ogg METADATA_BLOCK_PICTURE


def embedded(fmt: str) -> str:
    return f"Embedded {fmt} Band/Embedded {fmt} Album (2002)"


def tags(artist: str, album: str, year: int, number: int, title: str) -> dict:
    return {"artist": artist, "albumartist": artist, "album": album, "date": str(year), "track": number,
            "title": title}


@dataclass
class Library:
    root: Path  # the folder given to upload
    outside: Path  # a track that is never uploaded, outside root
    cover: bytes  # SIDE's cover.jpg
    back: bytes  # SIDE's back.png
    scan: bytes  # SCANNED's Scans/booklet.png (its only image)
    art: dict[str, bytes]  # format -> picture embedded as front cover
    lyrics: bytes


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_playlists(root: Path, outside: Path) -> None:
    """The same two tracks named every way a playlist names them; plus three that resolve to nothing."""
    lists = root / "Lists"
    lists.mkdir(exist_ok=True)
    side_one = root / SIDE / "01 First.mp3"
    cafe = root / UNICODE / "01 Cr\u00e8me.flac"
    (lists / "relative.m3u").write_text(f"#EXTM3U\n#EXTINF:1,Side - First\n../{SIDE}/01 First.mp3\n"
                                        f"../{UNICODE}/01 Cr\u00e8me.flac\n", encoding="utf-8")
    (lists / "absolute.m3u8").write_text(f"{side_one}\nfile://{cafe.as_posix().replace(' ', '%20')}\n",
                                         encoding="utf-8")
    windows = (f"D:\\Music\\{SIDE}\\01 FIRST.MP3\r\n..\\{UNICODE}\\01 Cr\u00e8me.flac\r\n").replace("/", "\\")
    (lists / "windows.m3u").write_bytes(windows.encode("cp1252"))
    (lists / "latin1.m3u").write_bytes(f"#EXTM3U\r\n../{UNICODE}/01 Cr\u00e8me.flac\r\n".encode("latin-1"))
    (lists / "bom.m3u8").write_bytes(b"\xef\xbb\xbf" + f"#EXTM3U\n../{UNICODE}/01 Cr\u00e8me.flac\n".encode())
    write_road_trip(root, outside)


def write_road_trip(root: Path, outside: Path, version: int = 1) -> None:
    """A playlist with one entry that resolves and three that cannot; version 2 replaces them all."""
    entries = [f"../{SIDE}/01 First.mp3", "../missing/Never.mp3", "../notes.txt", str(outside)]
    if version == 2:
        entries = [f"../{PLAIN}/01 Lonely.flac"]
    (root / "Lists" / "Road Trip.m3u8").write_text("#EXTM3U\n" + "\n".join(entries) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    base = tmp_path_factory.mktemp("extras")
    root = base / "Music"
    cover, back = make_jpeg(120_000, seed=1), make_png(300, 300, seed=2)
    scan = make_png(200, 280, seed=3)
    art = {fmt: make_png(64 + i, 64, seed=10 + i) for i, fmt in enumerate(EMBEDDED_FORMATS)}
    lyrics = "[00:00.00]First line\n[00:00.50]Second line\n".encode()

    write_track(root / SIDE / "01 First.mp3", "mp3", 1.0, tags("Side Band", "Side Album", 2001, 1, "First"), seed=1)
    write_track(root / SIDE / "02 Second.mp3", "mp3", 1.0, tags("Side Band", "Side Album", 2001, 2, "Second"),
                seed=2, cover=art["mp3"])  # a side cover wins over embedded art
    (root / SIDE / "cover.jpg").write_bytes(cover)
    (root / SIDE / "back.png").write_bytes(back)
    (root / SIDE / "01 First.lrc").write_bytes(lyrics)
    (root / SIDE / "notes.txt").write_text("ripped with care\n")
    (root / SIDE / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(100))
    (root / SIDE / "fake.jpg").write_bytes(b"this is no image at all")

    for i, fmt in enumerate(EMBEDDED_FORMATS):
        write_track(root / embedded(fmt) / f"01 One.{fmt}", fmt, 1.0,
                    tags(f"Embedded {fmt} Band", f"Embedded {fmt} Album", 2002, 1, "One"), seed=20 + i,
                    cover=art[fmt])
        write_track(root / embedded(fmt) / f"02 Two.{fmt}", fmt, 1.0,
                    tags(f"Embedded {fmt} Band", f"Embedded {fmt} Album", 2002, 2, "Two"), seed=30 + i,
                    cover=art[fmt])

    write_track(root / PLAIN / "01 Lonely.flac", "flac", 1.0, tags("Plain Band", "Plain Album", 2003, 1, "Lonely"),
                seed=40)
    write_track(root / SCANNED / "01 Scanned.flac", "flac", 1.0,
                tags("Scans Band", "Scans Album", 2005, 1, "Scanned"), seed=41)
    (root / SCANNED / "Scans").mkdir()
    (root / SCANNED / "Scans" / "booklet.png").write_bytes(scan)

    for number, title in ((1, "Alpha"), (2, "Beta")):
        write_track(root / CUES / f"0{number} {title}.flac", "flac", 1.0,
                    tags("Cue Band", "Cue Album", 2006, number, title), seed=50 + number)
    (root / CUES / "Cue Album.cue").write_text(
        'TITLE "Cue Album"\nFILE "01 ALPHA.FLAC" WAVE\n  TRACK 01 AUDIO\n    INDEX 01 00:00:00\n'
        'FILE "02 Beta.flac" WAVE\n  TRACK 02 AUDIO\n    INDEX 01 00:00:00\n'
        'FILE "03 Gamma.flac" WAVE\n  TRACK 03 AUDIO\n    INDEX 01 00:00:00\n', encoding="utf-8")
    write_track(root / RIP / "CDImage.flac", "flac", 2.0, {"albumartist": "Rip Band", "album": "Rip Album",
                                                          "date": "2007"}, seed=60)
    (root / RIP / "CDImage.cue").write_text(
        'PERFORMER "Rip Band"\nTITLE "Rip Album"\nFILE "CDImage.wav" WAVE\n  TRACK 01 AUDIO\n'
        '    INDEX 01 00:00:00\n  TRACK 02 AUDIO\n    INDEX 01 00:01:00\n', encoding="utf-8")

    write_track(root / UNICODE / "01 Cr\u00e8me.flac", "flac", 1.0,
                tags("Caf\u00e9 Band", "Caf\u00e9 Album", 2008, 1, "Cr\u00e8me"), seed=70)
    (root / "notes.txt").write_text("not music\n")
    outside = base / "Elsewhere" / "Outside.mp3"
    write_track(outside, "mp3", 1.0, tags("Out", "Out", 2000, 1, "Outside"), seed=80)
    write_playlists(root, outside)
    return Library(root, outside, cover, back, scan, art, lyrics)


@dataclass
class Uploaded:
    locker: str
    env: dict[str, str]
    first: str  # the first upload's output
    second: str  # a rerun's output


@pytest.fixture(scope="module")
def uploaded(library: Library, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Uploaded:
    """The library uploaded once, then again unchanged (module-wide: the upload is the slow part)."""
    s3_server.make_bucket("extrasup")
    env = s3_server.env()
    home = tmp_path_factory.mktemp("extras-home")
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        folder = home / name.lower()
        folder.mkdir(mode=0o700)
        env[name] = str(folder)
    locker = "s3://extrasup/music"
    first = lockerfs("upload", str(library.root), locker, env=env).stdout
    second = lockerfs("upload", str(library.root), locker, env=env).stdout
    return Uploaded(locker, env, first, second)


@pytest.fixture
def mnt(uploaded: Uploaded, tmp_path: Path) -> Iterator[Path]:
    with mounted(uploaded.locker, tmp_path / "mnt", uploaded.env) as mountpoint:
        yield mountpoint


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_summary_counts_what_was_stored_and_names_what_was_left_out(uploaded: Uploaded) -> None:
    out = uploaded.first
    assert "with the music: 2 covers, 4 covers from embedded art, 1 other image, 1 lyrics file, " \
           "2 cue sheets, 6 playlists recorded" in out, out
    for left_out in ("notes.txt", "Thumbs.db", "fake.jpg: not an image"):
        assert left_out in out, out
    assert "Road Trip.m3u8: ../missing/Never.mp3: no such file" in out, out
    assert "Road Trip.m3u8: ../notes.txt: not uploaded" in out, out
    assert "Outside.mp3: not uploaded" in out, out
    assert "Cue Album.cue: 03 Gamma.flac: no such file" in out, out


def test_a_rerun_sends_nothing_and_records_nothing(uploaded: Uploaded) -> None:
    out = uploaded.second
    assert out.startswith("uploaded 0 (0 B), matched 0, unchanged 16,"), out
    # only the playlist with unresolved entries is read again (their tracks may be here now)
    assert "with the music: nothing new recorded; side files: 0 sent (0 B), 1 already stored, 11 unchanged" \
        in out, out


def test_cover_from_a_side_file_and_other_images(mnt: Path, library: Library) -> None:
    album = mnt / SIDE
    assert listing(album) == ["01 First.lrc", "01 First.mp3", "02 Second.mp3", "back.png", "cover.jpg"]
    assert (album / "cover.jpg").read_bytes() == library.cover
    assert (album / "back.png").read_bytes() == library.back
    scanned = mnt / SCANNED
    assert (scanned / "cover.png").read_bytes() == library.scan  # only an image in Scans/: the cover


@pytest.mark.parametrize("fmt", EMBEDDED_FORMATS)
def test_cover_from_embedded_art_for_each_container(mnt: Path, library: Library, fmt: str) -> None:
    album = mnt / embedded(fmt)
    assert listing(album) == [f"01 One.{fmt}", f"02 Two.{fmt}", "cover.png"]
    assert (album / "cover.png").read_bytes() == library.art[fmt]


def test_no_cover_without_art(mnt: Path) -> None:
    assert listing(mnt / PLAIN) == ["01 Lonely.flac"]


def test_lyrics_beside_their_track(mnt: Path, library: Library) -> None:
    assert (mnt / SIDE / "01 First.lrc").read_bytes() == library.lyrics
    assert not (mnt / SIDE / "02 Second.lrc").exists()


def cue_files(sheet: str) -> list[str]:
    return [line.split('"')[1] for line in sheet.splitlines() if line.startswith("FILE ")]


def test_cue_sheets_lead_to_the_mounted_files(mnt: Path, library: Library) -> None:
    album = mnt / CUES
    sheet = (album / "Cue Album.cue").read_text()
    names = cue_files(sheet)
    assert names[:2] == ["01 Alpha.flac", "02 Beta.flac"]
    assert names[2] == "03 Gamma.flac"  # names nothing uploaded: kept as written (and reported)
    for name, source in zip(names[:2], ("01 Alpha.flac", "02 Beta.flac")):
        assert (album / name).read_bytes() == (library.root / CUES / source).read_bytes()
    rip = mnt / RIP
    assert listing(rip) == ["CDImage.cue", "CDImage.flac"]  # no title: the track keeps its file's name
    names = cue_files((rip / "CDImage.cue").read_text())
    assert names == ["CDImage.flac"]  # "CDImage.wav" in the source: the rip was compressed after ripping
    assert (rip / names[0]).read_bytes() == (library.root / RIP / "CDImage.flac").read_bytes()


def entries_of(playlist: Path) -> list[str]:
    return [line for line in playlist.read_text().splitlines() if line and not line.startswith("#")]


def test_playlists_resolved_from_every_spelling(mnt: Path, library: Library) -> None:
    lists = mnt / "Playlists"
    assert listing(lists) == ["Road Trip.m3u8", "absolute.m3u8", "bom.m3u8", "latin1.m3u8", "relative.m3u8",
                              "windows.m3u8"]
    first = f"../{SIDE}/01 First.mp3"
    creme = f"../{UNICODE}/01 Cr\u00e8me.flac"
    assert entries_of(lists / "relative.m3u8") == [first, creme]
    assert entries_of(lists / "absolute.m3u8") == [first, creme]
    assert entries_of(lists / "windows.m3u8") == [first, creme]
    assert entries_of(lists / "latin1.m3u8") == [creme]
    assert entries_of(lists / "bom.m3u8") == [creme]
    for entry in (first, creme):
        decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(lists / entry), "-f", "null", "-"],
                                 capture_output=True, text=True, timeout=60)
        assert decoded.returncode == 0, decoded.stderr
    assert (lists / first).read_bytes() == (library.root / SIDE / "01 First.mp3").read_bytes()


def test_unresolved_entries_are_comments(mnt: Path, library: Library) -> None:
    text = (mnt / "Playlists" / "Road Trip.m3u8").read_text()
    assert entries_of(mnt / "Playlists" / "Road Trip.m3u8") == [f"../{SIDE}/01 First.mp3"]
    for unresolved in ("../missing/Never.mp3", "../notes.txt", str(library.outside)):
        assert f"# not in the locker: {unresolved}" in text


def test_uploading_a_playlist_again_replaces_it(library: Library, uploaded: Uploaded, tmp_path: Path) -> None:
    write_road_trip(library.root, library.outside, version=2)
    try:
        out = lockerfs("upload", str(library.root), uploaded.locker, env=uploaded.env).stdout
        assert "with the music: 1 playlist recorded" in out, out
        with mounted(uploaded.locker, tmp_path / "mnt", uploaded.env) as mnt:
            assert entries_of(mnt / "Playlists" / "Road Trip.m3u8") == [f"../{PLAIN}/01 Lonely.flac"]
            assert "not in the locker" not in (mnt / "Playlists" / "Road Trip.m3u8").read_text()
    finally:
        write_road_trip(library.root, library.outside)
        lockerfs("upload", str(library.root), uploaded.locker, env=uploaded.env)
