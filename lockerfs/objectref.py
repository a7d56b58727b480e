"""What the block cache needs to know to read an object: its key, its identity, its size."""

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

    def __post_init__(self) -> None:
        # The digest names files in the cache dir: anything else could escape it.
        if not _SHA_RE.fullmatch(self.sha256):
            raise ValueError(f"not a lower-case SHA-256 hex digest: {self.sha256!r}")
        if self.size < 0:
            raise ValueError(f"negative object size {self.size} for {self.key}")
