"""A WAN in user space: a TCP proxy that adds latency and a bandwidth limit, and counts.

The kernel here has no netem qdisc, so the benchmark puts this proxy between
the mounts and the local S3 server. It models one shared link:

* Bandwidth: every chunk read from either side of any connection reserves
  time on one virtual link (a token bucket without burst): it finishes
  crossing at `max(now, link_free) + len / rate`. The link is shared by all
  connections and both directions, as the benchmark issue asks; requests are
  tiny, so sharing the upstream direction costs the downstream next to nothing.
* Latency: a chunk is delivered one-way-delay after it has crossed the link.
  Delivery is scheduled by timestamp, so latency and bandwidth overlap the way
  they do on a real link (a sleep per chunk would serialize them).
* Connection set-up: a new connection's first bytes leave one RTT after the
  accept, as a TCP handshake would make them (no TLS is modelled).
* Back-pressure: each direction of a connection holds at most `buffer_bytes`
  in flight, then stops reading, as a TCP window would. The default is one
  bandwidth-delay product: enough for one stream to fill the link (the proxy
  learns of free room at once, with no ACK coming back), and no more, so a
  client that abandons a download (rclone cancels long ranges) wastes about
  what it would on a real link, not a deep buffer's worth of link time.
  Slow start is not modelled: a new connection may use its whole window at once.

Counters live in shared memory so the benchmark (another process) reads them
while the proxy runs: bytes each way (counted as they enter the link), TCP
connections, and HTTP requests by method, found by parsing the request stream
(request line, Content-Length or chunked body), so keep-alive and pipelining
are counted exactly.

Run `python scripts/wanproxy.py --selfcheck [--rtt-ms 30 --mbit 200]` to prove
that measured RTT and bulk rate are within 10 % of the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import multiprocessing.sharedctypes
import signal
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, fields

READ_SIZE = 256 * 1024
MIN_WINDOW = 256 * 1024
METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")
TOLERANCE = 0.10
# asyncio's epoll waits round timeouts up to whole milliseconds, which would make
# every delivery 0.5 ms late on average; waking this much early centres the error.
TIMER_SLACK_S = 0.0005


@dataclass(frozen=True)
class Stats:
    """What crossed the emulated WAN; subtract two snapshots to get one step's share."""

    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client
    connections: int = 0
    requests: int = 0
    get: int = 0
    head: int = 0
    put: int = 0
    post: int = 0
    delete: int = 0
    other: int = 0

    def __sub__(self, other: Stats) -> Stats:
        return Stats(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(Stats)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(Stats)}


_SLOT = {f.name: i for i, f in enumerate(fields(Stats))}


class Link:
    """One shared virtual link: reserves serialization time, returns delivery time."""

    def __init__(self, mbit: float, one_way_s: float, counters: list[int]) -> None:
        self.bytes_per_s = mbit * 1e6 / 8
        self.one_way_s = one_way_s
        self.free_at = 0.0
        self.counters = counters

    def send(self, size: int, now: float, not_before: float, upstream: bool) -> float:
        """Put `size` bytes on the link; the monotonic time they reach the far side."""
        start = max(now, not_before, self.free_at)
        self.free_at = start + size / self.bytes_per_s
        self.counters[_SLOT["bytes_up" if upstream else "bytes_down"]] += size
        return self.free_at + self.one_way_s

    def slice_size(self) -> int:
        """Chunks are scheduled in slices of ~2 ms of link time, so a big read does
        not hold back its first bytes until the whole read has been serialized."""
        return int(min(64 * 1024, max(8 * 1024, self.bytes_per_s * 0.002)))


