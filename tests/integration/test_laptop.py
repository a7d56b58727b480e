"""Life on a laptop: a killed mount, booting offline, suspend and resume, a changed network.

Every scenario runs a real mount against the real S3 server through the fault
proxy, and recovers with no manual step: no remount, no `umount` first. Bytes
read are always the source's. Timings are printed (`pytest -s`) for the
issue's closing note.

The suspend test stops the mount process for LOCKERFS_SUSPEND_SECONDS. A
SIGSTOP moves CLOCK_BOOTTIME and CLOCK_MONOTONIC alike, so what tells the
resumed mount that its pooled connections are suspect is their idle time:
the default stop is connections.IDLE_LIMIT plus bounds.MARGIN of it (34.5 s today),
which proves the same as the 120 s the issue named. scripts/bench_laptop.py
measures the full 120 s (`--suspend 120`, its default); run this test with
LOCKERFS_SUSPEND_SECONDS=120 to see it here.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockerfs import mountpoints
from lockerfs.connections import IDLE_LIMIT
from lockerfs.control import ADDRESS_WAIT
from lockerfs.mount import READ_DEADLINE
from tests.integration.test_faults_mount import drop_page_cache, log_of
from tests.support.bounds import within
from tests.support.faultproxy import FaultProxy
from tests.support.library import mounted_tracks
from tests.support.mounting import LOCKERFS, force_unmount, lockerfs, mount_pids, mounted, wait_until
from tests.support.s3server import S3Server

from synth_library import SynthTrack, write_track

SUSPEND_SECONDS = float(os.environ.get("LOCKERFS_SUSPEND_SECONDS", within(IDLE_LIMIT)))
RTT = 0.2  # the round trip the proxy emulates in the timing tests
# A cold read needs a connection (one round trip here) and a GET (at most two).
FIRST_READ_BOUND = (2 * RTT + RTT) * 1.5
OFFLINE_START_BOUND = 1.0  # the target for a mount that starts from the catalog copy
# nss_wrapper (scripts/setup.sh installs libnss-wrapper) resolves names from a hosts file we write
NSS_WRAPPER = next(iter(sorted(Path("/usr/lib").glob("*/libnss_wrapper.so"))), Path("/usr/lib/libnss_wrapper.so"))
ENDPOINT_NAME = "locker-s3.test"


# --- fixtures and helpers -------------------------------------------------------------------

def sources_by_sha(tracks: list[SynthTrack]) -> dict[str, bytes]:
    return {hashlib.sha256(data).hexdigest(): data for data in (t.path.read_bytes() for t in tracks)}


@pytest.fixture(scope="module")
def shared_locker(s3_server: S3Server, library) -> tuple[str, dict[str, bytes]]:
    """One locker for the module, uploaded once straight to the server: sha -> source bytes."""
    bucket = f"laptop-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    locker = f"s3://{bucket}/music"
    root, tracks = library
    lockerfs("upload", str(root), locker, env=s3_server.env())
    return locker, sources_by_sha(tracks)


def start_mount(locker: str, mnt: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    mnt.mkdir(parents=True, exist_ok=True)
    result = lockerfs("mount", *extra, locker, str(mnt), env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def kill_mount(mnt: Path) -> None:
    """kill -9 the process serving `mnt`, as the OOM killer would, and wait until it is gone."""
    pids = mount_pids(mnt)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    assert wait_until(lambda: not mount_pids(mnt), timeout=10)


def assert_stale(mnt: Path) -> None:
    with pytest.raises(OSError) as failure:
        os.listdir(mnt)
    # ENOTCONN, or ECONNABORTED while the kernel still ends the dead connection's requests
    assert failure.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert mountpoints.state(mnt)[0] is mountpoints.State.STALE


def verify(path: Path, sources: dict[str, bytes]) -> int:
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() in sources, f"{path}: wrong bytes"
    return len(data)


def timed_first_read(path: Path, sources: dict[str, bytes]) -> float:
    """Seconds for the first 64 KiB of a file nobody read yet; the bytes are checked."""
    started = time.monotonic()
    with open(path, "rb") as stream:
        head = stream.read(65536)
    elapsed = time.monotonic() - started
    assert any(source.startswith(head) for source in sources.values()), f"{path}: wrong bytes"
    return elapsed


def mount_ready_seconds(cache: Path) -> list[float]:
    """What each mount reported as its start time (from its process start, imports excluded)."""
    return [float(s) for s in re.findall(r"mounted \S+ on \S+ in ([0-9.]+) s", log_of(cache))]


@pytest.fixture
def cleanup_mounts() -> Iterator[list[Path]]:
    """Mount points to take down after the test, whatever state they are in."""
    points: list[Path] = []
    yield points
    for point in points:
        for pid in mount_pids(point):
            os.kill(pid, signal.SIGCONT)  # a stopped process cannot exit
        force_unmount(point)


# --- 1. a mount that died --------------------------------------------------------------------

def test_mount_over_a_killed_mount_cleans_it_up_and_mounts(shared_locker, env, tmp_path, cleanup_mounts) -> None:
    locker, sources = shared_locker
    mnt = tmp_path / "mnt"
    cleanup_mounts.append(mnt)
    options = ["--cache-dir", str(tmp_path / "cache")]
    start_mount(locker, mnt, env, *options)
    first = next(iter(mounted_tracks(mnt).values()))
    verify(first, sources)
    kill_mount(mnt)
    assert_stale(mnt)

    again = start_mount(locker, mnt, env, *options)
    print(f"\n[killed mount] second mount said: {again.stderr.strip()!r}")
    assert again.stderr.count("\n") == 1
    assert f"{mnt} was left mounted by a lockerfs process that died; unmounted it" in again.stderr
    assert mountpoints.state(mnt)[0] is mountpoints.State.LIVE
    files = mounted_tracks(mnt)
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values()} == set(sources)
    assert lockerfs("umount", str(mnt), env=env).returncode == 0
    assert mountpoints.state(mnt)[0] is mountpoints.State.NOT_MOUNTED


def test_umount_of_a_killed_mount_works(shared_locker, env, tmp_path, cleanup_mounts) -> None:
    locker, _ = shared_locker
    mnt = tmp_path / "mnt"
    cleanup_mounts.append(mnt)
    start_mount(locker, mnt, env, "--cache-dir", str(tmp_path / "cache"))
    kill_mount(mnt)
    assert_stale(mnt)
    result = lockerfs("umount", str(mnt), env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert mountpoints.state(mnt)[0] is mountpoints.State.NOT_MOUNTED
    assert mnt.is_dir() and not any(mnt.iterdir())


OTHER_FS = """
import sys, pyfuse3, trio
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], ["fsname=otherfs", "subtype=otherfs", "ro"])
print("ready", flush=True)
trio.run(pyfuse3.main)
"""


def test_a_dead_mount_of_another_filesystem_is_refused(shared_locker, env, tmp_path) -> None:
    locker, _ = shared_locker
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "otherfs.py"
    script.write_text(OTHER_FS)
    other = subprocess.Popen([sys.executable, str(script), str(mnt)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        other.kill()
        other.wait(10)
        assert_stale(mnt)
        assert mountpoints.mounted_at(mnt).fstype == "fuse.otherfs"  # type: ignore[union-attr]

        refused = lockerfs("mount", "--cache-dir", str(tmp_path / "cache"), locker, str(mnt), env=env, check=False)
        print(f"\n[other dead mount] mount said: {refused.stderr.strip()!r}")
        assert refused.returncode != 0
        assert refused.stderr == f"lockerfs: {mnt} is a fuse.otherfs mount whose process is gone: unmount it first\n"
        not_ours = lockerfs("umount", str(mnt), env=env, check=False)
        assert not_ours.returncode != 0 and "not a lockerfs one" in not_ours.stderr
        assert_stale(mnt)  # left as it was
    finally:
        other.kill()
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)


# --- 2. the catalog copy, and booting offline -----------------------------------------------------

def test_killed_in_its_first_second_then_mounted_offline(shared_locker, env, proxy: FaultProxy, tmp_path,
                                                        cleanup_mounts) -> None:
    locker, sources = shared_locker
    mnt = tmp_path / "mnt"
    cleanup_mounts.append(mnt)
    cache = tmp_path / "cache"
    start_mount(locker, mnt, env, "--cache-dir", str(cache))
    files = mounted_tracks(mnt)
    played = sorted(files)[0]
    verify(files[played], sources)
    time.sleep(1.0)
    kill_mount(mnt)

    proxy.set_down(True)
    start_mount(locker, mnt, env, "--cache-dir", str(cache))
    ready = mount_ready_seconds(cache)[-1]
    print(f"\n[killed at 1 s, then offline] offline mount ready in {ready:.2f} s")
    assert ready < OFFLINE_START_BOUND
    assert mounted_tracks(mnt).keys() == files.keys()
    verify(mnt / played, sources)
    assert wait_until(lambda: log_of(cache).count("offline: ") == 1, timeout=READ_DEADLINE)


def test_offline_boot_serves_the_cache_and_picks_up_new_tracks_when_back(
        shared_locker, env, s3_server: S3Server, proxy: FaultProxy, tmp_path, cleanup_mounts) -> None:
    locker, sources = shared_locker
    cache = tmp_path / "cache"
    options = ["--cache-dir", str(cache), "--refresh", "1"]
    with mounted(locker, tmp_path / "mnt", env, *options) as mnt:
        files = dict(sorted(mounted_tracks(mnt).items()))
        cached = dict(list(files.items())[: len(files) // 2])
        for path in cached.values():
            verify(path, sources)

    proxy.set_down(True)
    mnt = tmp_path / "mnt"
    cleanup_mounts.append(mnt)
    start_mount(locker, mnt, env, *options)
    ready = mount_ready_seconds(cache)[-1]
    assert ready < OFFLINE_START_BOUND
    assert mounted_tracks(mnt).keys() == files.keys()
    started = time.monotonic()
    for path in cached.values():
        verify(mnt / path.relative_to(tmp_path / "mnt"), sources)
    cached_seconds = time.monotonic() - started
    failed = 0
    for path in list(files.values())[len(cached):]:
        try:
            (mnt / path.relative_to(tmp_path / "mnt")).read_bytes()
        except OSError as exc:
            assert exc.errno == errno.EIO
            failed += 1
    time.sleep(2.5)  # refreshes fail meanwhile
    new = write_track(tmp_path / "new" / "late.flac", "flac", seconds=1, seed=15,
                      tags={"artist": "Back Online", "album": "Reconnected", "title": "Hello Again", "track": 1})
    lockerfs("upload", str(new.path), locker, env=s3_server.env())  # straight to the server
    proxy.set_down(False)
    back = time.monotonic()
    assert wait_until(lambda: (mnt / "Back Online").exists(), timeout=10)
    appeared = time.monotonic() - back
    late = next((mnt / "Back Online").rglob("*.flac"))
    assert late.read_bytes() == new.path.read_bytes()
    log = log_of(cache)
    print(f"\n[offline boot] ready in {ready:.2f} s; {len(cached)} cached files read in {cached_seconds:.2f} s; "
          f"{failed} uncached reads failed; new track shown {appeared:.1f} s after the server came back; "
          f"log: {[line.split(': ', 1)[-1][:90] for line in log.splitlines() if 'offline' in line or 'back' in line]}")
    assert log.count("offline: ") == 1
    assert log.count("back online") == 1

    # The refresh that brought the new track rewrote the catalog copy: killed now
    # (no save at unmount), the mount still shows it offline.
    kill_mount(mnt)
    proxy.set_down(True)
    start_mount(locker, mnt, env, *options)
    assert (mnt / "Back Online").is_dir()


# --- 3. suspend and resume -------------------------------------------------------------------------

def test_after_a_suspend_the_first_read_does_not_wait_on_dead_connections(
        shared_locker, env, proxy: FaultProxy, tmp_path, cleanup_mounts) -> None:
    assert SUSPEND_SECONDS > IDLE_LIMIT
    locker, sources = shared_locker
    proxy.set_latency(RTT)
    mnt = tmp_path / "mnt"
    cleanup_mounts.append(mnt)
    start_mount(locker, mnt, env, "--cache-dir", str(tmp_path / "cache"))
    files = dict(sorted(mounted_tracks(mnt).items()))
    names = sorted({name.split("/")[0] for name in files})  # by artist: a scan warms what follows
    warm = {n: p for n, p in files.items() if n.split("/")[0] in names[len(names) // 2:]}
    cold = [p for n, p in files.items() if n.split("/")[0] not in warm and n.split("/")[0] in names[:1]]
    for path in warm.values():
        verify(path, sources)
    pid = mount_pids(mnt)[0]
    connections_before = proxy.connections

    os.kill(pid, signal.SIGSTOP)
    try:
        proxy.drop_silently()
        stopped_at = time.monotonic()
        # a command that asks every mount is not held by a stopped one
        asked = lockerfs("pinned", env=env, check=False, timeout=ADDRESS_WAIT + 30)
        assert time.monotonic() - stopped_at < ADDRESS_WAIT + 10 and str(mnt) not in asked.stdout
        time.sleep(max(0.0, SUSPEND_SECONDS - (time.monotonic() - stopped_at)))
    finally:
        os.kill(pid, signal.SIGCONT)
    first = timed_first_read(cold[0], sources)
    started = time.monotonic()
    for path in warm.values():
        verify(path, sources)
    warm_seconds = time.monotonic() - started
    print(f"\n[suspend {SUSPEND_SECONDS:.0f} s, RTT {RTT * 1000:.0f} ms] first uncached read after resume "
          f"{first * 1000:.0f} ms (bound {FIRST_READ_BOUND * 1000:.0f} ms); {len(warm)} cached files "
          f"re-read in {warm_seconds:.2f} s; connections {connections_before} before, {proxy.connections} after")
    assert first < FIRST_READ_BOUND
    assert proxy.connections > connections_before  # the read went on a new connection

    proxy.set_fault_rate(1.0, ["stall"])  # any request now hangs: cached reads must not make one
    for path in warm.values():
        with open(path, "rb") as stream:
            drop_page_cache(stream.fileno())  # so the mount itself answers
        started = time.monotonic()
        verify(path, sources)
        assert time.monotonic() - started < RTT, f"{path} waited on the network"


# --- 4. a changed network --------------------------------------------------------------------

@pytest.fixture
def named_endpoint(tmp_path, proxy: FaultProxy, env) -> Iterator[tuple[dict[str, str], Callable[[bool], None]]]:
    """The mount reaches the proxy through a name we resolve (nss_wrapper's hosts file),
    at an address of its own on the loopback; `move()` gives both a new address."""
    assert NSS_WRAPPER.exists(), f"{NSS_WRAPPER} is missing: run scripts/setup.sh (it installs libnss-wrapper)"
    hosts = tmp_path / "hosts"
    base = f"127.{77 + os.getpid() % 100}.{uuid.uuid4().int % 250}"
    added: list[str] = []

    def point_name_at(address: str) -> None:
        staged = tmp_path / "hosts.new"
        staged.write_text(f"{address} {ENDPOINT_NAME}\n")
        staged.replace(hosts)  # a new file: nss_wrapper reloads it at the next lookup

    def move(announce: bool) -> None:
        """The server's address changes; with `announce`, this machine gains a new address too
        (joining another network), which the kernel announces to whoever listens."""
        address = f"{base}.{len(added) + 2}"
        if announce:
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
            added.append(address)
        point_name_at(address)
        proxy.move(address)

    point_name_at(f"{base}.1")
    proxy.move(f"{base}.1")
    named = {**env, "AWS_ENDPOINT_URL": f"http://{ENDPOINT_NAME}:{proxy.port}",
             "LD_PRELOAD": str(NSS_WRAPPER), "NSS_WRAPPER_HOSTS": str(hosts)}
    try:
        yield named, move
    finally:
        for address in added:
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)


def test_reads_in_flight_when_the_network_changes_fail_over_in_time(
        shared_locker, named_endpoint, proxy: FaultProxy, tmp_path, cleanup_mounts) -> None:
    locker, sources = shared_locker
    env, move = named_endpoint
    mnt = tmp_path / "mnt"
    cleanup_mounts.append(mnt)
    start_mount(locker, mnt, env, "--cache-dir", str(tmp_path / "cache"))
    files = sorted(mounted_tracks(mnt).values(), key=lambda p: -p.stat().st_size)
    verify(files[-1], sources)  # the pool holds connections to the old address

    proxy.set_latency(1.0)  # long enough that the requests below are in flight at the change
    seen_before = len(proxy.records())
    readers = files[:4]
    slowest: dict[Path, float] = {}
    errors: list[str] = []

    def read(path: Path) -> None:
        data = bytearray()
        try:
            with open(path, "rb") as stream:
                while True:
                    started = time.monotonic()
                    piece = stream.read(128 * 1024)
                    slowest[path] = max(slowest.get(path, 0.0), time.monotonic() - started)
                    if not piece:
                        break
                    data += piece
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            return
        if hashlib.sha256(data).hexdigest() not in sources:
            errors.append(f"{path}: wrong bytes")

    threads = [threading.Thread(target=read, args=(path,)) for path in readers]
    for thread in threads:
        thread.start()
    def objects_asked() -> set[str]:
        return {r.path for r in proxy.records()[seen_before:] if r.method == "GET" and "/objects/" in r.path}

    assert wait_until(lambda: len(objects_asked()) >= len(readers), timeout=10)
    move(announce=False)
    proxy.set_latency(RTT)
    for thread in threads:
        thread.join(60)
    print(f"\n[network change, reads in flight] slowest read() of each file: "
          f"{', '.join(f'{s:.2f}' for s in slowest.values())} s (deadline {READ_DEADLINE:.0f} s)")
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert not errors, errors
    assert max(slowest.values()) < READ_DEADLINE * 1.25
    assert mounted_tracks(mnt)


def test_after_a_network_change_the_first_read_goes_to_the_new_address(
        shared_locker, named_endpoint, proxy: FaultProxy, tmp_path, cleanup_mounts) -> None:
    locker, sources = shared_locker
    env, move = named_endpoint
    proxy.set_latency(RTT)
    mnt = tmp_path / "mnt"
    cleanup_mounts.append(mnt)
    start_mount(locker, mnt, env, "--cache-dir", str(tmp_path / "cache"))
    files = dict(sorted(mounted_tracks(mnt).items()))
    names = sorted({name.split("/")[0] for name in files})
    for name, path in files.items():
        if name.split("/")[0] in names[len(names) // 2:]:
            verify(path, sources)
    cold = next(p for n, p in files.items() if n.split("/")[0] == names[0])
    time.sleep(1.0)  # prefetch done; the pool holds idle connections to the old address

    move(announce=True)
    first = timed_first_read(cold, sources)
    print(f"\n[network change, RTT {RTT * 1000:.0f} ms] first uncached read after it {first * 1000:.0f} ms "
          f"(bound {FIRST_READ_BOUND * 1000:.0f} ms)")
    assert first < FIRST_READ_BOUND
    assert verify(cold, sources)


# --- 5. systemd --------------------------------------------------------------------------------

def test_a_foreground_mount_tells_systemd_it_is_ready(shared_locker, env, tmp_path, cleanup_mounts) -> None:
    """What contrib/systemd/lockerfs@.service (Type=notify) relies on."""
    locker, _ = shared_locker
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup_mounts.append(mnt)
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(60)
        process = subprocess.Popen([LOCKERFS, "mount", "--foreground", "--cache-dir", str(tmp_path / "cache"),
                                    locker, str(mnt)], env={**env, "NOTIFY_SOCKET": address},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert listener.recv(4096) == b"READY=1"
            assert mountpoints.state(mnt)[0] is mountpoints.State.LIVE
        finally:
            process.terminate()  # SIGTERM, as systemd stops a unit: a clean unmount
            assert process.wait(30) == 0
    assert mountpoints.state(mnt)[0] is mountpoints.State.NOT_MOUNTED
