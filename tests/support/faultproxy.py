"""An HTTP-aware proxy on 127.0.0.1 that counts S3 requests and injects faults.

Tests put it between a client (boto3, lockerfs, rclone, s3fs) and the test S3
server, to assert how many requests of each kind a step made ("a second upload
PUTs no audio object", "a re-read GETs nothing") and to make chosen requests
fail the way networks and stores do. Only the standard library is used, so it
also runs as a separate process (`python faultproxy.py UPSTREAM_PORT`), where
its memory and counters belong to it alone.

Relaying. One thread accepts; one thread per client connection relays its
HTTP/1.1 requests one at a time over its own upstream connection, opened on
first use and closed when either side closes (so the client sees what it would
see without the proxy). Heads are forwarded byte for byte; bodies are streamed
in pieces of at most READ_SIZE, framed by Content-Length (aws-chunked uploads
included: their framing is Content-Length too) or `Transfer-Encoding: chunked`
in either direction, or by the upstream closing. HEAD, 1xx, 204 and 304
responses have no body. `Expect: 100-continue` is answered by the proxy itself
before it reads the body, and the upstream's own interim responses are dropped:
the client never waits a second for a 100 that a faulted request would not get.

Faults are drawn per request, when its head has arrived:

    http500, http503   the proxy answers with an S3 XML error (InternalError,
                       SlowDown) after reading the body; nothing goes upstream;
                       the connection stays open
    reset_before       RST right after the request head; nothing goes upstream
    stall              nothing is sent (not even 100 Continue) for
                       `stall_seconds` while whatever arrives is swallowed, then
                       the connection closes (FIN); nothing goes upstream
    reset_mid_body     forwarded; the response is cut halfway through its body
                       (through its status line when the body's length is
                       unknown or 0), then RST
    short_body         the same cut, then a clean close (FIN)
    flip_body          forwarded whole, headers untouched, but the first byte of
                       the body flipped: wrong bytes of the right length (not
                       in ALL_KINDS: random schedules only break transport)

Besides faults per request, the whole network can fail (tests of life on a
laptop): `drop_silently` makes every open connection a dead path (never
answered again, never closed: a suspend, a changed network), `reset_connections`
resets them all, `move` changes the proxy's address under its clients, and
`set_latency` delays each response by one round trip (and a new connection's
first one by another, for its handshake).

A queued `fail_next` fault takes precedence over the random schedule. The
schedule is a `random.Random(seed)` consulted once per matching request, reset
by each `set_fault_rate`, so the same requests in the same order meet the same
faults.

Threads and locks: `_lock` guards the records, fault rules, stats and the
registry of open sockets and threads. Only the thread that owns a socket
closes it; `stop` and `set_down` merely shut sockets down, which wakes the
owner from any blocking call, and the owner's close then sends RST (SO_LINGER
is set to 0 first).
"""

from __future__ import annotations

import argparse
import dataclasses
import email.utils
import itertools
import json
import logging
import random
import select
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

log = logging.getLogger(__name__)

ALL_KINDS: tuple[str, ...] = (
    "http500", "http503", "reset_before", "reset_mid_body", "stall", "short_body")
READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024
JOIN_TIMEOUT = 10.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

_S3_ERRORS = {
    "http500": (500, "Internal Server Error", "InternalError",
                "We encountered an internal error. Please try again."),
    "http503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


@dataclass
class RequestRecord:
    """One request as the proxy saw it; `status` is None when no status line reached the client."""

    method: str
    path: str  # percent-decoded, so tests can match object keys as written
    query: str
    status: int | None = None
    fault: str | None = None
    request_bytes: int = 0  # head and body as received from the client
    response_bytes: int = 0  # everything sent to the client, 100 Continue included
    content_type: str | None = None  # the request's Content-Type header, if any
    byte_range: tuple[int, int] | None = None  # [start, end) of a GET's `Range: bytes=a-b`, if it has one


@dataclass
class _Rule:
    """Which requests a fault applies to; `remaining` is None for the random schedule."""

    kinds: tuple[str, ...]
    method: str | None
    path_contains: str | None
    remaining: int | None = None

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method == method)
                and (self.path_contains is None or self.path_contains in path))


