"""Where a track holds its embedded front cover, byte for byte (objectref.Inset).

Stores and rippers embed the same cover in every track of an album, and a
library scan (mutagen, MPD, TagLib, ffprobe) reads every track's tags,
picture included: on an album of FLAC downloads with 1.4 MB covers that is
most of what a scan moves. Upload already extracts the cover (artwork.py) and
stores it once, as its own object; this module finds where the track holds
those exact bytes, so the mount can read them from the one shared object.

The search is for the picture's bytes, not a parse of each container: a
picture stored raw (ID3 APIC, FLAC PICTURE, MP4 covr, APEv2, ASF) is found
wherever its tag sits; one stored transformed (base64 in Vorbis comments,
ID3 unsynchronisation) is not, and that track simply has no inset. Only the
tag regions are searched (the head, and the tail where a trailing tag or moov
lives), and only bytes upload holds anyway: the whole file when it is read
into memory, else the first and last EDGE bytes of the one read that hashes it.

A record names the inset as {"sha256", "ext", "size", "at"}; like every
catalog field it is untrusted: a bad one is dropped (the track is read from
its own object), never an error.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from lockerfs.asset import EXT_RE, SHA_RE, object_key
from lockerfs.objectref import Inset, ObjectRef

MIN_INSET = 16 * 1024  # a smaller picture costs the mount a request more than it saves
EDGE = 8 * 1024 * 1024  # bytes kept from each end of a file too large to hold whole


@dataclass(frozen=True, slots=True)
class Edges:
    """The bytes of a file that upload holds: `head` from offset 0, `tail` ending at `size`
    (for a file held whole, both are the whole file)."""

    head: bytes
    tail: bytes
    size: int


class EdgeKeeper:
    """Keeps the first and last EDGE bytes of a file streamed through it in chunks."""

    def __init__(self, edge: int = EDGE) -> None:
        self._edge = edge
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self._head) < self._edge:
            self._head += chunk[:self._edge - len(self._head)]
        self._tail.append(chunk)
        self._tail_bytes += len(chunk)
        while self._tail_bytes - len(self._tail[0]) >= self._edge:
            self._tail_bytes -= len(self._tail.popleft())

    def edges(self) -> Edges:
        tail = b"".join(self._tail)
        return Edges(bytes(self._head), tail[-self._edge:] if len(tail) > self._edge else tail, self.size)


def locate(picture: bytes, edges: Edges, head_size: int, tail_size: int) -> int | None:
    """The offset at which the file holds `picture` within its tag regions, or None."""
    if len(picture) < MIN_INSET:
        return None
    if head_size > 0:
        at = edges.head.find(picture, 0, min(head_size, len(edges.head)))
        if at >= 0:
            return at
    if tail_size > 0:
        tail_start = edges.size - len(edges.tail)
        at = edges.tail.find(picture, max(0, edges.size - tail_size - tail_start))
        if at >= 0:
            return tail_start + at
    return None


def inset_to_dict(inset: Inset) -> dict[str, Any]:
    return {"sha256": inset.object.sha256, "ext": inset_ext(inset), "size": inset.object.size, "at": inset.offset}


def inset_ext(inset: Inset) -> str:
    """The extension in the inset object's key (objects/sha256/aa/<sha>.<ext>)."""
    return inset.object.key.rsplit(".", 1)[1]


def make_inset(sha256: str, ext: str, size: int, at: int) -> Inset:
    return Inset(at, ObjectRef(object_key(sha256, ext), sha256, size))


def inset_from_dict(raw: Any, track_size: int) -> Inset | None:
    """An untrusted record's inset, or None if it is absent or anything about it is wrong."""
    if not isinstance(raw, dict):
        return None
    sha, ext, size, at = raw.get("sha256"), raw.get("ext"), raw.get("size"), raw.get("at")
    if not (isinstance(sha, str) and SHA_RE.match(sha) and isinstance(ext, str) and EXT_RE.match(ext)
            and type(size) is int and type(at) is int and MIN_INSET <= size and 0 <= at
            and at + size <= track_size):
        return None
    return make_inset(sha, ext, size, at)
