"""A real mount shows covers, images, lyrics, cue sheets and playlists from format 2 records.

Tracks are uploaded with `lockerfs upload`; everything else is written the
way upload will write it, through the catalog's writer API (objects first,
then records), to a real S3 server. Each test mounts with an empty cache
behind its own counting proxy.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import mutagen
import pytest

from lockerfs import catalog, cuesheet
from lockerfs.asset import (Asset, CueSheet, StoredObject, asset_id_for_embedded, asset_id_for_file, image_type,
                            stored_object)
from lockerfs.playlist import Playlist, PlaylistEntry
from lockerfs.store import MOUNT_RETRIES, S3Store
from tests.support import catalog_v1
from tests.support.faultproxy import FaultProxy
from tests.support.mounting import lockerfs, mounted, wait_until
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port

from synth_library import make_png, write_track

SIDE = "Side Cover Band/Side Cover Album (2001)"
EMBEDDED = "Embedded Art Band/Embedded Art Album (2002)"
PLAIN = "Plain Band/Plain Album (2003)"
IMAGE = "Image Band/Image Album (2004)"
CUE_TEXT = ('REM COMMENT "image+cue rip"\r\nPERFORMER "Image Band"\r\nTITLE "Image Album"\r\n'
            'FILE "CDImage.wav" WAVE\r\n  TRACK 01 AUDIO\r\n    TITLE "First"\r\n    INDEX 01 00:00:00\r\n'
            '  TRACK 02 AUDIO\r\n    TITLE "Second"\r\n    INDEX 01 00:01:00\r\n')


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Library:
    """What was uploaded: source files and the objects the records name."""

    root: Path
    track_sha: dict[str, str]  # source path relative to root -> track sha256
    cover: bytes  # the side cover (a JPEG)
    back: bytes  # another image of that folder (a PNG)
    embedded: bytes  # the art embedded in the first track of the embedded-art album (a PNG)
    lyrics: bytes


def jpeg(path: Path) -> bytes:
    """A noisy 640x640 JPEG of about 300 KB (several cache blocks), made by ffmpeg."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "nullsrc=s=640x640,geq=lum='random(1)*255':cb=128:cr=128", "-frames:v", "1", "-q:v", "2",
                    str(path)], check=True, timeout=60)
    return path.read_bytes()


def put(store: S3Store, data: bytes, ext: str) -> StoredObject:
    """Store an object as upload does (content-addressed), before any record names it."""
    obj = stored_object(sha256(data), len(data), ext)
    store.put_bytes(obj.key, data)
    return obj


@pytest.fixture(scope="module")
def writer_env(s3_server: S3Server) -> Iterator[None]:
    """Credentials for this process's own S3Store (the writer), for the module."""
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def writer(s3_server: S3Server, locker: str) -> S3Store:
    return S3Store(locker, endpoint_url=s3_server.endpoint, retries=MOUNT_RETRIES)