class _ProtocolError(Exception):
    """A peer sent something that is not HTTP/1.1 as we frame it; the connection is dropped."""


class _Dropped(Exception):
    """The session must end with RST (an injected reset, or a peer that vanished mid-request)."""


class _Silenced(_Dropped):
    """The session's path died silently (`drop_silently`): it answers nothing more."""


@dataclass
class _Message:
    """The parts of a request or response head that framing and faults need."""

    head: bytes
    first_line: list[str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    @classmethod
    def parse(cls, head: bytes) -> _Message:
        lines = head[:-4].decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _ProtocolError(f"bad header line {line!r}")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        first = lines[0].split(" ", 2)
        if len(first) < 2:
            raise _ProtocolError(f"bad first line {lines[0]!r}")
        return cls(head, first, headers)

    def tokens(self, name: str) -> list[str]:
        return [t.strip().lower() for t in self.headers.get(name, "").split(",") if t.strip()]

    @property
    def chunked(self) -> bool:
        return self.tokens("transfer-encoding")[-1:] == ["chunked"]

    @property
    def content_length(self) -> int | None:
        if self.chunked or "content-length" not in self.headers:
            return None
        try:
            # identical repeated values are legal; anything else is a framing attack
            values = {int(v) for v in self.headers["content-length"].split(",")}
        except ValueError:
            raise _ProtocolError(f"bad Content-Length {self.headers['content-length']!r}") from None
        if len(values) != 1 or min(values) < 0:
            raise _ProtocolError(f"bad Content-Length {self.headers['content-length']!r}")
        return values.pop()

    def wants_close(self, version: str) -> bool:
        connection = self.tokens("connection")
        return "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)


def _byte_range(headers: dict[str, str]) -> tuple[int, int] | None:
    """[start, end) of a single closed `Range: bytes=a-b` (the only kind lockerfs sends), else None."""
    unit, _, spec = headers.get("range", "").partition("=")
    first, dash, last = spec.partition("-")
    if unit.strip() != "bytes" or not dash or not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last) + 1


class _Wire:
    """A socket with a read buffer, so heads can be parsed and bodies streamed piece by piece."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.between_messages = True  # False while a response is being relayed or was cut

    def _fill(self) -> bool:
        data = self.sock.recv(READ_SIZE)
        self.buf += data
        return bool(data)

    def read_head(self) -> bytes | None:
        """The next head, or None if the peer closed cleanly between messages."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise _ProtocolError("head too large")
            if not self._fill():
                if self.buf:
                    raise _Dropped("peer closed inside a head")
                return None
        head = bytes(self.buf[:end + 4])
        del self.buf[:end + 4]
        return head

    def read_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise _ProtocolError("line too long")
            if not self._fill():
                raise _Dropped("peer closed inside a chunked body")
        line = bytes(self.buf[:end + 2])
        del self.buf[:end + 2]
        return line

    def read(self, size: int) -> Iterator[bytes]:
        """Exactly `size` bytes, in pieces of at most READ_SIZE."""
        while size > 0:
            if self.buf:
                piece = bytes(self.buf[:min(size, READ_SIZE)])
                del self.buf[:len(piece)]
            elif not (piece := self.sock.recv(min(size, READ_SIZE))):
                raise _Dropped(f"peer closed with {size} bytes of body missing")
            size -= len(piece)
            yield piece

    def read_chunked(self) -> Iterator[bytes]:
        """A chunked body as raw bytes (size lines, data, trailers), to pass on unchanged."""
        while True:
            line = self.read_line()
            yield line
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ProtocolError(f"bad chunk size line {line!r}") from None
            if size == 0:
                while (trailer := self.read_line()) != b"\r\n":
                    yield trailer
                yield trailer
                return
            yield from self.read(size)
            if (crlf := b"".join(self.read(2))) != b"\r\n":
                raise _ProtocolError(f"chunk not followed by CRLF: {crlf!r}")
            yield crlf

    def read_to_eof(self) -> Iterator[bytes]:
        while self.buf or self._fill():
            piece = bytes(self.buf)
            self.buf.clear()
            yield piece


