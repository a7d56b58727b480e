"""The rules upload applies to the music's other files, with hostile input.

- m3u.py / trackpaths.py: which file a playlist entry or cue FILE line names;
- sidefiles.py: what a side file is, read once (text decoding, caps, sniffing);
- artwork.py (through tags.read_track_and_art): which embedded picture is the front cover;
- the pipeline against MemoryStore: a 100,000-line playlist, binary garbage,
  a cue with no FILE, an image that is not one, a 50 MB "cover".
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import os
import pathlib
import sys
import threading
import tracemalloc
import unicodedata
from collections.abc import Iterator

import mutagen
import pytest
from mutagen.flac import FLAC, Picture
from mutagen.id3 import APIC, ID3
from mutagen.mp4 import MP4, MP4Cover

from lockerfs import catalog, m3u
from lockerfs.artwork import MAX_ART_BYTES
from lockerfs.asset import stored_object
from lockerfs.playlist import MAX_ENTRIES
from lockerfs.sidefiles import HOLD_BYTES, NotASideFile, decode_text, read_side_file, side_kind
from lockerfs.store import MemoryStore
from lockerfs.tags import read_track_and_art
from lockerfs.trackpaths import EntryResolver, TrackPaths
from lockerfs.upload import UploadState, Uploader, prefetched
from lockerfs.walk import walk

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import synth_library as synth  # noqa: E402


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# entries: what path a line names


@pytest.mark.parametrize("entry, parts, absolute, windows", [
    ("Artist/Album/01 Song.flac", ("Artist", "Album", "01 Song.flac"), False, False),
    ("/home/me/Music/x.flac", ("home", "me", "Music", "x.flac"), True, False),
    ("Artist\\Album\\01 Song.mp3", ("Artist", "Album", "01 Song.mp3"), False, True),
    ("..\\Album\\01.mp3", ("..", "Album", "01.mp3"), False, True),
    ("\\Music\\x.mp3", ("Music", "x.mp3"), True, True),
    ("D:\\Music\\x.mp3", ("Music", "x.mp3"), True, True),
    ("d:Music\\x.mp3", ("Music", "x.mp3"), True, True),
    ("\\\\server\\share\\x.mp3", ("server", "share", "x.mp3"), True, True),
    ("file:///home/me/My%20Music/x.flac", ("home", "me", "My Music", "x.flac"), True, False),
    ("FILE:///C:/Music/x.mp3", ("Music", "x.mp3"), True, True),
    ("file://server/share/x.mp3", ("server", "share", "x.mp3"), True, True),
    ("a//b///c.flac", ("a", "b", "c.flac"), False, False),
])
def test_entry_paths(entry: str, parts: tuple[str, ...], absolute: bool, windows: bool) -> None:
    assert m3u.parse_entry(entry) == m3u.EntryPath(parts, absolute, windows)


@pytest.mark.parametrize("entry", ["http://radio.example/stream.mp3", "rtsp://x/y", "HTTPS://a/b.flac"])
def test_a_stream_url_names_no_file(entry: str) -> None:
    assert m3u.parse_entry(entry) is None


def test_entries_skip_directives_comments_and_blank_lines() -> None:
    text = "\ufeff#EXTM3U\r\n#EXTINF:123,Artist - Title\r\n  01.flac  \r\n\r\n# a comment\n02.flac\r"
    assert m3u.entries(decode_text(codecs.BOM_UTF8 + text[1:].encode())) == ["01.flac", "02.flac"]


# --------------------------------------------------------------------------
# resolution: an entry -> the track uploaded from the file it names


class Tree:
    """Files on disk, some "uploaded" (known to a stand-in for the local state)."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.uploaded: dict[str, str] = {}

    def file(self, relative: str, upload: bool = True) -> str:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(relative.encode())
        if upload:
            self.uploaded[str(path)] = sha(relative.encode())
        return sha(relative.encode())

    def resolver(self) -> EntryResolver:
        def state_sha(path: pathlib.Path, _stat: os.stat_result) -> str | None:
            return self.uploaded.get(str(path))
        known = set(self.uploaded.values())
        return EntryResolver(TrackPaths(state_sha, known.__contains__), [str(self.root)])


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> Tree:
    return Tree(tmp_path / "Music")