@pytest.fixture(scope="module")
def extras_locker(s3_server: S3Server, writer_env: None,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Library]:
    """A locker with four albums (side cover, embedded art, no art, image+cue) and a playlist."""
    root = tmp_path_factory.mktemp("extras-library")
    picture = make_png(64, 64, seed=5, noise=True)
    band = {"date": "2001", "tracktotal": 2}
    for n, title in ((1, "One"), (2, "Two")):
        write_track(root / "Side" / f"0{n} {title}.flac", "flac", 1.0,
                    {**band, "artist": "Side Cover Band", "album": "Side Cover Album", "track": n, "title": title}, seed=n)
        write_track(root / "Embedded" / f"0{n} {title}.mp3", "mp3", 1.0,
                    {"artist": "Embedded Art Band", "album": "Embedded Art Album", "date": "2002", "track": n,
                     "title": title}, cover=picture if n == 1 else None, seed=10 + n)
    write_track(root / "Plain" / "01 Lonely.flac", "flac", 1.0,
                {"artist": "Plain Band", "album": "Plain Album", "date": "2003", "track": 1, "title": "Lonely"}, seed=20)
    write_track(root / "Image" / "CDImage.flac", "flac", 3.0,
                {"artist": "Image Band", "album": "Image Album", "date": "2004", "title": "Image Album"}, seed=30)
    back = make_png(32, 32, seed=6)
    lyrics = "[00:00.00]One, two\n[00:00.50]one, two\n".encode()

    bucket = f"extras{os.getpid()}"
    s3_server.make_bucket(bucket)
    locker = f"s3://{bucket}/music"
    env = s3_server.env()
    env["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    lockerfs("upload", *(str(root / folder) for folder in ("Side", "Embedded", "Plain", "Image")), locker, env=env)
    # written after the upload, which would record it itself (tests/integration/test_upload_extras.py)
    cover = jpeg(root / "Side" / "folder.jpg")
    track_sha = {str(path.relative_to(root)): sha256(path.read_bytes())
                 for path in root.rglob("*") if path.suffix in (".flac", ".mp3")}

    # What upload will do for these folders, through the writer API: objects, then records.
    store = writer(s3_server, locker)
    side = [track_sha["Side/01 One.flac"], track_sha["Side/02 Two.flac"]]
    embedded_tracks = [track_sha["Embedded/01 One.mp3"]]
    art = mutagen.File(root / "Embedded" / "01 One.mp3").tags.getall("APIC")[0].data  # extracted, as upload will
    assert art == picture and image_type(art) == "png"
    image_sha = track_sha["Image/CDImage.flac"]
    cue_files = tuple((name, image_sha) for name in cuesheet.file_names(CUE_TEXT))
    assets = [
        Asset(asset_id_for_file("Side/folder.jpg"), "cover", put(store, cover, image_type(cover) or "jpg"),
              tuple(side), "folder.jpg", "Side/folder.jpg", mtime=1_700_000_001.0),
        Asset(asset_id_for_file("Side/back.png"), "image", put(store, back, "png"), tuple(side), "back.png",
              "Side/back.png", mtime=1_700_000_002.0),
        Asset(asset_id_for_file("Side/01 One.lrc"), "lyrics", put(store, lyrics, "lrc"), (side[0],), "01 One.lrc",
              "Side/01 One.lrc"),
        Asset(asset_id_for_embedded("Embedded", sha256(art)), "cover", put(store, art, "png"),
              tuple(embedded_tracks), "", "", embedded=True),
        Asset(asset_id_for_file("Image/CDImage.cue"), "cue", put(store, CUE_TEXT.encode(), "cue"), (image_sha,),
              "CDImage.cue", "Image/CDImage.cue", cue=CueSheet(CUE_TEXT, cue_files)),
    ]
    playlist = Playlist("Road Trip", "road trip.m3u", (
        PlaylistEntry(track_sha["Embedded/02 Two.mp3"], "Embedded/02 Two.mp3"),
        PlaylistEntry(None, r"D:\Music\Never Uploaded.wma"),
        PlaylistEntry(track_sha["Side/01 One.flac"], "Side\\01 One.flac")))
    catalog.append_records(store, [*map(catalog.asset_record, assets), catalog.playlist_record(playlist)])
    return locker, Library(root, track_sha, cover, back, art, lyrics)


def mount_args(tmp_path: Path, *extra: str) -> tuple[str, ...]:
    return ("--cache-dir", str(tmp_path / "cache"), *extra)


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_album_folders_show_cover_images_and_lyrics(extras_locker, env, tmp_path) -> None:
    locker, library = extras_locker
    with mounted(locker, tmp_path / "mnt", env, *mount_args(tmp_path)) as mnt:
        assert listing(mnt / SIDE) == ["01 One.flac", "01 One.lrc", "02 Two.flac", "back.png", "cover.jpg"]
        assert (mnt / SIDE / "cover.jpg").read_bytes() == library.cover  # chosen from the side file folder.jpg
        assert (mnt / SIDE / "back.png").read_bytes() == library.back
        assert (mnt / SIDE / "01 One.lrc").read_bytes() == library.lyrics
        assert (mnt / SIDE / "cover.jpg").stat().st_size == len(library.cover)
        assert (mnt / SIDE / "back.png").stat().st_mtime == 1_700_000_002.0
        assert listing(mnt / EMBEDDED) == ["01 One.mp3", "02 Two.mp3", "cover.png"]
        assert (mnt / EMBEDDED / "cover.png").read_bytes() == library.embedded  # extracted from track 1
        assert listing(mnt / PLAIN) == ["01 Lonely.flac"]  # neither side image nor embedded art: no cover


def test_a_cold_cover_read_is_one_get_and_byte_exact(extras_locker, env, tmp_path,
                                                                  proxy: FaultProxy) -> None:
    locker, library = extras_locker
    key = stored_object(sha256(library.cover), len(library.cover), "jpg").key
    with mounted(locker, tmp_path / "mnt", env, *mount_args(tmp_path)) as mnt:
        proxy.reset_counts()
        started = time.monotonic()
        data = subprocess.run(["cat", str(mnt / SIDE / "cover.jpg")], capture_output=True, check=True,
                              timeout=60).stdout
        elapsed = time.monotonic() - started
        gets = proxy.count("GET", key)
        print(f"\n[cold cat cover.jpg] {len(data)} bytes, {gets} GETs of its object, "
              f"{proxy.count()} requests in all, {elapsed * 1000:.0f} ms")
        assert data == library.cover
        assert gets == 1  # one round trip: the whole cover in one GET, which the first read joins
        proxy.reset_counts()
        assert (mnt / SIDE / "cover.jpg").read_bytes() == library.cover
        assert proxy.count("GET", key) == 0  # read again: from the cache


def test_an_image_cue_sheet_leads_to_the_mounted_image(extras_locker, env, tmp_path) -> None:
    locker, library = extras_locker
    with mounted(locker, tmp_path / "mnt", env, *mount_args(tmp_path)) as mnt:
        assert listing(mnt / IMAGE) == ["Image Album.cue", "Image Album.flac"]
        sheet = (mnt / IMAGE / "Image Album.cue").read_bytes()
        assert sheet == CUE_TEXT.replace('"CDImage.wav"', '"Image Album.flac"').encode()
        assert (mnt / IMAGE / "Image Album.cue").stat().st_size == len(sheet)
        (named,) = cuesheet.file_names(sheet.decode())
        target = mnt / IMAGE / named  # a player resolves FILE against the sheet's folder
        assert target.read_bytes() == (library.root / "Image" / "CDImage.flac").read_bytes()


def test_playlist_entries_open_with_ffmpeg_from_the_mount(extras_locker, env, tmp_path) -> None:
    locker, library = extras_locker
    with mounted(locker, tmp_path / "mnt", env, *mount_args(tmp_path)) as mnt:
        assert listing(mnt) == ["Embedded Art Band", "Image Band", "Plain Band", "Playlists", "Side Cover Band"]
        text = (mnt / "Playlists" / "Road Trip.m3u8").read_text()
        lines = text.splitlines()
        assert lines[:3] == ["#EXTM3U", "#PLAYLIST:Road Trip", "#EXTINF:1,Embedded Art Band - Two"]
        assert "# not in the locker: D:\\Music\\Never Uploaded.wma" in lines
        entries = [line for line in lines if not line.startswith("#")]
        assert entries == [f"../{EMBEDDED}/02 Two.mp3", f"../{SIDE}/01 One.flac"]
        for entry, source in zip(entries, ["Embedded/02 Two.mp3", "Side/01 One.flac"], strict=True):
            path = mnt / "Playlists" / entry
            decoded = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"],
                                     capture_output=True, text=True, timeout=120)
            assert decoded.returncode == 0, decoded.stderr
            assert path.read_bytes() == (library.root / source).read_bytes()
        listed = lockerfs("playlists", locker, env=env).stdout
        assert listed == "Road Trip\t3 entries\t1 unresolved\n"


