"""Reading tags in worker processes, so that mutagen uses every core.

mutagen is pure Python: in threads it would hold the GIL that the upload's
hashing and network threads need. Each worker process reads one file's tags
(only the head and tail regions, which the upload's own read has just pulled
into the page cache) and sends back a TrackInfo.

Workers start from a fork server (a clean process with lockerfs.tags already
imported), never by forking the uploader, whose threads may hold locks. They
ignore Ctrl-C: the uploader decides when to stop and shuts them down; if the
uploader is killed, each worker sees it through a pidfd and exits, and the
fork server with them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from lockerfs.tags import read_track_info
from lockerfs.trackinfo import TrackInfo

log = logging.getLogger(__name__)


def _start_worker(uploader: int) -> None:
    """Ignore Ctrl-C (the uploader decides when to stop), and exit when the uploader is gone.

    A worker waits on a queue whose write end it holds itself, so it would
    never notice a killed uploader, and the fork server lives as long as any
    worker: a watcher thread ends the worker when the uploader's pidfd says
    the uploader has exited.
    """
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


class TagReader:
    """A pool of processes running tags.read_track_info; one per core by default."""

    def __init__(self, processes: int | None = None) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["lockerfs.tags"])
        self._pool = ProcessPoolExecutor(max_workers=processes or os.cpu_count() or 1, mp_context=context,
                                         initializer=_start_worker, initargs=(os.getpid(),))

    def submit(self, path: Path) -> Future[TrackInfo]:
        """Start reading `path`'s tags; the future raises what read_track_info raises."""
        try:
            return self._pool.submit(read_track_info, path)
        except BrokenProcessPool:
            return _done_here(path)

    @staticmethod
    def result(future: Future[TrackInfo], path: Path) -> TrackInfo:
        """The future's TrackInfo; if a worker died under it, the tags are read in this thread."""
        try:
            return future.result()
        except BrokenProcessPool:
            log.warning("a tag reader process died; reading %s in the uploader", path)
            return read_track_info(path)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _done_here(path: Path) -> Future[TrackInfo]:
    future: Future[TrackInfo] = Future()
    try:
        future.set_result(read_track_info(path))
    except Exception as exc:  # noqa: BLE001 - the caller's future.result() raises it, as from a worker
        future.set_exception(exc)
    return future
