"""Reading tags in worker processes, so that mutagen uses every core.

mutagen is pure Python: in threads it would hold the GIL that the upload's
hashing and network threads need. Each worker process reads one file's tags
(only the head and tail regions, which the upload's own read has just pulled
into the page cache) and sends back a TrackInfo with the embedded front
cover (taken from the same parse: the picture costs no read).

Workers start from a fork server (a clean process with lockerfs.tags already
imported), never by forking the uploader, whose threads may hold locks. They
ignore Ctrl-C: the uploader decides when to stop and shuts them down; if the
uploader is killed, each worker sees it through a pidfd and exits, and the
fork server with them.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from lockerfs.children import context, start_child
from lockerfs.tags import read_track_and_art
from lockerfs.trackinfo import TrackInfo

log = logging.getLogger(__name__)


TrackReading = tuple[TrackInfo, bytes | None]  # the tags, and the embedded front cover if there is one


class TagReader:
    """A pool of processes reading tags (tags.py); one per core by default."""

    def __init__(self, processes: int | None = None) -> None:
        self._pool = ProcessPoolExecutor(max_workers=processes or os.cpu_count() or 1, mp_context=context(),
                                         initializer=start_child, initargs=(os.getpid(),))

    def submit(self, path: Path) -> Future[TrackReading]:
        """Start reading `path`'s tags and front cover; the future raises what
        read_track_info raises."""
        try:
            return self._pool.submit(read_track_and_art, path)
        except BrokenProcessPool:
            return _done_here(path)

    @staticmethod
    def result(future: Future[TrackReading], path: Path) -> TrackReading:
        """The future's (TrackInfo, cover or None); if a worker died under it, read in this thread."""
        try:
            return future.result()
        except BrokenProcessPool:
            log.warning("a tag reader process died; reading %s in the uploader", path)
            return read_track_and_art(path)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _done_here(path: Path) -> Future[TrackReading]:
    future: Future[TrackReading] = Future()
    try:
        future.set_result(read_track_and_art(path))
    except Exception as exc:  # noqa: BLE001 - the caller's future.result() raises it, as from a worker
        future.set_exception(exc)
    return future
