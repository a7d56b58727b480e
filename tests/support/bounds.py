"""Timing bounds for tests, derived from the lockerfs constants they check.

A bound is the constant plus a margin that is a fraction of it: room for a
loaded 2-core machine, too little to hide a second wait of any kind. Times
are taken with time.monotonic.
"""

from __future__ import annotations

import inspect

from lockerfs.cache import BlockCache

# A read the mount cannot serve fails with EIO after at most this long. It is
# BlockCache's default `read_deadline` today (the mount passes none); when it
# becomes a named constant, import that here instead.
READ_DEADLINE: float = inspect.signature(BlockCache).parameters["read_deadline"].default
MARGIN = 0.15  # of the constant a bound is built from
EIO_WITHIN = READ_DEADLINE * (1 + MARGIN)


def within(seconds: float) -> float:
    """The bound for something promised within `seconds`."""
    return seconds * (1 + MARGIN)
