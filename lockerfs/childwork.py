"""Bulk work in a forked child process, off the mount's interpreter.

Writing the catalog copy of 300,000 tracks is seconds of Python. In a thread it
takes the interpreter lock in turns with the thread that answers the kernel, and
each request then waits up to a switch interval for it: a cold mount's first `ls`
took 0.45 s longer, and a scan or a `find` started at mount time shared the copy's
seconds. A forked child runs on another core, sees the catalog exactly as it was
at the fork, and its temporaries (160 MB at their peak at 300,000 tracks) never
join the mount's heap. The cost: pages the child touches are copied (it reads
the whole catalog), a few seconds' worth of extra memory on the machine.

The child must not act on what the mount shares with the kernel or others. It
closes every inherited descriptor but the one it reports on (a child holding
/dev/fuse would keep a dead mount's requests waiting), restores default signal
handling (so that `kill` ends it), takes a command line of its own (so that
whoever looks for the mount's process does not find it), and leaves with os._exit: no cleanup of the
parent's objects runs in it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import setproctitle
import trio

REASON_MAX = 2000  # bytes of the child's one-line reason kept


class ChildFailed(Exception):
    """The child's work raised (the message is its reason) or the child died."""


async def run_in_child(work: Callable[[], None], nice: int, title: str) -> None:
    """Run work() in a forked child at CPU priority `nice`, and wait for it without
    blocking the trio loop. If the waiting task is cancelled, the child is killed.
    `title` is the child's command line in ps and /proc (not the mount's, which scripts
    look for)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:  # out of memory or processes: like a failed write, for the caller
        os.close(read_end)
        os.close(write_end)
        raise ChildFailed(f"cannot start a process: {exc.strerror or exc}") from None
    if pid == 0:
        os.close(read_end)
        _be_child(work, nice, title, write_end)
    os.close(write_end)
    try:
        reason = await _read_to_end(read_end)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(read_end)
    _, status = await trio.to_thread.run_sync(os.waitpid, pid, 0)
    if reason:
        raise ChildFailed(reason)
    if status != 0:
        raise ChildFailed(f"the child process ended with status {os.waitstatus_to_exitcode(status)}")


async def _read_to_end(fd: int) -> str:
    """What the child wrote before it exited (its end closes when it does)."""
    parts: list[bytes] = []
    while True:
        await trio.lowlevel.wait_readable(fd)
        part = os.read(fd, 4096)
        if not part:
            return b"".join(parts).decode(errors="replace")
        parts.append(part)


def _be_child(work: Callable[[], None], nice: int, title: str, report: int) -> None:
    """The child's whole life: work(), its failure told on `report`, then _exit."""
    code = 1
    try:
        setproctitle.setproctitle(title)
        signal.set_wakeup_fd(-1)  # the parent's loop set one; it is closed below
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        os.closerange(3, report)
        os.closerange(report + 1, os.sysconf("SC_OPEN_MAX"))
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        work()
        code = 0
    except BaseException as exc:  # noqa: BLE001 - told to the parent, which decides
        try:
            os.write(report, (str(exc) or type(exc).__name__).encode(errors="replace")[:REASON_MAX])
        except OSError:
            pass
    finally:
        os._exit(code)
