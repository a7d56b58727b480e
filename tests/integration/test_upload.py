"""`lockerfs upload` against a real S3 server: byte-exact, matched, concurrent, crash-safe."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lockerfs.upload import IN_FLIGHT_PER_JOB
from tests.support.faultproxy import FaultProxy
from tests.support.library import SIDE_SUFFIXES
from tests.support.mounting import LOCKERFS, lockerfs, wait_until
from tests.support.s3server import S3Server
from tests.support.synthesized import synthesized

from synth_library import write_track


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def catalog_records(locker: str, env: dict[str, str]) -> list[dict]:
    output = lockerfs("ls", "--json", locker, env=env).stdout
    return [json.loads(line) for line in output.splitlines()]


def assert_consistent(locker: str, env: dict[str, str], server: S3Server, bucket: str) -> list[dict]:
    """Every record's object exists and has the record's bytes; no track twice."""
    records = catalog_records(locker, env)
    client = server.client()
    prefix = locker.split("/", 3)[3]
    for record in records:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{record['key']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == record["sha256"]
        assert len(body) == record["size"]
    shas = [r["sha256"] for r in records]
    assert len(shas) == len(set(shas)), "a track appears twice"
    return records


def test_upload_stores_every_audio_file_byte_exact(library, locker, env, s3_server, bucket, tmp_path) -> None:
    shared, tracks = library
    root = tmp_path / "library"
    shutil.copytree(shared, root)  # the shared library is read-only: the note goes into a copy
    (root / "notes.txt").write_text("not music")
    result = lockerfs("upload", str(root), locker, env=env)
    assert f"uploaded {len(tracks)} " in result.stdout
    assert "1 not audio (.txt)" in result.stdout
    records = assert_consistent(locker, env, s3_server, bucket)
    assert {r["sha256"] for r in records} == {sha256_file(t.path) for t in tracks}


def audio_puts(proxy: FaultProxy) -> int:
    """PUTs of track objects (embedded covers are stored as objects of their own too)."""
    return sum(1 for r in proxy.records() if r.method == "PUT" and "/objects/" in r.path
               and Path(r.path).suffix not in SIDE_SUFFIXES)


def test_second_upload_sends_no_audio(library, locker, env, proxy: FaultProxy) -> None:
    root, tracks = library
    lockerfs("upload", str(root), locker, env=env)
    assert audio_puts(proxy) == len(tracks)
    proxy.reset_counts()
    again = lockerfs("upload", str(root), locker, env=env)
    assert f"unchanged {len(tracks)}" in again.stdout
    assert proxy.count("PUT", "/objects/") == 0
    assert proxy.count("PUT") == 0, "nothing new: not even a journal file"
    # Without the local state, files are hashed again and matched by content.
    shutil.rmtree(Path(env["XDG_STATE_HOME"]) / "lockerfs")
    proxy.reset_counts()
    matched = lockerfs("upload", str(root), locker, env=env)
    assert f"matched {len(tracks)}" in matched.stdout
    assert proxy.count("PUT", "/objects/") == 0


def test_two_concurrent_uploads_both_complete(locker, env, s3_server, bucket) -> None:
    (one, first), (two, second) = synthesized("small", seed=11), synthesized("small", seed=22)
    runs = [subprocess.Popen([LOCKERFS, "upload", str(root), locker], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for root in (one, two)]
    for run in runs:
        assert run.wait(300) == 0, run.stdout.read()
    records = assert_consistent(locker, env, s3_server, bucket)
    assert {r["sha256"] for r in records} == {sha256_file(t.path) for t in first + second}


def _bulky_library(folder: Path, count: int) -> list[Path]:
    """Tracks big enough that an upload takes a while to kill part-way."""
    return [write_track(folder / f"{n:02d}.flac", "flac", seconds=6, noise=True, seed=n,
                        tags={"artist": "Bulk", "album": "Heavy", "title": f"Song {n}", "track": n + 1}).path
            for n in range(count)]


def test_upload_killed_then_rerun_is_complete(tmp_path, locker, env, proxy: FaultProxy, s3_server, bucket) -> None:
    files = _bulky_library(tmp_path / "bulk", 40)
    run = subprocess.Popen([LOCKERFS, "upload", "--jobs", "1", str(tmp_path / "bulk"), locker], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: proxy.count("PUT", "/objects/") >= 2, timeout=120, interval=0.01)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    partial = {r["sha256"] for r in catalog_records(locker, env)}
    assert len(partial) < len(files), "the kill came too late to test anything"
    lockerfs("upload", str(tmp_path / "bulk"), locker, env=env)
    records = assert_consistent(locker, env, s3_server, bucket)
    assert {r["sha256"] for r in records} == {sha256_file(p) for p in files}


def test_interrupt_stops_after_the_files_in_flight_and_rerun_finishes(tmp_path, locker, env, proxy: FaultProxy,
                                                                       s3_server, bucket) -> None:
    """Ctrl-C: the files already handed to workers finish and are recorded; no other file
    starts; every object stored has its record; the same command finishes the job."""
    jobs = 1
    files = _bulky_library(tmp_path / "bulk", 30)
    run = subprocess.Popen([LOCKERFS, "upload", "--jobs", str(jobs), str(tmp_path / "bulk"), locker], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert wait_until(lambda: proxy.count("PUT", "/objects/") >= 2, timeout=120, interval=0.01)
    run.send_signal(signal.SIGINT)
    at_signal = proxy.count("PUT", "/objects/")
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 130, output
    assert "stopping after the files in flight" in output and "interrupted" in output, output
    puts_after = proxy.count("PUT", "/objects/") - at_signal
    # in flight: the files already handed to the read and send stages (IN_FLIGHT_PER_JOB per job)
    assert puts_after <= IN_FLIGHT_PER_JOB * jobs, f"{puts_after} objects started after Ctrl-C"
    records = assert_consistent(locker, env, s3_server, bucket)
    prefix = locker.split("/", 3)[3]
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/objects/")
    stored = {item["Key"].removeprefix(f"{prefix}/") for item in listed.get("Contents", [])}
    assert stored == {r["key"] for r in records}, "an object stored before Ctrl-C has no record"
    assert 2 <= len(records) < len(files), f"{len(records)} of {len(files)} recorded: Ctrl-C did not stop the run"
    assert f"uploaded {len(records)} " in output, output
    print(f"\n[Ctrl-C] {at_signal} objects sent before the signal, {puts_after} after; "
          f"{len(records)} of {len(files)} recorded")
    lockerfs("upload", str(tmp_path / "bulk"), locker, env=env)
    records = assert_consistent(locker, env, s3_server, bucket)
    assert {r["sha256"] for r in records} == {sha256_file(p) for p in files}


def test_compact_during_upload_loses_nothing(tmp_path, locker, env, s3_server, bucket) -> None:
    lib, tracks = synthesized("small", seed=5)
    lockerfs("upload", str(_bulky_library(tmp_path / "first", 2)[0].parent), locker, env=env)
    run = subprocess.Popen([LOCKERFS, "upload", "--jobs", "1", str(lib), locker], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    compactions = 0
    while run.poll() is None or compactions < 2:
        lockerfs("compact", "--grace", "0", locker, env=env)
        compactions += 1
        time.sleep(0.2)
    assert run.returncode == 0
    lockerfs("compact", "--grace", "0", locker, env=env)
    records = assert_consistent(locker, env, s3_server, bucket)
    assert {sha256_file(t.path) for t in tracks} <= {r["sha256"] for r in records}
    assert len(records) == len(tracks) + 2


def test_clear_errors_without_traceback(tmp_path, library, env, s3_server) -> None:
    root, _ = library
    missing_bucket = lockerfs("upload", str(root), "s3://no-such-bucket/x", env=env, check=False)
    assert missing_bucket.returncode != 0
    assert "does not exist" in missing_bucket.stderr and "Traceback" not in missing_bucket.stderr
    wrong_keys = dict(env, AWS_SECRET_ACCESS_KEY="wrong-secret-value")
    denied = lockerfs("upload", str(root), "s3://any/x", env=wrong_keys, check=False)
    assert "refused our credentials" in denied.stderr and "Traceback" not in denied.stderr
    unreachable = dict(env, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    down = lockerfs("upload", str(root), "s3://any/x", env=unreachable, check=False, timeout=120)
    assert "cannot connect" in down.stderr and "Traceback" not in down.stderr
    bad_url = lockerfs("upload", str(root), "bucket-without-scheme", env=env, check=False)
    assert "s3://BUCKET" in bad_url.stderr
