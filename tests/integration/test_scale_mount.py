"""A large catalog through a real mount: every path as the layout says, a refresh of new
tracks that keeps the old inodes, and memory that grows by well under a kilobyte a track.

The catalog (tracks, covers, playlists: tests/support/scale_catalog.py) is written
without audio and compacted, so the mount reads the columnar snapshot from the bucket.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from lockerfs import catalog, extras
from lockerfs.layout import DEFAULT_TEMPLATE, parse_template
from lockerfs.store import S3Store
from tests.support.mounting import mount_pids, mounted, wait_until
from tests.support.s3server import S3Server
from tests.support.scale_catalog import append_new_tracks, write_scale_catalog

TRACKS = 20_000
NEW_TRACKS = 1_000
REFRESH_S = 0.5
# Memory a track may add to the mount once every folder has been listed: about 1.5 KiB
# measured here (columns, names, folders, the allocator's slack); the in-memory form
# before the columnar catalog held about 4 KiB a track after a full listing.
BYTES_PER_TRACK = 2048


def walk(root: Path) -> set[tuple[str, ...]]:
    found = set()
    for folder, _, names in os.walk(root):
        base = Path(folder).relative_to(root).parts
        found.update((*base, name) for name in names)
    return found


def rss(mountpoint: Path) -> int:
    (pid,) = mount_pids(mountpoint)
    return psutil.Process(pid).memory_info().rss


def expected_paths(store: S3Store) -> set[tuple[str, ...]]:
    """What build_paths and extras.lay_out make of the whole catalog (the reference layout)."""
    state = catalog.load_catalog(store).state
    paths, files = extras.lay_out(state, parse_template(DEFAULT_TEMPLATE))
    return set(paths) | set(files)


def test_a_large_catalog_lists_refreshes_and_stays_small(s3_server: S3Server, bucket: str, env: dict[str, str],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):  # this process writes too
        monkeypatch.setenv(name, env[name])
    store = S3Store(f"s3://{bucket}/big", endpoint_url=s3_server.endpoint)
    write_scale_catalog(store, TRACKS)
    empty = S3Store(f"s3://{bucket}/empty", endpoint_url=s3_server.endpoint)
    catalog.ensure_locker(empty)
    with mounted(f"s3://{bucket}/empty", tmp_path / "empty", env, "--cache-dir", str(tmp_path / "c0")) as mnt:
        baseline = rss(mnt)

    with mounted(f"s3://{bucket}/big", tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "c1"),
                 "--refresh", str(REFRESH_S)) as mnt:
        before = walk(mnt)
        assert before == expected_paths(store)
        assert len([path for path in before if path[-1].endswith(".flac")]) == TRACKS
        grown = rss(mnt) - baseline
        assert grown < TRACKS * BYTES_PER_TRACK, f"{grown / TRACKS:.0f} bytes a track"

        kept = sorted(before)[len(before) // 2]
        inode = os.stat(mnt.joinpath(*kept)).st_ino
        _, folder = append_new_tracks(store, NEW_TRACKS, first=10_000_000)
        # The refresh runs every REFRESH_S; applying 1,000 tracks takes a fraction of that.
        assert wait_until(lambda: mnt.joinpath(*folder).is_dir(), timeout=REFRESH_S * 20)
        after = walk(mnt)
        assert after == expected_paths(store)
        assert len([path for path in after if path[-1].endswith(".flac")]) == TRACKS + NEW_TRACKS
        assert os.stat(mnt.joinpath(*kept)).st_ino == inode
