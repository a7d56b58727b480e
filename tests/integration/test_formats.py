"""Every container upload takes (issue #11), uploaded for real and read back through a real mount.

One tagged track per container (and per odd name), each encoded or built by
scripts/synth_formats.py: it must appear under its tags with its canonical
extension, read byte-exact through the mount, have been sent with its
container's Content-Type, and show its tags to mutagen reading the mount.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lockerfs.containers import CONTENT_TYPES, FORMAT_EXTENSIONS
from lockerfs.tags import read_track_info

from tests.integration.test_mount import mounted_files
from tests.support.faultproxy import FaultProxy
from tests.support.mounting import lockerfs, mounted

import synth_formats
from synth_library import FORMATS, write_track

# write_track fmt, variant, file name as the user had it
CASES = [
    ("wma", "", "01 Windows.wma"),
    ("ac3", "", "02 Dolby.ac3"),
    ("aac", "", "03 Raw.aac"),
    ("tta", "", "04 True.tta"),
    ("wv", "", "05 Pack.wv"),
    ("spx", "", "06 Speech.spx"),
    ("oga", "", "07 Ogg Flac.oga"),
    ("m4b", "", "08 Book.m4b"),
    ("mpc", "", "09 Muse.mpc"),
    ("mpc", "sv7", "10 Muse Seven.mp+"),
    ("ape", "", "11 Monkey.ape"),
    ("dsf", "", "12 Sony.dsf"),
    ("dff", "", "13 Philips.dff"),
    ("ofr", "", "14 Frog.ofs"),
    ("flac", "", "15 No Extension"),
    ("mp3", "", "16 Shouting.MP3"),
    ("flac", "", "17 Trailing Dot.flac."),
    ("ogg", "", "18 Wrong.mp3"),
]
EXPECTED_EXT = {"14 Frog.ofs": "ofs"}


@pytest.fixture(scope="module")
def every_format(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("formats")
    missing = {synth_formats.needs_tool(fmt) for fmt, _, _ in CASES} - {None}
    assert not missing, f"scripts/setup.sh installs these: {missing}"
    tracks = {}
    for n, (fmt, variant, name) in enumerate(CASES, 1):
        tags = {"artist": "Format Parade", "album": "Every Container", "date": "2024",
                "title": name.split(" ", 1)[1].rstrip(". "), "track": n}
        tracks[name] = write_track(root / name, fmt, 1.0, tags, seed=500 + n, variant=variant).path
    return root, tracks


def test_every_container_round_trips_through_the_mount(every_format, locker, env, proxy: FaultProxy,
                                                       tmp_path) -> None:
    root, tracks = every_format
    result = lockerfs("upload", str(root), locker, env=env)
    assert f"uploaded {len(tracks)} " in result.stdout and "skipped 0" in result.stdout, result.stdout
    sent_types = {r.path.rsplit(".", 1)[1]: r.content_type for r in proxy.records()
                  if r.method == "PUT" and "/objects/" in r.path}
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        files = mounted_files(mnt)
        by_sha = {hashlib.sha256(p.read_bytes()).hexdigest(): name for name, p in files.items()}
        for n, (fmt, _, name) in enumerate(CASES, 1):
            source = tracks[name]
            mounted_name = by_sha.get(hashlib.sha256(source.read_bytes()).hexdigest())
            assert mounted_name is not None, (name, sorted(files))
            container = FORMATS[fmt][0]
            ext = EXPECTED_EXT.get(name, FORMAT_EXTENSIONS[container])
            title = name.split(" ", 1)[1].rstrip(". ")
            assert mounted_name == f"Format Parade/Every Container (2024)/{n:02d} {title}.{ext}"
            assert sent_types[ext] == CONTENT_TYPES[container]
            # a tag scan through the mount (what a player's library update does) sees the tags
            scanned = read_track_info(files[mounted_name])
            assert (scanned.format, scanned.title) == (container, title), mounted_name
