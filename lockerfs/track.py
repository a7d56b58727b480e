"""A track as the catalog records it: one immutable audio object plus what we know of it."""

from __future__ import annotations

from dataclasses import dataclass

from lockerfs.objectref import Inset
from lockerfs.trackinfo import TrackInfo


@dataclass(frozen=True, slots=True)
class Track:
    """One audio object in the locker and its description.

    A track is identified by the SHA-256 of its bytes: the same file uploaded
    from two paths or two machines is one track.
    """

    sha256: str  # lower-case hex of the object's bytes; the track's identity
    key: str  # object key relative to the locker prefix
    size: int  # bytes
    ext: str  # lower-case extension without the dot, e.g. "flac"
    source: str  # path of the uploaded file relative to the folder given to upload
    mtime: float  # modification time of the uploaded file (seconds since the epoch)
    info: TrackInfo
    art: Inset | None = None  # where the track holds its embedded cover, stored as its own object too
