"""Bulk work in a forked child (lockerfs/childwork.py): what the mount's catalog copy relies on."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import trio

from lockerfs import childwork


TITLE = "lockerfs: a test's child"


def run(work, nice: int = 19) -> None:  # type: ignore[no-untyped-def]
    trio.run(childwork.run_in_child, work, nice, TITLE)


def test_the_work_runs_in_another_process_at_low_priority_under_its_own_title(tmp_path: Path) -> None:
    parent = os.getpid()

    def work() -> None:
        (tmp_path / "out").write_text(f"{os.getpid()} {os.getpriority(os.PRIO_PROCESS, 0)}")
        (tmp_path / "cmdline").write_bytes(Path("/proc/self/cmdline").read_bytes())

    run(work)
    pid, nice = (tmp_path / "out").read_text().split()
    assert int(pid) != parent and int(nice) == 19
    assert (tmp_path / "cmdline").read_bytes().rstrip(b"\0") == TITLE.encode()


def test_the_child_sees_the_state_of_the_fork_not_later_changes(tmp_path: Path) -> None:
    state = {"tracks": 1}

    async def main() -> None:
        def work() -> None:
            time.sleep(0.3)
            (tmp_path / "out").write_text(str(state["tracks"]))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(childwork.run_in_child, work, 19, TITLE)
            await trio.sleep(0.1)
            state["tracks"] = 2  # the parent moves on; the child writes what it forked with

    trio.run(main)
    assert (tmp_path / "out").read_text() == "1"


def test_a_failure_in_the_child_comes_back_as_its_one_line_reason(tmp_path: Path) -> None:
    def work() -> None:
        (tmp_path / "missing" / "copy").write_text("x")

    with pytest.raises(childwork.ChildFailed, match="No such file or directory"):
        run(work)


def test_a_child_that_dies_without_a_word_is_a_failure_too() -> None:
    with pytest.raises(childwork.ChildFailed, match="status -9"):
        run(lambda: os.kill(os.getpid(), 9))


def test_the_child_holds_none_of_the_parents_descriptors(tmp_path: Path) -> None:
    held = os.open(tmp_path, os.O_RDONLY)  # stands for /dev/fuse, sockets, the log file
    try:
        def work() -> None:
            try:
                os.fstat(held)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
            raise AssertionError(f"the child still holds descriptor {held}")

        run(work)
        os.fstat(held)  # the parent's is untouched
    finally:
        os.close(held)


def test_cancelling_the_wait_kills_the_child(tmp_path: Path) -> None:
    def work() -> None:
        (tmp_path / "pid").write_text(str(os.getpid()))
        time.sleep(60)

    async def main() -> None:
        with trio.move_on_after(1.0):
            await childwork.run_in_child(work, 19, TITLE)

    began = time.monotonic()
    trio.run(main)
    assert time.monotonic() - began < 10
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped: no such process any more
        os.kill(pid, 0)
