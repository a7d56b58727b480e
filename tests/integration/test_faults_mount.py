"""The mount under faults: flaky, down and stalling servers, a damaged or full disk cache.

Nothing lost (every path reads as its own source), nothing wrong (a read that
cannot succeed is EIO, never other bytes), nothing hangs (EIO within the read
deadline and a fraction of it), and the mount process survives all of it. Counts go to stdout
(`pytest -s`) for the issue's closing note.

LOCKERFS_SOAK_SECONDS sets the soak's length (CI: 30; scripts/soak: 120).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.bounds import EIO_WITHIN
from tests.support.faultproxy import ALL_KINDS, FaultProxy
from tests.support.library import Source, expected_paths, load_manifest, mounted_tracks
from tests.support.mounting import lockerfs, mount_pids, mounted, readable, wait_until
from tests.support.s3server import S3Server

from synth_library import SynthTrack, write_manifest, write_track

BLOCK = 64 * 1024  # the mount's default block size
FAILED_READS_LIMIT = 0.05  # of all reads under 20 % faults: retries absorb nearly every fault
SOAK_SECONDS = float(os.environ.get("LOCKERFS_SOAK_SECONDS", "30"))
SOAK_THREADS = 8
RSS_GROWTH_LIMIT = 40 * 1024 * 1024  # measured +13 MiB in 40 s, +17 MiB in 90 s; the cycles lockerfs.dropped breaks gave +58 MiB in 30 s


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, library) -> tuple[Path, list[SynthTrack]]:
    """The small library plus a few noisy (incompressible) FLACs of a couple of MB each,
    so that reads span many blocks and outgrow a small memory cache."""
    root = tmp_path_factory.mktemp("corpus")
    lib_root, lib_tracks = library
    tracks = []
    for track in lib_tracks:
        target = root / "lib" / track.path.relative_to(lib_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(track.path.read_bytes())
        tracks.append(SynthTrack(path=target, format=track.format, codec=track.codec, tags=track.tags))
    for n in range(1, 5):
        tracks.append(write_track(root / "noise" / f"{n}.flac", "flac", seconds=8 + n, seed=100 + n, noise=True,
                                  tags={"artist": "White Noise", "album": "Static", "title": f"Hiss {n}",
                                        "track": n}))
    write_manifest(root, tracks)
    return root, tracks


@pytest.fixture(scope="module")
def corpus_layout(corpus) -> dict[str, Source]:
    """Mount path -> the source it must serve."""
    return expected_paths(load_manifest(corpus[0]))


def expected_bytes(layout: dict[str, Source]) -> dict[str, bytes]:
    """Mount path -> the bytes it must read as."""
    return {name: source.path.read_bytes() for name, source in layout.items()}


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A proxy whose stalls are short (a stall still costs botocore a timeout or a retry)."""
    with FaultProxy(s3_server.port, seed=20, stall_seconds=1.5) as proxy:
        yield proxy


@pytest.fixture
def stalling_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A proxy whose stalls outlast every timeout of the mount: a server that hangs."""
    with FaultProxy(s3_server.port, seed=21, stall_seconds=60) as proxy:
        yield proxy


def through(env: dict[str, str], proxy: FaultProxy) -> dict[str, str]:
    return {**env, "AWS_ENDPOINT_URL": proxy.endpoint}


@pytest.fixture(scope="module")
def locker(s3_server: S3Server) -> str:
    """One locker for the module: its tests mount and read it through their proxies and change
    nothing in it (the one that adds a track has a locker of its own: own_corpus_locker)."""
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    return f"s3://{bucket}/music"


@pytest.fixture(scope="module")
def uploaded_corpus(corpus, locker, s3_server: S3Server,
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SynthTrack]]:
    """The corpus in the module's locker, uploaded once, straight to the server."""
    root, tracks = corpus
    env, home = s3_server.env(), tmp_path_factory.mktemp("faults-upload")
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        (home / name.lower()).mkdir(mode=0o700)
        env[name] = str(home / name.lower())
    lockerfs("upload", str(root), locker, env=env)
    return root, tracks


