"""The library's life (#12) for real: rm, restore, tag and pins on a real server and real mounts.

Every command is the real `lockerfs` process talking to a real mount through
its control socket and to `rclone serve s3` through the fault proxy. Paths
are checked against each source file's bytes (tests/support/library.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TIT2

from lockerfs import catalog
from lockerfs.asset import Asset, asset_id_for_file, stored_object
from lockerfs.store import MOUNT_RETRIES, S3Store
from tests.support.bounds import within
from tests.support.faultproxy import FaultProxy
from tests.support.library import Source, expected_paths, load_manifest, mounted_files
from tests.support.lockers import copy_locker
from tests.support.mounting import LOCKERFS, lockerfs, mounted, readable, wait_until
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY

from synth_library import make_png, write_track

REFRESH = 1.0  # --refresh of a second mount that must see another machine's change


@pytest.fixture
def uploaded(library, small_locker, locker, s3_server) -> dict[str, Source]:
    """The small library in the test's own locker (a server-side copy of one upload: these
    tests change their locker); mount path -> its source."""
    copy_locker(s3_server, small_locker, locker)
    return expected_paths(load_manifest(library[0]))


@pytest.fixture
def mnt(uploaded, locker, env, tmp_path) -> Path:
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as point:
        yield point


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ls_json(locker: str, env: dict[str, str]) -> dict[str, dict]:
    output = lockerfs("ls", "--json", locker, env=env).stdout
    return {record["sha256"]: record for record in map(json.loads, output.splitlines())}


ALBUM = "The Synthetics/Waveforms (2019)"


# --- rm and restore -------------------------------------------------------------------------

def test_rm_of_a_folder_drops_it_from_the_mount_at_once(uploaded, mnt, locker, env) -> None:
    album = [name for name in uploaded if name.startswith(ALBUM + "/")]
    assert len(album) == 4
    assert all((mnt / name).exists() for name in album)  # the kernel has them cached (entry timeout 1 h)
    before = mounted_files(mnt)  # tracks, and the covers, lyrics and cue sheets upload stored beside them
    began = time.monotonic()
    result = lockerfs("rm", str(mnt / ALBUM), env=env)
    assert "removed 4 tracks" in result.stdout
    for name in album:
        assert name in result.stdout
        assert not (mnt / name).exists()
    print(f"rm of 4 tracks shown in {time.monotonic() - began:.2f} s")
    assert not (mnt / ALBUM).exists()
    assert not (mnt / "The Synthetics").exists()  # its only album
    removed = {uploaded[name].sha256 for name in album}
    assert not removed & set(ls_json(locker, env))
    others = {name: source for name, source in uploaded.items() if name not in album}
    files = mounted_files(mnt)
    assert sorted(files) == sorted(name for name in before if not name.startswith("The Synthetics/"))
    assert all(sha256(files[name]) == source.sha256 for name, source in others.items())


def test_rm_dry_run_changes_nothing(uploaded, mnt, locker, env, proxy: FaultProxy) -> None:
    proxy.reset_counts()
    result = lockerfs("rm", "--dry-run", str(mnt / ALBUM / "01 Sine of the Times.flac"), env=env)
    assert "would remove 1 track" in result.stdout
    assert proxy.count("PUT") == 0 and proxy.count("DELETE") == 0
    assert (mnt / ALBUM / "01 Sine of the Times.flac").exists()
    assert len(ls_json(locker, env)) == len(uploaded)


def test_restore_by_path_brings_removed_tracks_back_byte_exact(uploaded, mnt, locker, env) -> None:
    name = f"{ALBUM}/02 Square One.flac"
    before = sorted(mounted_files(mnt))
    lockerfs("rm", str(mnt / name), env=env)
    assert not (mnt / name).exists()
    result = lockerfs("restore", str(mnt / ALBUM), env=env)
    assert "restored 1 track" in result.stdout and name in result.stdout
    assert sha256(mnt / name) == uploaded[name].sha256
    assert sorted(mounted_files(mnt)) == before
    again = lockerfs("restore", str(mnt / ALBUM), env=env, check=False)
    assert again.returncode == 1 and "no removed track would go under" in again.stderr


def test_another_machine_drops_a_removed_track_at_its_next_refresh(uploaded, mnt, locker, env, tmp_path) -> None:
    name = f"{ALBUM}/03 Saw Point.flac"
    with mounted(locker, tmp_path / "other", env, "--cache-dir", str(tmp_path / "other-cache"),
                 "--refresh", str(REFRESH)) as other:
        assert (other / name).exists()
        lockerfs("rm", str(mnt / name), env=env)
        removed_at = time.monotonic()
        assert wait_until(lambda: not (other / name).exists(), within(REFRESH) + 5)
        print(f"other mount dropped it {time.monotonic() - removed_at:.2f} s after rm returned")
        lockerfs("restore", str(mnt / ALBUM), env=env)
        assert wait_until(lambda: (other / name).exists(), within(REFRESH) + 5)
        assert sha256(other / name) == uploaded[name].sha256


def test_rm_and_restore_by_match_without_a_mount(uploaded, locker, env) -> None:
    result = lockerfs("rm", "--locker", locker, "--match", "album=sampling theorem", "--match", "track=2", env=env)
    assert "removed 1 track" in result.stdout and "Folding" in result.stdout
    folding = next(s for n, s in uploaded.items() if "Folding" in n)
    assert folding.sha256 not in ls_json(locker, env)
    nothing = lockerfs("rm", "--locker", locker, "--match", "album=No Such Album", env=env, check=False)
    assert nothing.returncode == 1 and "no track in" in nothing.stderr
    result = lockerfs("restore", "--locker", locker, "--match", "title=Folding", env=env)
    assert "restored 1 track" in result.stdout
    assert folding.sha256 in ls_json(locker, env)


def test_uploading_a_removed_file_again_brings_it_back(library, uploaded, mnt, locker, env) -> None:
    name = f"{ALBUM}/04 Triangle Man.flac"
    source = uploaded[name]
    # The locker is a copy: this upload gives the run below the local state of the one that
    # stored the file (it finds the file unchanged, yet not in the catalog).
    assert f"matched {len(library[1])}," in lockerfs("upload", str(library[0]), locker, env=env).stdout
    lockerfs("rm", str(mnt / name), env=env)
    result = lockerfs("upload", str(source.path), locker, env=env)
    assert source.sha256 in ls_json(locker, env), result.stdout


def test_rm_and_restore_next_to_concurrent_uploads(uploaded, mnt, locker, env, tmp_path) -> None:
    """Uploads of new files run while rm and restore write their records: all of it holds."""
    extra = tmp_path / "extra"
    for n in range(6):
        write_track(extra / f"{n}.flac", "flac", 0.5, {"artist": "Busy Bee", "album": "Concurrency",
                                                         "title": f"Race {n}", "track": n + 1}, seed=900 + n)
    upload = subprocess.Popen([LOCKERFS, "upload", "--jobs", "2", str(extra), locker], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lockerfs("rm", str(mnt / ALBUM), env=env)
        lockerfs("restore", str(mnt / ALBUM / "01 Sine of the Times.flac"), env=env)
    finally:
        out, err = upload.communicate(timeout=120)
    assert upload.returncode == 0, err
    catalog = ls_json(locker, env)
    album = {name: s for name, s in uploaded.items() if name.startswith(ALBUM + "/")}
    assert {s.sha256 for n, s in album.items() if "01 " in n} <= set(catalog)
    assert not {s.sha256 for n, s in album.items() if "01 " not in n} & set(catalog)
    assert sum(1 for record in catalog.values() if record["info"].get("artist") == "Busy Bee") == 6


# --- covers and lyrics, written as upload will write them (see test_extras_mount.py) ---------------

COVER = make_png(40, 40, seed=12, noise=True)
LYRICS = "[00:00.00]Sine, sine\n[00:00.50]of the times\n".encode()


@pytest.fixture
def with_extras(uploaded, locker, s3_server, monkeypatch) -> dict[str, str]:
    """A cover for the Waveforms album and lyrics for its first track; returns object sha256s."""
    for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                        ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(name, value)
    store = S3Store(locker, endpoint_url=s3_server.endpoint, retries=MOUNT_RETRIES)
    album = sorted((name, source.sha256) for name, source in uploaded.items() if name.startswith(ALBUM + "/"))
    cover = stored_object(hashlib.sha256(COVER).hexdigest(), len(COVER), "png")
    lyrics = stored_object(hashlib.sha256(LYRICS).hexdigest(), len(LYRICS), "lrc")
    store.put_bytes(cover.key, COVER)
    store.put_bytes(lyrics.key, LYRICS)
    catalog.append_records(store, [
        catalog.asset_record(Asset(asset_id_for_file("Waveforms/cover.png"), "cover", cover,
                                   tuple(sorted(sha for _, sha in album)), "cover.png", "Waveforms/cover.png")),
        catalog.asset_record(Asset(asset_id_for_file("Waveforms/01.lrc"), "lyrics", lyrics, (album[0][1],),
                                   "01.lrc", "Waveforms/01.lrc"))])
    return {"cover": cover.sha256, "lyrics": lyrics.sha256}


# --- tag ------------------------------------------------------------------------------------

def mutagen_flac(source: Path, tmp_path: Path, **fields: str) -> bytes:
    """What mutagen itself makes of the source with these Vorbis comments set."""
    copy = tmp_path / f"expected-{source.name}"
    shutil.copyfile(source, copy)
    audio = FLAC(copy)
    for key, value in fields.items():
        audio[key] = [value]
    audio.save()
    return copy.read_bytes()


def test_tag_renames_at_once_byte_exact_and_covers_follow(uploaded, with_extras, mnt, locker, env, tmp_path) -> None:
    new_album = "Waveforms (Remastered)"
    old_names = sorted(name for name in uploaded if name.startswith(ALBUM + "/"))
    assert (mnt / ALBUM / "cover.png").read_bytes() == COVER
    first = mnt / old_names[0]
    opened = open(first, "rb")  # a player in the middle of the track
    try:
        head = opened.read(1000)
        result = lockerfs("tag", str(mnt / ALBUM), f"album={new_album}", env=env)
        assert "tagged 4 tracks" in result.stdout
        new_folder = mnt / f"The Synthetics/{new_album} (2019)"
        assert not (mnt / ALBUM).exists()
        for name in old_names:
            source = uploaded[name]
            new_path = new_folder / Path(name).name
            assert f"-> The Synthetics/{new_album} (2019)/{Path(name).name}" in result.stdout
            assert new_path.read_bytes() == mutagen_flac(source.path, tmp_path, ALBUM=new_album)
        assert (new_folder / "cover.png").read_bytes() == COVER  # the removal names its replacement
        assert (new_folder / f"{Path(old_names[0]).stem}.lrc").read_bytes() == LYRICS
        rest = opened.read()  # the open file goes on with the bytes it opened
        assert head + rest == uploaded[old_names[0]].path.read_bytes()
    finally:
        opened.close()
    records = ls_json(locker, env)
    assert {r["info"]["album"] for r in records.values() if r["info"].get("albumartist") == "The Synthetics"} == {new_album}
    assert not {uploaded[name].sha256 for name in old_names} & set(records)


def test_tag_of_an_mp3_is_mutagens_rewrite_stored_with_its_content_type(uploaded, mnt, env, tmp_path, bucket,
                                                                         s3_server, proxy: FaultProxy) -> None:
    name = next(n for n in uploaded if n.endswith("01 Aliasing.mp3"))
    copy = tmp_path / "expected.mp3"
    shutil.copyfile(uploaded[name].path, copy)
    tags = ID3(copy)
    tags.setall("TIT2", [TIT2(encoding=3, text=["Aliasing (Live)"])])
    tags.save(copy)
    expected = copy.read_bytes()
    proxy.reset_counts()
    lockerfs("tag", str(mnt / name), "title=Aliasing (Live)", env=env)
    renamed = mnt / Path(name).parent / "01 Aliasing (Live).mp3"
    assert renamed.read_bytes() == expected
    assert proxy.count("PUT", "/objects/") == 1
    digest = hashlib.sha256(expected).hexdigest()
    head = s3_server.client().head_object(Bucket=bucket, Key=f"music/objects/sha256/{digest[:2]}/{digest}.mp3")
    assert head["ContentType"] == "audio/mpeg"


def test_share_right_after_tag_links_the_new_bytes(uploaded, mnt, env, tmp_path) -> None:
    """`lockerfs share` reads the mount's catalog copy (part B): a command's change must be
    saved there at once, not at the next refresh (60 s here)."""
    name = f"{ALBUM}/03 Saw Point.flac"
    lockerfs("tag", str(mnt / name), "title=Saw Tooth", env=env)
    renamed = mnt / ALBUM / "03 Saw Tooth.flac"
    output = tmp_path / "one.m3u8"
    result = lockerfs("share", "-o", str(output), str(renamed), env=env)
    assert result.stdout.startswith(f"1 tracks in {output}") or result.stdout.startswith(f"1 track in {output}")
    url = [line for line in output.read_text(encoding="utf-8").splitlines() if line.startswith("http")][0]
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == renamed.read_bytes()  # the re-tagged object, not the old one
    assert renamed.read_bytes() != uploaded[name].path.read_bytes()


def test_retagging_back_restores_the_original_bytes(uploaded, mnt, env) -> None:
    """mutagen's rewrite of a rewrite: tagging back gives the uploaded object again."""
    name = f"{ALBUM}/02 Square One.flac"
    lockerfs("tag", str(mnt / name), "title=Square Two", env=env)
    lockerfs("tag", str(mnt / ALBUM / "02 Square Two.flac"), "title=Square One", env=env)
    assert sha256(mnt / name) == uploaded[name].sha256


