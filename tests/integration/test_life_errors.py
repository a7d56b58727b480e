"""The library's life (#12), every command and every way of being wrong: one sentence, nothing changed.

Split from test_life.py so that the two run on separate workers. These tests
change nothing (that is what each asserts), so they share one upload and one
mount of the small library, made once for the module, where each used to
make its own: the same real `lockerfs` processes, the same real mount and
`rclone serve s3` behind the fault proxy. Each test still takes its `before`
state itself, so whatever an earlier test left would not go unseen. The one
that removes a track to have something to restore puts it back afterwards.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_life import ALBUM, ls_json
from tests.support.bounds import runs_until_within, within
from tests.support.faultproxy import FaultProxy
from tests.support.library import Source, expected_paths, load_manifest, mounted_files
from tests.support.mounting import lockerfs, mounted
from tests.support.s3server import S3Server

REFUSED_WITHIN = 2.0  # issue #12: seconds for any command to report a refused connection
# The shared mount lives for the whole module: with the default refresh (60 s) a catalog
# refresh could land inside a test that counts the requests made while it runs.
NO_REFRESH = "3600"


# --- one locker and one mount for the module ------------------------------------------------

@pytest.fixture(scope="module")
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture(autouse=True)
def proxy_up(proxy: FaultProxy) -> Iterator[None]:
    """Each test starts with a proxy that forwards everything, whatever the last one did."""
    proxy.set_down(False)
    yield
    proxy.set_down(False)


@pytest.fixture(scope="module")
def env(s3_server: S3Server, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    environment = s3_server.env(proxy.endpoint)
    home = tmp_path_factory.mktemp("life-errors-home")
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        folder = home / name.lower()
        folder.mkdir(mode=0o700)
        environment[name] = str(folder)
    return environment


@pytest.fixture(scope="module")
def locker(s3_server: S3Server) -> str:
    bucket = f"life-errors-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    return f"s3://{bucket}/music"


@pytest.fixture(scope="module")
def uploaded(library, locker: str, env: dict[str, str]) -> dict[str, Source]:
    """The small library in the locker; mount path -> its source."""
    root, _ = library
    lockerfs("upload", str(root), locker, env=env)
    return expected_paths(load_manifest(root))


@pytest.fixture(scope="module")
def mnt(uploaded, locker: str, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("life-errors-mount")
    with mounted(locker, work / "mnt", env, "--cache-dir", str(work / "cache"), "--refresh", NO_REFRESH) as point:
        yield point


TRACK = f"{ALBUM}/01 Sine of the Times.flac"
COMMANDS = {  # command -> its arguments for a path
    "rm": lambda path: ["rm", path],
    "restore": lambda path: ["restore", path],
    "tag": lambda path: ["tag", path, "genre=Chillwave"],
    "pin": lambda path: ["pin", path],
    "unpin": lambda path: ["unpin", path],
    "pinned": lambda path: ["pinned", path],
}


def state_of(mnt: Path, locker: str, env: dict[str, str]) -> tuple[object, ...]:
    """Everything a command could change: the catalog, the tree, the pins."""
    return (ls_json(locker, env), sorted(mounted_files(mnt)), lockerfs("pinned", str(mnt), env=env).stdout)


def one_sentence(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode in (1, 2), result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lockerfs: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_path_outside_a_mounted_locker(command, uploaded, mnt, locker, env, tmp_path, proxy: FaultProxy) -> None:
    before = state_of(mnt, locker, env)
    proxy.reset_counts()
    outside = tmp_path / "not-a-locker" / "song.flac"
    sentence = one_sentence(lockerfs(*COMMANDS[command](str(outside)), env=env, check=False))
    assert sentence == f"lockerfs: {outside} is not in a mounted locker (`lockerfs mount LOCKER FOLDER` first)"
    assert proxy.count() == 0 and state_of(mnt, locker, env) == before


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"pinned"}))
def test_a_missing_track(command, uploaded, mnt, locker, env, proxy: FaultProxy) -> None:
    before = state_of(mnt, locker, env)
    proxy.reset_counts()
    missing = mnt / ALBUM / "99 Never Recorded.flac"
    sentence = one_sentence(lockerfs(*COMMANDS[command](str(missing)), env=env, check=False))
    if command == "restore":
        assert sentence == f"lockerfs: no removed track would go under {missing}"
    elif command == "unpin":
        assert sentence == f"lockerfs: nothing under {missing} is pinned"
    else:
        assert sentence == f"lockerfs: no such track or folder in the locker: {missing}"
    assert proxy.count("PUT") == proxy.count("DELETE") == 0 and state_of(mnt, locker, env) == before


@pytest.mark.parametrize("command", ["rm", "restore", "tag", "pin"])
def test_a_server_that_cannot_be_reached(command, uploaded, mnt, locker, env, proxy: FaultProxy) -> None:
    if command == "restore":
        lockerfs("rm", str(mnt / TRACK), env=env)
        try:
            refused_while_down(command, mnt, locker, env, proxy)
        finally:  # the module's other tests share this mount and expect the track in it
            if not (mnt / TRACK).exists():
                lockerfs("restore", str(mnt / ALBUM), env=env, check=False)
    else:
        refused_while_down(command, mnt, locker, env, proxy)


def refused_while_down(command: str, mnt: Path, locker: str, env: dict[str, str], proxy: FaultProxy) -> None:
    before = state_of(mnt, locker, env)
    path = mnt / (ALBUM if command == "restore" else TRACK)
    proxy.set_down(True)
    try:
        # Python's start varies with the machine's load: the fastest of up to three runs, less
        # that, is held to the bound
        took, result = runs_until_within(lambda: lockerfs(*COMMANDS[command](str(path)), env=env, check=False),
                                         within(REFUSED_WITHIN), env)
        sentence = one_sentence(result)
        print(f"{command}: {', '.join(f'{t:.1f}' for t in took)} s to say {sentence!r}")
        assert "cannot connect to the S3 endpoint" in sentence and "connection refused" in sentence
        assert min(took) <= within(REFUSED_WITHIN), took
        after_tree = sorted(mounted_files(mnt))
        after_pins = lockerfs("pinned", str(mnt), env=env).stdout
    finally:
        proxy.set_down(False)
    assert (ls_json(locker, env), after_tree, after_pins) == before
    if command == "restore":  # the mount is shared: the next test expects the track back
        lockerfs("restore", str(mnt / TRACK), env=env)
        assert TRACK in mounted_files(mnt)
