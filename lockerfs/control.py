"""The control channel: how `lockerfs rm`, `tag`, `pin` ... reach the mount behind a path.

Finding it. A command is given a path inside a mounted locker. The kernel's
table of mounts (/proc/self/mountinfo) names the lockerfs mount point the
path lies under; the mount's root answers the extended attribute
`user.lockerfs.control` with the path of its control socket. So the answer
comes from the very process serving the path (not from a registry that a
crashed or restarted mount could leave stale), and the command needs no
environment in common with the mount (XDG dirs, AWS_PROFILE ...).

The socket. A Unix stream socket named `control.sock` in the mount's cache
dir: that folder is the mount's own (0700, checked against other users'
writes, flocked by the one mount using it: diskcache.claim_private_dir), so
the name is free of races and squatters without a scheme of its own. The
socket is 0600, and both ends check the other's uid (SO_PEERCRED): only the
user who mounted may act on the mount, and a command talks only to a mount
of its own user. Long cache-dir paths (AF_UNIX allows 107 bytes) are reached
through /proc/self/fd/N/control.sock.

The conversation. One request per connection: a JSON object on one line
({"op": ..., ...}); then replies, one JSON object per line: any number of
{"progress": {...}}, and last {"ok": {...}} or {"error": "one sentence"}.
A client that goes away cancels its request. The server is trio tasks on
the mount's loop: it never blocks the loop (handlers send blocking work to
threads), sessions are bounded in number, size and idle time, and no
exception from a session reaches pyfuse3.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from lockerfs import mountpoints

log = logging.getLogger(__name__)

XATTR = "user.lockerfs.control"
SOCKET_NAME = "control.sock"
MAX_REQUEST = 4 * 1024 * 1024  # a request names paths
MAX_REPLY = 512 * 1024 * 1024  # a reply may list every track of a large library (about 600 bytes each)
MAX_SESSIONS = 16
REQUEST_WAIT = 10.0  # seconds a connected client has to send its request
ADDRESS_WAIT = 10.0  # seconds a command waits for a mount to name its control socket
PROTOCOL = 1

Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[str, dict[str, Any], Send], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """A command cannot act on a mount, or the mount refused; str() is one sentence for the user."""


# --- both ends -------------------------------------------------------------------------

def _peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)[1]


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"  # ASCII: any path survives


def _short_path(path: Path) -> tuple[str, int | None]:
    """An address for `path` that fits AF_UNIX's 107 bytes: the path itself, or
    /proc/self/fd/N/<name> through an O_PATH descriptor of its folder (close it after use)."""
    text = os.fsencode(path)
    if len(text) < 100:
        return str(path), None
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{folder}/{path.name}", folder


# --- the mount's side ---------------------------------------------------------------------

async def serve(socket_path: Path, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                ) -> None:
    """Listen on `socket_path` until cancelled; each connection gets one request answered by `handle`."""
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        socket_path.unlink(missing_ok=True)  # a crashed mount's; the cache dir's flock says it is ours now
        address, folder = _short_path(socket_path)
        try:
            await listener.bind(address)
        finally:
            if folder is not None:
                os.close(folder)
    except OSError as exc:  # a cache dir on a filesystem without sockets: the mount works, commands do not
        listener.close()
        log.warning("control: cannot listen on %s (%s); lockerfs rm, tag and pin cannot reach this mount",
                    socket_path, exc.strerror or exc)
        task_status.started()
        return
    try:
        os.chmod(socket_path, 0o600)
        listener.listen(MAX_SESSIONS)
        task_status.started()
        sessions = trio.CapacityLimiter(MAX_SESSIONS)
        async with trio.open_nursery() as nursery:
            while True:
                connection, _ = await listener.accept()
                nursery.start_soon(_session, connection, handle, sessions)
    finally:
        listener.close()
        socket_path.unlink(missing_ok=True)


async def _session(connection: trio.socket.SocketType, handle: Handler, sessions: trio.CapacityLimiter) -> None:
    """One request; never raises (a session's trouble must not end the mount)."""
    stream = trio.SocketStream(connection)
    try:
        async with sessions, stream:
            uid = _peer_uid(connection)
            if uid != os.getuid():
                log.warning("control: refused a connection from user id %d (this mount is user %d's)",
                            uid, os.getuid())
                await stream.send_all(_encode({"error": "this mount belongs to another user"}))
                return
            with trio.move_on_after(REQUEST_WAIT) as waited:
                line, _ = await _read_line(stream, b"")
            if waited.cancelled_caught or line is None:
                return
            await _answer(stream, line, handle)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the command went away
    except Exception:  # noqa: BLE001 - a bug costs this request, not the mount
        log.exception("control: a request failed")


async def _answer(stream: trio.SocketStream, line: bytes, handle: Handler) -> None:
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise ValueError("not a request")
    except (ValueError, RecursionError):
        await stream.send_all(_encode({"error": "the mount did not understand the request"}))
        return
    if request.get("v") != PROTOCOL:
        await stream.send_all(_encode({"error": f"this mount speaks control protocol {PROTOCOL}, not "
                                                f"{request.get('v')!r}: use the lockerfs that mounted it"}))
        return

    async def send(message: dict[str, Any]) -> None:
        await stream.send_all(_encode({"progress": message}))

    async with trio.open_nursery() as nursery:
        # A client that hangs up (Ctrl-C) cancels its request: a pin stops fetching.
        nursery.start_soon(_cancel_on_hangup, stream, nursery.cancel_scope)
        try:
            result = {"ok": await handle(request["op"], request, send)}
        except ControlError as exc:
            result = {"error": str(exc)}
        except Exception:  # noqa: BLE001 - logged with its traceback; the user gets one sentence
            log.exception("control: %s failed", request["op"])
            result = {"error": f"the mount failed to {request['op'][:40]} (see its mount.log)"}
        await stream.send_all(await trio.to_thread.run_sync(_encode, result))  # it may list many tracks
        nursery.cancel_scope.cancel()


async def _cancel_on_hangup(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while await stream.receive_some(4096):
            pass  # nothing more is expected after the request
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    scope.cancel()


async def _read_line(stream: trio.SocketStream, buffered: bytes) -> tuple[bytes | None, bytes]:
    while b"\n" not in buffered:
        if len(buffered) > MAX_REQUEST:
            return None, b""
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None, b""
        buffered += chunk
    line, _, rest = buffered.partition(b"\n")
    return line, rest


# --- the commands' side -------------------------------------------------------------------

@dataclass(frozen=True)
class MountedPath:
    """A path as a mount sees it."""

    given: str  # as the user typed it, for messages
    mountpoint: Path
    relative: str  # "/"-separated below the mount point; "" for the mount point itself


def locate(path: str | os.PathLike[str], mountinfo: Path = mountpoints.MOUNTINFO) -> MountedPath:
    """The lockerfs mount a path lies in, and the path below it. The path need not exist
    (a track just removed, a typo): only the folders above it are resolved."""
    given = os.fspath(path)
    resolved = os.path.realpath(given)
    try:
        table = mountinfo.read_text(errors="surrogateescape")
    except OSError:
        table = ""
    best = None
    for entry in mountpoints.parse_mountinfo(table):
        point = entry.mountpoint
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint)):
            best = entry  # the last, innermost mount wins
    if best is None or best.fstype != mountpoints.LOCKERFS_TYPE:
        raise ControlError(f"{given} is not in a mounted locker (`lockerfs mount LOCKER FOLDER` first)")
    relative = os.path.relpath(resolved, best.mountpoint)
    return MountedPath(given, Path(best.mountpoint), "" if relative == "." else relative)


