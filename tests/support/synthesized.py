"""Synthesized test libraries, written once per synthesizer version and shared.

Synthesizing is CPU work the suite used to pay again in every run and every
xdist worker: the "large" profile (a 44 MiB FLAC, a 20 MiB MP3 from LAME)
costs about 25 s of CPU, "purchased-small" (ffmpeg, JPEG art) about 15 s,
"small" 1.4 s per worker. On a 2-core machine that is minutes of the suite.

So a library is written once under LOCKERFS_TEST_LIBRARIES (default
/var/tmp/lockerfs-test-libraries, where scripts/bench keeps its own), in a
folder named after the profile, the seed and a hash of everything that
decides its bytes: the synthesizer's source and the encoders' versions. A
changed synthesizer gets a new folder, never a stale library. One process
builds it under a file lock while the others (workers, other checkouts) wait.

Every hand-out checks the folder against its manifest: the same file names,
sizes and SHA-256. A test that edited, added or removed a file in place would
otherwise pass its damage on to every later run: the damaged folder is moved
aside (kept for a look), a new one is written, and a warning in pytest's
summary says so. Tests must treat the library as read-only: copy before
changing anything.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mutagen
import numpy
import soundfile

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
import synth_formats  # noqa: E402
import synth_library  # noqa: E402
from synth_library import SynthTrack  # noqa: E402

CACHE_ROOT = Path(os.environ.get("LOCKERFS_TEST_LIBRARIES", "/var/tmp/lockerfs-test-libraries"))


def _tool_version(binary: str | None) -> str:
    if binary is None:
        return "none"
    result = subprocess.run([binary, "-version"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).partition("\n")[0]


def synthesizer_version() -> str:
    """A hash of what decides a synthesized library's bytes."""
    digest = hashlib.sha256()
    for source in ("synth_library.py", "synth_formats.py"):
        digest.update((SCRIPTS / source).read_bytes())
    try:
        from PIL import __version__ as pillow
    except ImportError:
        pillow = "none"
    for part in (soundfile.__libsndfile_version__, numpy.__version__, mutagen.version_string, pillow,
                 _tool_version(synth_library.FFMPEG), str(synth_formats.MPCENC)):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(root: Path) -> list[dict]:  # type: ignore[type-arg]
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


def _tracks(root: Path) -> list[SynthTrack]:
    """The tracks synthesize_library returned, read back from the manifest it wrote."""
    return [SynthTrack(path=root / entry["path"], format=entry["format"], codec=entry["codec"], tags=entry["tags"])
            for entry in _manifest(root) if entry.get("kind") != "side"]


def _intact(root: Path) -> bool:
    """Whether the folder holds exactly its manifest's files, each with its size and SHA-256."""
    try:
        entries = _manifest(root)
    except (OSError, ValueError):
        return False
    listed = {entry["path"]: entry for entry in entries}
    present = {path.relative_to(root).as_posix() for path in root.rglob("*") if not path.is_dir()}
    if present != set(listed) | {"manifest.json"}:
        return False
    return all((root / name).stat().st_size == entry["size"] and _sha256(root / name) == entry["sha256"]
               for name, entry in listed.items())


def _build(root: Path, profile: str, seed: int) -> None:
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tracks = synth_library.synthesize_library(partial, profile, seed)
    if _tracks(partial) != tracks:
        raise AssertionError(f"{profile}: manifest.json does not describe the tracks exactly (tags that JSON "
                             "cannot carry?), and tests/support/synthesized.py reads them back from it")
    if root.exists():
        damaged = root.with_name(f"{root.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        root.rename(damaged)
        warnings.warn(f"{root} did not match its manifest: a test changed the shared library in place "
                      f"(moved to {damaged.name}, written again)", stacklevel=3)
    partial.rename(root)


def synthesized(profile: str, seed: int = 0) -> tuple[Path, list[SynthTrack]]:
    """synthesize_library(ROOT, profile, seed), from the shared cache: (ROOT, tracks). Read-only."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    root = CACHE_ROOT / f"{profile}-seed{seed}-{synthesizer_version()}"
    with open(CACHE_ROOT / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if not _intact(root):
            _build(root, profile, seed)
    return root, _tracks(root)
