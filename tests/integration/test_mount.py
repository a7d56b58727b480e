"""`lockerfs mount` for real: the tree, byte-exact reads, refresh, cache reuse, offline, unmount."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.support.bounds import EIO_WITHIN
from tests.support.faultproxy import FaultProxy
from tests.support.library import (Source, assert_serves_sources, embedded_pictures, expected_paths, load_manifest,
                                   mounted_files, mounted_tracks)
from tests.support.mounting import LOCKERFS, force_unmount, lockerfs, mount_pids, mounted, readable, wait_until
from tests.support.s3server import S3Server

from synth_library import write_track

__all__ = ["mounted_files", "sha256_file"]  # used by other test modules


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def drop_page_cache(fd: int) -> None:
    """Make the kernel ask the mount again (keep_cache would otherwise serve re-reads)."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


@pytest.fixture(scope="module")
def locker(s3_server: S3Server) -> str:
    """One locker for the module: its tests mount and read it, and change nothing in it
    (the one that adds a track has a locker of its own: own_locker)."""
    bucket = f"mount-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    return f"s3://{bucket}/music"


@pytest.fixture(scope="module")
def uploaded(library, locker, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The small library in the module's locker, uploaded once, straight to the server."""
    root, tracks = library
    env, home = s3_server.env(), tmp_path_factory.mktemp("mount-upload")
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        (home / name.lower()).mkdir(mode=0o700)
        env[name] = str(home / name.lower())
    lockerfs("upload", str(root), locker, env=env)
    return root, tracks


@pytest.fixture
def own_locker(library, bucket: str, env: dict[str, str]) -> str:
    """The small library in a locker of the test's own, for a test that adds to it."""
    locker = f"s3://{bucket}/music"
    lockerfs("upload", str(library[0]), locker, env=env)
    return locker


@pytest.fixture
def layout(library) -> dict[str, Source]:
    """Mount path -> the source it must serve, predicted from the manifest's tags."""
    return expected_paths(load_manifest(library[0]))


def test_tree_shows_the_library_by_tags(uploaded, layout, locker, env, tmp_path) -> None:
    """Exactly the predicted paths, each serving its own source's bytes."""
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        files = mounted_files(mnt)
        tracks = mounted_tracks(mnt)
        assert sorted(tracks) == sorted(layout)
        assert_serves_sources(tracks, layout)
        # beside them, only covers, each in an album whose tracks carry it embedded
        art: dict[str, list[bytes]] = {}
        for name, source in layout.items():
            art.setdefault(str(Path(name).parent), []).extend(embedded_pictures(source.path))
        covers = {str(Path(name).parent): path for name, path in files.items() if name not in tracks}
        assert all(Path(name).stem == "cover" for name in files if name not in tracks), sorted(files)
        assert set(covers) == {folder for folder, pictures in art.items() if pictures}
        assert all(path.read_bytes() in art[folder] for folder, path in covers.items())
        # the prediction covers every naming rule the small library exercises
        names = list(layout)
        assert any(Path(n).name.startswith("1-01 ") for n in names), "a multi-disc album"
        assert any(n.startswith("Various Artists/") for n in names), "a compilation"
        assert any(n.startswith("Unknown Artist/Unknown Album/") for n in names), "untagged files"
        assert any("\u2215" in n for n in names), "a '/' in a tag"
        for path in files.values():
            info = path.stat()
            assert stat.S_IMODE(info.st_mode) == 0o444 and info.st_uid == os.getuid()
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o555 for p in mnt.rglob("*") if p.is_dir())
        statfs = os.statvfs(mnt)
        assert statfs.f_bsize > 0 and statfs.f_namemax == 255