def lockerfs_mounts(mountinfo: Path = mountpoints.MOUNTINFO) -> list[Path]:
    """Every lockerfs mount point in the table (anyone's; connect() tells which are ours)."""
    try:
        table = mountinfo.read_text(errors="surrogateescape")
    except OSError:
        return []
    return [Path(e.mountpoint) for e in mountpoints.parse_mountinfo(table) if e.fstype == mountpoints.LOCKERFS_TYPE]


class Connection:
    """A request to one mount: send it, read its progress and its answer."""

    def __init__(self, mountpoint: Path, sock: socket.socket) -> None:
        self.mountpoint = mountpoint
        self._sock = sock
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no line end

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, op: str, **args: Any) -> Iterator[dict[str, Any]]:
        """Send a request; yields its progress messages, and returns (StopIteration.value) its
        answer. Raises ControlError with the mount's sentence if it refused."""
        try:
            self._sock.sendall(_encode({"v": PROTOCOL, "op": op, **args}))
        except OSError as exc:
            raise ControlError(f"lost the lockerfs mount at {self.mountpoint}: {exc.strerror or exc}") from None
        while True:
            message = self._receive()
            if "progress" in message:
                yield message["progress"]
            elif "ok" in message:
                return message["ok"]
            else:
                raise ControlError(str(message.get("error", "the mount answered nonsense")))

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """A request whose progress is of no interest: its answer."""
        replies = self.request(op, **args)
        while True:
            try:
                next(replies)
            except StopIteration as done:
                return done.value

    def _receive(self) -> dict[str, Any]:
        while (end := self._buffer.find(b"\n", self._searched)) < 0:
            self._searched = len(self._buffer)
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                raise ControlError(f"the lockerfs mount at {self.mountpoint} did not answer within "
                                   f"{self._sock.gettimeout():g} s (see its mount.log)") from None
            except OSError as exc:
                raise ControlError(f"lost the lockerfs mount at {self.mountpoint}: {exc.strerror or exc}") from None
            if not chunk:
                raise ControlError(f"the lockerfs mount at {self.mountpoint} closed the conversation "
                                   "(did it stop? see its mount.log)")
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY:
                raise ControlError(f"the lockerfs mount at {self.mountpoint} sent an answer too long to read")
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        self._searched = 0
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise ControlError(f"the lockerfs mount at {self.mountpoint} answered nonsense")
        return message


