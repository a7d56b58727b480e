"""Insets end to end: a real upload records where each track holds its album's embedded cover,
and a real mount reads those bytes once per album from the cover's object, byte-exact.

An album of FLAC, ID3v2 MP3 and MP4 tracks shares one cover (noise, so it is
several cache blocks and cannot shrink), the way stores deliver them; a
cover.jpg beside them means the embedded cover is not shown as a file, only
kept as an inset. Tracks are read through FUSE the way scanners and players
read them, and every requested byte is counted at a proxy.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mutagen
import pytest

from lockerfs import catalog
from lockerfs.store import MOUNT_RETRIES, S3Store
from tests.support.faultproxy import FaultProxy
from tests.support.mounting import lockerfs, mounted
from tests.support.s3server import S3Server

from synth_library import make_jpeg, make_png, write_track

ALBUM = "Inset Band/Inset Album (2004)"
TRACKS = (("01 Flac One.flac", "flac"), ("02 Flac Two.flac", "flac"), ("03 Mp3 Three.mp3", "mp3"),
          ("04 Mp3 Four.mp3", "mp3"), ("05 Aac Five.m4a", "m4a"), ("06 Aac Six.m4a", "m4a"))


def write_album(root: Path) -> tuple[bytes, dict[str, bytes]]:
    cover = make_png(220, 220, seed=9, noise=True)  # about 145 KB
    for number, (name, fmt) in enumerate(TRACKS, 1):
        write_track(root / ALBUM / name, fmt, 3.0, {"artist": "Inset Band", "albumartist": "Inset Band",
                                                    "album": "Inset Album", "date": "2004", "track": number,
                                                    "title": name[3:].rsplit(".", 1)[0]},
                    cover=cover, seed=90 + number)
    (root / ALBUM / "cover.jpg").write_bytes(make_jpeg(40_000, seed=3))
    return cover, {name: (root / ALBUM / name).read_bytes() for name, _ in TRACKS}


def test_an_album_scan_reads_its_shared_cover_once_and_every_byte_is_exact(
        s3_server: S3Server, proxy: FaultProxy, env: dict[str, str], locker: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cover, sources = write_album(tmp_path / "Music")
    lockerfs("upload", str(tmp_path / "Music"), locker, env=env)

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, env[name])
    store = S3Store(locker, endpoint_url=s3_server.endpoint, retries=MOUNT_RETRIES)
    tracks = {Path(track.source).name: track for track in catalog.load_catalog(store).state.tracks()}
    cover_sha = hashlib.sha256(cover).hexdigest()
    for name, data in sources.items():
        art = tracks[name].art
        assert art is not None, f"{name}: no inset recorded"
        assert art.object.sha256 == cover_sha and data[art.offset:art.offset + art.object.size] == cover
    assert store.get(tracks[TRACKS[0][0]].art.object.key) == cover  # type: ignore[union-attr]

    with mounted(locker, tmp_path / "mnt", env) as mnt:
        proxy.reset_counts()
        for name, _ in TRACKS:  # a scan: every track's tags, picture included
            assert mutagen.File(mnt / ALBUM / name) is not None
        proxy.wait_idle()
        gets = [r for r in proxy.records() if r.method == "GET"]
        log = "\n".join(f"GET {r.path.rsplit('/', 1)[-1][:12]} {r.byte_range}" for r in gets)
        # the picture crossed the link once (in one GET or a few), not once per track
        cover_gets = [r.byte_range or (0, len(cover)) for r in gets if cover_sha in r.path]
        assert sum(end - start for start, end in cover_gets) == len(cover), log
        for name, track in tracks.items():  # and no track's own GETs brought its copy of it
            assert track.art is not None
            inset = (track.art.offset, track.art.offset + track.art.object.size)
            overlap = sum(max(0, min(end, inset[1]) - max(start, inset[0]))
                          for r in gets if track.key in r.path and r.byte_range for start, end in [r.byte_range])
            assert overlap == 0, f"{name}: {overlap} bytes of its picture from its own object\n{log}"
        moved = proxy.response_bytes("GET")  # the rest: tags and a little audio
        assert moved < 2 * len(cover) + 6 * 64 * 1024, f"{moved} bytes for a scan of six tracks\n{log}"
        for name, data in sources.items():  # then a player reads each whole: exactly its own bytes
            with open(mnt / ALBUM / name, "rb") as f:
                assert f.read() == data, f"{name} differs from its source"
            with open(mnt / ALBUM / name, "rb") as f:  # and a seek into the middle of its cover
                art = tracks[name].art
                assert art is not None
                f.seek(art.offset + 70_001)
                assert f.read(5000) == data[art.offset + 70_001:art.offset + 75_001]
        assert sorted(os.listdir(mnt / ALBUM)) == sorted([*sources, "cover.jpg"])
