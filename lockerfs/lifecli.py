"""`lockerfs rm`, `restore`, `tag`, `pin`, `unpin`, `pinned`: arguments, output, exit codes.

Paths name files and folders in a mounted locker, as the user sees them. The
command finds the mount behind them and asks it (control.py) what they hold;
changes are written to the bucket by the command itself (edits.py), with the
user's credentials, then shown by the mount at once. Pins are the mount's
alone: the command only asks and shows progress.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockerfs import catalog
from lockerfs.catalog import track_from_dict
from lockerfs.durable import human_bytes
from lockerfs.editfields import FIELDS, MATCH_FIELDS
from lockerfs.store import UPLOAD_RETRIES, S3Store, StoreError

if TYPE_CHECKING:
    from lockerfs.control import MountedPath
    from lockerfs.edits import Placed

# control.py (and with it trio, a fifth of a second) is imported by the commands that reach a
# mount, when they run: every other command's start, and its quick failure, stays as it was.
# So are edits.py and retag.py (mutagen): `lockerfs mount` builds this parser too.

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2
NEWS_WAIT = 30.0  # seconds a command waits for its mount to show a change
PLAIN_PROGRESS_EVERY = 5.0


class Refused(Exception):
    """One sentence for the user; the exit code says whose fault it is."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_life_commands(commands: argparse._SubParsersAction, add_endpoint: Callable) -> None:  # type: ignore[type-arg]
    remove = commands.add_parser("rm", help="remove tracks from a locker (undo with `lockerfs restore`)",
                                 description="Remove the tracks under files or folders of a mounted locker, "
                                             "or (with --locker) those matching every --match. Undone by "
                                             "`lockerfs restore` or by uploading the file again, until gc.")
    _add_selection(remove, add_endpoint)
    remove.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    remove.set_defaults(run=_guarded(run_rm))

    restore = commands.add_parser("restore", help="bring back removed tracks (until gc)",
                                  description="Add back tracks `lockerfs rm` removed: those that would be "
                                              "under PATH in the mount again, or (with --locker) those "
                                              "matching every --match.")
    _add_selection(restore, add_endpoint)
    restore.add_argument("--dry-run", action="store_true", help="only print what would be restored")
    restore.set_defaults(run=_guarded(run_restore))

    tag = commands.add_parser("tag", help="rewrite the tags of tracks in a mounted locker",
                              description=f"Rewrite the embedded tags of the tracks under PATHs: FIELD=VALUE "
                                          f"sets a field, FIELD= clears it; fields: {', '.join(FIELDS)} "
                                          "(track and disc: 3 or 3/12).")
    add_endpoint(tag)
    tag.add_argument("items", nargs="+", metavar="PATH... FIELD=VALUE...")
    tag.set_defaults(run=_guarded(run_tag))

    pin = commands.add_parser("pin", help="keep tracks of a mounted locker on this machine, for offline play")
    pin.add_argument("paths", nargs="+", metavar="PATH")
    pin.set_defaults(run=_guarded(run_pin))

    unpin = commands.add_parser("unpin", help="let pinned tracks be evicted again")
    unpin.add_argument("paths", nargs="+", metavar="PATH")
    unpin.set_defaults(run=_guarded(run_unpin))

    pinned = commands.add_parser("pinned", help="list the pins of mounted lockers")
    pinned.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT")
    pinned.set_defaults(run=_guarded(run_pinned))


def _add_selection(parser: argparse.ArgumentParser, add_endpoint: Callable) -> None:  # type: ignore[type-arg]
    add_endpoint(parser)
    parser.add_argument("--locker", metavar="LOCKER", help="s3://BUCKET[/PREFIX]: choose by --match, no mount")
    parser.add_argument("--match", action="append", default=[], metavar="FIELD=VALUE",
                        help=f"with --locker: tracks whose FIELD is VALUE (case-blind; all must match); "
                             f"fields: {', '.join(MATCH_FIELDS)}")
    parser.add_argument("paths", nargs="*", metavar="PATH")


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """One sentence and an exit code for everything a user can meet; tracebacks only for bugs."""
    def guarded(args: argparse.Namespace) -> int:
        from lockerfs import edits
        from lockerfs.control import ControlError
        from lockerfs.retag import TagError

        try:
            return run(args)
        except Refused as exc:
            code, message = exc.code, str(exc)
        except (TagError, edits.EditError, ControlError, StoreError, catalog.FormatError) as exc:
            code, message = (EXIT_USAGE if isinstance(exc, TagError) else EXIT_FAILED), str(exc)
        print(f"lockerfs: {message}", file=sys.stderr)
        return code

    return guarded


