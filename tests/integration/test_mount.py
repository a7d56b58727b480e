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
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.mounting import LOCKERFS, force_unmount, lockerfs, mount_pids, mounted, readable, wait_until
from tests.support.s3server import S3Server

from synth_library import write_track


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mounted_files(mountpoint: Path) -> dict[str, Path]:
    """Relative path -> file, for every file in the mount."""
    return {p.relative_to(mountpoint).as_posix(): p for p in mountpoint.rglob("*") if p.is_file()}


@pytest.fixture
def uploaded(library, locker, env) -> tuple[Path, list]:
    root, tracks = library
    lockerfs("upload", str(root), locker, env=env)
    return root, tracks


def test_tree_shows_the_library_by_tags(uploaded, locker, env, tmp_path) -> None:
    _, tracks = uploaded
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        files = mounted_files(mnt)
        assert len(files) == len(tracks), sorted(files)
        assert {sha256_file(p) for p in files.values()} == {sha256_file(t.path) for t in tracks}
        tagged = [t for t in tracks if t.tags.get("album") and t.tags.get("title") and t.tags.get("track")
                  and not t.tags.get("compilation") and (t.tags.get("disctotal") or 1) == 1]
        for track in tagged:
            artist = track.tags.get("albumartist") or track.tags["artist"]
            year = f" ({track.tags['date'][:4]})" if track.tags.get("date") else ""
            title = track.tags["title"].replace("/", "\u2215")  # '/' in a tag never makes a folder
            name = f"{artist}/{track.tags['album']}{year}/{int(track.tags['track']):02d} {title}"
            assert any(path.startswith(name + ".") for path in files), (name, sorted(files))
        multi = [t for t in tracks if (t.tags.get("disctotal") or 1) > 1]
        assert multi, "the library has a multi-disc album"
        for track in multi:
            prefix = f"{track.tags['disc']}-{int(track.tags['track']):02d} {track.tags['title']}"
            assert any(Path(p).name.startswith(prefix) for p in files), prefix
        compilation = [t for t in tracks if t.tags.get("compilation")]
        assert compilation and all(any(p.startswith("Various Artists/") and Path(p).stem.endswith(t.tags["title"])
                                        for p in files) for t in compilation)
        untagged = [t for t in tracks if not t.tags]
        assert untagged and all(any(p.startswith("Unknown Artist/Unknown Album/") and Path(p).stem == t.path.stem
                                    for p in files) for t in untagged)
        for path in files.values():
            info = path.stat()
            assert stat.S_IMODE(info.st_mode) == 0o444 and info.st_uid == os.getuid()
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o555 for p in mnt.rglob("*") if p.is_dir())
        statfs = os.statvfs(mnt)
        assert statfs.f_bsize > 0 and statfs.f_namemax == 255


def test_reads_are_byte_exact_at_any_offset(uploaded, locker, env, tmp_path) -> None:
    _, tracks = uploaded
    sources = {sha256_file(t.path): t.path.read_bytes() for t in tracks}
    rng = random.Random(7)
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        for path in mounted_files(mnt).values():
            with open(path, "rb") as stream:
                data = stream.read()
                expected = sources[hashlib.sha256(data).hexdigest()]
                size = len(expected)
                for _ in range(20):
                    offset = rng.choice([0, size - 1, size, size + 10, 65536 - 3, 65536 * 2 - 1,
                                         rng.randrange(max(size, 1))])
                    length = rng.choice([1, 100, 4096, 65536 + 7, 300_000])
                    stream.seek(offset)
                    assert stream.read(length) == expected[offset:offset + length]


def test_files_are_read_only(uploaded, locker, env, tmp_path) -> None:
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        some_file = next(iter(mounted_files(mnt).values()))
        with pytest.raises(OSError) as failure:
            open(some_file, "r+b")
        assert failure.value.errno in (errno.EROFS, errno.EACCES)
        with pytest.raises(OSError):
            (mnt / "new.txt").write_text("x")


def test_eight_concurrent_readers(uploaded, locker, env, tmp_path) -> None:
    _, tracks = uploaded
    expected = {sha256_file(t.path) for t in tracks}
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        paths = list(mounted_files(mnt).values())
        results: list[set[str]] = []
        errors: list[BaseException] = []

        def reader(seed: int) -> None:
            order = paths[:]
            random.Random(seed).shuffle(order)
            try:
                results.append({sha256_file(p) for p in order})
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
        assert not errors
        assert len(results) == 8 and all(r == expected for r in results)


def test_new_upload_appears_after_refresh(uploaded, locker, env, tmp_path) -> None:
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


def test_second_mount_rereads_from_disk_cache_without_get(uploaded, locker, env, tmp_path,
                                                          proxy: FaultProxy) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    with mounted(locker, tmp_path / "mnt", env, *cache) as mnt:
        first = {name: sha256_file(p) for name, p in mounted_files(mnt).items()}
    proxy.reset_counts()
    with mounted(locker, tmp_path / "mnt", env, *cache) as mnt:
        assert {name: sha256_file(p) for name, p in mounted_files(mnt).items()} == first
    assert proxy.count("GET", "/objects/") == 0


def test_offline_listing_and_cached_reads_work_uncached_fail_fast(tmp_path, library, env, proxy: FaultProxy) -> None:
    """Server down: listing and cached reads keep working, uncached reads give EIO quickly."""
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
        with mounted(locker, tmp_path / "mnt", own_env, *cache) as mnt:
            files = sorted(mounted_files(mnt).values())
            cached, uncached = files[0], files[-1]
            cached_sha = sha256_file(cached)
        with mounted(locker, tmp_path / "mnt", own_env, *cache) as mnt:
            server.stop()
            time.sleep(2)  # a refresh fails meanwhile; the mount must not care
            assert sorted(mounted_files(mnt).values()) == files
            assert sha256_file(cached) == cached_sha
            started = time.monotonic()
            with pytest.raises(OSError) as failure:
                uncached.read_bytes()
            assert failure.value.errno == errno.EIO
            assert time.monotonic() - started < 10
            server.start()
            assert wait_until(lambda: readable(uncached), timeout=20)
        server.stop()
        # Mounting with the server down still works, from the cached catalog.
        with mounted(locker, tmp_path / "mnt", own_env, *cache) as mnt:
            assert sorted(p.relative_to(mnt) for p in mounted_files(mnt).values()) == \
                sorted(p.relative_to(tmp_path / "mnt") for p in files)
            assert sha256_file(mnt / cached.relative_to(tmp_path / "mnt")) == cached_sha
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
        assert len(mounted_files(mnt)) == len(uploaded[1])
    finally:
        subprocess.run([LOCKERFS, "umount", str(mnt)], env=env, capture_output=True)
        force_unmount(mnt)
