"""The control channel over a real Unix socket (no mount): requests, progress, errors, hang-ups,
other users; finding the mount behind a path; the xattrs the filesystem shows."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from lockerfs import control
from lockerfs.control import ControlError, Send
from lockerfs.fs import LockerOperations
from lockerfs.prefetch import object_of
from lockerfs.tree import ROOT_INODE
from tests.unit.test_fs import CTX, TRACKS, Fs, fuse_errno, run

NOBODY = 65534


class Handler:
    """Answers echo (with two progress messages), fails on refuse, waits forever on wait."""

    def __init__(self) -> None:
        self.cancelled = trio.Event()
        self.waiting = trio.Event()

    async def __call__(self, op: str, request: dict[str, Any], send: Send) -> dict[str, Any]:
        if op == "echo":
            await send({"step": 1})
            await send({"step": 2})
            return {"paths": request["paths"]}
        if op == "wait":
            self.waiting.set()
            try:
                await trio.sleep_forever()
            finally:
                self.cancelled.set()
        if op == "crash":
            raise RuntimeError("a bug")
        raise ControlError(f"no such thing as {op}")


def serving(socket_path: Path, client: Callable[[], object], handler: Handler | None = None) -> object:
    """Serve on socket_path while `client` runs in a thread; returns what the client returned."""
    handler = handler or Handler()

    async def main() -> object:
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, socket_path, handler)
            with trio.fail_after(20):
                result = await trio.to_thread.run_sync(client)
            nursery.cancel_scope.cancel()
        return result

    result = trio.run(main)
    assert not socket_path.exists(), "the socket is removed when serving ends"
    return result


def replies(connection: control.Connection, op: str, **args: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    progress = []
    stream = connection.request(op, **args)
    while True:
        try:
            progress.append(next(stream))
        except StopIteration as done:
            return progress, done.value


def test_a_request_gets_its_progress_and_its_answer_over_a_long_path(tmp_path: Path) -> None:
    socket_path = tmp_path / ("x" * 120) / control.SOCKET_NAME  # past AF_UNIX's 107 bytes
    socket_path.parent.mkdir()

    def client() -> object:
        assert (socket_path.stat().st_mode & 0o777) == 0o600
        with control.open_socket(socket_path, tmp_path) as connection:
            return replies(connection, "echo", paths=["A/B", "Ünïcode/\udcff"])

    progress, answer = serving(socket_path, client)
    assert progress == [{"step": 1}, {"step": 2}]
    assert answer == {"paths": ["A/B", "Ünïcode/\udcff"]}  # undecodable names survive the trip


def test_a_refusal_and_a_bug_are_one_sentence_and_the_server_goes_on(tmp_path: Path) -> None:
    socket_path = tmp_path / control.SOCKET_NAME

    def client() -> object:
        messages = []
        for op in ("refuse", "crash"):
            with control.open_socket(socket_path, tmp_path) as connection, pytest.raises(ControlError) as failure:
                connection.call(op)
            messages.append(str(failure.value))
        with socket.socket(socket.AF_UNIX) as raw:  # garbage, then a request line far too long
            raw.connect(str(socket_path))
            raw.sendall(b"{not json\n")
            messages.append(raw.recv(1000).decode())
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(socket_path))
            try:
                raw.sendall(b"x" * (control.MAX_REQUEST + 100000))
            except OSError:
                pass  # the server hung up on it
        with control.open_socket(socket_path, tmp_path) as connection:
            messages.append(connection.call("echo", paths=[])["paths"])
        return messages

    refused, crashed, garbage, still = serving(socket_path, client)
    assert refused == "no such thing as refuse"
    assert crashed == "the mount failed to crash (see its mount.log)"
    assert "did not understand" in garbage
    assert still == []


def test_a_client_that_hangs_up_cancels_its_request(tmp_path: Path) -> None:
    socket_path = tmp_path / control.SOCKET_NAME
    handler = Handler()

    def client() -> object:
        connection = control.open_socket(socket_path, tmp_path)
        connection._sock.sendall(control._encode({"v": control.PROTOCOL, "op": "wait"}))
        trio.from_thread.run(handler.waiting.wait)
        connection.close()  # Ctrl-C
        trio.from_thread.run(handler.cancelled.wait)
        return True

    assert serving(socket_path, client, handler)


def test_another_protocol_version_is_told_to_use_the_mounting_lockerfs(tmp_path: Path) -> None:
    socket_path = tmp_path / control.SOCKET_NAME

    def client() -> object:
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(socket_path))
            raw.sendall(b'{"v": 99, "op": "echo"}\n')
            return raw.recv(1000).decode()

    assert "use the lockerfs that mounted it" in str(serving(socket_path, client))


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused_by_the_socket_and_by_its_credentials() -> None:
    folder = Path(tempfile.mkdtemp(prefix="lockerfs-control-"))
    folder.chmod(0o755)  # so that the other user can reach the socket at all
    socket_path = folder / control.SOCKET_NAME
    # The mount answers a stranger at once, before any request: read that answer.
    attempt = ("import os, socket, sys; os.setgid(%d); os.setuid(%d); s = socket.socket(socket.AF_UNIX)\n"
               "s.settimeout(10)\ntry:\n    s.connect(sys.argv[1]); print(s.recv(1000).decode())\n"
               "except OSError as e:\n    print('errno', e.errno)") % (NOBODY, NOBODY)

    def as_nobody() -> str:
        return subprocess.run([sys.executable, "-c", attempt, str(socket_path)], capture_output=True, text=True,
                              timeout=20).stdout.strip()

    def client() -> object:
        by_mode = as_nobody()  # the socket is 0600
        socket_path.chmod(0o666)  # were it open to all, the peer's uid still decides
        by_credentials = as_nobody()
        return by_mode, by_credentials

    try:
        by_mode, by_credentials = serving(socket_path, client)
    finally:
        folder.rmdir()
    assert by_mode == f"errno {errno.EACCES}"
    assert by_credentials == '{"error":"this mount belongs to another user"}'


def test_a_socket_of_another_user_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    socket_path = tmp_path / control.SOCKET_NAME
    monkeypatch.setattr(control, "_peer_uid", lambda sock: NOBODY if isinstance(sock, socket.socket) else os.getuid())

    def client() -> object:
        with pytest.raises(ControlError) as refused:
            control.open_socket(socket_path, tmp_path)
        return str(refused.value)

    assert "is not served by your user" in str(serving(socket_path, client))


# --- finding the mount behind a path ------------------------------------------------------------

def mountinfo(tmp_path: Path, *entries: tuple[str, str]) -> Path:
    lines = [f"{n} 1 0:{n} / {point} rw,relatime - {fstype} src rw" for n, (point, fstype) in enumerate(entries, 20)]
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_locate_finds_the_innermost_lockerfs_mount(tmp_path: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    table = mountinfo(tmp_path, ("/", "ext4"), (str(tmp_path), "tmpfs"), (str(music), "fuse.lockerfs"))
    found = control.locate(music / "Artist" / "Album (1999)" / "01 Gone.flac", table)
    assert found.mountpoint == music and found.relative == "Artist/Album (1999)/01 Gone.flac"
    assert control.locate(music, table).relative == ""
    assert control.lockerfs_mounts(table) == [music]


@pytest.mark.parametrize("where", ["outside", "sibling"])
def test_a_path_outside_a_locker_is_one_sentence(tmp_path: Path, where: str) -> None:
    (tmp_path / "music").mkdir()
    table = mountinfo(tmp_path, ("/", "ext4"), (str(tmp_path / "music"), "fuse.lockerfs"))
    path = tmp_path / ("elsewhere" if where == "outside" else "music2") / "x.flac"
    with pytest.raises(ControlError) as refused:
        control.locate(path, table)
    assert str(refused.value) == f"{path} is not in a mounted locker (`lockerfs mount LOCKER FOLDER` first)"


def test_a_symlink_into_a_locker_is_followed(tmp_path: Path) -> None:
    (tmp_path / "music").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "music")
    table = mountinfo(tmp_path, ("/", "ext4"), (str(tmp_path / "music"), "fuse.lockerfs"))
    assert control.locate(tmp_path / "link" / "A", table).relative == "A"


@pytest.mark.parametrize("error, words", [(errno.ENOTCONN, "its process is gone"),
                                          (errno.EACCES, "belongs to another user"),
                                          (errno.ENODATA, "takes no commands")])
def test_a_mount_that_cannot_answer_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int,
                                                   words: str) -> None:
    def getxattr(path: object, name: str) -> bytes:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(control.os, "getxattr", getxattr)
    with pytest.raises(ControlError) as refused:
        control.connect(tmp_path)
    assert words in str(refused.value) and str(tmp_path) in str(refused.value)


# --- what getfattr shows ------------------------------------------------------------------------

def xattrs(fs: Fs, inode: int) -> dict[str, str]:
    names = run(lambda: fs.ops.listxattr(inode, CTX))
    return {name.decode(): run(lambda n=name: fs.ops.getxattr(inode, n, CTX)).decode() for name in names}


def test_a_track_shows_its_sha256_what_is_cached_and_whether_it_is_pinned() -> None:
    fs = Fs()
    fs.ops = LockerOperations(fs.tree, fs.cache, fs.prefetcher, control_socket=b"/run/x/control.sock")
    inode = fs.inode("Artist", "Album", "01.flac")
    assert xattrs(fs, inode) == {"user.lockerfs.sha256": TRACKS[0].sha256, "user.lockerfs.cached": "0",
                                 "user.lockerfs.pinned": "no"}
    run(lambda: fs.cache.read(object_of(TRACKS[0]), 0, 10_000))
    fs.cache.set_pinned([TRACKS[0].sha256])
    shown = xattrs(fs, inode)
    assert int(shown["user.lockerfs.cached"]) >= 10_000 and shown["user.lockerfs.pinned"] == "yes"
    assert xattrs(fs, ROOT_INODE) == {"user.lockerfs.control": "/run/x/control.sock"}
    assert xattrs(fs, fs.inode("Artist")) == {}
    assert fuse_errno(lambda: fs.ops.getxattr(inode, b"user.lockerfs.nope", CTX)) == errno.ENODATA
    requests = list(fs.store.requests)
    xattrs(fs, inode)
    assert fs.store.requests == requests  # answered from the tables, not the bucket


def test_a_socket_that_cannot_be_made_costs_the_commands_not_the_mount(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    socket_path = tmp_path / "no such folder" / control.SOCKET_NAME

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, socket_path, Handler())  # returns: nothing to serve

    with caplog.at_level("WARNING"):
        trio.run(main)
    assert "cannot reach this mount" in caplog.text


def test_listing_names_or_asking_for_others_does_not_count_cached_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ls -l` lists every file's attribute names and asks for ACLs and security labels:
    counting a track's cached blocks (a walk over all of them) is for getfattr's value only."""
    fs = Fs()
    inode = fs.inode("Artist", "Album", "01.flac")
    counted: list[object] = []
    real = fs.cache.cached_bytes
    monkeypatch.setattr(fs.cache, "cached_bytes", lambda obj: counted.append(obj) or real(obj))
    assert len(run(lambda: fs.ops.listxattr(inode, CTX))) == 3
    for other in (b"security.selinux", b"system.posix_acl_access"):
        assert fuse_errno(lambda name=other: fs.ops.getxattr(inode, name, CTX)) == errno.ENODATA
    assert counted == []
    assert run(lambda: fs.ops.getxattr(inode, b"user.lockerfs.cached", CTX)) == b"0"
    assert len(counted) == 1
