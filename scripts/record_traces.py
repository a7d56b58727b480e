"""Record what real readers read of a music library: the read traces in tests/data/traces/.

    .venv/bin/python scripts/record_traces.py [--library DIR] [--out tests/data/traces]
                                              [--readers mutagen,ffprobe,...] [--summary]

Run it as root (FUSE, MPD) with the project's virtualenv. Each reader runs
against a local copy of the "purchased" library (synthesized into
/var/tmp/lockerfs-traces/ when --library is not given) seen through
scripts/countfs.py: a passthrough FUSE with direct_io, so every read arrives
as the reader made it, and with lockerfs's st_blksize, so buffered readers
(stdio, Python's io) choose the buffer sizes they would choose on a lockerfs
mount. Readers:

  mutagen   one process, os.walk order, mutagen.File on every file
  ffprobe   `ffprobe -hide_banner FILE` on every file, os.walk order
  ffmpeg    `ffmpeg -i FILE -f null -` (a full decode) of one track of each kind
  mpd       MPD's full update (`mpc update --wait`, private MPD, null output)
  taglib    TagLib's FileRef (tags and audio properties) on every file, from a
            tiny C++ program compiled against libtag1-dev at record time
  cp        `cp -r` of two album folders (FLAC with large art, MP3 without Xing)
  player    a paced player: 64 KiB reads at the track's byte rate for a few
            seconds, of one track of each kind

Each trace file carries every file's size and the head_size / tail_size that
lockerfs.tags.read_track_info computes for it; tests/support/traces.py loads
them and describes the schema. `--summary` prints, per reader and kind of
file, which ranges were read, in what sizes, how far past the tag regions,
whether the tail was read and in how many passes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(ROOT)]

import countfs  # noqa: E402
import mpd_update  # noqa: E402
from tests.support.traces import SCHEMA_VERSION, TRACES, file_kind  # noqa: E402

READERS = ("mutagen", "ffprobe", "ffmpeg", "mpd", "taglib", "cp", "player")
PLAYER_SECONDS = 6.0
PLAYER_BLOCK = 64 * 1024

TAGLIB_SOURCE = r"""
// Reads each file's tags and audio properties as TagLib-based players do
// (FileRef with the default, average, accuracy); prints what it found.
#include <cstdio>
#include <taglib/fileref.h>
#include <taglib/tag.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; ++i) {
        TagLib::FileRef ref(argv[i]);
        if (ref.isNull() || !ref.tag()) { std::printf("unreadable %s\n", argv[i]); continue; }
        int seconds = ref.audioProperties() ? ref.audioProperties()->lengthInSeconds() : -1;
        std::printf("%s|%s|%d\n", ref.tag()->title().toCString(true), argv[i], seconds);
    }
    return 0;
}
"""


def log(message: str) -> None:
    print(f"[traces {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the library --------------------------------------------------------------

def ensure_library(given: Path | None, seed: int) -> Path:
    """The purchased library: the one given, scripts/bench's copy when it has one
    from this synthesizer, or one synthesized once and kept."""
    if given:
        return given.resolve()
    import synth_library

    version = hashlib.sha256((SCRIPTS / "synth_library.py").read_bytes()).hexdigest()[:8]
    benched = Path("/var/tmp/lockerfs-bench") / f"library-purchased-seed{seed}-big200-{version}" / "music"
    if benched.is_dir():
        return benched
    root = Path("/var/tmp/lockerfs-traces") / f"library-purchased-seed{seed}-{version}"
    if not root.exists():
        log(f"synthesizing the purchased library into {root}")
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        synth_library.synthesize_library(partial, "purchased", seed)
        partial.rename(root)
    return root


def describe_files(library: Path) -> list[dict[str, Any]]:
    """Every file in os.walk order with what a scan/play rule may know of it:
    size, format, lockerfs's tag regions, and what makes it hard (art, Xing, moov)."""
    from lockerfs.tags import NotAudioError, read_track_info

    files = []
    for folder, dirs, names in os.walk(library):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            relpath = path.relative_to(library).as_posix()
            if relpath == "manifest.json":
                continue
            entry: dict[str, Any] = {"path": relpath, "size": path.stat().st_size}
            try:
                info = read_track_info(path)
            except NotAudioError:
                entry |= {"format": "", "head_size": 0, "tail_size": 0}
            else:
                entry |= {"format": info.format, "head_size": info.head_size, "tail_size": info.tail_size,
                          "duration": round(info.duration or 0.0, 3), "bitrate": info.bitrate or 0,
                          "sample_rate": info.sample_rate or 0}
            entry |= file_details(path, entry["format"])
            entry["kind"] = file_kind(entry)
            files.append(entry)
    return files