def test_a_refresh_shows_a_replaced_playlist_and_a_new_cover(extras_locker, s3_server, env, tmp_path) -> None:
    locker, library = extras_locker
    store = writer(s3_server, locker)
    with mounted(locker, tmp_path / "mnt", env, *mount_args(tmp_path, "--refresh", "1")) as mnt:
        playlist = mnt / "Playlists" / "Road Trip.m3u8"
        before = playlist.read_bytes()
        assert not (mnt / PLAIN / "cover.png").exists()
        plain_track = library.track_sha["Plain/01 Lonely.flac"]
        new_cover = make_png(48, 48, seed=9)
        catalog.append_records(store, [
            catalog.playlist_record(Playlist("ROAD TRIP", "elsewhere.m3u8", (PlaylistEntry(plain_track),))),
            catalog.asset_record(Asset(asset_id_for_file("Plain/cover.png"), "cover", put(store, new_cover, "png"),
                                       (plain_track,), "cover.png", "Plain/cover.png"))])
        try:
            assert wait_until(lambda: (mnt / PLAIN / "cover.png").exists(), timeout=15)
            assert (mnt / PLAIN / "cover.png").read_bytes() == new_cover
            assert wait_until(lambda: listing(mnt / "Playlists") == ["ROAD TRIP.m3u8"], timeout=15)
            after = (mnt / "Playlists" / "ROAD TRIP.m3u8").read_bytes()
            assert after != before and after.endswith(f"../{PLAIN}/01 Lonely.flac\n".encode())
            assert not playlist.exists()
        finally:  # the locker is shared by the module's tests: put it back as it was
            original = Playlist("Road Trip", "road trip.m3u", tuple(
                PlaylistEntry(sha, line) for sha, line in (
                    (library.track_sha["Embedded/02 Two.mp3"], "Embedded/02 Two.mp3"),
                    (None, r"D:\Music\Never Uploaded.wma"), (library.track_sha["Side/01 One.flac"], "Side\\01 One.flac"))))
            catalog.append_records(store, [catalog.playlist_record(original),
                                           catalog.remove_asset_record(asset_id_for_file("Plain/cover.png"))])


