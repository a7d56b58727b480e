"""A gzip bomb for catalog tests, built without compressing what it inflates to.

`gzip.compress(b"\\0" * (1 << 30), compresslevel=9)` costs about 8 s of CPU,
paid by every test that wants one. Deflate makes the same bytes for the same
input once its history is cleared: after a full flush, each further MiB of
zeros compresses to the very piece the first MiB did. So one piece is
compressed and repeated, and the gzip header and trailer (CRC-32 and length
of the inflated data) are written around it: one ordinary gzip member that
inflates to exactly `size` zero bytes, as the slow way does, in well under a
second.
"""

from __future__ import annotations

import struct
import zlib

_PIECE = 1 << 20
# magic, deflate, no flags, no mtime, "best compression", unknown OS (RFC 1952)
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"


def gzip_of_zeros(size: int = 1 << 30) -> bytes:
    """One gzip member that inflates to `size` zero bytes (a whole number of MiB)."""
    if size <= 0 or size % _PIECE:
        raise ValueError(f"{size}: a positive whole number of MiB")
    zeros = bytes(_PIECE)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert again == piece, "zlib no longer repeats itself after a full flush: use gzip.compress"
    end = deflate.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(size // _PIECE):
        crc = zlib.crc32(zeros, crc)
    return _GZIP_HEADER + piece * (size // _PIECE) + end + struct.pack("<II", crc, size & 0xFFFFFFFF)
