"""Issue #5, upload half: faults and bad input lose nothing, record nothing wrong, hang nothing.

Every test runs the real `lockerfs` command against `rclone serve s3` through a
FaultProxy, checks what the server holds directly (not through the proxy), and
prints its figures (faults injected by kind, kills survived, objects verified)
for the issue's closing note; `pytest -s` shows them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lockerfs.catalog import FORMAT_VERSION
from tests.integration.test_upload import assert_consistent, catalog_records, sha256_file
from tests.support.faultproxy import ALL_KINDS, FaultProxy
from tests.support.mounting import LOCKERFS, lockerfs, wait_until
from tests.support.s3server import S3Server

from synth_library import write_track

STALL_SECONDS = 1.0  # far below lockerfs's read timeouts: a stall costs one retry, not a minute


def prefix_of(locker: str) -> str:
    return locker.split("/", 3)[3]


def verify_objects(server: S3Server, bucket: str, locker: str) -> int:
    """Read every audio object straight from the server; each must hash to its key. Returns the count."""
    client = server.client()
    prefix = f"{prefix_of(locker)}/objects/sha256/"
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            sha = item["Key"].rsplit("/", 1)[1].split(".", 1)[0]
            assert hashlib.sha256(body).hexdigest() == sha, f"{item['Key']} holds other bytes"
            count += 1
    return count


def check_complete(locker: str, env: dict[str, str], server: S3Server, bucket: str,
                   files: list[Path]) -> int:
    """Every file recorded once, every record's object right, every object right; objects verified."""
    records = assert_consistent(locker, env, server, bucket)
    assert {r["sha256"] for r in records} == {sha256_file(p) for p in files}
    return verify_objects(server, bucket, locker)