def test_reads_are_byte_exact_at_any_offset(uploaded, layout, locker, env, tmp_path) -> None:
    """Cold reads at odd offsets, each on a fresh descriptor with the page cache dropped,
    so lockerfs answers every one (a read after a full read could come from the kernel)."""
    rng = random.Random(7)
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        for name, source in layout.items():
            expected = source.path.read_bytes()
            size = len(expected)
            for _ in range(20):
                offset = rng.choice([0, size - 1, size, size + 10, 65536 - 3, 65536 * 2 - 1,
                                     rng.randrange(max(size, 1))])
                length = rng.choice([1, 100, 4096, 65536 + 7, 300_000])
                fd = os.open(mnt / name, os.O_RDONLY)
                try:
                    drop_page_cache(fd)
                    data = os.pread(fd, length, offset)
                finally:
                    os.close(fd)
                assert data == expected[offset:offset + length], (name, offset, length)


def test_files_are_read_only(uploaded, locker, env, tmp_path) -> None:
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        some_file = next(iter(mounted_files(mnt).values()))
        with pytest.raises(OSError) as failure:
            open(some_file, "r+b")
        assert failure.value.errno in (errno.EROFS, errno.EACCES)
        with pytest.raises(OSError):
            (mnt / "new.txt").write_text("x")


def test_eight_concurrent_readers(uploaded, layout, locker, env, tmp_path) -> None:
    expected = {name: source.sha256 for name, source in layout.items()}
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        results: list[dict[str, str]] = []
        errors: list[BaseException] = []

        def reader(seed: int) -> None:
            order = sorted(expected)
            random.Random(seed).shuffle(order)
            try:
                results.append({name: sha256_file(mnt / name) for name in order})
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
        assert not errors
        assert len(results) == 8 and all(r == expected for r in results)


def test_new_upload_appears_after_refresh(own_locker, env, tmp_path) -> None:
    locker = own_locker
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache"), "--refresh", "1") as mnt:
        before = set(mounted_files(mnt))
        assert not (mnt / "Late Artist").exists()  # the kernel may now cache this absence
        new = write_track(tmp_path / "late" / "late.flac", "flac", seconds=1, seed=99,
                          tags={"artist": "Late Artist", "album": "Later", "title": "Arrived", "track": 1})
        lockerfs("upload", str(new.path), locker, env=env)
        target = mnt / "Late Artist" / "Later" / "01 Arrived.flac"
        assert wait_until(target.exists, timeout=20), sorted(set(mounted_files(mnt)) - before)
        assert sha256_file(target) == sha256_file(new.path)
        assert set(mounted_files(mnt)) - before == {"Late Artist/Later/01 Arrived.flac"}


def test_second_mount_rereads_from_disk_cache_without_get(uploaded, layout, locker, env, tmp_path,
                                                          proxy: FaultProxy) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    with mounted(locker, tmp_path / "mnt", env, *cache) as mnt:
        assert_serves_sources(mounted_files(mnt), layout)
    proxy.reset_counts()
    with mounted(locker, tmp_path / "mnt", env, *cache) as mnt:
        assert_serves_sources(mounted_files(mnt), layout)
    assert proxy.count("GET", "/objects/") == 0


