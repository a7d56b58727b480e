"""The `lockerfs` command: argument parsing, progress, exit codes. No logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType

from lockerfs import __version__, catalog, config, layout
from lockerfs.store import S3Store, StoreError, UPLOAD_RETRIES

log = logging.getLogger("lockerfs")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Something the user can fix; printed as one sentence, no traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "debug", False))
    try:
        return args.run(args)
    except (UserError, StoreError, catalog.FormatError, ValueError) as exc:
        print(f"lockerfs: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (UserError, ValueError)) else EXIT_FAILED
    except KeyboardInterrupt:
        print("lockerfs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="lockerfs: %(levelname)s: %(message)s")
    # botocore at DEBUG logs request headers; keep it quiet so no credential
    # material ever reaches a log, even with --debug.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lockerfs", description=(
        "Your music in an S3 bucket you own, mounted as Album Artist/Album/Track folders."))
    parser.add_argument("--version", action="version", version=f"lockerfs {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    upload = commands.add_parser("upload", help="upload music files and folders to a locker")
    add_endpoint(upload)
    upload.add_argument("--jobs", "-j", type=int, default=4, help="files processed at once (default 4)")
    upload.add_argument("--debug", action="store_true", help="log every step")
    upload.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    upload.add_argument("locker", metavar="LOCKER", help="s3://BUCKET[/PREFIX]")
    upload.set_defaults(run=run_upload)

    listing = commands.add_parser("ls", help="list the tracks in a locker")
    add_endpoint(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per track")
    listing.add_argument("locker", metavar="LOCKER")
    listing.set_defaults(run=run_ls)

    stats = commands.add_parser("stats", help="count the tracks and bytes in a locker")
    add_endpoint(stats)
    stats.add_argument("locker", metavar="LOCKER")
    stats.set_defaults(run=run_stats)

    playlists = commands.add_parser("playlists", help="list the playlists in a locker")
    add_endpoint(playlists)
    playlists.add_argument("--json", action="store_true", help="one JSON object per playlist, with its entries")
    playlists.add_argument("locker", metavar="LOCKER")
    playlists.set_defaults(run=run_playlists)

    compact = commands.add_parser("compact", help="merge the catalog journal into a snapshot")
    add_endpoint(compact)
    compact.add_argument("--grace", type=duration_arg, default="1h", metavar="DURATION",
                         help="keep merged journal files younger than this, e.g. 0, 90s, 12h (default 1h)")
    compact.add_argument("locker", metavar="LOCKER")
    compact.set_defaults(run=run_compact)

    gc = commands.add_parser("gc", help="delete the stored objects no track, cover or playlist needs any more")
    add_endpoint(gc)
    gc.add_argument("--grace", type=duration_arg, default="7d", metavar="DURATION",
                    help="keep unneeded objects younger than this, e.g. 0, 90s, 12h, 7d (default 7d): an upload "
                         "stores its objects before its records, and mounts that have not refreshed yet may still "
                         "read a removed track")
    gc.add_argument("--dry-run", "-n", action="store_true", help="say what would be deleted, and delete nothing")
    gc.add_argument("locker", metavar="LOCKER")
    gc.set_defaults(run=run_gc)

    share = commands.add_parser("share", help="write an M3U8 of links to tracks of a mounted locker that anyone "
                                              "can play, without credentials, until they expire")
    share.add_argument("--expires", type=duration_arg, default="7d", metavar="DURATION",
                       help="how long the links work, e.g. 12h or 3d (default and longest: 7d)")
    share.add_argument("-o", "--output", metavar="FILE.m3u8",
                       help="where to write the playlist ('-': standard output; default: NAME.m3u8 here, "
                            "after the first PATH)")
    share.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="tracks or folders in a mounted locker")
    share.set_defaults(run=run_share)

    add_mount_commands(commands)
    from lockerfs import lifecli

    lifecli.add_life_commands(commands, add_endpoint)
    return parser


def add_mount_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    mount = commands.add_parser("mount", help="mount a locker as Album Artist/Album/Track folders")
    add_endpoint(mount)
    mount.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="block and catalog cache (default: ~/.cache/lockerfs/<locker>)")
    mount.add_argument("--cache-size", default="10G", metavar="SIZE",
                       help="disk cache bound, e.g. 500M or 20G (default 10G)")
    mount.add_argument("--memory-cache", default="128M", metavar="SIZE",
                       help="memory cache bound, e.g. 32M on a small machine (default 128M)")
    mount.add_argument("--layout", default=layout.DEFAULT_TEMPLATE, metavar="TEMPLATE",
                       help=f"folder and file names (default {layout.DEFAULT_TEMPLATE!r})")
    mount.add_argument("--names", choices=layout.NAME_MODES, default="default",
                       help="names mode: 'windows' also turns : * ? \" < > | into look-alikes and puts '_' "
                            "after device names (CON, AUX, ...), for re-sharing the mount to Windows machines "
                            "and TVs over Samba or NFS (default: 'default')")
    mount.add_argument("--refresh", type=float, default=config.DEFAULT_REFRESH_SECONDS, metavar="SECONDS",
                       help="how often to look for tracks added elsewhere (default 60)")
    mount.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    mount.add_argument("--page-cache", action="store_true",
                       help="read through the kernel's page cache, for software that maps files "
                            "(scans then cost more bytes; see docs/DESIGN-NOTES.md)")
    mount.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    mount.add_argument("--debug", action="store_true", help="log every request (implies nothing else)")
    mount.add_argument("locker", metavar="LOCKER")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT")
    mount.set_defaults(run=run_mount)

    umount = commands.add_parser("umount", help="unmount a lockerfs mount and wait for it to stop")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount.set_defaults(run=run_umount)


def run_share(args: argparse.Namespace) -> int:
    from lockerfs import share

    try:
        shared = share.share(args.paths, args.expires)
        if args.output == "-":
            sys.stdout.write(shared.text)
            where = "standard output"
        else:
            output = Path(args.output) if args.output else share.default_output(args.paths)
            share.write_playlist(output, shared.text)
            where = str(output)
    except share.ShareError as exc:
        raise UserError(str(exc)) from None
    print(f"{shared.tracks} track{'s' * (shared.tracks != 1)} in {printable(where)}; the links work until "
          f"{shared.expires_at:%Y-%m-%d %H:%M} UTC ({config.format_duration(args.expires)})",
          file=sys.stderr if args.output == "-" else sys.stdout)
    if shared.temporary:
        print("lockerfs: these credentials are temporary (a session token): the links stop working when "
              "it expires, if that is sooner", file=sys.stderr)
    return 0


def run_mount(args: argparse.Namespace) -> int:
    from lockerfs import mount  # imported here: pyfuse3 and trio take half a second to load

    return mount.run_mount(args)


def run_umount(args: argparse.Namespace) -> int:
    from lockerfs import mount

    return mount.run_umount(args)


def duration_arg(text: str) -> float:
    """argparse type for every duration a command takes: parse_duration's sentence on bad input."""
    try:
        return config.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", metavar="URL",
                        help="S3 endpoint (default: boto3's chain, e.g. AWS_ENDPOINT_URL)")