@pytest.fixture
def own_corpus_locker(corpus, bucket: str, env: dict[str, str]) -> str:
    """The corpus in a locker of the test's own, for a test that adds to it."""
    locker = f"s3://{bucket}/music"
    lockerfs("upload", str(corpus[0]), locker, env=env)
    return locker


def mount_process(mnt: Path) -> psutil.Process:
    pids = mount_pids(mnt)
    assert len(pids) == 1, pids
    return psutil.Process(pids[0])


def assert_alive(mnt: Path, process: psutil.Process) -> None:
    assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE, "the mount process died"
    assert os.path.ismount(mnt)
    os.listdir(mnt)


def read_all_verified(files: dict[str, Path], expected: dict[str, bytes], attempts: int = 5) -> Counter[str]:
    """Every file vs its own source; an EIO is retried (as a player would), wrong bytes never."""
    counts: Counter[str] = Counter()
    for name, path in files.items():
        for attempt in range(attempts):
            try:
                data = path.read_bytes()
            except OSError as exc:
                assert exc.errno == errno.EIO, (name, exc)
                counts["eio"] += 1
                time.sleep(0.5)  # a player retries after a moment, not in a tight loop
                continue
            assert data == expected[name], f"{name}: wrong bytes"
            counts["files"] += 1
            counts["bytes"] += len(data)
            break
        else:
            pytest.fail(f"{name}: EIO {attempts} times in a row")
    return counts


def timed_eio(path: Path) -> float:
    """Read an uncached file; assert EIO and return how long it took."""
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        path.read_bytes()
    elapsed = time.monotonic() - started
    assert failure.value.errno == errno.EIO, failure.value
    return elapsed