def report(test: str, **figures: object) -> None:
    print(f"\n[faults-upload] {test}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def small_tracks(folder: Path, count: int, seed: int, seconds: float = 1.0) -> list[Path]:
    return [write_track(folder / f"{seed:03d}-{n:02d}.flac", "flac", seconds=seconds, noise=True,
                        seed=seed * 1000 + n,
                        tags={"artist": f"Artist {seed}", "album": f"Album {seed}", "title": f"T{n}",
                              "track": n + 1}).path
            for n in range(count)]


# --- 1. a flaky network --------------------------------------------------------------------


def test_upload_survives_20_percent_faults(library, locker, env, proxy: FaultProxy, s3_server, bucket) -> None:
    root, tracks = library
    proxy.stall_seconds = STALL_SECONDS
    proxy.set_fault_rate(0.2, ALL_KINDS)
    started = time.monotonic()
    result = lockerfs("upload", "--jobs", "4", str(root), locker, env=env, timeout=300)
    seconds = time.monotonic() - started
    faults, requests = proxy.stats, proxy.count()
    proxy.set_fault_rate(0.0)
    assert f"uploaded {len(tracks)} " in result.stdout, result.stdout
    verified = check_complete(locker, env, s3_server, bucket, [t.path for t in tracks])
    assert verified >= len(tracks)  # every object hashes to its name: tracks, and covers taken from their art
    assert sum(faults.values()) > 0
    report("20% faults", requests=requests, faults=faults, objects_verified=verified,
           upload_seconds=round(seconds, 1))


class CorruptingProxy(FaultProxy):
    """A FaultProxy that can also damage PUTs to objects/ the ways no status code shows:

    `flip` PUT bodies get their first byte inverted on the way to the server
    (the network changed the data); `lie` PUT replies get an ETag naming other
    bytes (a server that kept something other than what it was sent).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.flip = 0
        self.lie = 0
        self.flipped = 0
        self.lied = 0

    @staticmethod
    def _is_object_put(record) -> bool:  # type: ignore[no-untyped-def]
        return record.method == "PUT" and "/objects/" in record.path

    def _request_body(self, client, request, record):  # type: ignore[no-untyped-def]
        pieces = super()._request_body(client, request, record)
        damage = False
        if self._is_object_put(record):
            with self._lock:
                if self.flip > 0:
                    self.flip -= 1
                    self.flipped += 1
                    damage = True
        for piece in pieces:
            if damage and piece:
                piece, damage = bytes([piece[0] ^ 0xFF]) + piece[1:], False
            yield piece

    def _send(self, client, data, record) -> None:  # type: ignore[no-untyped-def]
        if self._is_object_put(record) and data.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in data:
            with self._lock:
                lie = self.lie > 0
                if lie:
                    self.lie -= 1
                    self.lied += 1
            if lie:
                head, sep, rest = data.partition(b"\r\n\r\n")
                lines = [b'ETag: "00000000000000000000000000000000"' if line.lower().startswith(b"etag:")
                         else line for line in head.split(b"\r\n")]
                data = b"\r\n".join(lines) + sep + rest
        super()._send(client, data, record)


@pytest.fixture
def corrupting(s3_server: S3Server, env: dict[str, str]):  # type: ignore[no-untyped-def]
    with CorruptingProxy(s3_server.port, stall_seconds=STALL_SECONDS) as bad:
        yield bad, dict(env, AWS_ENDPOINT_URL=bad.endpoint)


def test_damaged_puts_are_detected_and_sent_again(tmp_path, locker, corrupting, s3_server, bucket) -> None:
    bad, env = corrupting
    files = small_tracks(tmp_path / "lib", 4, seed=1)
    bad.flip, bad.lie = 1, 1  # the first object PUT arrives damaged, the second is "stored" wrong
    result = lockerfs("upload", "--jobs", "1", str(tmp_path / "lib"), locker, env=env)
    assert (bad.flipped, bad.lied) == (1, 1)
    assert "uploaded 4 " in result.stdout
    assert bad.count("PUT", "/objects/") == 6, "each damaged PUT is sent once more"
    verified = check_complete(locker, env, s3_server, bucket, files)
    report("damaged PUTs", flipped=bad.flipped, lied=bad.lied, objects_verified=verified)


def test_damage_that_persists_fails_and_is_never_recorded(tmp_path, locker, corrupting, s3_server, bucket) -> None:
    bad, env = corrupting
    files = small_tracks(tmp_path / "lib", 3, seed=2)
    bad.flip = 1000
    flipped = lockerfs("upload", str(tmp_path / "lib"), locker, env=env, check=False)
    assert flipped.returncode == 1, flipped.stdout + flipped.stderr
    assert "failed 3" in flipped.stdout and "received other bytes" in flipped.stdout
    assert catalog_records(locker, env) == []
    bad.flip, bad.lie = 0, 1000
    lied = lockerfs("upload", str(tmp_path / "lib"), locker, env=env, check=False)
    assert lied.returncode == 1 and "stored other bytes" in lied.stdout, lied.stdout
    assert catalog_records(locker, env) == []
    bad.lie = 0
    lockerfs("upload", str(tmp_path / "lib"), locker, env=env)
    verified = check_complete(locker, env, s3_server, bucket, files)
    report("persistent damage", flipped=bad.flipped, lied=bad.lied, objects_verified=verified)


def test_wrong_object_already_in_the_bucket_is_not_trusted(tmp_path, locker, env, s3_server, bucket) -> None:
    """An object of the right size but other bytes (a broken earlier upload) is replaced, not matched."""
    files = small_tracks(tmp_path / "lib", 2, seed=3)
    data = files[0].read_bytes()
    sha = sha256_file(files[0])
    key = f"{prefix_of(locker)}/objects/sha256/{sha[:2]}/{sha}.flac"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=bytes(len(data)))
    result = lockerfs("upload", str(tmp_path / "lib"), locker, env=env)
    assert "uploaded 2 " in result.stdout, result.stdout
    verified = check_complete(locker, env, s3_server, bucket, files)
    report("planted wrong object", objects_verified=verified)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_each_fault_on_an_object_put_is_retried(kind, tmp_path, locker, env, proxy: FaultProxy,
                                                 s3_server, bucket) -> None:
    """reset_mid_body and short_body on a PUT: the PUT was applied, its reply lost; sent again, harmlessly."""
    files = small_tracks(tmp_path / "lib", 2, seed=4)
    proxy.stall_seconds = STALL_SECONDS
    proxy.fail_next(kind, 3, method="PUT", path_contains="/objects/")
    result = lockerfs("upload", "--jobs", "1", str(tmp_path / "lib"), locker, env=env)
    assert "uploaded 2 " in result.stdout
    assert proxy.stats == {kind: 3}
    verified = check_complete(locker, env, s3_server, bucket, files)
    report(f"PUT fault {kind}", faults=proxy.stats, objects_verified=verified)


# --- 2. the server is down -------------------------------------------------------------------


def test_server_down_fails_fast_with_one_sentence(library, locker, env, proxy: FaultProxy, s3_server, bucket) -> None:
    root, tracks = library
    proxy.set_down(True)
    started = time.monotonic()
    down = lockerfs("upload", str(root), locker, env=env, check=False, timeout=120)
    seconds = time.monotonic() - started
    assert down.returncode == 1
    assert seconds < 60
    assert "Traceback" not in down.stderr
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to the S3 endpoint" in lines[0], down.stderr
    proxy.set_down(False)
    lockerfs("upload", str(root), locker, env=env)
    verified = check_complete(locker, env, s3_server, bucket, [t.path for t in tracks])
    report("server down", failed_in_seconds=round(seconds, 1), message=lines[0], objects_verified=verified)


def test_server_gone_mid_run_stops_and_rerun_finishes(tmp_path, locker, env, proxy: FaultProxy,
                                                      s3_server, bucket) -> None:
    files = small_tracks(tmp_path / "lib", 30, seed=6, seconds=2.0)
    run = subprocess.Popen([LOCKERFS, "upload", "--jobs", "2", str(tmp_path / "lib"), locker], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: proxy.count("PUT", "/objects/") >= 3, timeout=60, interval=0.01)
        proxy.set_down(True)
        started = time.monotonic()
        out, err = run.communicate(timeout=180)
        seconds = time.monotonic() - started
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 1, out + err
    assert "Traceback" not in err
    assert "stopped early" in err and "run the same command again" in err, err
    proxy.set_down(False)
    lockerfs("upload", str(tmp_path / "lib"), locker, env=env)
    verified = check_complete(locker, env, s3_server, bucket, files)
    report("server gone mid-run", stopped_in_seconds=round(seconds, 1), objects_verified=verified)


# --- 3. killed anywhere ---------------------------------------------------------------------------


def test_killed_at_ten_points_then_complete(tmp_path, s3_server, bucket, env, proxy: FaultProxy) -> None:
    rng = random.Random(5)
    files = small_tracks(tmp_path / "lib", 16, seed=7, seconds=1.5)
    kills = chains = attempts = 0
    verified = 0
    points: list[str] = []
    plan: list[str] = []  # every kind of kill point, in a seeded order
    locker = f"s3://{bucket}/chain{chains}"
    while kills < 10:
        attempts += 1
        assert attempts < 40, f"only {kills} kills landed in {attempts} runs"
        base_objects, base_journal = proxy.count("PUT", "/objects/"), proxy.count("PUT", "/catalog/journal/")
        base_marker = proxy.count(None, "locker.json")
        if not plan:
            plan = ["objects"] * 4 + ["journal"] * 2 + ["marker"] * 2 + ["delay"] * 2
            rng.shuffle(plan)
        point = plan.pop()
        target = rng.randint(0, 8)
        conditions = {
            "objects": lambda: proxy.count("PUT", "/objects/") >= base_objects + target,
            "journal": lambda: proxy.count("PUT", "/catalog/journal/") > base_journal,
            "marker": lambda: proxy.count(None, "locker.json") > base_marker,
        }
        run = subprocess.Popen([LOCKERFS, "upload", "--jobs", str(rng.choice([1, 2])),
                                str(tmp_path / "lib"), locker], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if point == "delay":
                time.sleep(rng.uniform(0.2, 1.2))
            else:
                wait_until(lambda: run.poll() is not None or conditions[point](), timeout=60, interval=0.002)
            landed = run.poll() is None
            run.send_signal(signal.SIGKILL)
        finally:
            run.wait()
        records = _records_after_kill(locker, env, s3_server, bucket)
        assert {r["sha256"] for r in records} <= {sha256_file(p) for p in files}
        name = f"{point}{target if point == 'objects' else ''}"
        if landed:
            kills += 1
        points.append(name if landed else f"({name}: finished first)")
        if len(records) == len(files) or not landed:
            # this locker is complete: a final run must change nothing, then start another chain
            lockerfs("upload", str(tmp_path / "lib"), locker, env=env)
            verified += check_complete(locker, env, s3_server, bucket, files)
            chains += 1
            locker = f"s3://{bucket}/chain{chains}"
    lockerfs("upload", str(tmp_path / "lib"), locker, env=env)
    verified += check_complete(locker, env, s3_server, bucket, files)
    report("SIGKILL", kills_survived=kills, runs=attempts, chains=chains + 1, points=points,
           objects_verified=verified)


def _records_after_kill(locker: str, env: dict[str, str], server: S3Server, bucket: str) -> list[dict]:
    """The catalog, consistent; a run killed before it wrote locker.json has written nothing else."""
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix_of(locker)}/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    if not any(key.endswith("/locker.json") for key in keys):
        assert keys == [], f"written before locker.json: {keys}"
        return []
    return assert_consistent(locker, env, server, bucket)


# --- 4. concurrent writers ---------------------------------------------------------------------------


def test_two_uploads_and_a_compact_at_once_lose_nothing(tmp_path, locker, env, s3_server, bucket) -> None:
    expected = small_tracks(tmp_path / "first", 1, seed=99)
    lockerfs("upload", str(tmp_path / "first"), locker, env=env)  # compact needs a locker to exist
    compactions = 0
    for round_number in range(3):
        one = small_tracks(tmp_path / f"r{round_number}a", 5, seed=100 + round_number)
        two = small_tracks(tmp_path / f"r{round_number}b", 5, seed=200 + round_number)
        shared = tmp_path / f"r{round_number}b" / "shared.flac"
        shared.write_bytes(one[0].read_bytes())  # the same track from both writers at once
        expected += one + two
        runs = [subprocess.Popen([LOCKERFS, *args], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
                for args in (["upload", str(one[0].parent), locker],
                             ["upload", str(two[0].parent), locker],
                             ["compact", "--grace", "0", locker])]
        try:
            outputs = [run.communicate(timeout=120)[0] for run in runs]
        finally:
            for run in runs:
                if run.poll() is None:
                    run.kill()
                    run.wait()
        for run, output in zip(runs, outputs):
            assert run.returncode == 0, output
        compactions += 1
        records = assert_consistent(locker, env, s3_server, bucket)
        assert {r["sha256"] for r in records} == {sha256_file(p) for p in expected}
    verified = check_complete(locker, env, s3_server, bucket, expected)
    report("concurrent writers", rounds=3, compactions=compactions, objects_verified=verified)


# --- 5. a locker from the future ------------------------------------------------------------------


NEWER = FORMAT_VERSION + 1  # a format this lockerfs does not know


def _assert_refused(locker: str, env: dict[str, str], proxy: FaultProxy, library_root: Path) -> None:
    listing = lockerfs("ls", locker, env=env, check=False)
    assert listing.returncode == 1
    assert f"version {NEWER}" in listing.stderr and "upgrade" in listing.stderr, listing.stderr
    assert "Traceback" not in listing.stderr
    proxy.reset_counts()
    upload = lockerfs("upload", str(library_root), locker, env=env, check=False)
    assert upload.returncode == 1
    assert f"version {NEWER}" in upload.stderr and "upgrade" in upload.stderr, upload.stderr
    writes = [r for r in proxy.records() if r.method not in ("GET", "HEAD")]
    assert writes == [], f"an upload wrote into a newer locker: {writes}"


def test_newer_locker_marker_is_refused(library, locker, env, proxy: FaultProxy, s3_server, bucket) -> None:
    client = s3_server.client()
    marker = {"format": "lockerfs", "version": NEWER}
    client.put_object(Bucket=bucket, Key=f"{prefix_of(locker)}/locker.json", Body=json.dumps(marker).encode())
    _assert_refused(locker, env, proxy, library[0])
    report("newer locker.json", writes=0)


def test_newer_journal_file_is_refused(library, locker, env, proxy: FaultProxy, s3_server, bucket) -> None:
    client = s3_server.client()
    prefix = prefix_of(locker)
    client.put_object(Bucket=bucket, Key=f"{prefix}/locker.json",
                      Body=json.dumps({"format": "lockerfs", "version": 1}).encode())
    file_id = f"{int(time.time() * 1000):013d}-0123456789abcdef"
    journal = {"kind": "journal", "version": NEWER, "id": file_id, "records": [{"op": "add2", "track": {}}]}
    client.put_object(Bucket=bucket, Key=f"{prefix}/catalog/journal/{file_id}.json",
                      Body=json.dumps(journal).encode())
    _assert_refused(locker, env, proxy, library[0])
    report("newer journal file", writes=0)


# --- 6. odd local files ------------------------------------------------------------------------------


def test_odd_local_files_are_skipped_with_reasons(tmp_path, locker, env, proxy: FaultProxy,
                                                   s3_server, bucket) -> None:
    lib = tmp_path / "lib"
    good = small_tracks(lib, 2, seed=8)
    vanishing = small_tracks(lib / "later", 1, seed=9)[0]
    in_folder = small_tracks(lib / "folder.mp3", 1, seed=10)[0]  # a folder named like a track
    (lib / "empty.mp3").write_bytes(b"")
    (lib / "notes.flac").write_text("these are not the droids you are looking for\n" * 50)
    os.mkfifo(lib / "pipe.mp3")  # opening it would block forever
    (lib / "dangling.mp3").symlink_to(lib / "nowhere.mp3")
    # The file vanishes after the scan, while the run waits on the locker marker (stalled once).
    proxy.stall_seconds = 2.0
    proxy.fail_next("stall", method="GET", path_contains="locker.json")
    run = subprocess.Popen([LOCKERFS, "upload", str(lib), locker], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: proxy.count("GET", "locker.json") >= 1, timeout=30, interval=0.01)
        vanishing.unlink()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out + err
    assert "uploaded 3 " in out and "skipped 5" in out and "failed 0" in out, out
    for name, reason in (("empty.mp3", "empty file"), ("notes.flac", "not"),
                         ("pipe.mp3", "not a regular file (a FIFO)"),
                         ("dangling.mp3", "broken symbolic link"),
                         ("later/009-00.flac", "vanished before it was read")):
        assert f"  {name}: {reason}" in out, (name, out)
    verified = check_complete(locker, env, s3_server, bucket, good + [in_folder])
    report("odd local files", skipped=5, objects_verified=verified, faults=proxy.stats)


UNREADABLE = Path("/sys/bus/pci/rescan")  # write-only: opening it to read fails even for root


@pytest.mark.skipif(not UNREADABLE.exists(), reason="no write-only sysfs file here")
def test_unreadable_file_fails_the_run_and_the_rest_is_uploaded(tmp_path, locker, env, s3_server, bucket) -> None:
    try:
        UNREADABLE.open("rb").close()
        pytest.skip(f"{UNREADABLE} is readable here")
    except PermissionError:
        pass
    lib = tmp_path / "lib"
    good = small_tracks(lib, 2, seed=11)
    (lib / "locked.mp3").symlink_to(UNREADABLE)
    result = lockerfs("upload", str(lib), locker, env=env, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "uploaded 2 " in result.stdout and "failed 1" in result.stdout
    assert "  locked.mp3: cannot read it (Permission denied)" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr
    verified = check_complete(locker, env, s3_server, bucket, good)
    report("unreadable file", failed=1, objects_verified=verified)
