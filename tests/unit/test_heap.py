"""lockerfs/heap.py: large temporaries freed after loading are given back to the system."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Frees an 8 MiB block (which raises glibc's mmap threshold by itself), then makes 40
# blocks of 2 MiB, each followed by a small block that stays, frees the large ones and
# prints how much RSS they left behind.
SCRIPT = """
import sys
from lockerfs import heap
if sys.argv[1] == "tuned":
    heap.map_large_blocks()
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024
block = bytearray(8 << 20)
del block
before = rss()
large, small = [], []
for n in range(40):
    large.append(bytearray(2 << 20))
    small.append(bytearray(2000))
del large
print(rss() - before)
"""


def left_behind(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="the tuning is glibc's; other C libraries' allocators ignore it (heap.py)")
def test_freed_large_blocks_leave_no_resident_memory_once_mapped_on_their_own() -> None:
    assert left_behind("default") > 40 << 20  # the holes stay resident
    assert left_behind("tuned") < 8 << 20