def open_store(args: argparse.Namespace) -> S3Store:
    try:
        return S3Store(args.locker, args.endpoint_url, UPLOAD_RETRIES, pool_size=32)
    except ValueError as exc:
        raise UserError(str(exc)) from None


# --- upload ---------------------------------------------------------------------

def run_upload(args: argparse.Namespace) -> int:
    from lockerfs.upload import UploadState, Uploader, prefetched, walk
    from lockerfs.walk import count_in_child

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise UserError(f"no such file or folder: {', '.join(missing)}")
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    store = open_store(args)
    store.check()
    progress = Progress()
    # The count (a stat per file, in a helper process) runs beside the upload
    # so that the bar has totals early; the walk starts listing while the catalog loads.
    counter = threading.Thread(target=_count_into, args=(count_in_child(args.paths), progress), name="count",
                               daemon=True)
    counter.start()
    sources = prefetched(walk(args.paths))
    state = UploadState(config.upload_state_path(), config.locker_id(args.locker, store.endpoint))
    uploader = Uploader(store, state, args.jobs, on_bytes=progress.add_bytes,
                        on_file=lambda outcome: progress.add_file())
    stop = threading.Event()
    try:
        with interrupt_sets(stop):
            uploader.prepare()
            summary = uploader.run(sources, stop)
    finally:
        sources.close()
        progress.close()
        state.close()
    print_summary(summary)
    if summary.stopped:
        print(f"lockerfs: stopped early, {summary.not_attempted} files not attempted: {summary.stopped}; "
              "run the same command again to finish", file=sys.stderr)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed else 0


def _count_into(counts: Iterator[tuple[int, int]], progress: Progress) -> None:
    files = size = 0
    for files, size in counts:
        progress.set_totals(files, size, final=False)
    progress.set_totals(files, size, final=True)


