"""Where things live and how big they may be: locker URL, endpoint, cache dir and size.

Credentials are not here on purpose: boto3's standard chain finds them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import platformdirs

DEFAULT_CACHE_SIZE = 10 * 1024**3
DEFAULT_REFRESH_SECONDS = 60.0

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$|^\d+(?:\.\d+)?$", re.IGNORECASE)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """'10G', '500MiB', '1.5g', '4096' -> bytes (binary units, as du and df print them)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 500M or 10G)")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def parse_duration(text: str) -> float:
    """'0', '90', '90s', '15m', '12h', '7d', '2w', '1d12h' -> seconds (a bare number is seconds).

    The one parser of every duration a command takes (gc and compact --grace,
    share --expires), so they all read the same way."""
    cleaned = text.strip()
    if not _DURATION_RE.match(cleaned):
        raise ValueError(f"not a duration: {text!r} (try 90s, 15m, 12h or 7d)")
    return sum(float(number) * _DURATION_UNITS[unit.lower()] for number, unit in _DURATION_PART_RE.findall(cleaned))


def format_duration(seconds: float) -> str:
    """Seconds as the largest whole unit parse_duration reads back: 604800 -> '7d', 90 -> '90s'."""
    for unit in ("d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def locker_id(locker: str, endpoint: str | None) -> str:
    """A short stable name for one locker on one endpoint, for local cache and state files."""
    return hashlib.sha256(f"{endpoint or ''}\n{locker}".encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/lockerfs (~/.cache/lockerfs)."""
    return platformdirs.user_cache_path("lockerfs")


def state_dir() -> Path:
    """$XDG_STATE_HOME/lockerfs (~/.local/state/lockerfs)."""
    return platformdirs.user_state_path("lockerfs")


def upload_state_path() -> Path:
    """What `upload` has already sent, per locker."""
    return state_dir() / "uploads.sqlite"