def test_offline_listing_and_cached_reads_work_uncached_fail_fast(tmp_path, library, layout, env) -> None:
    """Server down: listing and cached reads keep working, uncached reads give EIO within the deadline."""
    root, tracks = library
    server = S3Server(tmp_path / "own-s3")
    server.make_bucket("offline")
    server.start()
    try:
        own_env = server.env()
        own_env.update({k: env[k] for k in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR")})
        locker = "s3://offline/music"
        lockerfs("upload", str(root), locker, env=own_env)
        cache = ["--cache-dir", str(tmp_path / "cache"), "--refresh", "1"]
        names = sorted(layout)
        cached, uncached = names[0], names[-1]
        with mounted(locker, tmp_path / "mnt", own_env, *cache) as mnt:
            assert sorted(mounted_tracks(mnt)) == names
            assert_serves_sources(mounted_files(mnt), {cached: layout[cached]})
        with mounted(locker, tmp_path / "mnt", own_env, *cache) as mnt:
            server.stop()
            time.sleep(2)  # a refresh fails meanwhile; the mount must not care
            assert sorted(mounted_tracks(mnt)) == names
            assert_serves_sources(mounted_files(mnt), {cached: layout[cached]})
            started = time.monotonic()
            with pytest.raises(OSError) as failure:
                (mnt / uncached).read_bytes()
            elapsed = time.monotonic() - started
            assert failure.value.errno == errno.EIO
            assert elapsed < EIO_WITHIN, f"EIO after {elapsed:.1f} s"
            server.start()
            assert wait_until(lambda: readable(mnt / uncached), timeout=20)
            assert_serves_sources(mounted_files(mnt), {uncached: layout[uncached]})
        server.stop()
        # Mounting with the server down still works, from the cached catalog.
        with mounted(locker, tmp_path / "mnt", own_env, *cache) as mnt:
            assert sorted(mounted_tracks(mnt)) == names
            assert_serves_sources(mounted_files(mnt), {cached: layout[cached], uncached: layout[uncached]})
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["lockerfs umount", "fusermount3 -u"])
def test_unmount_leaves_no_process(uploaded, locker, env, tmp_path, how: str) -> None:
    mnt = tmp_path / "mnt"
    with mounted(locker, mnt, env, "--cache-dir", str(tmp_path / "cache")):
        assert mount_pids(mnt)
        if how == "lockerfs umount":
            lockerfs("umount", str(mnt), env=env)
        else:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        assert not os.path.ismount(mnt)
        assert wait_until(lambda: not mount_pids(mnt), timeout=10)


def test_a_failing_test_still_unmounts(uploaded, locker, env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    with pytest.raises(RuntimeError, match="boom"):
        with mounted(locker, mnt, env, "--cache-dir", str(tmp_path / "cache")):
            raise RuntimeError("boom")
    assert not os.path.ismount(mnt)
    assert wait_until(lambda: not mount_pids(mnt), timeout=10)


def test_mount_errors_are_one_sentence(tmp_path, locker, env, uploaded) -> None:
    missing = lockerfs("mount", locker, str(tmp_path / "nowhere"), env=env, check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    (tmp_path / "mnt").mkdir()
    no_locker = lockerfs("mount", "--cache-dir", str(tmp_path / "c1"), locker + "-absent",
                         str(tmp_path / "mnt"), env=env, check=False)
    assert no_locker.returncode != 0 and "not a lockerfs locker" in no_locker.stderr
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "c2")):
        busy = lockerfs("mount", "--cache-dir", str(tmp_path / "c3"), locker, str(tmp_path / "mnt"),
                        env=env, check=False)
        assert busy.returncode != 0 and "busy" in busy.stderr
        shared = tmp_path / "mnt2"
        shared.mkdir()
        same_cache = lockerfs("mount", "--cache-dir", str(tmp_path / "c2"), locker, str(shared),
                              env=env, check=False)
        assert same_cache.returncode != 0 and "in use" in same_cache.stderr
    for output in (missing, no_locker, busy, same_cache):
        assert "Traceback" not in output.stderr and output.stderr.count("\n") == 1


def test_mount_t_fuse_lockerfs(uploaded, locker, env, tmp_path) -> None:
    """`mount -t fuse.lockerfs` runs our mount(8) helper with -o options."""
    helper = Path("/usr/sbin/mount.fuse.lockerfs")
    if not helper.exists():
        pytest.skip("scripts/setup.sh installs /usr/sbin/mount.fuse.lockerfs only when run as root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "fuse.lockerfs", locker, str(mnt), "-o",
                        f"cache_size=200M,cache_dir={tmp_path / 'cache'},noauto,_netdev"],
                       env=env, check=True, capture_output=True, timeout=60)
        assert os.path.ismount(mnt)
        assert_serves_sources(mounted_files(mnt), expected_paths(load_manifest(uploaded[0])))
    finally:
        subprocess.run([LOCKERFS, "umount", str(mnt)], env=env, capture_output=True)
        force_unmount(mnt)
