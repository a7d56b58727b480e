"""Ranged GETs for the block cache: request slots, priorities, and blocks handed over as they arrive.

A GET is streamed: each block goes to the cache the moment its last byte
arrives, not when the whole response has. So a long request (the rest of a
track being played) costs the reader of its first block one round trip, like
a short one, and one request keeps the link busy where a ramp of growing
requests would leave it idle between them (rclone and mountpoint-s3 stream
the same way).

Slots: the worker threads doing GETs queue on two trio.CapacityLimiters. A
reader's GET takes a foreground slot, prefetch a background one; when a
reader comes to need a block of a background GET still queued, the GET moves
to the foreground queue (hurry), so a player never waits behind prefetch for
bytes it needs now. A running GET keeps its slot until its stream ends.

A GET nobody wants any more (the player seeked away or closed the file) is
stopped: its worker stops reading within 64 KiB and drops the connection, so
the link is not spent on bytes nobody will read.

Threads: the worker only reads the response and hands complete blocks to the
trio thread with TrioToken.run_sync_soon, which runs callbacks in the order
they were submitted, so every block of a GET is delivered before its end is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import trio

from lockerfs.cachestats import CacheStats
from lockerfs.objectref import ObjectRef
from lockerfs.store import Store, StoreError

log = logging.getLogger(__name__)

Deliver = Callable[[int, bytes], None]  # (block index, its bytes), on the trio thread


class _Slot:
    """The worker-thread slot of one GET, in trio's limiter protocol.

    It queues on the background limiter while only prefetch wants its blocks;
    hurry() moves it to the foreground queue. Once a slot is held the GET is
    under way and nothing changes.
    """

    def __init__(self, limiter: trio.CapacityLimiter, foreground: trio.CapacityLimiter) -> None:
        self._want = limiter
        self._foreground = foreground
        self._held: trio.CapacityLimiter | None = None
        self._queue: trio.CancelScope | None = None

    def hurry(self) -> None:
        if self._held is None and self._want is not self._foreground:
            self._want = self._foreground
            if self._queue is not None:
                self._queue.cancel()

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        while True:
            limiter = self._want
            with trio.CancelScope() as self._queue:
                await limiter.acquire_on_behalf_of(borrower)
                self._held = limiter
                return
            # hurry() cancelled the wait: queue again on the foreground limiter

    def release_on_behalf_of(self, borrower: object) -> None:
        assert self._held is not None
        self._held.release_on_behalf_of(borrower)


class Fetch:
    """One streamed ranged GET of the contiguous blocks first..last of an object."""

    def __init__(self, obj: ObjectRef, first: int, last: int, slot: _Slot) -> None:
        self.obj = obj
        self.first = first
        self.last = last
        self._slot = slot
        self._stop = threading.Event()

    def hurry(self) -> None:
        """A reader waits for one of its blocks: take a foreground slot if still queued."""
        self._slot.hurry()

    def stop(self) -> None:
        """Nobody wants the blocks not yet delivered: end the GET (the rest fail as stopped)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


class _Assembler:
    """Worker-thread side: cuts the incoming byte stream into blocks and hands each over."""

    def __init__(self, block_size: int, first: int, hand_over: Deliver) -> None:
        self._block_size = block_size
        self._buffer = bytearray()
        self._hand_over = hand_over
        self.next_index = first  # the first block not yet handed over

    def feed(self, chunk: bytes) -> None:
        size = self._block_size
        if not self._buffer and len(chunk) == size:  # the common case: no copy
            self._hand(chunk)
            return
        self._buffer += chunk
        while len(self._buffer) >= size:
            self._hand(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def flush(self) -> None:
        """The stream reached the object's end: its last block may be short."""
        if self._buffer:
            self._hand(bytes(self._buffer))
            self._buffer.clear()

    def _hand(self, block: bytes) -> None:
        self._hand_over(self.next_index, block)
        self.next_index += 1


class Fetcher:
    """Starts streamed GETs on worker threads and reports each block and each end."""

    def __init__(self, store: Store, block_size: int, *, foreground_slots: int, background_slots: int,
                 stats: CacheStats) -> None:
        self._store = store
        self._block_size = block_size
        self._foreground = trio.CapacityLimiter(foreground_slots)
        self._background = trio.CapacityLimiter(background_slots)
        self._stats = stats

    def start(self, obj: ObjectRef, first: int, last: int, *, urgent: bool, deliver: Deliver,
              ended: Callable[[Fetch, int, str | None], None]) -> Fetch:
        """GET blocks first..last in the background.

        `deliver(index, data)` gets each block as it arrives; then `ended(fetch,
        next_index, error)` says where delivery stopped (blocks next_index..last
        will not come) and why (None: all came, or the fetch was stopped).
        Both run on the trio thread and must not raise.
        """
        fetch = Fetch(obj, first, last,
                      _Slot(self._foreground if urgent else self._background, self._foreground))
        trio.lowlevel.spawn_system_task(self._run, fetch, deliver, ended, name=f"lockerfs GET {obj.key}")
        return fetch

    async def _run(self, fetch: Fetch, deliver: Deliver, ended: Callable[[Fetch, int, str | None], None]) -> None:
        obj, size = fetch.obj, self._block_size
        start, end = fetch.first * size, min((fetch.last + 1) * size, obj.size)
        token = trio.lowlevel.current_trio_token()
        assembler = _Assembler(size, fetch.first, lambda index, data: token.run_sync_soon(deliver, index, data))
        self._stats.requests += 1
        self._stats.misses += fetch.last - fetch.first + 1
        error = None
        try:
            # Abandoned only when trio itself shuts down; the slot stays taken
            # until the thread really ends, so the pool is never oversubscribed.
            got = await trio.to_thread.run_sync(self._stream, fetch, start, end, assembler,
                                                limiter=fetch._slot, abandon_on_cancel=True)
        except StoreError as err:
            error = str(err)
        except Exception as err:  # a bug in a store; the waiters must still hear of it
            log.exception("reading %s bytes %d-%d", obj.key, start, end - 1)
            error = f"reading {obj.key} failed: {err!r}"
        else:
            self._stats.fetched_bytes += got
            log.debug("GET %s bytes %d-%d: %d bytes%s", obj.key, start, end - 1, got,
                      " (stopped)" if fetch.stopped and got < end - start else "")
            if got < end - start and not fetch.stopped:
                error = (f"the store returned {got} bytes of {obj.key} at {start} "
                         f"where {end - start} were asked for")
        if error is not None:
            self._stats.failed_requests += 1
            log.debug("GET %s bytes %d-%d: %s", obj.key, start, end - 1, error)
        elif assembler.next_index <= fetch.last:
            self._stats.stopped_requests += 1
        ended(fetch, assembler.next_index, error)

    def _stream(self, fetch: Fetch, start: int, end: int, assembler: _Assembler) -> int:
        """Worker thread: the GET itself; returns the bytes received."""
        got = self._store.get_range_stream(fetch.obj.key, start, end, assembler.feed, fetch._stop)
        if got == end - start:
            assembler.flush()
        return got
