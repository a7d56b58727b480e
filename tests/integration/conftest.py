"""Fixtures for integration tests: a real S3 server on 127.0.0.1, a counting proxy, a library."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.mounting import lockerfs
from tests.support.s3server import S3Server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from synth_library import SynthTrack  # noqa: E402
from tests.support.synthesized import synthesized  # noqa: E402

_bucket_numbers = itertools.count(1)


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    name = f"test{next(_bucket_numbers)}"
    s3_server.make_bucket(name)
    return name


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A proxy in front of the server that counts (and can fail) requests."""
    with FaultProxy(s3_server.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def env(s3_server: S3Server, proxy: FaultProxy, tmp_path: Path) -> dict[str, str]:
    """Environment for lockerfs processes: credentials, endpoint through the proxy, private XDG dirs."""
    environment = s3_server.env(proxy.endpoint)
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        folder = tmp_path / name.lower()
        folder.mkdir(mode=0o700)
        environment[name] = str(folder)
    return environment


@pytest.fixture
def locker(bucket: str) -> str:
    return f"s3://{bucket}/music"


@pytest.fixture(scope="session")
def library() -> tuple[Path, list[SynthTrack]]:
    """The small synthesized library (every format, multi-disc, compilation, missing tags); read-only."""
    return synthesized("small")


@pytest.fixture(scope="session")
def small_locker(s3_server: S3Server, library: tuple[Path, list[SynthTrack]],
                 tmp_path_factory: pytest.TempPathFactory) -> str:
    """The small library uploaded once per worker, straight to the server, with private XDG
    folders: what tests.support.lockers.copy_locker copies for a test that needs a locker of
    its own holding the library, instead of uploading it again."""
    s3_server.make_bucket("small-locker")
    env, home = s3_server.env(), tmp_path_factory.mktemp("small-locker")
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        (home / name.lower()).mkdir(mode=0o700)
        env[name] = str(home / name.lower())
    locker = "s3://small-locker/music"
    lockerfs("upload", str(library[0]), locker, env=env)
    return locker
