"""Keeping a boto3 client's pooled connections worth reusing on a laptop.

A pooled keep-alive connection can die without a word: the machine slept,
the process was stopped, the laptop moved to another network, a NAT or the
server forgot the flow. Nothing arrives to tell urllib3, whose check before
reuse (is the idle socket readable?) sees a healthy connection; the request
sent on it gets no answer, the reader waits out the read timeout, and
botocore's retry takes the next dead connection from the pool.

So the whole pool is dropped before a request when one of these says its
connections are suspect:

- the machine was suspended since the last request (CLOCK_BOOTTIME ran on
  while CLOCK_MONOTONIC stood still);
- no request started or ended for IDLE_LIMIT seconds (the process was
  stopped, or the network was quiet for long enough to be forgotten);
- one of the machine's IP addresses went away or a new one came (Linux
  rtnetlink): the laptop changed networks;
- a request failed at the connection level (timeout, reset, refused): the
  other pooled connections took the same road.

Dropping closes every idle pooled connection where it lies: urllib3 finds it
closed when it next takes it and connects again, resolving the endpoint's
name anew. Requests in flight are not touched. (botocore's `client.close()`
would close the pools themselves, and a request about to use one would fail
with ClosedPoolError and be retried after a backoff; it is used only if
botocore's internals are not what we expect.) Being wrong costs a connect
(one round trip, plus TLS); a dead connection costs a read timeout.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

import botocore.exceptions
import urllib3.exceptions

log = logging.getLogger(__name__)

IDLE_LIMIT = 30.0  # seconds without a request after which pooled connections are not trusted
SLEEP_NOTICE = 1.0  # seconds of suspend that count as the machine having slept

# Failures after which the pool's other connections are suspect too.
CONNECTION_ERRORS = (botocore.exceptions.ConnectionError, botocore.exceptions.ReadTimeoutError,
                     botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError,
                     urllib3.exceptions.ProtocolError, ConnectionError, TimeoutError)


def _boot_clock() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class FreshConnections:
    """Drops a botocore client's connection pool whenever its connections are suspect."""

    def __init__(self, client: object, *, idle_limit: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 boot_clock: Callable[[], float] = _boot_clock,
                 network: NetworkWatch | None = None) -> None:
        self._client = client
        self._idle_limit = IDLE_LIMIT if idle_limit is None else idle_limit
        self._clock = clock
        self._boot_clock = boot_clock
        self._network = network if network is not None else NetworkWatch()
        self._lock = threading.Lock()
        self._last_activity = clock()
        self._slept = boot_clock() - self._last_activity  # suspended seconds so far, as of the last request
        self.drops = 0  # for logs and tests

    def register(self, events: object, service: str = "s3") -> None:
        """Hook into a client's event system: check before each request, note each attempt's end."""
        events.register(f"before-send.{service}", self._before_send)  # type: ignore[attr-defined]
        events.register(f"needs-retry.{service}", self._after_attempt)  # type: ignore[attr-defined]

    def check(self) -> None:
        """Drop the pool if its connections are suspect; call before sending a request.

        Deciding and dropping happen under one lock: a request that checks
        while another drops waits until the dead connections are closed, and
        cannot take one of them meanwhile (it would wait out a read timeout).
        """
        with self._lock:
            reason = self._suspicion()
            if reason is not None:
                self._drop(reason, quiet=False)

    def failed(self, error: BaseException) -> None:
        """A request failed; a connection-level failure makes the whole pool suspect."""
        with self._lock:
            self._last_activity = self._clock()
            if isinstance(error, CONNECTION_ERRORS):
                self._drop(f"a request failed ({type(error).__name__})", quiet=True)

    def drop(self, reason: str) -> None:
        with self._lock:
            self._drop(reason, quiet=False)

    def _drop(self, reason: str, quiet: bool) -> None:
        """With the lock held. Closing idle sockets does not wait on the network."""
        self.drops += 1
        (log.debug if quiet else log.info)("dropping pooled S3 connections: %s", reason)
        close_idle_connections(self._client)

    def _suspicion(self) -> str | None:
        """With the lock held: why the pool is suspect now, if it is; notes this request."""
        now = self._clock()
        idle = now - self._last_activity
        self._last_activity = now
        slept_total = self._boot_clock() - now
        slept = slept_total - self._slept
        self._slept = slept_total
        network_changed = self._network.changed()  # read every time, so old news never pile up
        if slept > SLEEP_NOTICE:
            return f"the machine slept for {slept:.0f} s"
        if network_changed:
            return "the network changed"
        if idle > self._idle_limit:
            return f"no request for {idle:.0f} s"
        return None

    def touch(self) -> None:
        """A request got its answer: the pool's connections work."""
        with self._lock:
            self._last_activity = self._clock()

    def _before_send(self, **kwargs: object) -> None:
        self.check()

    def _after_attempt(self, caught_exception: BaseException | None = None, **kwargs: object) -> None:
        if caught_exception is None:
            self.touch()
        else:
            self.failed(caught_exception)


