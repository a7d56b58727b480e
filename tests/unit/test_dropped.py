"""lockerfs.dropped: an exception dropped on the read path lets go of what its frames held
at once, not at the collector's next full pass."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from lockerfs import dropped


class Block:
    """Stands for a GET's buffers: something large a frame's locals hold."""


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def failing_read(block: Block) -> None:
    """Fails as urllib3 and our retry loops do: an exception kept in a local of a frame
    its own traceback holds, raised from another."""
    try:
        raise ConnectionResetError("peer reset")
    except ConnectionResetError as cause:
        failure = OSError("the body broke")
        failure.__cause__ = cause
    raise failure


def test_a_dropped_exception_frees_what_its_frames_held(no_collector: None) -> None:
    block = Block()
    held = weakref.ref(block)
    try:
        failing_read(block)
    except OSError as exc:
        caught = exc
    del block
    assert held() is not None, "the cycle through the frame should hold the block (else this test shows nothing)"
    dropped.drop(caught)
    del caught
    assert held() is None


def test_drop_survives_a_cycle_of_causes_and_a_frame_still_running(no_collector: None) -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    try:
        raise first
    except ValueError as exc:
        dropped.drop(exc)  # this frame is running: left alone, and no error
    assert first.__context__ is second