def connect(mountpoint: Path, timeout: float | None = 30.0) -> Connection:
    """A connection to the mount at `mountpoint`, checked to be served by this user's process."""
    return open_socket(Path(_control_address(mountpoint)), mountpoint, timeout)


def _control_address(mountpoint: Path) -> str:
    """The mount's answer to XATTR. Asked from a thread, and given up on after ADDRESS_WAIT: the
    kernel holds whoever asks a mount whose process is stopped or stuck until it answers, and
    `lockerfs pinned` asks every mount on the machine. The thread left behind ends with the
    command (a FUSE request's wait gives way to the exit's kill)."""
    answers: list[bytes | OSError] = []

    def ask() -> None:
        try:
            answers.append(os.getxattr(mountpoint, XATTR))
        except OSError as exc:
            answers.append(exc)

    asking = threading.Thread(target=ask, name=f"lockerfs ask {mountpoint}", daemon=True)
    asking.start()
    asking.join(ADDRESS_WAIT)
    if not answers:
        raise ControlError(f"the lockerfs mount at {mountpoint} has not answered for {ADDRESS_WAIT:g} s "
                           "(its process is stopped or stuck: see its mount.log)")
    if isinstance(answers[0], OSError):
        raise ControlError(_why_no_answer(mountpoint, answers[0]))
    return os.fsdecode(answers[0])


def open_socket(address: Path, mountpoint: Path, timeout: float | None = 30.0) -> Connection:
    """A connection to the control socket at `address` (of the mount at `mountpoint`, for
    messages), refused unless this user's process serves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    short, folder = _short_path(address)
    try:
        sock.connect(short)
        if _peer_uid(sock) != os.getuid():
            raise ControlError(f"the control socket of {mountpoint} is not served by your user: refusing it")
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot reach the lockerfs mount at {mountpoint} through {address}: "
                           f"{exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    finally:
        if folder is not None:
            os.close(folder)
    return Connection(mountpoint, sock)


def _why_no_answer(mountpoint: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
        return (f"the lockerfs mount at {mountpoint} is not answering (its process is gone): "
                f"run `lockerfs umount {mountpoint}` and mount it again")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"the lockerfs mount at {mountpoint} belongs to another user"
    if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOSYS):
        return (f"the lockerfs mount at {mountpoint} takes no commands (mounted by an older lockerfs): "
                "unmount it and mount it again")
    return f"cannot ask the lockerfs mount at {mountpoint}: {exc.strerror or exc}"