def drop_page_cache(fd: int) -> None:
    """Make the kernel ask the mount again (keep_cache would otherwise serve re-reads)."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def log_of(cache_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(cache_dir.glob("mount.log*")))


# --- 1. a flaky server --------------------------------------------------------------------------

def test_twenty_percent_faults_every_byte_correct(uploaded_corpus, corpus_layout, locker, env, tmp_path,
                                                  fault_proxy: FaultProxy) -> None:
    expected = expected_bytes(corpus_layout)
    cache = tmp_path / "cache"
    with mounted(locker, tmp_path / "mnt", through(env, fault_proxy), "--cache-dir", str(cache),
                 "--refresh", "2") as mnt:
        process = mount_process(mnt)
        files = mounted_tracks(mnt)
        fault_proxy.set_fault_rate(0.2, ALL_KINDS)
        assert sorted(files) == sorted(expected)
        counts = read_all_verified(files, expected)
        time.sleep(2.5)  # a catalog refresh under faults, too
        assert_alive(mnt, process)
        assert all(path.read_bytes() == expected[name] for name, path in files.items())
        stats = fault_proxy.stats
    print(f"\n[faults 20%] files verified {counts['files']} ({counts['bytes']} bytes), EIO retried "
          f"{counts['eio']}, requests {len(fault_proxy.records())}, faults by kind {dict(sorted(stats.items()))}")
    assert set(stats) == set(ALL_KINDS), stats  # every kind was met, and survived


@pytest.mark.parametrize("how", ["all kinds at 100%", "proxy down"])
def test_a_read_that_cannot_succeed_is_eio_in_bounded_time(uploaded_corpus, corpus_layout, locker, env, tmp_path,
                                                           fault_proxy: FaultProxy, how: str) -> None:
    expected = expected_bytes(corpus_layout)
    with mounted(locker, tmp_path / "mnt", through(env, fault_proxy), "--cache-dir", str(tmp_path / "cache")) as mnt:
        process = mount_process(mnt)
        names = sorted(mounted_tracks(mnt))[:3]
        files = [mnt / name for name in names]
        if how == "proxy down":
            fault_proxy.set_down(True)
        else:
            fault_proxy.set_fault_rate(1.0, ALL_KINDS)
        elapsed = [timed_eio(path) for path in files[:3]]
        print(f"\n[{how}] EIO after {', '.join(f'{t:.2f}' for t in elapsed)} s; faults {fault_proxy.stats}")
        assert max(elapsed) < EIO_WITHIN
        assert_alive(mnt, process)
        fault_proxy.set_down(False)
        fault_proxy.set_fault_rate(0.0)
        assert wait_until(lambda: readable(files[0]), timeout=30)
        assert read_all_verified({name: mnt / name for name in names}, expected)["files"] == 3


def test_soak_memory_bounded_and_bytes_correct_under_faults(uploaded_corpus, corpus_layout, locker, env, tmp_path,
                                                            fault_proxy: FaultProxy) -> None:
    """8 readers of random ranges of random files, 20% faults: no wrong byte, no leak, no death."""
    expected = expected_bytes(corpus_layout)
    # Caches far smaller than the corpus, so the soak keeps going to the (faulty) store.
    options = ["--cache-dir", str(tmp_path / "cache"), "--cache-size", "4M", "--memory-cache", "4M",
               "--refresh", "5"]
    with mounted(locker, tmp_path / "mnt", through(env, fault_proxy), *options) as mnt:
        process = mount_process(mnt)
        files = [(mnt / name, data) for name, data in expected.items()]
        fault_proxy.set_fault_rate(0.2, ALL_KINDS)
        counts: Counter[str] = Counter()
        lock = threading.Lock()
        errors: list[str] = []

        def soak(seconds: float, seed: int) -> None:
            rng = random.Random(seed)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not errors:
                path, expected = rng.choice(files)
                offset = rng.randrange(len(expected))
                length = rng.choice([1, 4096, 65536, 200_000, 1 << 20])
                try:
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        drop_page_cache(fd)
                        started = time.monotonic()
                        data = os.pread(fd, length, offset)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    with lock:
                        counts["eio" if exc.errno == errno.EIO else f"errno {exc.errno}"] += 1
                        if exc.errno != errno.EIO:
                            errors.append(f"{path}: {exc}")
                        elif time.monotonic() - started > EIO_WITHIN:
                            errors.append(f"{path}: EIO after {time.monotonic() - started:.1f} s")
                    continue
                with lock:
                    wanted = expected[offset:offset + length]
                    if data != wanted[:len(data)]:
                        errors.append(f"{path} at {offset}+{length}: wrong bytes")
                    elif not data:
                        # EOF before the end: a player would take the track to be over
                        errors.append(f"{path} at {offset}+{length}: empty read, {len(wanted)} bytes expected")
                    elif len(data) < len(wanted):
                        # A page after the first failed: the kernel returns what it read
                        # (a short read, as POSIX allows) rather than EIO. Correct bytes,
                        # but a failure all the same: counted with the EIOs below.
                        counts["short reads"] += 1
                    counts["reads"] += 1
                    counts["bytes"] += len(data)

        def run(seconds: float) -> None:
            threads = [threading.Thread(target=soak, args=(seconds, n)) for n in range(SOAK_THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(seconds + 60)
            assert not any(t.is_alive() for t in threads), "a reader hung"

        run(min(10.0, SOAK_SECONDS / 3))  # warm-up: caches fill, pools and threads start
        rss_before = process.memory_info().rss
        counts.clear()
        run(SOAK_SECONDS)
        rss_after = process.memory_info().rss
        assert_alive(mnt, process)
        stats = fault_proxy.stats
    growth = rss_after - rss_before
    print(f"\n[soak {SOAK_SECONDS:g} s x {SOAK_THREADS} readers, 20% faults] reads verified {counts['reads']} (short {counts['short reads']}) "
          f"({counts['bytes'] / 1e6:.1f} MB), EIO {counts['eio']}, faults by kind {dict(sorted(stats.items()))}, "
          f"RSS before {rss_before / 2**20:.1f} MiB, after {rss_after / 2**20:.1f} MiB "
          f"(growth {growth / 2**20:+.1f} MiB)")
    assert not errors, errors[:10]
    assert counts["reads"] > 100
    failed = counts["eio"] + counts["short reads"]
    assert failed <= FAILED_READS_LIMIT * (counts["reads"] + counts["eio"]), counts
    assert growth < RSS_GROWTH_LIMIT


class ShortAnswerProxy(FaultProxy):
    """While `short` is set, a GET of an object is answered with the first half of what
    was asked only, under headers that agree (Content-Length, Content-Range): a server
    bug no HTTP client can see. The bytes it sends are right; there are too few."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.short = False
        self.shortened = 0
        self._allowance: dict[int, int] = {}  # id(record) -> body bytes still to send

    def _send(self, client, data: bytes, record) -> None:  # type: ignore[no-untyped-def]
        key = id(record)
        if key in self._allowance:
            data, self._allowance[key] = data[:self._allowance[key]], max(0, self._allowance[key] - len(data))
            if data:
                super()._send(client, data, record)
            return
        if (self.short and record.method == "GET" and "/objects/" in record.path
                and data.startswith(b"HTTP/1.1 20") and b"\r\n\r\n" in data):  # rclone answers a range with 200
            head, separator, rest = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
            if length >= 2:
                half = length // 2
                fixed = []
                for line in lines:
                    if line.lower().startswith(b"content-length:"):
                        line = b"Content-Length: %d" % half
                    elif line.lower().startswith(b"content-range:"):
                        first, total = re.match(rb".*bytes (\d+)-\d+/(\S+)", line).groups()  # type: ignore[union-attr]
                        line = b"Content-Range: bytes %d-%d/%s" % (int(first), int(first) + half - 1, total)
                    fixed.append(line)
                with self._lock:
                    self.shortened += 1
                self._allowance[key] = half - len(rest[:half])
                data = b"\r\n".join(fixed) + separator + rest[:half]
        super()._send(client, data, record)