# --- finding the mount -------------------------------------------------------------------------

def _one_mount(paths: list[str], whole: str | None = None) -> tuple[Path, list[MountedPath]]:
    """The mount the paths are in; `whole` refuses the mount point itself (a slip of the
    hand must not remove or re-tag the whole library) and says why."""
    from lockerfs import control

    located = [control.locate(path) for path in paths]
    if whole is not None and any(item.relative == "" for item in located):
        raise Refused(f"refusing to {whole} the whole locker: name its folders", EXIT_USAGE)
    mounts = {item.mountpoint for item in located}
    if len(mounts) > 1:
        raise Refused(f"the paths are in {len(mounts)} different mounts ({', '.join(map(str, sorted(mounts)))}): "
                      "give the paths of one mount at a time", EXIT_USAGE)
    return located[0].mountpoint, located


def _call(mountpoint: Path, op: str, **args: Any) -> dict[str, Any]:
    from lockerfs import control

    with control.connect(mountpoint) as connection:
        return connection.call(op, **args)


def _placed_under(mountpoint: Path, located: list[MountedPath], op: str) -> list[Placed]:
    """The tracks the mount places under the paths; a path it does not know, or that holds no
    track, is refused (naming it as the user typed it)."""
    from lockerfs.edits import Placed

    answer = _call(mountpoint, op, paths=[item.relative for item in located])
    by_relative = {item.relative: item.given for item in located}
    missing = answer.get("missing", [])
    if missing:
        raise Refused(f"no such track or folder in the locker: {by_relative.get(missing[0], missing[0])}")
    found, seen = [], set()
    for entry in answer["found"]:
        if not entry["tracks"]:
            what = "no removed track would go" if op == "removed" else "there is no track"
            raise Refused(f"{what} under {by_relative.get(entry['path'], entry['path'])}")
        for item in entry["tracks"]:
            track = track_from_dict(item["track"])
            if track.sha256 not in seen:
                seen.add(track.sha256)
                found.append(Placed(item["path"], track))
    return found


def _store_of(mountpoint: Path, endpoint_url: str | None) -> S3Store:
    """The mounted locker's bucket, with this user's credentials; checked to answer."""
    info = _call(mountpoint, "info")
    profile = info.get("profile")
    if profile and "AWS_PROFILE" not in os.environ and "AWS_ACCESS_KEY_ID" not in os.environ:
        os.environ["AWS_PROFILE"] = profile  # the mount's `profile=` option: a name, not a secret
    store = S3Store(info["locker"], endpoint_url or info["endpoint"], UPLOAD_RETRIES)
    store.check()
    return store


def _locker_store(args: argparse.Namespace) -> S3Store:
    try:
        store = S3Store(args.locker, args.endpoint_url, UPLOAD_RETRIES)
    except ValueError as exc:
        raise Refused(str(exc), EXIT_USAGE) from None
    store.check()
    return store


def _tell_mount(mountpoint: Path, keys: list[str], show: list[str] = []) -> dict[str, str]:  # noqa: B006
    """Have the mount show what was just written; if it cannot, the change still stands."""
    from lockerfs import control

    try:
        with control.connect(mountpoint, timeout=NEWS_WAIT) as connection:
            return connection.call("news", keys=keys, show=show)["paths"]
    except control.ControlError as exc:
        print(f"lockerfs: the change is in the locker, but the mount at {mountpoint} will show it only at its "
              f"next refresh: {exc}", file=sys.stderr)
        return {}


def _selection(args: argparse.Namespace) -> None:
    """Either paths in a mount, or --locker with --match: not both, not neither."""
    if args.locker is None:
        if args.match:
            raise Refused("--match needs --locker LOCKER (without a mount, name the locker)", EXIT_USAGE)
        if not args.paths:
            raise Refused("name the files or folders (in a mounted locker), or use --locker LOCKER --match "
                          "FIELD=VALUE", EXIT_USAGE)
    elif args.paths or not args.match:
        raise Refused("with --locker, choose tracks by --match FIELD=VALUE, not by path", EXIT_USAGE)


