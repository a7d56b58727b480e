"""Files that change: after an upload (re-hashed and sent on the next run) and during one
(reported, never recorded). Counted at the proxy, checked on the server directly."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import mutagen.flac

from tests.support.faultproxy import FaultProxy
from tests.support.mounting import LOCKERFS, lockerfs, wait_until
from tests.support.s3server import S3Server

from synth_library import write_track


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def records(locker: str, env: dict[str, str]) -> dict[str, dict]:
    """sha256 -> catalog record."""
    output = lockerfs("ls", "--json", locker, env=env).stdout
    return {r["sha256"]: r for r in map(json.loads, output.splitlines())}


def stored_sha256(server: S3Server, bucket: str, locker: str, record: dict) -> str:
    key = f"{locker.split('/', 3)[3]}/{record['key']}"
    return hashlib.sha256(server.client().get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def three_tracks(folder: Path) -> list[Path]:
    return [write_track(folder / f"{n}.flac", "flac", seconds=1.0, noise=True, seed=300 + n,
                        tags={"artist": "Editor", "album": "Changes", "title": f"Take {n}", "track": n}).path
            for n in (1, 2, 3)]


def test_a_file_edited_after_upload_is_hashed_and_uploaded_again(tmp_path, locker, env, proxy: FaultProxy,
                                                                  s3_server, bucket) -> None:
    """Retagged (new size) or patched in place (same size): both are read, hashed and sent
    again; the untouched file is not even re-hashed."""
    retagged, patched, untouched = three_tracks(tmp_path / "lib")
    lockerfs("upload", str(tmp_path / "lib"), locker, env=env)

    tags = mutagen.flac.FLAC(retagged)
    tags["title"] = "Take 1 (remastered)"
    tags.save()
    data = bytearray(patched.read_bytes())
    data[-1000] ^= 0xFF  # one byte of audio, as a repair tool might change it
    patched.write_bytes(bytes(data))
    assert len(data) == patched.stat().st_size

    proxy.reset_counts()
    result = lockerfs("upload", str(tmp_path / "lib"), locker, env=env)
    assert "uploaded 2 " in result.stdout and "unchanged 1" in result.stdout, result.stdout
    assert proxy.count("PUT", "/objects/") == 2
    catalog = records(locker, env)
    for path in (retagged, patched, untouched):
        sha = sha256_file(path)
        assert sha in catalog, f"{path.name} as it is now is not in the catalog"
        assert stored_sha256(s3_server, bucket, locker, catalog[sha]) == sha
    assert catalog[sha256_file(retagged)]["info"]["title"] == "Take 1 (remastered)"

    proxy.reset_counts()
    settled = lockerfs("upload", str(tmp_path / "lib"), locker, env=env)
    assert "unchanged 3" in settled.stdout and proxy.count("PUT") == 0, settled.stdout
    print(f"\n[edited after upload] second run: {result.stdout.splitlines()[0]}; catalog now holds "
          f"{len(catalog)} tracks for 3 files (the versions before the edits stay recorded)")


def test_a_file_changed_while_it_is_uploaded_is_recorded_as_it_was_read(tmp_path, locker, env,
                                                                          proxy: FaultProxy, s3_server,
                                                                          bucket) -> None:
    """The object PUT of one file hangs (2 s) while the file is rewritten in place, same size.

    A file of at most upload.MEMORY_THRESHOLD is sent from the bytes that were
    hashed, so the change cannot reach the object: the run stores and records
    the file as it was read (object and record agree), and the next run,
    seeing another mtime, takes the file as it is now.
    """
    changing, *others = three_tracks(tmp_path / "lib")
    original = changing.read_bytes()
    old_sha = sha256_file(changing)
    proxy.stall_seconds = 2.0
    proxy.fail_next("stall", method="PUT", path_contains=old_sha)
    run = subprocess.Popen([LOCKERFS, "upload", "--jobs", "1", str(tmp_path / "lib"), locker], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: proxy.stats.get("stall") == 1, timeout=60, interval=0.01)
        with open(changing, "r+b") as stream:  # the last 1000 bytes of audio, rewritten in place
            stream.seek(len(original) - 1000)
            stream.write(bytes(b ^ 0xFF for b in original[-1000:]))
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, output
    assert "uploaded 3 " in output and "failed 0" in output, output
    catalog = records(locker, env)
    assert {old_sha} | {sha256_file(p) for p in others} <= set(catalog)
    assert stored_sha256(s3_server, bucket, locker, catalog[old_sha]) == old_sha
    assert sha256_file(changing) not in catalog

    lockerfs("upload", str(tmp_path / "lib"), locker, env=env)  # the next run takes the file as it is now
    catalog = records(locker, env)
    assert stored_sha256(s3_server, bucket, locker, catalog[sha256_file(changing)]) == sha256_file(changing)