class interrupt_sets:
    """Within the block, the first Ctrl-C (or SIGTERM) sets `stop`; a second one aborts."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.previous: dict[int, object] = {}

    def __enter__(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        print("\nlockerfs: stopping after the files in flight (Ctrl-C again to abort)", file=sys.stderr)


class Progress:
    """Files and bytes done of the whole job, rate and ETA: a tqdm bar on a terminal,
    a plain line every few seconds otherwise.

    Totals grow while the count runs beside the upload; "+" marks them until it ends.
    """

    PLAIN_EVERY = 5.0

    def __init__(self) -> None:
        self.files = self.total_bytes = 0
        self.counted = False
        self.done_files = self.done_bytes = 0
        self._lock = threading.Lock()
        self._started = self._last_line = time.monotonic()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024,
                             desc="upload", dynamic_ncols=True)

    def set_totals(self, files: int, total_bytes: int, final: bool) -> None:
        with self._lock:
            self.files, self.total_bytes, self.counted = files, total_bytes, final
            if self._bar is not None:
                self._bar.total = total_bytes
                self._bar.set_postfix_str(self._files_text(), refresh=False)
                self._bar.refresh()

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.done_bytes += count
            if self._bar is not None:
                self._bar.update(count)

    def add_file(self) -> None:
        with self._lock:
            self.done_files += 1
            if self._bar is not None:
                self._bar.set_postfix_str(self._files_text(), refresh=False)
            elif time.monotonic() - self._last_line >= self.PLAIN_EVERY:
                self._last_line = time.monotonic()
                print(self.plain_line(), file=sys.stderr, flush=True)

    def _files_text(self) -> str:
        return f"{self.done_files}/{self.files}{'' if self.counted else '+'} files"

    def plain_line(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self._started)
        rate = self.done_bytes / elapsed
        left = max(0, self.total_bytes - self.done_bytes)
        eta = f", ETA {timedelta(seconds=round(left / rate))}" if rate > 0 and self.counted else ""
        return (f"upload: {self._files_text()}, {human(self.done_bytes)}/{human(self.total_bytes)}"
                f"{'' if self.counted else '+'}, {human(rate)}/s{eta}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def printable(name: str) -> str:
    """A file name safe to print: control characters (terminal escapes) shown as \\xNN."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in name)


def human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def print_summary(summary) -> None:  # type: ignore[no-untyped-def]
    print(f"uploaded {summary.uploaded} ({human(summary.uploaded_bytes)}), matched {summary.matched}, "
          f"unchanged {summary.unchanged}, skipped {len(summary.skipped)}, failed {len(summary.failed)}"
          + (" - interrupted: run the same command again to finish" if summary.interrupted else ""))
    print_extras(summary)
    for title, items in (("skipped", summary.skipped), ("failed", summary.failed)):
        if items:
            reasons = Counter(reason for _, reason in items)
            print(f"{title}: " + "; ".join(f"{n} {reason}" for reason, n in reasons.most_common()))
            for path, reason in items[:50]:
                print(f"  {printable(path)}: {reason}")
            if len(items) > 50:
                print(f"  ... and {len(items) - 50} more")


_EXTRA_KINDS = (("cover", "cover", "covers"), ("embedded cover", "cover from embedded art", "covers from embedded art"),
                ("image", "other image", "other images"), ("lyrics", "lyrics file", "lyrics files"),
                ("cue", "cue sheet", "cue sheets"), ("playlist", "playlist", "playlists"))


def print_extras(summary) -> None:  # type: ignore[no-untyped-def]
    """What was recorded beside the tracks (covers, lyrics, cue sheets, playlists), and what of
    it leads to no track in the locker."""
    written = summary.extras
    if written or summary.side_uploaded or summary.side_matched or summary.side_unchanged:
        counts = [f"{written[key]} {one if written[key] == 1 else many}" for key, one, many in _EXTRA_KINDS
                  if written[key]]
        print(f"with the music: {', '.join(counts) or 'nothing new'} recorded; side files: "
              f"{summary.side_uploaded} sent ({human(summary.side_uploaded_bytes)}), {summary.side_matched} "
              f"already stored, {summary.side_unchanged} unchanged")
    if summary.extras_deferred:
        print("covers, lyrics, cue sheets and playlists are recorded when a run ends: run the same command again")
    if summary.unresolved:
        print(f"not in the locker: {len(summary.unresolved)} playlist entries or cue FILE lines "
              "(kept as written; a playlist shows them as comments)")
        for source, entry, why in summary.unresolved[:50]:
            print(f"  {printable(source)}: {printable(entry)}: {why}")
        if len(summary.unresolved) > 50:
            print(f"  ... and {len(summary.unresolved) - 50} more")
    for source, note in summary.notes[:50]:
        print(f"note: {printable(source)}: {note}")


