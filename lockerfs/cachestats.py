"""Counters of the block cache, for logs, benchmarks and tests (blocks unless named otherwise)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0  # blocks asked of the store
    joins: int = 0  # waits on a load someone else had started
    requests: int = 0  # GETs sent
    failed_requests: int = 0
    stopped_requests: int = 0  # GETs cut short because nobody wanted the rest any more
    fetched_bytes: int = 0
    timeouts: int = 0  # reads that gave up at read_deadline
    warm_failures: int = 0  # warm() calls that could not fetch everything
    corrupt_blocks: int = 0  # block files that failed their checksum
    corrupt_objects: int = 0  # objects whose cached bytes did not hash to their name
    verified_objects: int = 0
    inset_bytes: int = 0  # bytes of tracks read from the shared object holding them (a cover)
    disk_errors: int = 0
    disk_skipped: int = 0  # not written: the disk lagged too far behind
    evicted_blocks: int = 0  # from disk
