"""Timing bounds for tests, derived from the lockerfs constants they check.

A bound is the constant plus a margin that is a fraction of it: room for a
loaded 2-core machine, too little to hide a second wait of any kind. Times
are taken with time.monotonic.
"""

from __future__ import annotations

import inspect
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

from lockerfs.cache import BlockCache
from tests.support.mounting import LOCKERFS

T = TypeVar("T")

# A read the mount cannot serve fails with EIO after at most this long. It is
# BlockCache's default `read_deadline` today (the mount passes none); when it
# becomes a named constant, import that here instead.
READ_DEADLINE: float = inspect.signature(BlockCache).parameters["read_deadline"].default
MARGIN = 0.15  # of the constant a bound is built from
EIO_WITHIN = READ_DEADLINE * (1 + MARGIN)


def within(seconds: float) -> float:
    """The bound for something promised within `seconds`."""
    return seconds * (1 + MARGIN)


QUIET_START = 0.75  # `lockerfs --version` on this 2-core machine at rest (scripts/bench_life.py)


def start_lag(env: dict[str, str]) -> float:
    """How much longer than at rest Python and lockerfs take to start right now (one
    `lockerfs --version`): the suite runs on parallel workers, and a promise that counts
    a command's whole run is meant for a machine at rest."""
    started = time.monotonic()
    subprocess.run([LOCKERFS, "--version"], env=env, capture_output=True, check=True, timeout=60)
    return max(0.0, time.monotonic() - started - QUIET_START)


def runs_until_within(run: Callable[[], T], bound: float, env: dict[str, str], runs: int = 3) -> tuple[list[float], T]:
    """Time `run` up to `runs` times, stopping at the first that ends within `bound`:
    the seconds of each run made, less the start lag measured just before it, and the
    last run's result.

    For a promise that counts a command's whole run. The lag is taken beside each run,
    not once for all: the load of a parallel suite comes and goes within seconds. Each
    run saved is a Python start saved on a loaded machine.
    """
    times: list[float] = []
    while True:
        lag = start_lag(env)
        started = time.monotonic()
        result = run()
        times.append(max(0.0, time.monotonic() - started - lag))
        if times[-1] <= bound or len(times) == runs:
            return times, result
