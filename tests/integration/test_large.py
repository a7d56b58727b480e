"""Large files: multipart uploads, matching against multipart objects, reads past the memory cache.

The "large" library (scripts/synth_library.py) is a 44 MiB FLAC and a 20 MiB
MP3: both above the upload's 16 MiB multipart threshold, both larger than the
memory cache the mount is given here, and the FLAC larger than its disk cache.
It is written only when one of these tests runs, and kept for later runs
(tests/support/synthesized.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from lockerfs.store import S3Store
from tests.support.faultproxy import FaultProxy
from tests.support.library import (Source, assert_serves_sources, expected_paths, load_manifest, mounted_files,
                                   mounted_tracks)
from tests.support.mounting import LOCKERFS, lockerfs, mounted, wait_until
from tests.support.s3etags import S3EtagProxy
from tests.support.s3server import S3Server
from tests.support.synthesized import synthesized


MiB = 1024 * 1024
MEMORY_CACHE = "8M"  # smaller than both files
DISK_CACHE = "24M"  # smaller than the FLAC: its blocks are evicted while it is read
RANDOM_READERS = 4
RANDOM_READS_EACH = 25


@pytest.fixture(scope="session")
def large_library() -> Path:
    """Read-only: a test that edits a file copies it first."""
    return synthesized("large")[0]


@pytest.fixture(scope="session")
def large_layout(large_library: Path) -> dict[str, Source]:
    return expected_paths(load_manifest(large_library))


@pytest.fixture
def etag_proxy(s3_server: S3Server) -> Iterator[S3EtagProxy]:
    """Between lockerfs and rclone: multipart objects get S3's `<md5>-<parts>` ETags."""
    with S3EtagProxy(s3_server.port, stall_seconds=2.0) as proxy:
        yield proxy


def prefix_of(locker: str) -> str:
    return locker.split("/", 3)[3]


def object_sha256(server: S3Server, bucket: str, key: str) -> str | None:
    """SHA-256 of what the server holds under key (asked directly, not through a proxy)."""
    client = server.client()
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except client.exceptions.NoSuchKey:
        return None
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(MiB), b""):
        digest.update(chunk)
    return digest.hexdigest()


def recorded_shas(locker: str, env: dict[str, str]) -> set[str]:
    return {json.loads(line)["sha256"] for line in lockerfs("ls", "--json", locker, env=env).stdout.splitlines()}


def object_key(locker: str, source: Source) -> str:
    return f"{prefix_of(locker)}/objects/sha256/{source.sha256[:2]}/{source.sha256}.{source.format}"


# --- upload ------------------------------------------------------------------------------------

def test_large_files_upload_in_parts_byte_exact(large_library, large_layout, locker, env, proxy: FaultProxy,
                                                s3_server, bucket) -> None:
    result = lockerfs("upload", str(large_library), locker, env=env)
    assert "uploaded 2 " in result.stdout, result.stdout
    tracks = {source.sha256 for source in large_layout.values()}  # not their embedded covers, stored apart
    object_puts = [r for r in proxy.records() if r.method in ("PUT", "POST") and "/objects/" in r.path
                   and any(sha in r.path for sha in tracks)]
    started = [r for r in object_puts if r.method == "POST" and r.query.startswith("uploads")]
    completed = [r for r in object_puts if r.method == "POST" and "uploadId=" in r.query]
    parts = [r for r in object_puts if r.method == "PUT"]
    print(f"\n[large upload] {len(started)} multipart uploads, {len(parts)} parts, {len(completed)} completed")
    assert len(started) == len(completed) == 2
    assert all("partNumber=" in r.query for r in parts), "a track went up in one PUT"
    for source in large_layout.values():
        assert sum(source.sha256 in r.path for r in parts) >= 2
        assert object_sha256(s3_server, bucket, object_key(locker, source)) == source.sha256
    assert recorded_shas(locker, env) == {source.sha256 for source in large_layout.values()}


def test_an_s3_multipart_object_is_matched_by_content_not_size(large_library, large_layout, locker, env,
                                                                etag_proxy: S3EtagProxy, s3_server, bucket,
                                                                tmp_path) -> None:
    """The FLAC is edited in place while its parts go up: the run reports it and records
    nothing, but the bucket now holds other bytes of the same size under the original's
    key, with S3's multipart ETag. With the edit undone, the next run must not take that
    object for the file (same key, same size) and must upload it again."""
    env = {**env, "AWS_ENDPOINT_URL": etag_proxy.endpoint}
    source = next(s for s in large_layout.values() if s.format == "flac")
    original = source.path.read_bytes()
    path = tmp_path / "lib" / "huge.flac"
    path.parent.mkdir()
    path.write_bytes(original)
    key = object_key(locker, source)

    etag_proxy.fail_next("stall", method="PUT", path_contains=source.sha256)  # one part hangs 2 s
    run = subprocess.Popen([LOCKERFS, "upload", str(path.parent), locker], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: etag_proxy.stats.get("stall") == 1, timeout=60, interval=0.01)
        with open(path, "r+b") as stream:  # a tag editor rewriting the file in place
            stream.write(original[1:] + original[:1])
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 1, output
    assert "huge.flac: file changed while it was being uploaded" in output, output
    assert recorded_shas(locker, env) == set()
    stored = object_sha256(s3_server, bucket, key)
    assert stored is not None and stored != source.sha256, "the edit was not caught mid-upload; nothing to test"
    assert etag_proxy.etags[f"/{bucket}/{key}"].endswith("-3")

    path.write_bytes(original)  # the edit undone: the file is the original again
    again = lockerfs("upload", str(path.parent), locker, env=env)
    print(f"\n[multipart match] after the interrupted edit: {again.stdout.splitlines()[0]}")
    assert "uploaded 1 " in again.stdout and "matched 0" in again.stdout, again.stdout
    assert object_sha256(s3_server, bucket, key) == source.sha256
    assert recorded_shas(locker, env) == {source.sha256}


