"""Walking the folders given to upload: streaming, in constant memory, whatever the tree's size.

A collection can hold hundreds of thousands of files, and the upload must
start on the first of them within seconds. So nothing here lists a tree
before yielding from it: files come straight from os.scandir's iterator (the
kernel hands out directory entries in batches), and only the subfolders still
to visit are remembered. Memory grows with the depth and breadth of pending
folders, never with the number of files.

Files within one folder come in the order the file system lists them, which
is stable while the folder is unchanged; subfolders are visited in name order.

count() is the same walk with a stat per file, for the progress bar's totals;
count_in_child() runs it in a helper process, where its stats and its
Python take nothing from the upload's threads.
"""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import Connection
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lockerfs import children

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceFile:
    root: Path  # the folder (or file) named on the command line
    path: Path

    @property
    def relative(self) -> str:
        """The path below the given folder, as valid text (undecodable bytes become U+FFFD)."""
        relative = self.path.name if self.root == self.path else self.path.relative_to(self.root).as_posix()
        return os.fsencode(relative).decode("utf-8", "replace")


def walk(paths: Iterable[Path]) -> Iterator[SourceFile]:
    """Every entry under the given paths that is not a folder; symlinked folders are not followed.

    Entries that are not regular files (FIFOs, sockets, devices, broken
    symlinks) are yielded too, so that the run reports them as skipped rather
    than leaving them out without a word; nothing here opens them.
    """
    for given in paths:
        root = given.absolute()
        if not root.is_dir():
            yield SourceFile(root, root)
            continue
        for entry in _entries(root):
            yield SourceFile(root, Path(entry.path))


def count(paths: Iterable[Path]) -> Iterator[tuple[int, int]]:
    """(files, bytes) found so far, every few hundred files and once at the end.

    Runs beside the upload so that the progress bar knows the whole job's
    size early; a file that cannot be stat'ed counts with 0 bytes.
    """
    files = size = 0
    for given in paths:
        root = given.absolute()
        entries = _entries(root) if root.is_dir() else iter([root])
        for entry in entries:
            files += 1
            try:
                size += entry.stat().st_size
            except OSError:
                pass
            if files % 500 == 0:
                yield files, size
    yield files, size


def count_in_child(paths: Iterable[Path]) -> Iterator[tuple[int, int]]:
    """count(paths), computed by a helper process; ends early if that process dies."""
    context = children.context()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_count_to, args=([Path(p) for p in paths], send, os.getpid()),
                            name="count", daemon=True)
    child.start()
    send.close()
    try:
        while True:
            try:
                yield receive.recv()
            except EOFError:
                return
    finally:
        receive.close()


def _count_to(paths: list[Path], send: Connection, uploader: int) -> None:
    children.start_child(uploader)
    with send:
        for totals in count(paths):
            send.send(totals)


def _entries(root: Path) -> Iterator[os.DirEntry[str]]:
    """Non-folder entries below `root`, depth first; unreadable folders are logged and passed over."""
    pending = [str(root)]
    while pending:
        folder = pending.pop()
        subfolders: list[str] = []
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    if _is_folder(entry):
                        subfolders.append(entry.path)
                    else:
                        yield entry
        except OSError as error:
            log.warning("cannot read folder %s: %s", error.filename or folder, error.strerror or error)
        pending.extend(sorted(subfolders, reverse=True))  # popped in name order


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """A real folder (not a symlink to one: following those could loop)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
