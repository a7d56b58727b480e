"""Helper processes of an upload (tag readers, the counter) that end with it.

They start from a fork server (a clean process), never by forking the
uploader, whose threads may hold locks. They ignore Ctrl-C: the uploader
decides when to stop. A worker of a process pool waits on a queue whose write
end it holds itself, so it would never notice a killed uploader, and the fork
server lives as long as any of them: a watcher thread ends each child when
the uploader's pidfd says the uploader has exited.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import select
import signal
import threading
import time


def context() -> multiprocessing.context.BaseContext:
    """The fork server context, with the tag readers' modules loaded once in the server."""
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(["lockerfs.tags"])
    return forkserver


def start_child(uploader: int) -> None:
    """Run first in every child: ignore Ctrl-C, and exit when `uploader` (a pid) is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(uploader,), name="watch-uploader", daemon=True).start()


def _exit_with(uploader: int) -> None:
    try:
        handle = os.pidfd_open(uploader)
    except (AttributeError, OSError):  # no pidfd (old kernel), or the uploader is already gone
        while _alive(uploader):
            time.sleep(1.0)
        os._exit(0)
    select.select([handle], [], [])
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