def test_holds_trusts_only_an_md5_etag(etag_proxy: S3EtagProxy, s3_server, bucket, tmp_path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """S3Store.holds: a plain MD5 ETag decides; a multipart ETag proves nothing, whatever the size."""
    data = os.urandom(6 * MiB)
    md5 = hashlib.md5(data).hexdigest()
    client = s3_server.client(etag_proxy.endpoint)
    client.put_object(Bucket=bucket, Key="plain", Body=data)
    client.put_object(Bucket=bucket, Key="other", Body=bytes(len(data)))
    (tmp_path / "data").write_bytes(data)
    client.upload_file(str(tmp_path / "data"), bucket, "parts",
                       Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    assert client.head_object(Bucket=bucket, Key="parts")["ETag"].strip('"').endswith("-2")
    for name, value in s3_server.env(etag_proxy.endpoint).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)  # boto3's chain, as lockerfs runs it
    store = S3Store(f"s3://{bucket}")
    assert store.holds("plain", len(data), md5)
    assert not store.holds("other", len(data), md5), "same size, other bytes"
    assert not store.holds("plain", len(data) + 1, md5)
    assert not store.holds("missing", len(data), md5)
    assert not store.holds("parts", len(data), md5), "a multipart ETag proves nothing about the bytes"


# --- reading through a mount ----------------------------------------------------------------------

def drop_caches(paths: list[Path]) -> None:
    """Empty the kernel's page cache (root), or at least these files' pages, so lockerfs is asked again."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except PermissionError:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_in_pieces(path: Path, piece: int = MiB) -> bytes:
    """A player's sequential read: one read() at a time, as the kernel's read-ahead sees it."""
    chunks = []
    with open(path, "rb", buffering=0) as stream:
        while chunk := stream.read(piece):
            chunks.append(chunk)
    return b"".join(chunks)


def test_large_files_read_byte_exact_past_the_memory_cache(large_library, large_layout, locker, env,
                                                            proxy: FaultProxy, tmp_path) -> None:
    lockerfs("upload", str(large_library), locker, env=env)
    sources = {name: source.path.read_bytes() for name, source in large_layout.items()}
    options = ["--cache-dir", str(tmp_path / "cache"), "--memory-cache", MEMORY_CACHE, "--cache-size", DISK_CACHE]
    proxy.reset_counts()
    with mounted(locker, tmp_path / "mnt", env, *options) as mnt:
        assert sorted(mounted_tracks(mnt)) == sorted(large_layout)
        started = time.monotonic()
        for name, expected in sources.items():  # cold and sequential: read-ahead opens to its full window
            assert read_in_pieces(mnt / name) == expected, f"{name}: sequential read differs"
        sequential = time.monotonic() - started
        gets = proxy.count("GET", "/objects/")

        errors: list[str] = []

        def random_reads(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(RANDOM_READS_EACH):
                name = rng.choice(sorted(sources))
                expected = sources[name]
                offset = rng.randrange(len(expected))
                length = rng.choice([1, 4096, 65536 + 7, MiB, 5 * MiB])
                fd = os.open(mnt / name, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    data = os.pread(fd, length, offset)
                except OSError as exc:
                    errors.append(f"{name} at {offset}+{length}: {exc}")
                    continue
                finally:
                    os.close(fd)
                if data != expected[offset:offset + length]:
                    errors.append(f"{name} at {offset}+{length}: {len(data)} bytes, not the source's")

        readers = [threading.Thread(target=random_reads, args=(n,)) for n in range(RANDOM_READERS)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(300)
        assert not any(reader.is_alive() for reader in readers), "a reader hung"
        assert not errors, errors[:5]

        drop_caches([mnt / name for name in sources])
        assert_serves_sources(mounted_files(mnt), large_layout)
    total = sum(map(len, sources.values()))
    print(f"\n[large read] {total / MiB:.0f} MiB read sequentially in {sequential:.1f} s with {gets} GETs; "
          f"{RANDOM_READERS * RANDOM_READS_EACH} random reads; re-read after drop_caches; "
          f"{proxy.count('GET', '/objects/')} object GETs in all")