def _matching(args: argparse.Namespace, store: S3Store, removed: bool) -> list[Placed]:
    from lockerfs import edits
    from lockerfs.edits import Placed

    wanted = edits.parse_matches(args.match)
    state = catalog.load_catalog(store).state
    pool = state.restorable() if removed else state.tracks()
    found = sorted((track for track in pool if edits.matches(track, wanted)), key=edits.describe)
    if not found:
        kind = "removed track that can be restored" if removed else "track"
        raise Refused(f"no {kind} in {args.locker} matches {' '.join(args.match)}")
    return [Placed(edits.describe(track), track) for track in found]


# --- rm and restore ---------------------------------------------------------------------------

def run_rm(args: argparse.Namespace) -> int:
    return _change(args, removing=True)


def run_restore(args: argparse.Namespace) -> int:
    return _change(args, removing=False)


def _change(args: argparse.Namespace, removing: bool) -> int:
    from lockerfs import edits
    from lockerfs.edits import Placed

    _selection(args)
    verb = "remove" if removing else "restore"
    mountpoint = None
    if args.locker is not None:
        store = _locker_store(args)
        placed = _matching(args, store, removed=not removing)
    else:
        mountpoint, located = _one_mount(args.paths, "remove everything in" if removing else None)
        placed = _placed_under(mountpoint, located, "tracks" if removing else "removed")
        if args.dry_run:
            return _print_list(f"would {verb}", placed)
        store = _store_of(mountpoint, args.endpoint_url)
    if args.dry_run:
        return _print_list(f"would {verb}", placed)
    tracks = [item.track for item in placed]
    keys = edits.remove(store, tracks) if removing else edits.restore(store, tracks)
    if mountpoint is not None:
        shown = _tell_mount(mountpoint, keys, [] if removing else [t.sha256 for t in tracks])
        placed = [Placed(shown.get(item.track.sha256, item.where), item.track) for item in placed]
    _print_list("removed" if removing else "restored", placed)
    if removing:
        print("(`lockerfs restore` brings them back until `lockerfs gc` deletes their objects)")
    return 0


def _print_list(what: str, placed: list[Placed]) -> int:
    size = sum(item.track.size for item in placed)
    count = f"{len(placed)} track{'s' if len(placed) != 1 else ''}"
    print(f"{what} {count} ({human_bytes(size)}):")
    for item in placed:
        print(f"  {_printable(item.where)}")
    return 0


# --- tag ---------------------------------------------------------------------------------------

def run_tag(args: argparse.Namespace) -> int:
    from lockerfs import edits
    from lockerfs.retag import parse_edits

    paths, assignments = _split_tag_items(args.items)
    changes = parse_edits(assignments)  # bad input is refused before anything is asked or fetched
    mountpoint, located = _one_mount(paths, "re-tag")
    placed = _placed_under(mountpoint, located, "tracks")
    store = _store_of(mountpoint, args.endpoint_url)
    progress = _Counter("tag", len(placed))
    with tempfile.TemporaryDirectory(prefix="lockerfs-tag-") as workdir:
        retagged, unchanged = edits.retag_copies(store, placed, changes, Path(workdir), progress.step)
        progress.close()
        if not retagged:
            print(f"nothing to change: the {len(unchanged)} track{'s' if len(unchanged) != 1 else ''} already "
                  "say so")
            return 0
        keys = edits.store_retagged(store, retagged)
    shown = _tell_mount(mountpoint, keys, [item.new.sha256 for item in retagged])
    print(f"tagged {len(retagged)} track{'s' if len(retagged) != 1 else ''}:")
    for item in retagged:
        new = shown.get(item.new.sha256)
        arrow = f" -> {_printable(new)}" if new and new != item.old.where else ""
        print(f"  {_printable(item.old.where)}{arrow}")
    if unchanged:
        print(f"({len(unchanged)} already said so)")
    return 0


def _split_tag_items(items: list[str]) -> tuple[list[str], list[str]]:
    """PATH... FIELD=VALUE...: the assignments are the trailing `word=...` arguments."""
    split = len(items)
    while split > 0 and _looks_like_assignment(items[split - 1]):
        split -= 1
    paths, assignments = items[:split], items[split:]
    if not assignments:
        raise Refused(f"say what to set: FIELD=VALUE after the paths (fields: {', '.join(FIELDS)})", EXIT_USAGE)
    if not paths:
        raise Refused("name the tracks or folders to tag (paths in a mounted locker) before FIELD=VALUE",
                      EXIT_USAGE)
    return paths, assignments


