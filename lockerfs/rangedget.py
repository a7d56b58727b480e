"""Ranged GETs by signed URL: a mount's many small reads without botocore's cost per request.

A tag scan makes about three ranged GETs a track, an MPD update more.
botocore spends about 1.7 ms of CPU on each (event hooks, serializing,
signing, parsing the reply) where the HTTP exchange itself needs about
0.4 ms (measured on this 2-core machine against `rclone serve s3`). During
a scan that CPU is taken from the FUSE loop answering the scanner: reads
waited in the kernel for the loop longer than they waited for the network.

So a ranged GET goes as a plain HTTP GET of a URL signed once per object
(SigV4 query signing, done locally, by S3Store.presign_get) and reused for
URL_REUSE_SECONDS, through the botocore client's own urllib3 session: the
same pools, TLS verification and proxies, so FreshConnections still guards
them. What botocore did on this path is done the same way here:

- 5xx, 429, throttling codes and connection failures are retried with
  botocore's standard backoff, up to the policy's attempts; before the
  endpoint has ever answered, a connection failure is final (FirstContact);
- any other answer that is not the bytes (a redirect to the bucket's region,
  a 403 from credentials that changed, a 404) is not interpreted here: the
  caller sends that request through botocore, which knows them all
  (`Delegate`). A redirect or a 400 turns signed URLs off for the store.

A signed URL carries the access key id and a signature: it is never logged,
and exceptions raised here name the endpoint only.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import botocore.exceptions
import urllib3.exceptions
from botocore.awsrequest import AWSRequest, AWSResponse
from cachetools import LRUCache

from lockerfs import dropped
from lockerfs.connections import FreshConnections

log = logging.getLogger(__name__)

URL_LIFETIME_SECONDS = 3600
URL_REUSE_SECONDS = 1800  # half its life: a URL in use never expires during a request and its retries
URL_MEMORY = 4096  # objects whose signed URL is kept
ERROR_BODY_MAX = 64 * 1024  # bytes of an error reply read for its code
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
                             "InternalError", "ServiceUnavailable"})
THROTTLING_CODES = frozenset({"Throttling", "ThrottlingException", "ThrottledException", "SlowDown",
                              "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
                              "BandwidthLimitExceeded", "RequestThrottled"})
THROTTLING_BASE_S = 1.0  # botocore's standard backoff: rand(0, 1) * min(base * 2 ** i, 20)
TRANSIENT_BASE_S = 0.05
MAX_BACKOFF_S = 20.0


class Delegate(Exception):
    """An answer this path does not interpret; botocore should send the request. `lasting`:
    the endpoint wants something of every request (a region, a signature style)."""

    def __init__(self, status: int, lasting: bool) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.lasting = lasting


class SignedRangeGets:
    """Sends ranged GETs by signed URL through a botocore client's HTTP session."""

    def __init__(self, sign: Callable[[str], str], session: Any, first_contact: Any, attempts: int,
                 endpoint: str) -> None:
        self._sign = sign  # relative key -> URL
        self._session = session  # botocore URLLib3Session
        self._first_contact = first_contact
        self._attempts = attempts
        self._endpoint = endpoint
        self._urls: LRUCache[str, tuple[float, str]] = LRUCache(maxsize=URL_MEMORY)
        self._lock = threading.Lock()
        self.enabled = True

    def open(self, key: str, start: int, end: int, connections: FreshConnections) -> AWSResponse:
        """The reply to GET bytes [start, end) of `key`, its body not yet read; status 200 or 206.
        `connections` guards the session's pool (the store's, whichever it holds now).

        Raises Delegate for an answer botocore should handle, and botocore's own
        exceptions (scrubbed of the URL) for failures that outlived the retries."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        for attempt in range(1, self._attempts + 1):
            request = AWSRequest(method="GET", url=self._url(key), headers=headers).prepare()
            request.stream_output = True
            connections.check()
            failure: Exception | None = None
            try:
                response = self._session.send(request)
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
                connections.failed(exc)
                failure = _scrubbed(exc, self._endpoint)
                dropped.drop(exc)
            if failure is not None:  # raised out here, so that it carries no context naming the URL
                final = attempt == self._attempts or (
                    not self._first_contact.answered and isinstance(failure, botocore.exceptions.ConnectionError))
                try:
                    if final:
                        raise failure
                finally:
                    del failure  # its traceback holds this frame (lockerfs.dropped)
                time.sleep(_backoff(attempt, TRANSIENT_BASE_S))
                continue
            self._first_contact.answered = True
            status = response.status_code
            if status in (200, 206):
                connections.touch()
                return response
            code = _error_code(response)
            if status in TRANSIENT_STATUSES or status == 429 or code in TRANSIENT_CODES | THROTTLING_CODES:
                connections.touch()
                if attempt == self._attempts:
                    raise botocore.exceptions.ClientError(
                        {"Error": {"Code": code or str(status), "Message": ""},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
                throttled = status == 429 or code in THROTTLING_CODES
                time.sleep(_backoff(attempt, THROTTLING_BASE_S if throttled else TRANSIENT_BASE_S))
                continue
            self._forget(key)  # a 403 may be a URL signed with credentials since replaced
            raise Delegate(status, lasting=300 <= status < 400 or status == 400)
        raise AssertionError("unreachable")

    def _url(self, key: str) -> str:
        now = time.monotonic()
        with self._lock:
            signed = self._urls.get(key)
        if signed is not None and now - signed[0] < URL_REUSE_SECONDS:
            return signed[1]
        url = self._sign(key)
        with self._lock:
            self._urls[key] = (now, url)
        return url

    def _forget(self, key: str) -> None:
        with self._lock:
            self._urls.pop(key, None)


class SignedBody:
    """The body of a signed GET, read as botocore's StreamingBody reads one (the same
    exceptions, a body shorter than its Content-Length is an IncompleteReadError), but
    naming the endpoint where botocore would name the URL."""

    def __init__(self, reply: AWSResponse, length: int | None, endpoint: str) -> None:
        self._raw = reply.raw
        self._length = length
        self._endpoint = endpoint
        self._read = 0

    def read(self, amount: int) -> bytes:
        failure: Exception | None = None
        try:
            chunk = self._raw.read(amount)
        except urllib3.exceptions.ReadTimeoutError as exc:
            failure = botocore.exceptions.ReadTimeoutError(endpoint_url=self._endpoint, error=exc)
            dropped.drop(exc)
        except urllib3.exceptions.ProtocolError as exc:
            failure = botocore.exceptions.ResponseStreamingError(error=exc)
            dropped.drop(exc)
        if failure is not None:
            try:
                raise failure
            finally:
                del failure  # its traceback holds this frame (lockerfs.dropped)
        self._read += len(chunk)
        if not chunk and amount > 0 and self._length is not None and self._read < self._length:
            raise botocore.exceptions.IncompleteReadError(actual_bytes=self._read, expected_bytes=self._length)
        return chunk

    def close(self) -> None:
        self._raw.close()


def _backoff(attempt: int, base: float) -> float:
    return random.random() * min(base * 2 ** (attempt - 1), MAX_BACKOFF_S)


def _error_code(response: AWSResponse) -> str:
    """The <Code> of an S3 error reply ('' if there is none); the body is read and released."""
    try:
        body = response.raw.read(ERROR_BODY_MAX) or b""
    except Exception:  # noqa: BLE001 - a broken error body says nothing more than its status
        body = b""
    finally:
        response.raw.release_conn()
    match = re.search(rb"<Code>([^<]{1,100})</Code>", body)
    return match[1].decode("ascii", "replace") if match else ""


def _scrubbed(exc: Exception, endpoint: str) -> Exception:
    """The same kind of botocore exception, naming the endpoint instead of the signed URL."""
    kwargs = {name: (endpoint if name == "endpoint_url" else value)  # urllib3's `error` names the host only
              for name, value in exc.kwargs.items() if name != "request"}  # type: ignore[attr-defined]
    try:
        return type(exc)(**kwargs)
    except (KeyError, TypeError):
        return botocore.exceptions.EndpointConnectionError(endpoint_url=endpoint, error=type(exc).__name__)
