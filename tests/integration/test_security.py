"""Security: a private, read-only mount that never writes to the bucket; a cache dir
others cannot feed; credentials and signatures never shown.

docs/SECURITY.md states the threat model these tests hold lockerfs to.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.library import assert_serves_sources, expected_paths, load_manifest, mounted_files
from tests.support.lockers import copy_locker
from tests.support.mounting import LOCKERFS, force_unmount, lockerfs, mount_pids, mounted, wait_until
from tests.support.s3server import ACCESS_KEY, SECRET_KEY, S3Server

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def uploaded(library, small_locker, locker, s3_server):  # type: ignore[no-untyped-def]
    """The small library in the test's locker: a server-side copy of one upload (tests/support/lockers.py)."""
    copy_locker(s3_server, small_locker, locker)
    return library


def mount_options(mnt: Path) -> list[str]:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mnt):
            return fields[3].split(",")
    raise AssertionError(f"{mnt} not in /proc/mounts")


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *command], capture_output=True, text=True, errors="replace", timeout=30)


def open_path_to_nobody(path: Path) -> None:
    """tmp_path's parents are 0700 root: let uid 65534 walk to the mount point (not into our files)."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            os.chmod(parent, os.stat(parent).st_mode | 0o001)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to another uid")
def test_mount_is_private_unless_allow_other(uploaded, locker, env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    open_path_to_nobody(mnt)
    with mounted(locker, mnt, env, "--cache-dir", str(tmp_path / "cache")):
        assert "allow_other" not in mount_options(mnt)
        some = next(iter(mounted_files(mnt).values()))
        listing = as_nobody("ls", str(mnt))
        reading = as_nobody("cat", str(some))
        assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing
        assert reading.returncode != 0 and "Permission denied" in reading.stderr, reading
    with mounted(locker, mnt, env, "--cache-dir", str(tmp_path / "cache"), "--allow-other"):
        assert "allow_other" in mount_options(mnt)
        some = next(iter(mounted_files(mnt).values()))
        listing = as_nobody("ls", str(mnt))
        assert listing.returncode == 0 and listing.stdout.strip(), listing
        assert as_nobody("cat", str(some)).returncode == 0


def _write_attempts(mnt: Path) -> dict[str, object]:
    """Every way to change a file system, aimed at the mount."""
    some = next(iter(mounted_files(mnt).values()))
    folder = some.parent
    return {
        "open for write": lambda: open(some, "r+b"),
        "open for append": lambda: open(some, "ab"),
        "truncate": lambda: os.truncate(some, 0),
        "create": lambda: open(folder / "new.flac", "wb"),
        "chmod": lambda: os.chmod(some, 0o666),
        "chown": lambda: os.chown(some, 65534, 65534),
        "utime": lambda: os.utime(some, (0, 0)),
        "unlink": lambda: os.unlink(some),
        "rename": lambda: os.rename(some, folder / "renamed.flac"),
        "link": lambda: os.link(some, folder / "hard.flac"),
        "symlink": lambda: os.symlink("/etc/passwd", folder / "sym.flac"),
        "mkdir": lambda: os.mkdir(mnt / "newdir"),
        "rmdir": lambda: os.rmdir(folder),
        "mknod": lambda: os.mkfifo(folder / "fifo"),
        "setxattr": lambda: os.setxattr(some, "user.x", b"1"),
    }


def _snapshot(mnt: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry's path -> (mode, size, mtime_ns), folders included."""
    return {p.relative_to(mnt).as_posix(): (st.st_mode, st.st_size, st.st_mtime_ns)
            for p in mnt.rglob("*") for st in [p.lstat()]}


def test_nothing_in_the_mount_can_be_changed(uploaded, locker, env, tmp_path) -> None:
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        before = _snapshot(mnt)
        for what, attempt in _write_attempts(mnt).items():
            with pytest.raises(OSError) as failure:
                attempt()  # type: ignore[operator]
            assert failure.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTSUP), (what, failure.value)
        assert "ro" in mount_options(mnt)
        assert _snapshot(mnt) == before, "something appeared, vanished or changed"