class FaultProxy:
    """Relays HTTP/1.1 between clients and one upstream on 127.0.0.1, counting and failing requests."""

    def __init__(self, upstream_port: int, port: int | None = None, seed: int = 0,
                 stall_seconds: float = 30.0) -> None:
        self.upstream_port = upstream_port
        self.host = "127.0.0.1"  # `move` changes it
        self.port = port or 0  # the real port is known once start() has bound it
        self._latency = 0.0  # seconds added to each response (`set_latency`)
        self._silenced: set[threading.Thread] = set()  # sessions whose path died (`drop_silently`)
        self.seed = seed
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._records: list[RequestRecord] = []
        self._connections = 0
        self._stats: Counter[str] = Counter()
        self._queued: list[_Rule] = []
        self._schedule: _Rule | None = None
        self._rate = 0.0
        self._rng = random.Random(seed)
        self._request_ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._sessions: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        self._started = self._down = self._stopped = False

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    # lifecycle

    def start(self) -> None:
        if self._started:
            raise RuntimeError("a FaultProxy starts once")
        self._started = True
        self._listen()

    def stop(self) -> None:
        """Close the listener and every connection, and join every thread; safe to call twice."""
        with self._lock:
            self._stopped = True
        self._unlisten()
        self._drop_connections()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def set_down(self, down: bool) -> None:
        """Emulate a dead server: stop listening (clients get ECONNREFUSED) and reset open connections.

        Coming back up listens on the same port again.
        """
        with self._lock:
            if self._stopped or down == self._down:
                return
            self._down = down
        if down:
            self._unlisten()
            self._drop_connections()
        else:
            self._listen()

    def drop_silently(self) -> None:
        """Every open connection becomes a dead path, as after a suspend or a change of
        network: it stays open, whatever the client sends is swallowed, and nothing is
        ever answered again (a response in flight included). New connections are served."""
        with self._lock:
            self._silenced.update(t for t in self._sessions if t.is_alive())

    def reset_connections(self) -> None:
        """Reset (RST) every open connection; new connections are served."""
        self._drop_connections()

    def move(self, host: str, port: int | None = None) -> None:
        """The server's address changes: open connections die silently, nothing listens at
        the old address any more, and the proxy listens at host:port (the same port if None)."""
        self.drop_silently()
        self._unlisten()
        self.host = host
        if port is not None:
            self.port = port
        self._listen()

    def set_latency(self, rtt: float) -> None:
        """Delay every response by `rtt` seconds, and a new connection's first one by
        another `rtt` (its handshake): a link `rtt` long, with no bandwidth limit."""
        if rtt < 0:
            raise ValueError(f"latency must not be negative, not {rtt}")
        with self._lock:
            self._latency = rtt

    def _delay(self) -> None:
        with self._lock:
            latency = self._latency
        if latency:
            time.sleep(latency)

    def _park(self, sock: socket.socket) -> None:
        """Hold a silenced connection open, swallowing what arrives, until the client
        gives up or the proxy stops (which shuts the socket down)."""
        try:
            while sock.recv(READ_SIZE):
                pass
        except OSError:
            pass

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"faultproxy-accept-{self.port}",
            daemon=True)
        self._accept_thread.start()

    def _unlisten(self) -> None:
        listener, thread = self._listener, self._accept_thread
        self._listener = self._accept_thread = None
        if listener is None or thread is None:
            return
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); the accept thread closes it
        except OSError:
            pass
        _join(thread)

    def _drop_connections(self) -> None:
        with self._lock:
            sockets, threads = list(self._sockets), list(self._sessions)
        for sock in sockets:
            _shut(sock)
        for thread in threads:
            _join(thread)

    def _accept_loop(self, listener: socket.socket) -> None:
        with listener:
            while True:
                try:
                    sock, _ = listener.accept()
                except OSError as error:
                    if self._listener is not listener:
                        return
                    log.warning("faultproxy accept failed: %s", error)
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                thread = threading.Thread(target=self._serve, args=(sock,),
                                          name=f"faultproxy-{self.port}", daemon=True)
                with self._lock:
                    refused = self._down or self._stopped
                    if not refused:
                        self._connections += 1
                        self._sessions = {t for t in self._sessions if t.is_alive()}
                        self._sessions.add(thread)
                        self._sockets.add(sock)
                if refused:
                    _reset(sock)
                    continue
                thread.start()

    # what tests read

    def records(self) -> list[RequestRecord]:
        """A copy of every request seen since the last reset, in arrival order."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._records]

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        """Requests seen, optionally of one method or with matching paths.

        Every attempt counts, a faulted one or a client's retry included.
        """
        with self._lock:
            return sum(1 for r in self._records
                       if (method is None or r.method == method)
                       and (path_contains is None or path_contains in r.path))

    def response_bytes(self, method: str | None = None) -> int:
        """Bytes sent to clients (heads and bodies) since the last reset, optionally for one method.

        Call wait_idle first for a final figure: a response still being relayed counts what was sent so far.
        """
        with self._lock:
            return sum(r.response_bytes for r in self._records if method is None or r.method == method)

    @property
    def connections(self) -> int:
        """Client connections accepted: shows whether keep-alive held or a client reconnected."""
        with self._lock:
            return self._connections

    @property
    def stats(self) -> dict[str, int]:
        """Faults injected so far, by kind."""
        with self._lock:
            return dict(self._stats)

    def reset_counts(self) -> None:
        with self._lock:
            self._records.clear()
            self._stats.clear()
            self._connections = 0

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is in flight, so the byte counts of finished requests are final.

        A client can hold a whole response before the proxy's thread has noted
        its last bytes; counts of requests need no wait, they are noted on arrival.
        """
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise TimeoutError(f"{self._in_flight} requests still in flight after {timeout} s")

    # fault control

    def set_fault_rate(self, rate: float, kinds: Sequence[str] = ALL_KINDS, *,
                       method: str | None = None, path_contains: str | None = None) -> None:
        """Fail each matching request with probability `rate`, by a kind drawn from `kinds`.

        Restarts the schedule from the proxy's seed, so what a test does
        before this call does not shift which requests fail after it.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], not {rate}")
        rule = _Rule(_check_kinds(kinds), method, path_contains)
        with self._lock:
            self._rate, self._schedule = rate, rule
            self._rng = random.Random(self.seed)

    def fail_next(self, kind: str, count: int = 1, *, method: str | None = None,
                  path_contains: str | None = None) -> None:
        """Give the next `count` matching requests this fault, ahead of the random schedule."""
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        with self._lock:
            self._queued.append(_Rule(_check_kinds([kind]), method, path_contains, count))

    def _choose_fault(self, method: str, path: str) -> str | None:
        """Called with the lock held, once per request, in arrival order."""
        for rule in self._queued:
            if rule.matches(method, path):
                assert rule.remaining is not None
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._queued.remove(rule)
                return rule.kinds[0]
        if self._schedule and self._rate > 0 and self._schedule.matches(method, path):
            if self._rng.random() < self._rate:
                return self._rng.choice(self._schedule.kinds)
        return None

    # one client connection

    def _serve(self, client_sock: socket.socket) -> None:
        client = _Wire(client_sock)
        upstream: _Wire | None = None
        graceful = True
        try:
            self._delay()  # the handshake's round trip
            while True:
                if not client.buf and upstream and not self._await_request(client, upstream):
                    break
                head = client.read_head()
                if head is None:
                    break
                request = _Message.parse(head)
                method, target, version = (request.first_line + ["HTTP/1.0"])[:3]
                path, _, query = target.partition("?")
                record = self._arrived(method, path, query, len(head), _byte_range(request.headers))
                record.content_type = request.headers.get("content-type")
                self._delay()
                try:
                    if record.fault in _S3_ERRORS:
                        self._drain_request(client, request, record)
                        self._answer_error(client, method, path, record)
                        keep_open = not request.wants_close(version)
                    elif record.fault == "reset_before":
                        raise _Dropped("injected reset_before")
                    elif record.fault == "stall":
                        self._stall(client, record)
                        keep_open = False
                    else:
                        if upstream is None:
                            upstream = self._connect()
                        keep_open = self._relay(client, upstream, request, record)
                        keep_open = keep_open and not request.wants_close(version)
                finally:
                    with self._idle:
                        self._in_flight -= 1
                        self._idle.notify_all()
                if not keep_open:
                    break
        except _Dropped as why:
            graceful = False
            log.debug("faultproxy: connection reset: %s", why)
        except (OSError, _ProtocolError) as error:
            graceful = False
            log.debug("faultproxy: connection dropped: %r", error)
        finally:
            if threading.current_thread() in self._silenced:
                self._park(client_sock)
            with self._lock:
                self._silenced.discard(threading.current_thread())
                self._sockets.discard(client_sock)
                if upstream:
                    self._sockets.discard(upstream.sock)
            if graceful:
                _close(client_sock)
            else:
                _reset(client_sock)
            if upstream and graceful and upstream.between_messages:
                _close(upstream.sock)
            elif upstream:
                _reset(upstream.sock)  # the rest of a response is unread; no one needs it

    def _arrived(self, method: str, path: str, query: str, head_bytes: int,
                 byte_range: tuple[int, int] | None) -> RequestRecord:
        """Note a request as soon as its head is in, so counts are exact once a client call returns."""
        record = RequestRecord(method, unquote(path), query, request_bytes=head_bytes, byte_range=byte_range)
        with self._lock:
            record.fault = self._choose_fault(method, record.path)
            if record.fault:
                self._stats[record.fault] += 1
            self._records.append(record)
            self._in_flight += 1
        return record

    def _await_request(self, client: _Wire, upstream: _Wire) -> bool:
        """Wait for the client's next request; False if the upstream closed (or babbled) meanwhile."""
        poller = select.poll()
        poller.register(client.sock, select.POLLIN)
        poller.register(upstream.sock, select.POLLIN)
        ready = dict(poller.poll())
        return upstream.sock.fileno() not in ready

    def _connect(self) -> _Wire:
        sock = socket.create_connection(("127.0.0.1", self.upstream_port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._down or self._stopped:
                _reset(sock)
                raise _Dropped("proxy going down")
            self._sockets.add(sock)
        return _Wire(sock)

    def _request_body(self, client: _Wire, request: _Message,
                      record: RequestRecord) -> Iterator[bytes]:
        """The request body as raw pieces; answers `Expect: 100-continue` first, so it comes."""
        length = request.content_length
        if not request.chunked and not length:
            return
        if "100-continue" in request.tokens("expect"):
            self._send(client, b"HTTP/1.1 100 Continue\r\n\r\n", record)
        pieces = client.read_chunked() if request.chunked else client.read(length or 0)
        for piece in pieces:
            self._note(record, request=len(piece))
            yield piece

    def _drain_request(self, client: _Wire, request: _Message, record: RequestRecord) -> None:
        for _ in self._request_body(client, request, record):
            pass

    def _answer_error(self, client: _Wire, method: str, path: str, record: RequestRecord) -> None:
        assert record.fault is not None
        status, reason, code, message = _S3_ERRORS[record.fault]
        request_id = f"faultproxy{next(self._request_ids):08d}"
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<Resource>{_xml_escape(path)}</Resource>"
                f"<RequestId>{request_id}</RequestId></Error>").encode()
        head = (f"HTTP/1.1 {status} {reason}\r\n"
                f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
                "Content-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"x-amz-request-id: {request_id}\r\n"
                "\r\n").encode()
        with self._lock:
            record.status = status
        self._send(client, head if method == "HEAD" else head + body, record)

    def _stall(self, client: _Wire, record: RequestRecord) -> None:
        """Say nothing (not even 100 Continue) for stall_seconds, swallowing whatever arrives.

        Ends early only if the client leaves or the proxy stops.
        """
        self._note(record, request=len(client.buf))
        client.buf.clear()
        deadline = time.monotonic() + self.stall_seconds
        poller = select.poll()
        poller.register(client.sock, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            if poller.poll(left * 1000):
                if not (data := client.sock.recv(READ_SIZE)):
                    return
                self._note(record, request=len(data))

    def _relay(self, client: _Wire, upstream: _Wire, request: _Message,
               record: RequestRecord) -> bool:
        """Forward one request and its response; True if both connections stay usable."""
        upstream.between_messages = False
        upstream.sock.sendall(request.head)
        for piece in self._request_body(client, request, record):
            upstream.sock.sendall(piece)
        while True:
            head = upstream.read_head()
            if head is None:
                raise _Dropped("upstream closed without answering")
            response = _Message.parse(head)
            try:
                version, status = response.first_line[0], int(response.first_line[1])
            except ValueError:
                raise _ProtocolError(f"bad status line {response.first_line!r}") from None
            if status >= 200:
                break
        with self._lock:
            record.status = status
        bodiless = request.first_line[0] == "HEAD" or status in (204, 304)
        length = 0 if bodiless else response.content_length
        if bodiless:
            body: Iterator[bytes] = iter(())
        elif response.chunked:
            body = upstream.read_chunked()
        elif length is not None:
            body = upstream.read(length)
        else:
            body = upstream.read_to_eof()
        if record.fault in ("reset_mid_body", "short_body"):
            # no body to cut (or its end unknown): cut the status line, which
            # every client rejects; a cut among headers reads as a complete head
            cut = len(head) + length // 2 if length else head.index(b"\r\n") // 2
            self._send_cut(client, head, body, cut, record)
            if record.fault == "reset_mid_body":
                raise _Dropped("injected reset_mid_body")
            return False
        if record.fault == "flip_body":
            body = _flip_first_byte(body)
        self._send(client, head, record)
        for piece in body:
            self._send(client, piece, record)
        upstream.between_messages = True
        return (length is not None or response.chunked) and not response.wants_close(version)

    def _send_cut(self, client: _Wire, head: bytes, body: Iterator[bytes], cut: int,
                  record: RequestRecord) -> None:
        """Send the response up to byte `cut`, then stop reading the rest."""
        sent = 0
        for piece in itertools.chain([head], body):
            piece = piece[:cut - sent]
            self._send(client, piece, record)
            sent += len(piece)
            if sent >= cut:
                return

    def _send(self, client: _Wire, data: bytes, record: RequestRecord) -> None:
        if threading.current_thread() in self._silenced:
            raise _Silenced("the path died silently")
        client.sock.sendall(data)
        self._note(record, response=len(data))

    def _note(self, record: RequestRecord, request: int = 0, response: int = 0) -> None:
        with self._lock:
            record.request_bytes += request
            record.response_bytes += response


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    unknown = set(kinds) - set(ALL_KINDS) - {"flip_body"}
    if unknown or not kinds:
        raise ValueError(f"fault kinds must be some of {ALL_KINDS + ('flip_body',)}, not {list(kinds)}")
    return tuple(kinds)


def _flip_first_byte(body: Iterator[bytes]) -> Iterator[bytes]:
    flipped = False
    for piece in body:
        if piece and not flipped:
            piece, flipped = bytes([piece[0] ^ 0xFF]) + piece[1:], True
        yield piece


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _shut(sock: socket.socket) -> None:
    """Wake whichever thread blocks on `sock`; that thread's close then sends RST."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN, as a crashed peer or a middlebox would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def _join(thread: threading.Thread) -> None:
    if thread is threading.current_thread():
        return
    thread.join(JOIN_TIMEOUT)
    if thread.is_alive():
        raise RuntimeError(f"{thread.name} did not stop within {JOIN_TIMEOUT} s")


def main(argv: Sequence[str] | None = None) -> None:
    """Run a proxy until SIGTERM or SIGINT, then print what it saw as JSON on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("upstream_port", type=int)
    parser.add_argument("--port", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--kinds", default=",".join(ALL_KINDS))
    parser.add_argument("--stall-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with FaultProxy(args.upstream_port, args.port, args.seed, args.stall_seconds) as proxy:
        proxy.set_fault_rate(args.fault_rate, args.kinds.split(","))
        print(proxy.endpoint, flush=True)
        done.wait()
        proxy.wait_idle()
        records = proxy.records()
    print(json.dumps({
        "requests": Counter(r.method for r in records),
        "faults": proxy.stats,
        "request_bytes": sum(r.request_bytes for r in records),
        "response_bytes": sum(r.response_bytes for r in records),
    }), flush=True)


if __name__ == "__main__":
    main()