def file_details(path: Path, fmt: str) -> dict[str, Any]:
    """Embedded art (bytes, mime), an MP3's Xing/Info frame, an M4A's moov position."""
    import mutagen
    from mutagen.flac import Picture

    details: dict[str, Any] = {}
    if not fmt:
        return details
    audio = mutagen.File(path)
    pictures: list[tuple[int, str]] = []
    if fmt == "mp3" and audio.tags:
        pictures = [(len(f.data), f.mime) for f in audio.tags.getall("APIC")]
    elif fmt == "flac":
        pictures = [(len(p.data), p.mime) for p in audio.pictures]
    elif fmt in ("ogg", "opus") and audio.tags:
        for value in audio.tags.get("METADATA_BLOCK_PICTURE", []):
            import base64

            picture = Picture(base64.b64decode(value))
            pictures.append((len(picture.data), picture.mime))
    elif fmt == "m4a" and audio.tags:
        pictures = [(len(c), "image/jpeg" if c.imageformat == c.FORMAT_JPEG else "image/png")
                    for c in audio.tags.get("covr", [])]
    details["art_bytes"] = sum(size for size, _mime in pictures)
    details["art_mime"] = pictures[0][1] if pictures else ""
    data = path.read_bytes()
    if fmt == "mp3":
        start = 0
        if data[:3] == b"ID3":
            size = data[6:10]
            start = 10 + (size[0] << 21 | size[1] << 14 | size[2] << 7 | size[3])
        details["xing"] = data.find(b"Xing", start, start + 64) >= 0 or data.find(b"Info", start, start + 64) >= 0
    if fmt == "m4a":
        details["moov"] = "front" if 0 <= data.find(b"moov") < data.find(b"mdat") else "end"
    return details


# --- readers ------------------------------------------------------------------

def audio_paths(mountpoint: Path, files: list[dict[str, Any]]) -> list[str]:
    return [str(mountpoint / f["path"]) for f in files]