def test_relative_absolute_url_and_windows_entries_resolve(tree: Tree) -> None:
    song = tree.file("Artist/Album/01 Song.flac")
    base = str(tree.root / "Lists")
    resolver = tree.resolver()
    for entry in ("../Artist/Album/01 Song.flac", str(tree.root / "Artist/Album/01 Song.flac"),
                  f"file://{tree.root}/Artist/Album/01%20Song.flac", "..\\Artist\\Album\\01 Song.flac",
                  "..\\ARTIST\\album\\01 SONG.FLAC",  # Windows compares names case-insensitively
                  "D:\\My Music\\Artist\\Album\\01 Song.flac",  # another disk: the tail is found here
                  "file:///C:/Users/me/Music/Artist/Album/01%20Song.flac"):
        assert resolver.resolve(entry, base) == (song, ""), entry


def test_posix_entries_are_case_sensitive(tree: Tree) -> None:
    tree.file("Artist/Album/01 Song.flac")
    assert tree.resolver().resolve("../artist/album/01 song.flac", str(tree.root / "Lists")) == (None, "no such file")


def test_nfd_entry_finds_an_nfc_name(tree: Tree) -> None:
    """A Mac wrote the playlist (NFD); Linux wrote the file name (NFC)."""
    song = tree.file("Caf\u00e9/Cr\u00e8me.flac")
    entry = unicodedata.normalize("NFD", "Caf\u00e9/Cr\u00e8me.flac")
    assert tree.resolver().resolve(entry, str(tree.root)) == (song, "")


def test_a_linux_name_with_a_backslash_is_tried_as_written(tree: Tree) -> None:
    song = tree.file("AC\\DC.flac")
    assert tree.resolver().resolve("AC\\DC.flac", str(tree.root)) == (song, "")


def test_unresolved_entries_say_why(tree: Tree, tmp_path: pathlib.Path) -> None:
    tree.file("Album/notes.txt", upload=False)
    outside = tmp_path / "Elsewhere" / "x.flac"
    outside.parent.mkdir()
    outside.write_bytes(b"never uploaded")
    resolver = tree.resolver()
    base = str(tree.root)
    assert resolver.resolve("Album/notes.txt", base) == (None, "not uploaded (outside the folders given, or not audio)")
    assert resolver.resolve(str(outside), base)[1].startswith("not uploaded")
    assert resolver.resolve("Album/missing.flac", base) == (None, "no such file")
    assert resolver.resolve("http://x/y.mp3", base) == (None, "a stream URL, not a file")


@pytest.mark.parametrize("entry", ["a\x00b.flac", "../" * 500 + "x.flac", "x" * 5000, "D:\\" + "a\\" * 400 + "x.mp3",
                                   "file://%00/%ff%fe.flac", "\\\\", "D:", "..", "/", "\udcff.flac"])
def test_hostile_entries_resolve_to_nothing_without_raising(tree: Tree, entry: str) -> None:
    tree.file("Album/x.flac")
    sha256, why = tree.resolver().resolve(entry, str(tree.root))
    assert sha256 is None and why


# --------------------------------------------------------------------------
# side files: read once, checked against what their name says


@pytest.mark.parametrize("data, text", [
    ("Caf\u00e9.flac\n".encode(), "Caf\u00e9.flac\n"),  # UTF-8
    ("Caf\u00e9 \u2013.flac\n".encode("cp1252"), "Caf\u00e9 \u2013.flac\n"),  # Windows "ANSI"
    ("Caf\u00e9.flac\n".encode("latin-1"), "Caf\u00e9.flac\n"),  # Latin-1
    (codecs.BOM_UTF8 + "Caf\u00e9.flac\n".encode(), "Caf\u00e9.flac\n"),
    (codecs.BOM_UTF16_LE + "Caf\u00e9.flac\n".encode("utf-16-le"), "Caf\u00e9.flac\n"),
    (b"\x81\x8d\x8f.flac", "\x81\x8d\x8f.flac"),  # undefined in cp1252: Latin-1 decodes anything
])
def test_text_decoding(data: bytes, text: str) -> None:
    assert decode_text(data) == text