def _bucket_listing(server: S3Server, bucket: str) -> dict[str, tuple[int, str]]:
    """Key -> (size, ETag), asked of the server directly."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: (item["Size"], item["ETag"]) for page in pages for item in page.get("Contents", [])}


def test_a_mount_session_never_writes_to_the_bucket(uploaded, locker, env, tmp_path, proxy: FaultProxy,
                                                    s3_server: S3Server, bucket: str) -> None:
    """Mount, list, read everything, try every write, let refreshes run, unmount: GET and HEAD only."""
    before = _bucket_listing(s3_server, bucket)
    proxy.reset_counts()
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache"), "--refresh", "1") as mnt:
        assert_serves_sources(mounted_files(mnt), expected_paths(load_manifest(uploaded[0])))
        for attempt in _write_attempts(mnt).values():
            with pytest.raises(OSError):
                attempt()  # type: ignore[operator]
        refreshes = proxy.count("GET")
        assert wait_until(lambda: proxy.count("GET") > refreshes + 2, timeout=10), "no catalog refresh ran"
    methods = sorted({record.method for record in proxy.records()})
    writes = [(r.method, r.path) for r in proxy.records() if r.method not in ("GET", "HEAD")]
    print(f"\n[mount session] {len(proxy.records())} requests, methods {methods}; writes {writes}")
    assert proxy.count("GET", "/objects/") > 0, "the session read nothing through the proxy"
    assert writes == []
    assert _bucket_listing(s3_server, bucket) == before


NOBODY_UID = 65534


def _unsafe_cache_dir(tmp_path: Path, how: str) -> tuple[Path, str]:
    """A cache dir another user could write to, and the sentence that refuses it."""
    cache = tmp_path / "cache"
    if how == "below a world-writable folder":
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chmod(shared, 0o777)  # no sticky bit: anyone may rename our cache dir away and plant theirs
        cache = shared / "cache"
        cache.mkdir(mode=0o700)
        return cache, f"{shared}, a parent of the cache directory {cache}, is writable by every user"
    cache.mkdir(mode=0o700)
    if how == "writable by every user":
        os.chmod(cache, 0o777)
        return cache, f"the cache directory {cache} is writable by every user"
    os.chown(cache, NOBODY_UID, NOBODY_UID)
    return cache, f"the cache directory {cache} belongs to user id {NOBODY_UID}, not to you"


def _plant_symlinks(cache: Path, target: Path) -> None:
    """What the other user could leave there: every name the mount writes, pointing at our file."""
    for name in ("mount.log", "lock", "blocks"):
        os.symlink(target, cache / name)
        os.lchown(cache / name, NOBODY_UID, NOBODY_UID)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
@pytest.mark.parametrize("how", ["owned by another user", "writable by every user", "below a world-writable folder"])
def test_a_cache_dir_others_can_write_is_refused_and_left_untouched(locker, env, tmp_path, how: str) -> None:
    """Another user who can write there could feed us blocks, or plant a symlink where we write a file.
    Refused before the bucket is asked anything, so the locker need not exist."""
    cache, sentence = _unsafe_cache_dir(tmp_path, how)
    ours = tmp_path / "precious"
    ours.write_text("my data\n")
    _plant_symlinks(cache, ours)
    planted = sorted(os.listdir(cache))
    (tmp_path / "mnt").mkdir()
    result = lockerfs("mount", "--cache-dir", str(cache), locker, str(tmp_path / "mnt"), env=env, check=False)
    try:
        assert result.returncode != 0
        assert sentence in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
        assert not os.path.ismount(tmp_path / "mnt")
        assert ours.read_text() == "my data\n", "the mount wrote through a planted symlink"
        assert sorted(os.listdir(cache)) == planted, "the mount wrote into a folder it refused"
    finally:
        force_unmount(tmp_path / "mnt")


def test_cache_dir_and_its_files_are_private(uploaded, locker, env, tmp_path) -> None:
    with mounted(locker, tmp_path / "mnt", env) as mnt:  # the default cache dir, under XDG_CACHE_HOME
        assert_serves_sources(mounted_files(mnt), expected_paths(load_manifest(uploaded[0])))
    cache_root = Path(env["XDG_CACHE_HOME"]) / "lockerfs"
    written = [cache_root, *cache_root.rglob("*")]
    assert len(written) > 5
    for path in written:
        mode = os.stat(path).st_mode & 0o777
        assert not mode & 0o077, f"{path} is {mode:o}"


def _running_mount(mnt: Path) -> int:
    pids = mount_pids(mnt)
    assert len(pids) == 1, pids
    return pids[0]


# What a credential leak looks like. The secret key never goes on the wire, so
# a log that leaks is more likely to hold what is sent instead: botocore's
# DEBUG output prints each request's Authorization header (the access key and
# the request's signature), and a presigned URL carries X-Amz-Signature.
LEAK_MARKERS = {
    "the secret key": re.compile(re.escape(SECRET_KEY)),
    "the access key": re.compile(re.escape(ACCESS_KEY)),
    "an Authorization header": re.compile("authorization", re.IGNORECASE),
    "a request signature": re.compile("signature=", re.IGNORECASE),
    "a presigned URL's signature": re.compile("x-amz-signature", re.IGNORECASE),
}


def find_leaks(texts: dict[str, str]) -> dict[str, list[str]]:
    """Where -> which markers of LEAK_MARKERS it holds; only places with a leak."""
    found = {where: [what for what, marker in LEAK_MARKERS.items() if marker.search(text)]
             for where, text in texts.items()}
    return {where: whats for where, whats in found.items() if whats}


def files_under(*folders: Path) -> dict[str, str]:
    """Path -> contents (bytes as latin-1, so any byte sequence can match) of every file below."""
    return {str(p): p.read_bytes().decode("latin-1") for folder in folders
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_secrets_never_appear(uploaded, library, locker, env, tmp_path) -> None:
    """Every command's output, every file lockerfs wrote, the mount's argv and title: no key,
    no Authorization header, no signature."""
    root, _ = library
    outputs: dict[str, str] = {}

    def run(name: str, *args: str, environment: dict[str, str] = env) -> None:
        result = lockerfs(*args, env=environment, check=False)
        outputs[name] = result.stdout + result.stderr

    run("upload --debug", "upload", "--debug", str(root), locker)
    run("ls", "ls", locker)
    cache = tmp_path / "cache"
    mnt = tmp_path / "mnt"
    # a daemonized mount with --debug
    with mounted(locker, mnt, env, "--cache-dir", str(cache), "--debug"):
        pid = _running_mount(mnt)
        assert_serves_sources(mounted_files(mnt), expected_paths(load_manifest(library[0])))
        outputs["daemon /proc/cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        outputs["daemon /proc/comm"] = Path(f"/proc/{pid}/comm").read_text()
        # /proc/PID/environ is exempt: boto3 reads the credentials from there (docs/SECURITY.md)
    # a foreground mount with --debug
    mnt.mkdir(exist_ok=True)
    # --debug logs every read: to a file, since an unread pipe would fill and stall the mount
    foreground_log = tmp_path / "foreground.log"
    with open(foreground_log, "w") as log_file:
        foreground = subprocess.Popen([LOCKERFS, "mount", "-f", "--debug", "--cache-dir",
                                       str(tmp_path / "cache-fg"), locker, str(mnt)],
                                      env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: os.path.ismount(mnt), timeout=30)
        pid = foreground.pid
        outputs["foreground /proc/cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        outputs["foreground /proc/comm"] = Path(f"/proc/{pid}/comm").read_text()
        assert_serves_sources(mounted_files(mnt), expected_paths(load_manifest(library[0])))
    finally:
        subprocess.run([LOCKERFS, "umount", str(mnt)], env=env, capture_output=True, timeout=60)
        force_unmount(mnt)
        try:
            foreground.wait(timeout=30)
        except subprocess.TimeoutExpired:
            foreground.kill()
            foreground.wait()
    # a failing mount (the endpoint is unreachable), and an access-denied error
    unreachable = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    run("failing mount", "mount", "--debug", "--cache-dir", str(tmp_path / "cache-x"), locker, str(mnt),
        environment=unreachable)
    denied = {**env, "AWS_ACCESS_KEY_ID": "wrongkey", "AWS_SECRET_ACCESS_KEY": SECRET_KEY + "-wrong"}
    run("access denied ls", "ls", locker, environment=denied)
    run("access denied upload", "upload", str(root), locker, environment=denied)
    run("access denied mount", "mount", "--debug", "--cache-dir", str(tmp_path / "cache-d"), locker, str(mnt),
        environment=denied)
    force_unmount(mnt)
    assert "refused our credentials" in outputs["access denied ls"], outputs["access denied ls"]
    assert outputs["failing mount"].strip()

    # tmp_path holds the cache dirs, the foreground log and the XDG state, cache and runtime dirs
    files = files_under(tmp_path)
    logs = {path: text for path, text in files.items() if Path(path).name.startswith("mount.log")}
    leaks = find_leaks({**outputs, **files})
    print(f"\n[secrets] {len(outputs)} outputs and {len(files)} files checked for {', '.join(LEAK_MARKERS)} "
          f"({len(logs)} mount logs, {sum(map(len, logs.values()))} bytes); leaks: {leaks}")
    assert logs and any("DEBUG" in text for text in logs.values())
    assert str(foreground_log) in files and "DEBUG" in files[str(foreground_log)]
    assert not leaks


# lockerfs with botocore's loggers let through at DEBUG, whatever lockerfs sets:
# what test_secrets_never_appear must catch.
LET_BOTOCORE_THROUGH = """
import logging
import sys