def test_a_short_answer_from_the_store_is_an_error_never_served_or_cached(uploaded_corpus, corpus_layout, locker,
                                                                          env, tmp_path, s3_server) -> None:
    """Every read while the server answers short is EIO or the source's bytes, never fewer or
    other bytes; once it answers in full, every path reads as its source without a remount
    (nothing of the short answers was kept)."""
    expected = expected_bytes(corpus_layout)
    with ShortAnswerProxy(s3_server.port) as short:
        with mounted(locker, tmp_path / "mnt", through(env, short), "--cache-dir", str(tmp_path / "cache")) as mnt:
            process = mount_process(mnt)
            short.short = True
            outcomes: Counter[str] = Counter()
            for name, data in expected.items():
                try:
                    got = (mnt / name).read_bytes()
                except OSError as exc:
                    assert exc.errno == errno.EIO, (name, exc)
                    outcomes["eio"] += 1
                    continue
                assert got == data, f"{name}: {len(got)} bytes served where the source has {len(data)}"
                outcomes["whole"] += 1
            assert short.shortened > 0 and outcomes["eio"] > 0, (short.shortened, outcomes)
            short.short = False
            assert_alive(mnt, process)
            for name in expected:  # after FAILED_TTL, as a player retries
                assert wait_until(lambda: readable(mnt / name), timeout=10), name
            counts = read_all_verified(mounted_tracks(mnt), expected, attempts=1)
            assert counts["files"] == len(expected)
    print(f"\n[short answers] {short.shortened} GETs answered with half their range: {dict(outcomes)}; "
          f"then every file read back whole")