def read(path: pathlib.Path, kind: str | None = None):  # type: ignore[no-untyped-def]
    return read_side_file(path, path.name, path.stat(), kind or side_kind(path.name) or "")


def test_side_kinds_come_from_names() -> None:
    assert [side_kind(n) for n in ("a.JPG", "b.jpeg ", "c.lrc", "d.CUE", "e.m3u", "f.m3u8", "g.txt", "Thumbs.db",
                                   ".DS_Store", "h.nfo", "i.log")] == \
        ["image", "image", "lyrics", "cue", "playlist", "playlist", None, None, None, None, None]


def test_an_image_that_is_not_one(tmp_path: pathlib.Path) -> None:
    for name, data in (("cover.jpg", b"<html>404 not found</html>"), ("folder.png", b""), ("x.gif", os.urandom(64))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NotASideFile, match="^not an image"):
            read(tmp_path / name)


def test_an_image_is_named_by_its_bytes(tmp_path: pathlib.Path) -> None:
    png = synth.make_png(8, 8)
    (tmp_path / "cover.jpg").write_bytes(png)  # a PNG called .jpg
    assert read(tmp_path / "cover.jpg").object == stored_object(sha(png), len(png), "png")


@pytest.mark.parametrize("name", ["list.m3u", "sheet.cue", "song.lrc"])
def test_binary_garbage_is_no_text_file(tmp_path: pathlib.Path, name: str) -> None:
    (tmp_path / name).write_bytes(bytes(range(256)) * 40)
    with pytest.raises(NotASideFile, match=r"\(binary content\)$"):
        read(tmp_path / name)


