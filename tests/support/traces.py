"""Read traces of real readers (mutagen, ffprobe, ffmpeg, MPD, TagLib, cp, a player),
for unit tests of the mount's scan/play decision.

Recorded by scripts/record_traces.py through scripts/countfs.py (a passthrough
FUSE with direct_io and lockerfs's st_blksize) over a local copy of the
"purchased" library; each reader's trace is tests/data/traces/<reader>.json.

Schema (version 1), one JSON object:

    schema         1
    reader         "mutagen", "ffprobe", "ffmpeg", "mpd", "taglib", "cp" or "player"
    command        what was run, in words
    blksize        st_blksize the files reported (buffered readers size their reads by it)
    recorded_with  how (countfs over a local copy)
    files          every file of the library in os.walk order (sorted), a list whose
                   index is the file id used by events:
                   {path, size, format ("" if not audio: cover.jpg),
                    head_size, tail_size (lockerfs.tags.read_track_info's tag regions),
                    duration, bitrate, sample_rate (audio only),
                    art_bytes, art_mime (embedded cover), xing (MP3: a Xing/Info frame
                    first), moov ("front" or "end", M4A), kind (see file_kind)}
    events         in arrival order, each [t_ms, op, handle, ...]:
                   [t_ms, "o", handle, file_id, tid]   open (tid: the opening thread)
                   [t_ms, "r", handle, offset, size]   read request (size as asked;
                                                       past the end returns less)
                   [t_ms, "c", handle]                 release (last close)
                   t_ms counts from the mount; handles are never reused.

pyfuse3 gives a read no caller, so each read belongs to the thread that opened
its handle. The kernel splits a read larger than the connection's maximum
(1 MiB when recorded) into pieces of that size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"


def file_kind(entry: dict[str, Any]) -> str:
    """A file's shape for the scan/play rule, e.g. "mp3-noxing-art-jpeg", "m4a-moovend-noart",
    "flac-hires-art-jpeg"; "" for a file that is not audio."""
    fmt = entry.get("format", "")
    if not fmt:
        return ""
    parts = [fmt]
    if fmt == "mp3":
        parts.append("xing" if entry.get("xing") else "noxing")
    if fmt == "m4a":
        parts.append("moov" + entry.get("moov", "end"))
    if (entry.get("sample_rate") or 0) > 48_000:
        parts.append("hires")
    mime = entry.get("art_mime", "")
    parts.append("art-" + mime.split("/")[-1] if entry.get("art_bytes") else "noart")
    return "-".join(parts)


@dataclass(frozen=True)
class TracedFile:
    path: str
    size: int
    format: str
    head_size: int
    tail_size: int
    kind: str
    details: dict[str, Any]  # art_bytes, art_mime, xing, moov, duration, bitrate, sample_rate


@dataclass(frozen=True)
class Read:
    t_ms: float
    offset: int
    size: int  # as requested

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class Handle:
    """One open of one file and the reads made through it, in order."""

    handle: int
    file: TracedFile
    tid: int
    opened_ms: float
    closed_ms: float | None = None
    reads: list[Read] = field(default_factory=list)


@dataclass
class Trace:
    reader: str
    command: str
    blksize: int
    files: list[TracedFile]
    handles: list[Handle]  # in open order
    events: list[list[Any]]  # raw, in arrival order

    def reads_in_order(self) -> Iterator[tuple[Handle, Read]]:
        """Every read with its handle, in the order the reads arrived."""
        by_id = {h.handle: h for h in self.handles}
        position = {h.handle: 0 for h in self.handles}
        for event in self.events:
            if event[1] == "r":
                handle = by_id[event[2]]
                yield handle, handle.reads[position[handle.handle]]
                position[handle.handle] += 1

    def handles_of(self, path: str) -> list[Handle]:
        return [h for h in self.handles if h.file.path == path]

    def first_of_kind(self, kind: str) -> TracedFile:
        """The first file of a kind that the reader opened."""
        for handle in self.handles:
            if handle.file.kind == kind:
                return handle.file
        raise KeyError(f"{self.reader} opened no file of kind {kind!r}")

    def kinds(self) -> list[str]:
        return list(dict.fromkeys(h.file.kind for h in self.handles))


def load(reader: str, folder: Path = TRACES) -> Trace:
    raw = json.loads((folder / f"{reader}.json").read_text())
    if raw.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{reader}.json has schema {raw.get('schema')}, this loader reads {SCHEMA_VERSION}")
    files = [TracedFile(f["path"], f["size"], f["format"], f["head_size"], f["tail_size"], f["kind"],
                        {k: v for k, v in f.items()
                         if k not in ("path", "size", "format", "head_size", "tail_size", "kind")})
             for f in raw["files"]]
    handles: dict[int, Handle] = {}
    for event in raw["events"]:
        t_ms, op, handle = event[0], event[1], event[2]
        if op == "o":
            handles[handle] = Handle(handle, files[event[3]], event[4], t_ms)
        elif op == "r":
            handles[handle].reads.append(Read(t_ms, event[3], event[4]))
        elif op == "c":
            handles[handle].closed_ms = t_ms
    return Trace(raw["reader"], raw["command"], raw["blksize"], files, list(handles.values()), raw["events"])


def available(folder: Path = TRACES) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.json"))


# --- a readable summary, for people designing the rule ------------------------------

def runs(reads: list[Read], size: int) -> list[tuple[int, int, int, list[int]]]:
    """Reads merged into contiguous runs: (start, end clipped to the file, reads, distinct sizes)."""
    merged: list[tuple[int, int, int, list[int]]] = []
    for read in reads:
        end = max(read.offset, min(read.end, size))
        if merged and read.offset == merged[-1][1]:
            start, _end, count, sizes = merged[-1]
            merged[-1] = (start, end, count + 1, sorted(set(sizes) | {read.size}))
        else:
            merged.append((read.offset, end, 1, [read.size]))
    return merged


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f}K" if n >= 1024 else f"{n}B"


def describe_file(trace: Trace, traced: TracedFile) -> str:
    """One file as this reader read it: per open, its runs; and how they sit
    against the tag regions (head_size from 0, tail_size from the end)."""
    handles = trace.handles_of(traced.path)
    size, head, tail_start = traced.size, traced.head_size, traced.size - traced.tail_size
    lines = [f"  {traced.kind} {traced.path!r}: size {size:,}, head_size {head:,}, tail_size {traced.tail_size:,}"
             + (f", art {traced.details.get('art_bytes', 0):,}" if traced.details.get("art_bytes") else "")]
    for n, handle in enumerate(handles, 1):
        parts = []
        for start, end, count, sizes in runs(handle.reads, size):
            if end <= head:
                where = "head"
            elif start < head:
                where = f"{_kib(end - head)} past head"
            elif traced.tail_size and start >= tail_start:
                where = "tail"
            elif size - start <= 256 * 1024:
                where = f"last {_kib(size - start)}"
            else:
                where = f"audio at {start / size:.0%}"
            parts.append(f"[{start:,}-{end:,}) {count} x {'/'.join(_kib(s) for s in sizes)} ({where})")
        lines.append(f"    open {n} (tid {handle.tid}): " + ("; ".join(parts) or "no reads"))
    return "\n".join(lines)


def summarize(trace: Trace) -> str:
    """For each kind of file, the first one the reader opened, described."""
    total = sum(min(r.size, h.file.size - r.offset) for h in trace.handles for r in h.reads if r.offset < h.file.size)
    lines = [f"== {trace.reader}: {trace.command}",
             f"   {len(trace.handles)} opens, {sum(len(h.reads) for h in trace.handles)} reads, "
             f"{total / 1e6:.1f} MB returned, threads {len({h.tid for h in trace.handles})}"]
    for kind in trace.kinds():
        lines.append(describe_file(trace, trace.first_of_kind(kind)))
    return "\n".join(lines)