# --- pins -------------------------------------------------------------------------------------

PINNED = "The Long Player/Double Album (1973)"


def getfattr(path: Path, name: str) -> str:
    return os.getxattr(path, name).decode()


def block_bytes(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in (cache_dir / "blocks").rglob("*") if p.is_file())


def test_pinned_tracks_survive_a_full_cache_and_play_offline_after_a_remount(uploaded, with_extras, locker, env,
                                                                            tmp_path, proxy: FaultProxy) -> None:
    pinned = {name: source for name, source in uploaded.items() if name.startswith(PINNED + "/")}
    others = {name: source for name, source in uploaded.items() if name not in pinned}
    size = sum(source.size for source in pinned.values())
    cache_size = int(size * 1.25)  # pins may take 90 %: they fit, and the rest is far too small for the others
    assert sum(source.size for source in others.values()) > 4 * (cache_size - size)
    cache = tmp_path / "cache"
    options = ("--cache-dir", str(cache), "--cache-size", str(cache_size), "--memory-cache", "64K")
    with mounted(locker, tmp_path / "mnt", env, *options) as mnt:
        result = lockerfs("pin", str(mnt / PINNED), env=env)
        assert f"pinned {PINNED}: 6 tracks" in result.stdout
        for name in pinned:
            assert getfattr(mnt / name, "user.lockerfs.pinned") == "yes"
            assert int(getfattr(mnt / name, "user.lockerfs.cached")) == pinned[name].size
            assert getfattr(mnt / name, "user.lockerfs.sha256") == pinned[name].sha256
        for name, source in others.items():  # fill the cache many times over
            assert sha256(mnt / name) == source.sha256
        assert block_bytes(cache) <= cache_size
        listing = lockerfs("pinned", str(mnt), env=env).stdout
        assert PINNED in listing and "complete" in listing
        first = next(iter(pinned))
        shown = subprocess.run(["getfattr", "-d", str(mnt / first)], capture_output=True, text=True, check=True)
        assert f'user.lockerfs.cached="{pinned[first].size}"' in shown.stdout  # the tool a user would try
        assert 'user.lockerfs.pinned="yes"' in shown.stdout
        proxy.set_down(True)  # the network is gone
        try:
            for name, source in pinned.items():
                assert sha256(mnt / name) == source.sha256, name
            evicted = [name for name in others if not readable(mnt / name)]
            assert evicted, "the other reads did not overflow the cache: the test proves nothing"
        finally:
            proxy.set_down(False)
    proxy.set_down(True)  # mount again with the bucket away: the pins were kept on disk
    try:
        with mounted(locker, tmp_path / "mnt", env, *options) as mnt:
            for name, source in pinned.items():
                assert sha256(mnt / name) == source.sha256, name
            assert "complete" in lockerfs("pinned", env=env).stdout
    finally:
        proxy.set_down(False)