def test_oversized_text_files_are_refused_before_reading(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "huge.m3u"
    with open(path, "wb") as f:
        f.truncate(HOLD_BYTES + 1)  # sparse: the refusal must come from the size alone
    with pytest.raises(NotASideFile, match="^too large for a playlist"):
        read(path)


def test_a_50_mb_cover_is_hashed_in_chunks_and_not_held(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cover.jpg"
    head = synth.make_jpeg(2000)
    with open(path, "wb") as f:
        f.write(head)
        for i in range(50):
            f.write(bytes([i]) * (1024 * 1024))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    tracemalloc.start()
    try:
        side = read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert side.data is None and side.object.sha256 == digest and side.object.size == path.stat().st_size
    assert peak < 3 * 8 * 1024 * 1024  # a few hash chunks, never the file


# --------------------------------------------------------------------------
# embedded art: which picture is the front cover


PNG_A, PNG_B, PNG_C = (synth.make_png(8 + i, 8, seed=i) for i in range(3))


def picture(data: bytes, kind: int) -> Picture:
    pic = Picture()
    pic.type, pic.mime, pic.data = kind, "image/png", data
    return pic


def bare_track(tmp_path: pathlib.Path, fmt: str) -> pathlib.Path:
    path = tmp_path / f"t.{fmt}"
    synth.write_track(path, fmt, 0.3, {"title": "t"})
    return path


def test_id3_front_cover_wins_over_earlier_pictures(tmp_path: pathlib.Path) -> None:
    path = bare_track(tmp_path, "mp3")
    tags = ID3(path)
    tags.add(APIC(encoding=3, mime="image/png", type=4, desc="back", data=PNG_A))
    tags.add(APIC(encoding=3, mime="image/png", type=3, desc="front", data=PNG_B))
    tags.save(path)
    assert read_track_and_art(path)[1] == PNG_B


def test_without_a_front_cover_the_first_picture(tmp_path: pathlib.Path) -> None:
    path = bare_track(tmp_path, "flac")
    audio = FLAC(path)
    audio.add_picture(picture(PNG_A, 6))
    audio.add_picture(picture(PNG_B, 4))
    audio.save()
    assert read_track_and_art(path)[1] == PNG_A


def test_a_broken_or_huge_picture_is_passed_over(tmp_path: pathlib.Path) -> None:
    path = bare_track(tmp_path, "mp3")  # ID3 frames may be larger than a FLAC block (16 MiB)
    tags = ID3(path)
    tags.add(APIC(encoding=3, mime="image/png", type=3, desc="a", data=b"not an image at all"))
    tags.add(APIC(encoding=3, mime="image/png", type=3, desc="b", data=b"\x89PNG\r\n\x1a\n" + bytes(MAX_ART_BYTES)))
    tags.add(APIC(encoding=3, mime="image/png", type=3, desc="c", data=PNG_C))
    tags.save(path)
    assert read_track_and_art(path)[1] == PNG_C


def test_mp4_covr_and_ogg_block_picture(tmp_path: pathlib.Path) -> None:
    m4a = bare_track(tmp_path, "m4a")
    audio = MP4(m4a)
    audio["covr"] = [MP4Cover(PNG_A, MP4Cover.FORMAT_PNG), MP4Cover(PNG_B, MP4Cover.FORMAT_PNG)]
    audio.save()
    assert read_track_and_art(m4a)[1] == PNG_A
    ogg = bare_track(tmp_path, "ogg")
    audio = mutagen.File(ogg)
    audio["metadata_block_picture"] = ["%%% not base64 %%%", base64.b64encode(b"\x00" * 7).decode(),
                                       base64.b64encode(picture(PNG_C, 3).write()).decode()]
    audio.save()
    assert read_track_and_art(ogg)[1] == PNG_C


def test_no_picture_no_cover(tmp_path: pathlib.Path) -> None:
    assert read_track_and_art(bare_track(tmp_path, "mp3"))[1] is None


# --------------------------------------------------------------------------
# the pipeline, with hostile side files


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def state(tmp_path: pathlib.Path) -> Iterator[UploadState]:
    opened = UploadState(tmp_path / "state" / "upload.sqlite", "memory://locker")
    yield opened
    opened.close()


def run_upload(store: MemoryStore, state: UploadState, *paths: pathlib.Path):  # type: ignore[no-untyped-def]
    uploader = Uploader(store, state, 2)
    uploader.prepare()
    sources = prefetched(walk(paths))
    try:
        return uploader.run(sources, threading.Event())
    finally:
        sources.close()


def album(root: pathlib.Path, titles: tuple[str, ...] = ("One", "Two")) -> dict[str, str]:
    """A folder of FLAC tracks; file name -> sha256."""
    shas = {}
    for number, title in enumerate(titles, 1):
        path = root / f"0{number} {title}.flac"
        synth.write_track(path, "flac", 0.2, {"album": "A", "albumartist": "B", "title": title, "track": number},
                          seed=number)
        shas[path.name] = sha(path.read_bytes())
    return shas


def test_a_playlist_of_100_000_lines_keeps_its_first_entries_and_says_so(
        tmp_path: pathlib.Path, store: MemoryStore, state: UploadState) -> None:
    root = tmp_path / "Music"
    tracks = album(root / "A")
    lines = ["#EXTM3U"] + [f"A/0{1 + i % 2} {('One', 'Two')[i % 2]}.flac" if i % 3 else f"gone/{i}.flac"
                           for i in range(MAX_ENTRIES + 5)]
    (root / "big.m3u").write_text("\n".join(lines) + "\n")
    summary = run_upload(store, state, root)
    assert summary.extras["playlist"] == 1
    assert ("big.m3u", f"only its first {MAX_ENTRIES:,} entries are kept (it has {MAX_ENTRIES + 5:,})") \
        in summary.notes
    playlist = catalog.load_catalog(store).state.playlists["big"].value
    assert len(playlist.entries) == MAX_ENTRIES
    assert playlist.entries[1].sha256 == tracks["02 Two.flac"] and playlist.entries[2].sha256 == tracks["01 One.flac"]
    assert playlist.entries[0].sha256 is None and playlist.entries[0].line == "gone/0.flac"
    assert len(summary.unresolved) == (MAX_ENTRIES + 2) // 3


def test_hostile_side_files_are_skipped_with_reasons_and_lose_nothing(
        tmp_path: pathlib.Path, store: MemoryStore, state: UploadState) -> None:
    root = tmp_path / "Music"
    tracks = album(root / "A")
    (root / "A" / "garbage.m3u").write_bytes(os.urandom(4096).replace(b"\x00", b"\x01") + b"\x00")
    (root / "A" / "cover.jpg").write_bytes(b"GIF? no. nothing.")
    (root / "A" / "Thumbs.db").write_bytes(os.urandom(512))
    (root / "A" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "A" / "rip.log").write_text("EAC extraction logfile\n")
    (root / "A" / "info.nfo").write_text("release info\n")
    (root / "A" / "no file.cue").write_text('TITLE "A"\nREM no FILE line at all\n')
    (root / "A" / "03 Nobody.lrc").write_text("[00:00.00]no track of this name\n")
    summary = run_upload(store, state, root)
    skipped = dict(summary.skipped)
    assert skipped["A/garbage.m3u"] == "not a playlist (binary content)"
    assert skipped["A/cover.jpg"] == "not an image (.jpg content not recognized)"
    for name in ("Thumbs.db", ".DS_Store", "rip.log", "info.nfo"):
        assert skipped[f"A/{name}"].startswith("not audio"), name
    assert skipped["A/03 Nobody.lrc"].startswith("lyrics of no audio file")
    assert summary.uploaded == 2 and not summary.failed
    cue = catalog.load_catalog(store).state.assets
    sheets = [v.value for v in cue.values() if v.value is not None and v.value.role == "cue"]
    assert len(sheets) == 1 and sheets[0].cue.files == ()  # a cue with no FILE belongs to its folder's tracks
    assert set(sheets[0].tracks) == set(tracks.values())
    assert summary.extras == {"cue": 1}


def test_a_50_mb_cover_is_stored_whole(tmp_path: pathlib.Path, store: MemoryStore, state: UploadState) -> None:
    root = tmp_path / "Music"
    tracks = album(root / "A")
    path = root / "A" / "scan.png"
    with open(path, "wb") as f:
        f.write(synth.make_png(16, 16))
        f.write(os.urandom(50 * 1024 * 1024))
    summary = run_upload(store, state, root)
    assert summary.extras == {"cover": 1} and summary.side_uploaded == 1
    asset = next(v.value for v in catalog.load_catalog(store).state.assets.values())
    assert asset.role == "cover" and set(asset.tracks) == set(tracks.values())
    assert store.objects[asset.object.key][0] == path.read_bytes()
    rerun = run_upload(store, state, root)
    assert rerun.side_unchanged == 1 and rerun.side_uploaded == 0 and not rerun.extras


def test_an_object_a_concurrent_gc_took_is_stored_again_from_its_file(
        tmp_path: pathlib.Path, store: MemoryStore, state: UploadState) -> None:
    """What writeorder.append_confirmed asks of the uploader when a side file's or an embedded
    cover's object vanished between its check and its record."""
    root = tmp_path / "Music"
    album(root / "A")
    (root / "A" / "cover.png").write_bytes(synth.make_png(20, 20))
    synth.write_track(root / "B" / "01 Art.mp3", "mp3", 0.2, {"title": "Art", "track": 1}, cover=PNG_B)
    uploader = Uploader(store, state, 2)
    uploader.prepare()
    sources = prefetched(walk([root]))
    try:
        summary = uploader.run(sources, threading.Event())
    finally:
        sources.close()
    assert summary.extras == {"cover": 1, "embedded cover": 1}
    for obj in (stored_object(sha((root / "A" / "cover.png").read_bytes()), 0, "png"), stored_object(sha(PNG_B), 0, "png")):
        data = store.objects.pop(obj.key)[0]
        uploader._store_extra_again(obj.key)
        assert store.objects[obj.key][0] == data
    (root / "A" / "cover.png").write_bytes(synth.make_png(21, 20))  # changed since: not stored under the old name
    key = stored_object(sha(synth.make_png(20, 20)), 0, "png").key
    store.objects.pop(key)
    with pytest.raises(Exception, match="changed since it was uploaded"):
        uploader._store_extra_again(key)
    assert key not in store.objects
