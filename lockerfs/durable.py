"""Small files written so that a crash or a power cut leaves the old one or the new one, whole.

Used for the local state a mount must find again after a crash: the catalog
copy (catalog.py) and the pins (pins.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Temp file, `write(file)`, fsync, rename, fsync of the folder.

    The temp file is made before `write` produces the bytes, so a process
    killed at any moment of the save leaves only the temp file behind. It is
    named after this process and thread, so two writers never share one, and
    removed when the failure is an exception.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp")
    try:
        with open(temporary, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB': sizes in messages and listings."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