def one_of_each_kind(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first file of each kind, in walk order: a few tracks, every shape."""
    chosen: dict[str, dict[str, Any]] = {}
    for entry in files:
        if entry["format"] and entry["kind"] not in chosen:
            chosen[entry["kind"]] = entry
    return list(chosen.values())


def run_mutagen(mountpoint: Path, files: list[dict[str, Any]], work: Path) -> str:
    code = ("import mutagen, os, sys\n"
            "for folder, dirs, names in os.walk(sys.argv[1]):\n"
            "    dirs.sort()\n"
            "    for name in sorted(names):\n"
            "        try:\n"
            "            mutagen.File(os.path.join(folder, name))\n"
            "        except Exception:\n"
            "            pass\n")
    subprocess.run([sys.executable, "-c", code, str(mountpoint)], check=True, timeout=600)
    return "python -c 'mutagen.File(f) for f in os.walk(root) (sorted)'"


def run_ffprobe(mountpoint: Path, files: list[dict[str, Any]], work: Path) -> str:
    for path in audio_paths(mountpoint, files):
        subprocess.run(["ffprobe", "-hide_banner", path], capture_output=True, timeout=120)
    return "ffprobe -hide_banner FILE, every file in walk order"


def run_ffmpeg(mountpoint: Path, files: list[dict[str, Any]], work: Path) -> str:
    for entry in one_of_each_kind(files):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(mountpoint / entry["path"]),
                        "-f", "null", "-"], check=True, capture_output=True, timeout=300)
    return "ffmpeg -nostdin -v error -i FILE -f null -, one track of each kind"


def run_mpd(mountpoint: Path, files: list[dict[str, Any]], work: Path) -> str:
    with mpd_update.private_mpd(work / "mpd", mountpoint) as mpd:
        mpd.update(900)
        songs = mpd.song_count()
    expected = sum(1 for f in files if f["format"])
    if songs != expected:
        raise RuntimeError(f"MPD counts {songs} songs, the library has {expected}")
    return "mpd (private config, null output) + mpc update --wait, a first full update"


def run_taglib(mountpoint: Path, files: list[dict[str, Any]], work: Path) -> str:
    source, binary = work / "taglib_scan.cpp", work / "taglib_scan"
    source.write_text(TAGLIB_SOURCE)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "taglib"], capture_output=True, text=True,
                           check=True).stdout.split()
    subprocess.run(["g++", "-O1", "-o", str(binary), str(source), *flags], check=True)
    subprocess.run([str(binary), *audio_paths(mountpoint, files)], check=True, capture_output=True, timeout=600)
    version = subprocess.run(["pkg-config", "--modversion", "taglib"], capture_output=True, text=True).stdout.strip()
    return f"TagLib {version} FileRef(path) + tag() + audioProperties(), every file in walk order"


def copied_albums(files: list[dict[str, Any]]) -> list[str]:
    """A FLAC album with large art and an MP3 album without Xing frames."""
    folders = []
    for wanted in ("flac-art-jpeg", "mp3-noxing"):
        for entry in files:
            if entry["kind"].startswith(wanted):
                folders.append(str(Path(entry["path"]).parent))
                break
    return folders


def run_cp(mountpoint: Path, files: list[dict[str, Any]], work: Path) -> str:
    for n, folder in enumerate(copied_albums(files)):
        subprocess.run(["cp", "-r", str(mountpoint / folder), str(work / f"copy{n}")], check=True, timeout=300)
    return "cp -r ALBUM DEST: " + ", ".join(copied_albums(files))


def run_player(mountpoint: Path, files: list[dict[str, Any]], work: Path) -> str:
    for entry in one_of_each_kind(files):
        rate = (entry.get("bitrate") or 0) / 8 or entry["size"] / max(entry.get("duration") or 1.0, 1.0)
        with open(mountpoint / entry["path"], "rb", buffering=0) as track:
            start, played = time.monotonic(), 0
            while played < rate * PLAYER_SECONDS:
                time.sleep(max(0.0, start + played / rate - time.monotonic()))
                chunk = track.read(PLAYER_BLOCK)
                if not chunk:
                    break
                played += len(chunk)
    return f"{PLAYER_BLOCK // 1024} KiB reads paced at the track's byte rate, {PLAYER_SECONDS:g} s, one track of each kind"


RUNNERS: dict[str, Callable[[Path, list[dict[str, Any]], Path], str]] = {
    "mutagen": run_mutagen, "ffprobe": run_ffprobe, "ffmpeg": run_ffmpeg, "mpd": run_mpd,
    "taglib": run_taglib, "cp": run_cp, "player": run_player,
}


# --- recording ----------------------------------------------------------------

def record(reader: str, library: Path, files: list[dict[str, Any]], out: Path, blksize: int) -> Path:
    """Run one reader through countfs and write its compact trace."""
    work = Path(tempfile.mkdtemp(prefix=f"trace-{reader}-", dir="/var/tmp"))
    try:
        with countfs.counted(library, work / "mnt", work / "report.json", trace=True, blksize=blksize) as mount:
            command = RUNNERS[reader](work / "mnt", files, work)
        report = mount.report()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    index = {entry["path"]: n for n, entry in enumerate(files)}
    events, handles = [], {}
    for event in report["events"]:
        kind, t_ms, handle = event[0], round(event[1] * 1000, 1), event[2]
        if kind == "open":
            if event[3] not in index:  # manifest.json: not part of the library
                continue
            handles[handle] = True
            events.append([t_ms, "o", handle, index[event[3]], event[4]])
        elif handle in handles:
            events.append([t_ms, kind[0], handle, *event[3:]])
    trace = {"schema": SCHEMA_VERSION, "reader": reader, "command": command, "blksize": blksize,
             "recorded_with": "scripts/countfs.py (direct_io passthrough) over a local copy",
             "files": files, "events": events}
    path = out / f"{reader}.json"
    out.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as target:  # one event a line: small, and readable in a diff
        target.write(json.dumps({k: v for k, v in trace.items() if k != "events"}, separators=(",", ":"))[:-1])
        target.write(',"events":[\n')
        target.write(",\n".join(json.dumps(e, separators=(",", ":")) for e in events))
        target.write("\n]}\n")
    log(f"{reader}: {len(events)} events, {path.stat().st_size / 1000:.0f} KB -> {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, help="a purchased library (default: synthesize one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=TRACES)
    parser.add_argument("--readers", default=",".join(READERS), help="comma list (default: all)")
    parser.add_argument("--summary", action="store_true", help="print the summary of the traces in --out")
    args = parser.parse_args(argv)
    if args.summary:
        from tests.support.traces import load, summarize

        for reader in READERS:
            if (args.out / f"{reader}.json").exists():
                print(summarize(load(reader, args.out)))
        return 0
    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    unknown = set(readers) - set(READERS)
    if unknown:
        parser.error(f"unknown readers {', '.join(sorted(unknown))}; choose from {', '.join(READERS)}")
    from lockerfs.fs import IO_BLOCK

    library = ensure_library(args.library, args.seed)
    files = describe_files(library)
    for reader in readers:
        log(f"recording {reader}")
        record(reader, library, files, args.out, IO_BLOCK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