def test_wrong_bytes_of_the_right_length_are_dropped_once_the_object_is_whole(
        uploaded_corpus, corpus_layout, locker, env, tmp_path, fault_proxy) -> None:
    """docs/SECURITY.md's promise: what a GET sends is served as sent (the mount cannot tell
    a damaged body of the right length from a good one block by block), but once an object is
    whole in the cache it is hashed, and bytes that do not hash to its name are dropped and
    logged; the next read fetches them again and gets the object's own bytes."""
    expected = expected_bytes(corpus_layout)
    name = max((n for n in expected if n.startswith("White Noise/")), key=lambda n: len(expected[n]))
    # This track's object only: the mount may warm other objects meanwhile (covers, the tags
    # of the tracks after it), and a flip that lands on one of them proves nothing here.
    key = f"/{hashlib.sha256(expected[name]).hexdigest()}."
    cache = tmp_path / "cache"
    with mounted(locker, tmp_path / "mnt", through(env, fault_proxy), "--cache-dir", str(cache)) as mnt:
        fault_proxy.fail_next("flip_body", method="GET", path_contains=key)
        fault_proxy.reset_counts()
        first = (mnt / name).read_bytes()  # the first GET of the track comes back damaged
        assert len(first) == len(expected[name])
        assert wait_until(lambda: "do not hash to its name" in log_of(cache), timeout=10), log_of(cache)[-2000:]
        gets = fault_proxy.count("GET", key)
        assert (mnt / name).read_bytes() == expected[name]  # fetched again, whole and right
        # Either the reader got the damaged bytes as sent (the object was whole only after it
        # had read them), or the read-ahead made it whole first and the damaged blocks were
        # dropped before the reader came to them; then they were fetched again already.
        served_damaged = first != expected[name]
        if served_damaged:
            assert fault_proxy.count("GET", key) > gets
    print(f"\n[wrong bytes] {name}: damaged body detected once whole and dropped; "
          f"{'the first read had served it as sent' if served_damaged else 'dropped before the reader came to it'}")


# --- 2. a server that goes away ---------------------------------------------------------------