class RequestCounter:
    """Counts HTTP/1.x requests in a client's byte stream, whatever the chunking.

    States: reading a header block, skipping a Content-Length body, or walking
    a chunked body. Anything unparsable stops counting on that connection
    rather than inventing requests.
    """

    MAX_HEADER = 256 * 1024

    def __init__(self, counters: list[int]) -> None:
        self.counters = counters
        self.buffer = b""
        self.body_left = 0
        self.chunked = False
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buffer += data
        while self.buffer and not self.broken:
            if self.body_left:
                taken = min(self.body_left, len(self.buffer))
                self.buffer = self.buffer[taken:]
                self.body_left -= taken
            elif self.chunked:
                if not self._next_chunk():
                    return
            elif not self._next_request():
                return

    def _next_request(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            self.broken = len(self.buffer) > self.MAX_HEADER
            return False
        head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
        lines = head.split("\r\n")
        method = lines[0].split(" ", 1)[0].upper()
        self.counters[_SLOT["requests"]] += 1
        self.counters[_SLOT[method.lower() if method in METHODS else "other"]] += 1
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        self.chunked = "chunked" in headers.get("transfer-encoding", "")
        try:
            self.body_left = 0 if self.chunked else int(headers.get("content-length", "0"))
        except ValueError:
            self.broken = True
        return True

    def _next_chunk(self) -> bool:
        """One chunk header (and its data, skipped via body_left); the last chunk's
        trailer section ends at an empty line."""
        end = self.buffer.find(b"\r\n")
        if end < 0:
            return False
        line, rest = self.buffer[:end], self.buffer[end + 2:]
        try:
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        except ValueError:
            self.broken = True
            return False
        if size:
            self.buffer, self.body_left = rest, size + 2  # data + its CRLF
            return True
        trailer_end = rest.find(b"\r\n") if rest.startswith(b"\r\n") else rest.find(b"\r\n\r\n")
        if trailer_end < 0:
            return False
        self.buffer = rest[trailer_end + (2 if rest.startswith(b"\r\n") else 4):]
        self.chunked = False
        return True


class Pump:
    """One direction of one connection: read, stamp with a delivery time, deliver on time."""

    def __init__(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 upstream: bool, not_before: float) -> None:
        self.proxy = proxy
        self.reader, self.writer = reader, writer
        self.upstream = upstream
        self.not_before = not_before
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.more = asyncio.Event()  # something was queued (or the source ended)
        self.room = asyncio.Event()  # in-flight bytes fell below the window
        self.room.set()
        self.ended = False
        self.counter = RequestCounter(proxy.counters) if upstream else None

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        link, step = self.proxy.link, self.proxy.link.slice_size()
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                if self.counter:
                    self.counter.feed(data)
                now = loop.time()
                for offset in range(0, len(data), step):
                    piece = data[offset:offset + step]
                    self.queue.append((link.send(len(piece), now, self.not_before, self.upstream), piece))
                self.queued += len(data)
                if self.queued >= self.proxy.buffer_bytes:
                    self.room.clear()
                self.more.set()
        finally:
            self.ended = True
            self.more.set()

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                if self.ended:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                self.more.clear()
                await self.more.wait()
                continue
            due, piece = self.queue[0]
            wait = due - loop.time() - TIMER_SLACK_S
            if wait > 0:
                await asyncio.sleep(wait)
            self.queue.popleft()
            self.writer.write(piece)
            self.queued -= len(piece)
            if self.queued < self.proxy.buffer_bytes:
                self.room.set()
            await self.writer.drain()


class Proxy:
    """The asyncio side: accepts clients and joins each to a new upstream connection."""

    def __init__(self, upstream_port: int, rtt_ms: float, mbit: float, counters: list[int],
                 buffer_bytes: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.rtt_s = rtt_ms / 1000
        self.counters = counters
        self.link = Link(mbit, self.rtt_s / 2, counters)
        bdp = int(self.link.bytes_per_s * self.rtt_s)
        self.buffer_bytes = buffer_bytes or max(MIN_WINDOW, bdp)

    async def serve(self, sock: socket.socket) -> None:
        server = await asyncio.start_server(self.handle, sock=sock, limit=2 * READ_SIZE)
        async with server:
            await server.serve_forever()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.counters[_SLOT["connections"]] += 1
        opened = asyncio.get_running_loop().time() + self.rtt_s
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port,
                                                               limit=2 * READ_SIZE)
        except OSError:
            client_w.close()
            return
        for writer in (client_w, server_w):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = Pump(self, client_r, server_w, upstream=True, not_before=opened)
        down = Pump(self, server_r, client_w, upstream=False, not_before=opened)
        tasks = [asyncio.create_task(coro) for coro in
                 (up.read_loop(), up.write_loop(), down.read_loop(), down.write_loop())]
        try:
            await self._until_done(tasks)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()

    @staticmethod
    async def _until_done(tasks: list[asyncio.Task[None]]) -> None:
        """Both directions delivered everything, or one side failed (reset, closed):
        then the connection is torn down, as a broken TCP connection would be."""
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(task.exception() for task in done if not task.cancelled()):
                return


def _serve(sock: socket.socket, upstream_port: int, rtt_ms: float, mbit: float,
           counters: list[int]) -> None:
    """Entry point of the proxy process; the parent stops it with SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not whatever handler the parent had
    asyncio.run(Proxy(upstream_port, rtt_ms, mbit, counters).serve(sock))


class WanProxy:
    """The proxy in its own process (so the benchmark's own Python never slows it)."""

    def __init__(self, upstream_port: int, rtt_ms: float = 30.0, mbit: float = 200.0) -> None:
        self.upstream_port = upstream_port
        self.rtt_ms, self.mbit = rtt_ms, mbit
        self.counters = multiprocessing.sharedctypes.RawArray("q", len(_SLOT))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port: int = self.sock.getsockname()[1]
        self.process: multiprocessing.Process | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        context = multiprocessing.get_context("fork")
        self.process = context.Process(target=_serve, daemon=True, name="wanproxy", args=(
            self.sock, self.upstream_port, self.rtt_ms, self.mbit, self.counters))
        self.process.start()

    def stop(self) -> None:
        if self.process and self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.sock.close()

    def stats(self) -> Stats:
        return Stats(*self.counters[:])

    def __enter__(self) -> WanProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- self-check ---------------------------------------------------------------

class _TestServer:
    """Upstream for the self-check: `P` is echoed; `D<n>\\n` is answered with n bytes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.sock.close()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        block = b"\0" * READ_SIZE
        with conn, conn.makefile("rb") as stream:
            while command := stream.read(1):
                if command == b"P":
                    conn.sendall(b"P")
                elif command == b"D":
                    left = int(stream.readline())
                    while left > 0:
                        conn.sendall(block[:left])
                        left -= min(left, len(block))


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def measure_rtt(port: int, rounds: int = 15) -> float:
    """Median ms of a one-byte ping-pong on an established connection."""
    with _connect(port) as sock:
        sock.sendall(b"P")
        sock.recv(1)  # the first exchange also pays the emulated handshake
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            sock.sendall(b"P")
            sock.recv(1)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_rate(port: int, size: int, rtt_s: float, streams: int = 1) -> float:
    """Aggregate Mbit/s of `streams` parallel downloads of `size` bytes each,
    not counting the first round trip (the request's own latency)."""
    socks = [_connect(port) for _ in range(streams)]
    for sock in socks:
        sock.sendall(b"P")
        sock.recv(1)
    buf = bytearray(READ_SIZE)

    def drain(sock: socket.socket) -> None:
        left = size
        while left:
            got = sock.recv_into(buf, min(left, len(buf)))
            if not got:
                raise ConnectionError("self-check stream closed early")
            left -= got

    threads = [threading.Thread(target=drain, args=(sock,)) for sock in socks]
    start = time.perf_counter()
    for sock in socks:
        sock.sendall(b"D%d\n" % size)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for sock in socks:
        sock.close()
    return size * streams * 8 / 1e6 / max(elapsed - rtt_s, 1e-6)


def _within(measured: float, target: float, floor: float) -> bool:
    return abs(measured - target) <= max(target * TOLERANCE, floor)


def selfcheck(rtt_ms: float, mbit: float, seconds: float = 2.0) -> tuple[bool, dict[str, float]]:
    """Measure the emulator against its settings: RTT, one stream's rate, and two
    parallel streams' total (proves the limit is shared, not per connection)."""
    upstream = _TestServer()
    try:
        with WanProxy(upstream.port, rtt_ms, mbit) as proxy:
            rtt = measure_rtt(proxy.port)
            size = int(mbit * 1e6 / 8 * seconds)
            single = measure_rate(proxy.port, size, rtt / 1000)
            shared = measure_rate(proxy.port, size // 2, rtt / 1000, streams=2)
            cpu = proxy_cpu_seconds(proxy)
    finally:
        upstream.close()
    figures = {"rtt_ms": rtt, "rate_mbit": single, "two_streams_mbit": shared,
               "proxy_cpu_s": cpu}
    # 1.5 ms: waking three idle processes on this VM costs about that per round trip.
    ok = (_within(rtt, rtt_ms, 1.5) and _within(single, mbit, 0.0)
          and _within(shared, mbit, 0.0))
    return ok, figures


def proxy_cpu_seconds(proxy: WanProxy) -> float:
    """User + system CPU the proxy process has used so far (from /proc)."""
    assert proxy.process and proxy.process.pid
    with open(f"/proc/{proxy.process.pid}/stat") as stat:
        parts = stat.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / 100  # utime, stime in clock ticks (USER_HZ = 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=30.0)
    parser.add_argument("--mbit", type=float, default=200.0)
    parser.add_argument("--selfcheck", action="store_true", help="measure the emulator and exit")
    parser.add_argument("--upstream-port", type=int, help="serve: proxy to 127.0.0.1:PORT")
    args = parser.parse_args()
    if args.selfcheck:
        ok, figures = selfcheck(args.rtt_ms, args.mbit)
        print(f"settings: RTT {args.rtt_ms:g} ms, {args.mbit:g} Mbit/s")
        print("measured: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
        print("self-check " + ("passed" if ok else "FAILED (more than 10 % off)"))
        return 0 if ok else 1
    if not args.upstream_port:
        parser.error("give --selfcheck or --upstream-port")
    with WanProxy(args.upstream_port, args.rtt_ms, args.mbit) as proxy:
        print(f"WAN proxy on {proxy.endpoint} -> 127.0.0.1:{args.upstream_port}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