def test_windows_names_in_a_real_mount(s3_server, writer_env, bucket, env, tmp_path) -> None:
    locker = f"s3://{bucket}/music"
    write_track(tmp_path / "lib" / "a.flac", "flac", 0.5,
                {"artist": "AC/DC", "album": 'Live: "Donington"?', "track": 1, "title": "aux", "date": "1992"})
    lockerfs("upload", str(tmp_path / "lib"), locker, env=env)
    with mounted(locker, tmp_path / "mnt", env, *mount_args(tmp_path, "--names", "windows")) as mnt:
        assert listing(mnt / "AC\u2215DC") == ["Live\uff1a \uff02Donington\uff02\uff1f (1992)"]
        assert listing(mnt / "AC\u2215DC" / "Live\uff1a \uff02Donington\uff02\uff1f (1992)") == ["01 aux.flac"]
    with mounted(locker, tmp_path / "mnt2", env, *mount_args(tmp_path / "2", "--names", "windows",
                                                             "--layout", "{title}")) as mnt:
        assert listing(mnt) == ["aux_.flac"]


def test_a_version_1_locker_mounts_with_the_new_code(s3_server, writer_env, bucket, env, tmp_path) -> None:
    """Written, compacted and appended to by the real version 1 catalog code."""
    locker = f"s3://{bucket}/music"
    store = writer(s3_server, locker)
    catalog_v1.ensure_locker(store)
    sources = []
    for n in range(3):
        source = write_track(tmp_path / "lib" / f"{n}.flac", "flac", 0.5,
                             {"artist": "Old Band", "album": "Old Album", "track": n + 1, "title": f"Old {n}"}, seed=n)
        data = source.path.read_bytes()
        track = catalog_v1.Track(sha256(data), catalog_v1.object_key(sha256(data), "flac"), len(data), "flac",
                                 f"{n}.flac", 1_700_000_000.0, catalog_v1.TrackInfo(
                                     format="flac", codec="flac", artist="Old Band", album="Old Album",
                                     title=f"Old {n}", track=n + 1))
        store.put_bytes(track.key, data)
        sources.append((track, data))
    catalog_v1.append_records(store, [catalog_v1.add_record(track) for track, _ in sources[:2]])
    catalog_v1.compact(store, grace=timedelta(0))
    catalog_v1.append_records(store, [catalog_v1.add_record(sources[2][0]),
                                      catalog_v1.remove_record(sources[0][0].sha256)])
    with mounted(locker, tmp_path / "mnt", env, *mount_args(tmp_path)) as mnt:
        folder = mnt / "Old Band" / "Old Album"
        assert listing(folder) == ["02 Old 1.flac", "03 Old 2.flac"]
        assert (folder / "03 Old 2.flac").read_bytes() == sources[2][1]
        assert not (mnt / "Playlists").exists()


def test_mpd_loads_a_playlist_from_the_mount(extras_locker, env, tmp_path) -> None:
    """MPD resolves the playlist's ../ paths against its music directory: the mount."""
    locker, _ = extras_locker
    state = tmp_path / "mpd"
    state.mkdir()
    port = str(free_port())
    with mounted(locker, tmp_path / "mnt", env, *mount_args(tmp_path)) as mnt:
        config = state / "mpd.conf"
        config.write_text(f'music_directory "{mnt}"\nplaylist_directory "{state}"\ndb_file "{state}/db"\n'
                          f'log_file "{state}/log"\nbind_to_address "127.0.0.1"\nport "{port}"\n'
                          'auto_update "no"\naudio_output {\n  type "null"\n  name "null"\n}\n')
        daemon = subprocess.Popen(["mpd", "--no-daemon", str(config)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        mpc_env = {**os.environ, "MPD_HOST": "127.0.0.1", "MPD_PORT": port}
        try:
            assert wait_until(lambda: subprocess.run(["mpc", "status"], env=mpc_env, capture_output=True).returncode
                              == 0, timeout=20)

            def mpc(*args: str) -> str:
                result = subprocess.run(["mpc", *args], env=mpc_env, capture_output=True, text=True, timeout=120)
                assert result.returncode == 0, result.stderr
                return result.stdout

            mpc("update", "--wait")
            mpc("load", "Playlists/Road Trip.m3u8")
            assert mpc("-f", "%file%", "playlist").splitlines() == [f"{EMBEDDED}/02 Two.mp3", f"{SIDE}/01 One.flac"]
        finally:
            daemon.terminate()
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