def test_a_pin_that_does_not_fit_is_refused_with_the_figure(uploaded, locker, env, tmp_path) -> None:
    size = sum(source.size for name, source in uploaded.items() if name.startswith(PINNED + "/"))
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache"),
                 "--cache-size", str(size)) as mnt:
        result = lockerfs("pin", str(mnt / PINNED), env=env, check=False)
        assert result.returncode == 1
        assert "needs" in result.stderr and "more; pins may use" in result.stderr and "--cache-size" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "(nothing pinned)" in lockerfs("pinned", str(mnt), env=env).stdout
        assert getfattr(next(mnt.glob(f"{PINNED}/*.flac")), "user.lockerfs.pinned") == "no"


def test_a_pin_checks_each_object_against_its_sha256(uploaded, mnt, env, proxy: FaultProxy) -> None:
    """docs/SECURITY.md: `lockerfs pin` verifies each object it pins. The store sends one track
    with its first byte flipped (the right length): the pin is refused and nothing is kept."""
    name = f"{ALBUM}/02 Square One.flac"
    source = uploaded[name]
    assert getfattr(mnt / name, "user.lockerfs.sha256") == source.sha256
    proxy.fail_next("flip_body", method="GET", path_contains=source.sha256)
    result = lockerfs("pin", str(mnt / ALBUM), env=env, check=False)
    assert result.returncode == 1
    assert "do not hash to its name" in result.stderr and "nothing was pinned" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert proxy.stats["flip_body"] == 1  # the damage really was sent
    assert "(nothing pinned)" in lockerfs("pinned", str(mnt), env=env).stdout
    assert getfattr(mnt / name, "user.lockerfs.pinned") == "no"
    assert getfattr(mnt / name, "user.lockerfs.cached") == "0"  # the damaged bytes were dropped
    assert sha256(mnt / name) == source.sha256  # and are fetched afresh, right
    assert "pinned" in lockerfs("pin", str(mnt / ALBUM), env=env).stdout  # a good store: the pin is made
    assert getfattr(mnt / name, "user.lockerfs.pinned") == "yes"