@pytest.mark.parametrize("how", ["down", "stalling"])
def test_server_gone_listing_and_cached_reads_work_then_recover(uploaded_corpus, corpus_layout, locker, env,
                                                                tmp_path, stalling_proxy: FaultProxy, how: str) -> None:
    expected = expected_bytes(corpus_layout)
    with mounted(locker, tmp_path / "mnt", through(env, stalling_proxy), "--cache-dir", str(tmp_path / "cache"),
                 "--refresh", "1") as mnt:
        process = mount_process(mnt)
        files = dict(sorted(mounted_tracks(mnt).items()))
        # By artist folder. Reading the cached ones looks like a scan, which warms the
        # tags of the folders after them in walk order (small files entirely), so the
        # uncached files are the ones that come first.
        artists = sorted({name.split("/")[0] for name in files})
        later = set(artists[len(artists) // 2:])
        cached = {name: path for name, path in files.items() if name.split("/")[0] in later}
        uncached = {name: path for name, path in files.items() if name.split("/")[0] not in later}
        read_all_verified(cached, expected)
        if how == "down":
            stalling_proxy.set_down(True)
        else:
            stalling_proxy.set_fault_rate(1.0, ["stall"])
        time.sleep(2.5)  # catalog refreshes fail (or hang in a worker) meanwhile
        assert mounted_tracks(mnt).keys() == files.keys()
        started = time.monotonic()
        assert read_all_verified(cached, expected, attempts=1)["files"] == len(cached)
        cached_seconds = time.monotonic() - started
        elapsed = [timed_eio(path) for path in list(uncached.values())[:2]]
        print(f"\n[server {how}] {len(cached)} cached files read in {cached_seconds:.2f} s; uncached EIO after "
              f"{', '.join(f'{t:.2f}' for t in elapsed)} s; faults {stalling_proxy.stats}")
        assert max(elapsed) < EIO_WITHIN
        assert_alive(mnt, process)
        stalling_proxy.set_down(False)
        stalling_proxy.set_fault_rate(0.0)
        recovered = time.monotonic()
        # Loads that met the stall end when botocore gives up on them (3 attempts x 4 s);
        # until then their blocks fail fast, as the EIO above did.
        for path in uncached.values():
            assert wait_until(lambda: readable(path), timeout=30), f"{path} not readable again without remount"
        print(f"[server {how}] every uncached file readable {time.monotonic() - recovered:.1f} s after recovery")
        assert read_all_verified(uncached, expected, attempts=1)["files"] == len(uncached)


# --- 3. the disk cache -----------------------------------------------------------------------------

def _block_files(cache: Path, sha: str) -> dict[int, Path]:
    return {int(p.name.rsplit("-", 1)[1]): p for p in (cache / "blocks" / sha[:2]).glob(f"{sha}-*")
            if not p.name.endswith(".tmp")}


def test_damaged_cache_blocks_are_fetched_again_never_served(uploaded_corpus, corpus_layout, locker, env, tmp_path,
                                                             proxy: FaultProxy) -> None:
    relative, big = max(corpus_layout.items(), key=lambda item: item[1].size)
    source = big.path.read_bytes()
    sha = big.sha256
    blocks = -(-len(source) // BLOCK)
    assert blocks >= 16, f"the biggest file has {blocks} blocks"
    cache = tmp_path / "cache"
    options = ["--cache-dir", str(cache)]
    with mounted(locker, tmp_path / "mnt", env, *options) as mnt:
        assert (mnt / relative).read_bytes() == source
    on_disk = _block_files(cache, sha)
    assert sorted(on_disk) == list(range(blocks)), "every block of a file read once is on disk"

    damage = {  # block index -> what is done to its file; no two adjacent, so one GET each
        2: "flip a data byte", 5: "bad magic", 8: "truncate the data", 11: "truncate the header",
        14: "empty", blocks - 1: "append a byte",
    }
    for index, how in damage.items():
        path = on_disk[index]
        raw = bytearray(path.read_bytes())
        if how == "flip a data byte":
            raw[-100] ^= 0x40
        elif how == "bad magic":
            raw[0:4] = b"XXXX"
        elif how == "truncate the data":
            del raw[len(raw) // 2:]
        elif how == "truncate the header":
            del raw[20:]
        elif how == "empty":
            raw.clear()
        else:
            raw += b"\0"
        path.write_bytes(bytes(raw))
    (cache / "mount.log").unlink(missing_ok=True)

    proxy.reset_counts()
    with mounted(locker, tmp_path / "mnt", env, *options) as mnt:
        assert (mnt / relative).read_bytes() == source
        proxy.wait_idle()
        gets = [r for r in proxy.records() if r.method == "GET" and sha in r.path]
        log = log_of(cache)
    print(f"\n[damaged cache] {len(damage)} of {blocks} blocks damaged, {len(gets)} GETs, "
          f"bodies {[r.response_bytes for r in gets]} bytes with headers")
    assert len(gets) == len(damage), [(r.path, r.response_bytes) for r in gets]
    for record in gets:  # one block each: the last one short, the others a full block (+ headers)
        assert min(len(source) % BLOCK or BLOCK, BLOCK) <= record.response_bytes < BLOCK + 2048, record
    assert sum(r.response_bytes for r in gets) < (len(damage) * (BLOCK + 2048))
    for index in damage:
        assert f"{sha}-{index}" in log, f"block {index} ({damage[index]}) not reported as corrupt"
    assert log.count("corrupt cache block") == len(damage)

    proxy.reset_counts()  # the damaged blocks were written again, correct this time
    with mounted(locker, tmp_path / "mnt", env, *options) as mnt:
        assert (mnt / relative).read_bytes() == source
    assert proxy.count("GET", sha) == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    """mount(size, path): a tiny tmpfs (we are root), unmounted afterwards whatever happens."""
    mounts: list[Path] = []

    def make(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(path)
        return path

    try:
        yield make
    finally:
        for path in reversed(mounts):
            if os.path.ismount(path):
                subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_block_disk_degrades_to_memory_with_a_warning(uploaded_corpus, corpus_layout, locker, env, tmp_path,
                                                           tmpfs) -> None:
    expected = expected_bytes(corpus_layout)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    tmpfs(cache / "blocks", "2m")  # the block store fills up; the log and catalog copy have room
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(cache), "--cache-size", "100M") as mnt:
        process = mount_process(mnt)
        files = mounted_tracks(mnt)
        assert sorted(files) == sorted(expected)
        counts = read_all_verified(files, expected, attempts=1)
        assert counts["files"] == len(expected) and counts["eio"] == 0
        assert read_all_verified(files, expected, attempts=1)["eio"] == 0
        assert_alive(mnt, process)
        log = log_of(cache)
    print(f"\n[full block disk] {counts['bytes']} bytes read onto a 2 MiB block store; "
          f"log: {[line for line in log.splitlines() if 'memory only' in line]}")
    assert counts["bytes"] > 4 * 2**20
    assert "No space left on device" in log and "caching in memory only" in log


def test_full_cache_disk_still_mounts_and_reads(own_corpus_locker, corpus_layout, env, tmp_path, tmpfs) -> None:
    """The whole cache dir on a disk with no room at all: no catalog copy, no log, no blocks; reads work."""
    locker = own_corpus_locker
    expected = expected_bytes(corpus_layout)
    cache = tmpfs(tmp_path / "cache", "1m")
    with open(cache / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(cache), "--refresh", "1") as mnt:
        process = mount_process(mnt)
        files = mounted_tracks(mnt)
        assert sorted(files) == sorted(expected)
        counts = read_all_verified(files, expected, attempts=1)
        lockerfs("upload", str(write_track(tmp_path / "late.flac", "flac", seconds=1, seed=7,
                                           tags={"artist": "Late", "album": "Full Disk", "title": "Fits"}).path),
                 locker, env=env)
        assert wait_until(lambda: (mnt / "Late" / "Full Disk").exists(), timeout=20)
        assert_alive(mnt, process)
    assert counts["files"] == len(expected) and counts["eio"] == 0


def test_cache_size_holds_under_heavy_reading(uploaded_corpus, corpus_layout, locker, env, tmp_path) -> None:
    expected = expected_bytes(corpus_layout)
    limit = 1 << 20
    cache = tmp_path / "cache"
    read = 0
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(cache), "--cache-size", "1M") as mnt:
        files = mounted_tracks(mnt)
        assert sorted(files) == sorted(expected)
        for _ in range(2):
            read += read_all_verified(files, expected, attempts=1)["bytes"]
            for path in files.values():  # and again past the kernel's page cache
                with open(path, "rb") as stream:
                    drop_page_cache(stream.fileno())
    # counted once unmounted: until then prefetch may still write and evict blocks
    block_files = [p for p in (cache / "blocks").rglob("*") if p.is_file()]
    apparent = sum(p.stat().st_size for p in block_files)
    used = sum(p.stat().st_blocks * 512 for p in block_files)
    print(f"\n[cache size 1 MiB] read {read / 2**20:.1f} MiB; blocks on disk {len(block_files)}, "
          f"{apparent} bytes ({used} allocated)")
    assert read > 8 * limit
    assert apparent <= limit
    assert used <= limit + 64 * 1024 + 4096 * len(block_files)


def test_two_mounts_cannot_share_a_cache_dir(uploaded_corpus, locker, env, tmp_path) -> None:
    cache = tmp_path / "cache"
    with mounted(locker, tmp_path / "mnt1", env, "--cache-dir", str(cache)) as first:
        (tmp_path / "mnt2").mkdir()
        second = lockerfs("mount", "--cache-dir", str(cache), locker, str(tmp_path / "mnt2"), env=env, check=False)
        assert second.returncode != 0
        assert f"the cache directory {cache} is in use by another lockerfs process" in second.stderr
        assert "Traceback" not in second.stderr and second.stderr.count("\n") == 1
        assert not os.path.ismount(tmp_path / "mnt2")
        assert mounted_tracks(first)  # the first mount is unharmed
