"""What the block cache needs to know to read an object: its key, its identity, its size,
and which run of its bytes another, shared object holds (an Inset)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SHA_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An immutable object in the store, named by the SHA-256 of its bytes."""

    key: str  # store key
    sha256: str  # identity, and the cache key
    size: int
    inset: Inset | None = None  # a run of these bytes that is also a shared object's, to be read there

    def __post_init__(self) -> None:
        # The digest names files in the cache dir: anything else could escape it.
        if not _SHA_RE.fullmatch(self.sha256):
            raise ValueError(f"not a lower-case SHA-256 hex digest: {self.sha256!r}")
        if self.size < 0:
            raise ValueError(f"negative object size {self.size} for {self.key}")
        if self.inset is not None and self.inset.offset + self.inset.object.size > self.size:
            raise ValueError(f"an inset past the end of {self.key}")


@dataclass(frozen=True, slots=True)
class Inset:
    """Bytes [offset, offset + object.size) of a track are the whole of `object`.

    A track's embedded front cover, which every track of an album usually
    carries byte for byte: upload stores it once (as its own object) and
    records where each track holds it, so a scanner that reads every track's
    tags fetches the picture once per album, not once per track. The track's
    own object stays whole in the store; the inset is only a second place to
    read those bytes from.
    """

    offset: int
    object: ObjectRef

    def __post_init__(self) -> None:
        if self.offset < 0 or self.object.size <= 0 or self.object.inset is not None:
            raise ValueError(f"not an inset: {self.object.size} bytes at {self.offset}")
