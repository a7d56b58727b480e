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

from lockerfs import dropped
from lockerfs.cachestats import CacheStats
from lockerfs.objectref import ObjectRef
from lockerfs.store import Store, StoreError

log = logging.getLogger(__name__)

Deliver = Callable[[int, int, bytes], None]  # (block index, offset in the block, bytes), on the trio thread


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
    """One streamed ranged GET of bytes [start, end) of an object."""

    def __init__(self, obj: ObjectRef, start: int, end: int, slot: _Slot) -> None:
        self.obj = obj
        self.start = start
        self.end = end
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
    """Worker-thread side: cuts the incoming byte stream at block boundaries and hands over
    each piece (a whole block, or the part of an edge block the GET covers)."""

    def __init__(self, block_size: int, start: int, end: int, hand_over: Deliver) -> None:
        self._block_size = block_size
        self._buffer = bytearray()
        self._hand_over = hand_over
        self._end = end
        self.position = start  # where the next piece handed over starts

    def _piece_end(self) -> int:
        return min(self._end, (self.position // self._block_size + 1) * self._block_size)

    def feed(self, chunk: bytes) -> None:
        want = self._piece_end() - self.position
        if not self._buffer and len(chunk) == want:  # the common case: no copy
            self._hand(chunk)
            return
        self._buffer += chunk
        while self._buffer and len(self._buffer) >= (want := self._piece_end() - self.position):
            self._hand(bytes(self._buffer[:want]))
            del self._buffer[:want]

    def _hand(self, piece: bytes) -> None:
        index, offset = divmod(self.position, self._block_size)
        self._hand_over(index, offset, piece)
        self.position += len(piece)


class Fetcher:
    """Starts streamed GETs on worker threads and reports each block and each end."""

    def __init__(self, store: Store, block_size: int, *, foreground_slots: int, background_slots: int,
                 stats: CacheStats) -> None:
        self._store = store
        self._block_size = block_size
        self._foreground = trio.CapacityLimiter(foreground_slots)
        self._background = trio.CapacityLimiter(background_slots)
        self._stats = stats

    def start(self, obj: ObjectRef, start: int, end: int, *, urgent: bool, deliver: Deliver,
              ended: Callable[[Fetch, int, str | None], None]) -> Fetch:
        """GET bytes [start, end) in the background.

        `deliver(index, offset, data)` gets each piece as it arrives: a whole
        block, or the part of an edge block that [start, end) covers. Then
        `ended(fetch, position, error)` says where delivery stopped (bytes from
        `position` on will not come) and why (None: all came, or the fetch was
        stopped). Both run on the trio thread and must not raise.
        """
        fetch = Fetch(obj, start, end, _Slot(self._foreground if urgent else self._background, self._foreground))
        trio.lowlevel.spawn_system_task(self._run, fetch, deliver, ended, name=f"lockerfs GET {obj.key}")
        return fetch

    async def _run(self, fetch: Fetch, deliver: Deliver, ended: Callable[[Fetch, int, str | None], None]) -> None:
        obj, start, end = fetch.obj, fetch.start, fetch.end
        token = trio.lowlevel.current_trio_token()
        assembler = _Assembler(self._block_size, start, end,
                               lambda index, offset, data: token.run_sync_soon(deliver, index, offset, data))
        self._stats.requests += 1
        self._stats.misses += (end - 1) // self._block_size - start // self._block_size + 1
        error = None
        try:
            # Abandoned only when trio itself shuts down; the slot stays taken
            # until the thread really ends, so the pool is never oversubscribed.
            got = await trio.to_thread.run_sync(self._store.get_range_stream, obj.key, start, end,
                                                assembler.feed, fetch._stop,
                                                limiter=fetch._slot, abandon_on_cancel=True)
        except StoreError as err:
            error = str(err)
            dropped.drop(err)
        except Exception as err:  # a bug in a store; the waiters must still hear of it
            log.exception("reading %s bytes %d-%d", obj.key, start, end - 1)
            error = f"reading {obj.key} failed: {err!r}"
            dropped.drop(err)
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
        elif assembler.position < end:
            self._stats.stopped_requests += 1
        ended(fetch, assembler.position, error)