def _looks_like_assignment(item: str) -> bool:
    name, sep, _ = item.partition("=")
    return bool(sep) and name.isidentifier() and "/" not in name


# --- pins ----------------------------------------------------------------------------------------

def run_pin(args: argparse.Namespace) -> int:
    from lockerfs import control

    mountpoint, located = _one_mount(args.paths)
    bar = _Bytes("pin")
    with control.connect(mountpoint) as connection:
        replies = connection.request("pin", paths=[item.relative for item in located],
                                     names=[item.given for item in located])
        answer = _follow(replies, lambda p: bar.update(p["bytes"], p["total"]))
    bar.close()
    for pin in answer["pins"]:
        print(f"pinned {_printable(pin['path'] or str(mountpoint))}: {pin['tracks']} tracks, "
              f"{pin['objects'] - pin['tracks']} other files, {human_bytes(pin['bytes'])}, on disk and checked")
    seconds = answer["seconds"]
    rate = f" ({answer['fetched'] / seconds / 1e6:.1f} MB/s)" if seconds > 0 and answer["fetched"] > 0 else ""
    print(f"fetched {human_bytes(answer['fetched'])} in {seconds:.1f} s{rate}")
    return 0


def run_unpin(args: argparse.Namespace) -> int:
    mountpoint, located = _one_mount(args.paths)
    answer = _call(mountpoint, "unpin", paths=[item.relative for item in located],
                   names=[item.given for item in located])
    for path in answer["unpinned"]:
        print(f"unpinned {_printable(path or str(mountpoint))}")
    print(f"{human_bytes(answer['released'])} may be evicted again")
    return 0


def run_pinned(args: argparse.Namespace) -> int:
    from lockerfs import control

    if args.mountpoint is not None:
        points = [control.locate(args.mountpoint).mountpoint]
    else:
        points = control.lockerfs_mounts()
        if not points:
            raise Refused("no locker is mounted")
    shown = 0
    for point in points:
        try:
            answer = _call(point, "pinned")
        except control.ControlError as exc:
            if args.mountpoint is not None:
                raise
            log.debug("skipping %s: %s", point, exc)  # another user's mount, or a dead one
            continue
        shown += 1
        print(f"{point}: {human_bytes(answer['pinned_bytes'])} pinned of {human_bytes(answer['capacity'])} "
              f"allowed ({answer['share']:.0%} of the {human_bytes(answer['cache_size'])} cache)")
        for pin in answer["pins"]:
            state = "complete" if pin["on_disk"] >= pin["bytes"] else f"{human_bytes(pin['on_disk'])} on disk"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(pin["created"]))
            print(f"  {_printable(pin['path'] or '(everything)')}\t{pin['tracks']} tracks\t{human_bytes(pin['bytes'])}"
                  f"\t{state}\tpinned {when}")
        if not answer["pins"]:
            print("  (nothing pinned)")
    if not shown:
        raise Refused("none of the mounted lockers is yours, or none answers")
    return 0


def _follow(replies: Iterator[dict[str, Any]], on_progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    while True:
        try:
            on_progress(next(replies))
        except StopIteration as done:
            return done.value


# --- output ---------------------------------------------------------------------------------------

class _Bytes:
    """Bytes on disk out of all: a tqdm bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._bar: Any = None
        self._last = time.monotonic()  # a short job prints no progress lines at all
        self._done = 0

    def update(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=self.what,
                                 dynamic_ncols=True)
            self._bar.update(done - self._done)
        elif time.monotonic() - self._last >= PLAIN_PROGRESS_EVERY:
            self._last = time.monotonic()
            print(f"{self.what}: {human_bytes(done)} of {human_bytes(total)}", file=sys.stderr, flush=True)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Counter:
    """Tracks done out of all, on a terminal."""

    def __init__(self, what: str, total: int) -> None:
        self._bar: Any = None
        if sys.stderr.isatty() and total > 1:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="track", desc=what, dynamic_ncols=True)

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _printable(name: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in name)
