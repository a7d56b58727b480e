"""A real MPD library update of a mounted locker: every song found, and no more bytes
moved than MPD itself reads of a local copy, give or take half (issue #10).

The floor is counted with scripts/countfs.py (a passthrough FUSE with direct_io:
MPD reads local files with io_uring, which strace cannot see) as the unique bytes
MPD's update reads of a local copy: what a mount with a perfect cache must fetch.
The mount's bytes are counted at the proxy in front of the S3 server, from the
first `mpc update` to the moment the mount has gone quiet (read-ahead the update
set off is charged to it).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.mounting import lockerfs, mounted
from tests.support.s3server import S3Server
from tests.support.synthesized import synthesized

import countfs
from mpd_update import have_mpd, private_mpd
from record_traces import describe_files
from synth_library import SynthTrack

# Bytes a cold MPD update through the mount may move, as a multiple of the floor.
MAX_FLOOR_MULTIPLE = 1.5
UPDATE_TIMEOUT_S = 120.0
QUIET_S = 0.5  # no new request for this long: the mount's background fetches have ended


@pytest.fixture(scope="module")
def purchased() -> tuple[Path, list[SynthTrack]]:
    """Two short tracks of each album shape of the purchased profile: VBR MP3 with and
    without a Xing frame, FLAC with 1.4 MB of art, M4A moov at the end and at the front,
    Ogg and Opus with pictures, a 24/96 FLAC, cover.jpg side files. Read-only."""
    return synthesized("purchased-small")


@pytest.fixture(scope="module")
def mpd_floor(purchased: tuple[Path, list[SynthTrack]], tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, int]:
    """What MPD's update reads of a local copy, counted by countfs."""
    root, tracks = purchased
    assert have_mpd(), "mpd and mpc are not installed: scripts/setup.sh installs them"
    work = tmp_path_factory.mktemp("floor")
    with countfs.counted(root, work / "mnt", work / "report.json") as passthrough:
        with private_mpd(work / "mpd", work / "mnt") as mpd:
            mpd.update(UPDATE_TIMEOUT_S)
            assert mpd.song_count() == len(tracks), "MPD does not see every track of the local copy"
    files = passthrough.report()["files"]
    return {key: sum(count[key] for path, count in files.items() if path != "manifest.json")
            for key in ("bytes", "unique", "reads")}


def test_purchased_library_has_every_shape(purchased) -> None:
    """What the test below (and the benchmark's default library) claims to contain."""
    root, tracks = purchased
    files = describe_files(root)
    kinds = {f["kind"] for f in files}
    assert {"mp3-xing-art-jpeg", "mp3-noxing-art-jpeg", "mp3-xing-art-png", "mp3-noxing-art-png",
            "mp3-xing-noart", "flac-art-jpeg", "flac-art-png", "flac-noart", "flac-hires-art-jpeg",
            "m4a-moovend-art-jpeg", "m4a-moovfront-art-png", "ogg-art-jpeg", "opus-art-jpeg"} <= kinds
    art = [f["art_bytes"] for f in files if f.get("art_bytes")]
    assert 50_000 <= min(art) < 100_000 and 1_200_000 < max(art) <= 1_500_000
    side = [f for f in files if not f["format"]]
    assert side and all(f["path"].endswith(("cover.jpg", "folder.jpg")) for f in side)
    assert all((root / f["path"]).read_bytes()[:2] == b"\xff\xd8" for f in side)
    assert len(tracks) == len(files) - len(side)


def wait_quiet(proxy: FaultProxy, quiet_s: float = QUIET_S, limit_s: float = 30.0) -> None:
    """Until no request has arrived for `quiet_s` and none is in flight."""
    deadline = time.monotonic() + limit_s
    seen, since = proxy.count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if proxy.count() != seen:
            seen, since = proxy.count(), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    proxy.wait_idle()


@pytest.fixture
def uploaded(purchased, locker: str, env: dict[str, str], s3_server: S3Server) -> None:
    """The library in the locker, uploaded straight to the server (the proxy counts only the mount),
    with the test's private XDG folders."""
    root, _tracks = purchased
    lockerfs("upload", str(root), locker, env={**env, "AWS_ENDPOINT_URL": s3_server.endpoint})


def test_mpd_update_of_a_mount_moves_at_most_half_again_its_floor(
        purchased, mpd_floor, uploaded, locker: str, env: dict[str, str], proxy: FaultProxy,
        tmp_path: Path) -> None:
    _root, tracks = purchased
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        wait_quiet(proxy)
        with private_mpd(tmp_path / "mpd", mnt) as mpd:
            proxy.reset_counts()
            mpd.update(UPDATE_TIMEOUT_S)
            wait_quiet(proxy)
            moved, requests = proxy.response_bytes(), proxy.count()
            songs = mpd.song_count()
    assert songs == len(tracks)
    multiple = moved / mpd_floor["unique"]
    print(f"MPD update through the mount: {moved:,} bytes in {requests} requests; "
          f"MPD reads {mpd_floor['unique']:,} unique bytes of a local copy "
          f"({mpd_floor['bytes']:,} with re-reads, {mpd_floor['reads']} reads): {multiple:.2f}x")
    assert multiple <= MAX_FLOOR_MULTIPLE, (
        f"the mount moved {moved:,} bytes ({requests} requests) for an MPD update that reads "
        f"{mpd_floor['unique']:,} unique bytes of a local copy: {multiple:.2f}x, over {MAX_FLOOR_MULTIPLE}x")