def close_idle_connections(client: object) -> None:
    """Close the idle connections of a botocore client's pools, in place.

    Each pool's queue lock is held while its connections are closed, so none
    of them can be taken by a request meanwhile; closing an idle socket does
    not wait on the network.
    """
    try:
        session = client._endpoint.http_session  # type: ignore[attr-defined]
        managers = [session._manager, *session._proxy_managers.values()]
    except AttributeError:
        client.close()  # type: ignore[attr-defined]
        return
    for manager in managers:
        for key in manager.pools.keys():
            pool = manager.pools.get(key)
            idle = getattr(pool, "pool", None)  # a LifoQueue of connections (None: not made yet)
            if idle is None:
                continue
            with idle.mutex:
                for connection in idle.queue:
                    if connection is not None:
                        connection.close()


# --- the machine's addresses, through rtnetlink -------------------------------------

_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV6_IFADDR = 0x100
_RTM_NEWADDR, _RTM_DELADDR, _RTM_GETADDR = 20, 21, 22
_NLMSG_DONE = 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
_IFA_ADDRESS, _IFA_LOCAL = 1, 2

Address = tuple[int, int, bytes]  # family, interface index, address


class NetworkWatch:
    """Tells whether an IP address of this machine came or went since it last asked.

    Listens to the kernel's address notifications (a non-blocking netlink
    socket, read only when asked: no thread). Re-announcements of addresses
    it already knows (IPv6 lifetimes are refreshed every few minutes) are not
    changes. Where netlink is unavailable it never reports a change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[Address] = set()
        self._sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        except (OSError, AttributeError) as exc:
            log.debug("no netlink (%s): network changes go unnoticed until a request fails", exc)
            return
        try:
            sock.bind((0, _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
            self._known = self._current_addresses(sock)
            sock.setblocking(False)
        except OSError as exc:
            log.debug("netlink unusable (%s): network changes go unnoticed until a request fails", exc)
            sock.close()
            return
        self._sock = sock

    def changed(self) -> bool:
        if self._sock is None:
            return False
        changed = False
        with self._lock:
            while True:
                try:
                    data = self._sock.recv(65536)
                except BlockingIOError:
                    return changed
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    changed = True  # notifications were lost: assume the worst
                    continue
                for kind, address in _address_messages(data):
                    if kind == _RTM_DELADDR:
                        changed = changed or address in self._known
                        self._known.discard(address)
                    elif address not in self._known:
                        self._known.add(address)
                        changed = True

    @staticmethod
    def _current_addresses(sock: socket.socket) -> set[Address]:
        """Ask the kernel for every address it has now (blocking, before notifications start)."""
        request = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), _RTM_GETADDR,
                                 _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + request)
        known: set[Address] = set()
        sock.settimeout(2.0)
        while True:
            data = sock.recv(65536)
            done = _NLMSG_DONE in _message_types(data)
            known.update(address for kind, address in _address_messages(data) if kind == _RTM_NEWADDR)
            if done:
                return known


def _message_types(data: bytes) -> list[int]:
    types = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        types.append(kind)
        offset += (length + 3) & ~3
    return types


def _address_messages(data: bytes) -> list[tuple[int, Address]]:
    """(RTM_NEWADDR or RTM_DELADDR, address) for each address message in a netlink datagram."""
    found = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        if kind in (_RTM_NEWADDR, _RTM_DELADDR) and length >= _NLMSGHDR.size + _IFADDRMSG.size:
            family, _, _, _, index = _IFADDRMSG.unpack_from(data, offset + _NLMSGHDR.size)
            attributes = _attributes(data, offset + _NLMSGHDR.size + _IFADDRMSG.size, offset + length)
            address = attributes.get(_IFA_LOCAL) or attributes.get(_IFA_ADDRESS)
            if address is not None:
                found.append((kind, (family, index, address)))
        offset += (length + 3) & ~3
    return found


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    attributes = {}
    while start + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, start)
        if length < _RTATTR.size or start + length > end:
            break
        attributes[kind] = data[start + _RTATTR.size:start + length]
        start += (length + 3) & ~3
    return attributes