from lockerfs import cli

for name in ("botocore", "boto3", "s3transfer", "urllib3"):
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.setLevel = lambda level: None  # lockerfs's attempt to hold it at WARNING is ignored
sys.exit(cli.main(sys.argv[1:]))
"""


def test_the_leak_search_sees_botocore_debug_output(library, locker, env, tmp_path) -> None:
    """A test of the test: with botocore at DEBUG, the search above finds the leak in
    upload's output and in the mount log (and shows why searching for the secret alone would not)."""
    root, _ = library
    script = tmp_path / "lockerfs-botocore-debug.py"  # "lockerfs" in argv[1]: mount_pids finds the mount
    script.write_text(LET_BOTOCORE_THROUGH)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                              timeout=120)

    upload = run("upload", "--debug", str(root), locker)
    assert upload.returncode == 0, upload.stderr[-2000:]
    cache, mnt = tmp_path / "cache", tmp_path / "mnt"
    mnt.mkdir()
    try:
        mount = run("mount", "--debug", "--cache-dir", str(cache), locker, str(mnt))
        assert mount.returncode == 0, mount.stderr
        next(iter(mounted_files(mnt).values())).read_bytes()
    finally:
        subprocess.run([LOCKERFS, "umount", str(mnt)], env=env, capture_output=True, timeout=60)
        force_unmount(mnt)
    leaks = find_leaks({"upload --debug": upload.stdout + upload.stderr, **files_under(cache)})
    print(f"\n[leak search, botocore at DEBUG] {leaks}")
    must_find = {"the access key", "an Authorization header", "a request signature"}
    assert must_find <= set(leaks.get("upload --debug", [])), leaks
    mount_logs = [where for where in leaks if Path(where).name == "mount.log"]
    assert mount_logs and must_find <= set(leaks[mount_logs[0]]), leaks