def test_unpin_releases_and_covers_and_lyrics_are_pinned_with_their_album(uploaded, with_extras, mnt, env) -> None:
    result = lockerfs("pin", str(mnt / ALBUM), env=env)
    assert "4 tracks, 2 other files" in result.stdout
    assert getfattr(mnt / ALBUM / "cover.png", "user.lockerfs.pinned") == "yes"
    result = lockerfs("unpin", str(mnt / ALBUM / "01 Sine of the Times.flac"), env=env)
    assert f"unpinned {ALBUM}" in result.stdout
    assert getfattr(mnt / ALBUM / "01 Sine of the Times.flac", "user.lockerfs.pinned") == "no"
    assert getfattr(mnt / ALBUM / "02 Square One.flac", "user.lockerfs.pinned") == "yes"
    lockerfs("unpin", str(mnt / ALBUM), env=env)
    assert "(nothing pinned)" in lockerfs("pinned", str(mnt), env=env).stdout
    again = lockerfs("unpin", str(mnt / ALBUM), env=env, check=False)
    assert again.returncode == 1 and "nothing under" in again.stderr


def test_a_pinned_track_that_is_retagged_stays_pinned(uploaded, mnt, env) -> None:
    name = f"{ALBUM}/03 Saw Point.flac"
    lockerfs("pin", str(mnt / ALBUM), env=env)
    lockerfs("tag", str(mnt / name), "title=Saw Tooth", env=env)
    renamed = mnt / ALBUM / "03 Saw Tooth.flac"
    assert getfattr(renamed, "user.lockerfs.pinned") == "yes"
    assert wait_until(lambda: int(getfattr(renamed, "user.lockerfs.cached")) == renamed.stat().st_size, 20)