# --- catalog views ----------------------------------------------------------------

def _load_tracks(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    store = open_store(args)
    return sorted(catalog.load_catalog(store).tracks(), key=_track_order)


def _track_order(track) -> tuple:  # type: ignore[no-untyped-def]
    info = track.info
    return (info.albumartist or info.artist or "", info.album or "", info.disc or 0,
            info.track or 0, info.title or track.source)


def run_ls(args: argparse.Namespace) -> int:
    tracks = _load_tracks(args)
    if args.json:
        for track in tracks:
            print(json.dumps(catalog.track_to_dict(track), ensure_ascii=False))
        return 0
    for track in tracks:
        info = track.info
        number = f"{info.disc or 1}-{info.track:02d}" if info.track else "-"
        duration = f"{int(info.duration // 60)}:{int(info.duration % 60):02d}" if info.duration else "?"
        print("\t".join(printable(field) for field in [
            info.albumartist or info.artist or "?", info.album or "?", number,
            info.title or Path(track.source).name, track.ext, duration, human(track.size)]))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    tracks = _load_tracks(args)
    by_format = Counter(track.ext for track in tracks)
    seconds = sum(track.info.duration or 0 for track in tracks)
    albums = {(t.info.albumartist or t.info.artist, t.info.album) for t in tracks}
    print(f"tracks: {len(tracks)}")
    print(f"albums: {len(albums)}")
    print(f"bytes:  {sum(t.size for t in tracks)} ({human(sum(t.size for t in tracks))})")
    print(f"time:   {timedelta(seconds=round(seconds))}")
    print("formats: " + ", ".join(f"{ext} {n}" for ext, n in by_format.most_common()))
    return 0


def run_playlists(args: argparse.Namespace) -> int:
    """Name, entries and unresolved entries (never resolved at upload, or whose track is gone)."""
    library = catalog.load_catalog(open_store(args)).state.library()
    for placed in sorted(library.playlists, key=lambda p: (p.playlist.name.casefold(), p.playlist.name)):
        playlist = placed.playlist
        unresolved = [entry for entry, sha in zip(playlist.entries, placed.tracks, strict=True) if sha is None]
        if args.json:
            print(json.dumps({"name": playlist.name, "source": playlist.source, "entries": len(playlist.entries),
                              "unresolved": [entry.line or entry.sha256 for entry in unresolved]},
                             ensure_ascii=False))
        else:
            print(f"{printable(playlist.name)}\t{len(playlist.entries)} entries\t{len(unresolved)} unresolved")
    return 0


def run_compact(args: argparse.Namespace) -> int:
    result = catalog.compact(open_store(args), timedelta(seconds=args.grace))
    print(f"snapshot {result.snapshot_key}: {result.tracks} tracks, {result.assets} covers/images/lyrics/cue "
          f"sheets, {result.playlists} playlists from {result.files_merged} catalog files; "
          f"deleted {result.files_deleted} older than {config.format_duration(args.grace)}")
    return 0


def run_gc(args: argparse.Namespace) -> int:
    from lockerfs import gc

    verb = "would delete" if args.dry_run else "deleted"

    def report(item: gc.Garbage) -> None:
        was = f"  ({printable(item.was)})" if item.was else ""
        print(f"{verb} {item.key}  {human(item.size)}{was}", flush=True)

    try:
        result = gc.collect(open_store(args), timedelta(seconds=args.grace), dry_run=args.dry_run, on_deleted=report)
    except gc.GcRefused as exc:
        print(f"lockerfs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.dry_run:
        for item in result.deleted:
            report(item)
    count = len(result.deleted)
    print(f"{verb} {count} object{'s' * (count != 1)}, "
          f"{'freeing' if args.dry_run else 'freed'} {human(result.freed)} "
          f"({result.objects} stored, {result.named} named by the catalog)")
    if result.young:
        print(f"kept {len(result.young)} unneeded objects ({human(sum(item.size for item in result.young))}) "
              f"younger than {config.format_duration(args.grace)}")
    if result.put_back:
        print(f"put back {len(result.put_back)} objects that records written while gc ran name")
    if result.trash_restored or result.trash_cleared:
        print(f"a gc that stopped midway had left objects aside: {len(result.trash_restored)} put back, "
              f"{result.trash_cleared} copies deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
