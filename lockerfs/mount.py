"""Mount lifecycle: options, daemonizing, the catalog refresh loop, clean unmount.

`lockerfs mount` returns once the filesystem is mounted (or with one clear
sentence and a non-zero exit if it cannot be). The work happens in a forked
child that reports "ready" or the error through a pipe, then serves until
unmounted (`lockerfs umount`, `fusermount3 -u`) or signalled.

The catalog is kept on disk in the cache dir, so a mount starts and lists
with the server unreachable; the refresh loop applies what other machines
uploaded and invalidates exactly the kernel entries that changed.
"""

from __future__ import annotations

import argparse
import errno
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from lockerfs import catalog, config, extras, layout
from lockerfs.cache import BlockCache, CacheInUse, UnsafeCacheDir, make_private_dir
from lockerfs.catalog import CatalogReader
from lockerfs.diskcache import claim_private_dir
from lockerfs.fs import LockerOperations
from lockerfs.prefetch import Prefetcher
from lockerfs.store import MOUNT_RETRIES, NotFound, S3Store, StoreError, Unreachable
from lockerfs.tree import Tree

log = logging.getLogger(__name__)

FOREGROUND_SLOTS = 8
# A scan warms two small ranges per track, each about one round trip long: the
# number in flight, not the link, sets how many tracks a second it can warm.
BACKGROUND_SLOTS = 24
COPY_SAVE_DELAY = 30.0  # seconds after mounting before the local catalog copy is written


class MountError(Exception):
    """The filesystem cannot be mounted; str() is the sentence to show."""


@dataclass(frozen=True)
class MountOptions:
    locker: str
    mountpoint: Path
    endpoint_url: str | None
    cache_dir: Path | None
    cache_size: int
    memory_cache: int
    template: str
    refresh: float
    allow_other: bool
    foreground: bool
    debug: bool
    page_cache: bool
    names: str = "default"  # layout.NAME_MODES

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MountOptions:
        if args.refresh <= 0:
            raise MountError("--refresh must be a positive number of seconds")
        layout.parse_template(args.layout, args.names)  # fail before mounting, with the template's error
        return cls(args.locker, Path(args.mountpoint).absolute(), args.endpoint_url,
                   args.cache_dir, config.parse_size(args.cache_size),
                   config.parse_size(args.memory_cache), args.layout,
                   args.refresh, args.allow_other, args.foreground, args.debug, args.page_cache,
                   args.names)


def add_mount_commands(commands: argparse._SubParsersAction, add_endpoint: Callable) -> None:  # type: ignore[type-arg]
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


# --- `lockerfs mount` ----------------------------------------------------------------

def run_mount(args: argparse.Namespace) -> int:
    try:
        options = MountOptions.from_args(args)
        check_mountpoint(options.mountpoint)
    except (MountError, ValueError) as exc:
        print(f"lockerfs: {exc}", file=sys.stderr)
        return 2
    if options.foreground:
        return serve(options, report=_print_report)
    return _daemonize(options)


def check_mountpoint(path: Path) -> None:
    if not path.is_dir():
        raise MountError(f"the mount point {path} does not exist or is not a folder")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point (busy): unmount it first")
    if any(path.iterdir()):
        raise MountError(f"the mount point {path} is not empty")


def _print_report(message: str) -> None:
    if message != "ready":
        print(f"lockerfs: {message}", file=sys.stderr)


def _daemonize(options: MountOptions) -> int:
    """Fork; the child mounts and serves, the parent returns once it says ready (or why not)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()
        _detach_stdio()

        def report(message: str) -> None:
            os.write(write_end, message.encode() + b"\n")

        code = 1
        try:
            code = serve(options, report)
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.readline().decode().strip()
    if message == "ready":
        return 0
    os.waitpid(pid, 0)
    print(f"lockerfs: {message or 'the mount process died before mounting (see its log)'}", file=sys.stderr)
    return 1


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def serve(options: MountOptions, report: Callable[[str], None]) -> int:
    """Mount and serve until unmounted; `report` gets "ready" or the reason we could not mount."""
    cache_dir = options.cache_dir or config.default_cache_dir() / config.locker_id(options.locker, options.endpoint_url)
    os.umask(0o077)  # everything the mount writes (log, catalog copy, blocks) is its user's alone
    try:
        claim_private_dir(cache_dir)  # before the log file is created in it
    except UnsafeCacheDir as exc:
        report(str(exc))
        return 1
    except OSError as exc:
        report(f"cannot use the cache directory {cache_dir}: {exc.strerror or exc}")
        return 1
    _setup_logging(options, cache_dir)
    # Anything that looks at the mount point must happen before it is mounted:
    # until pyfuse3.main runs, nobody answers the kernel, and we would hang.
    registry = _registry(options.mountpoint)
    try:
        mounted = _prepare(options, cache_dir)
    except (MountError, StoreError, catalog.FormatError, CacheInUse, UnsafeCacheDir, ValueError) as exc:
        log.error("cannot mount: %s", exc)
        report(str(exc))
        return 1
    except RuntimeError as exc:  # pyfuse3.init: the kernel or fusermount3 refused the mount
        log.error("cannot mount: %s", exc)
        report(f"cannot mount {options.mountpoint}: {exc} (is fuse3 installed and /dev/fuse usable?)")
        return 1
    except OSError as exc:  # the cache dir or the mount point: one sentence, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        log.error("cannot mount: %s%s", exc.strerror or exc, where)
        report(f"cannot mount: {exc.strerror or exc}{where}")
        return 1
    make_private_dir(registry.parent)
    registry.write_text(f"{os.getpid()}\n")
    report("ready")
    try:
        trio.run(mounted.serve)
    finally:
        pyfuse3.close(unmount=True)
        mounted.close()
        registry.unlink(missing_ok=True)
    return 0


def _setup_logging(options: MountOptions, cache_dir: Path) -> None:
    level = logging.DEBUG if options.debug else logging.INFO
    if options.foreground:
        handler: logging.Handler = logging.StreamHandler()
    else:
        make_private_dir(cache_dir)  # and its missing parents: ~/.cache/lockerfs lists your lockers
        handler = logging.handlers.RotatingFileHandler(cache_dir / "mount.log", maxBytes=4 << 20, backupCount=1)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # their DEBUG output carries request headers


class Mounted:
    """A mounted locker: the pieces that live as long as the mount."""

    def __init__(self, options: MountOptions, store: S3Store, cache: BlockCache,
                 reader: CatalogReader, catalog_copy: Path, copy_dirty: bool) -> None:
        self.options = options
        self.copy_dirty = copy_dirty  # the local catalog copy lacks what the bucket told us
        self._catalog_lock = trio.Lock()  # the catalog is refreshed and saved in worker threads
        self.store = store
        self.cache = cache
        self.reader = reader
        self.catalog_copy = catalog_copy
        self.template = layout.parse_template(options.template, options.names)
        self.tree = Tree()
        self.tree.rebuild(*extras.lay_out(reader.state, self.template))
        self.prefetcher = Prefetcher(cache, lambda: self.tree)
        self.operations = LockerOperations(self.tree, cache, self.prefetcher, direct_io=not options.page_cache)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_on_signals)
            await nursery.start(self.prefetcher.run)
            nursery.start_soon(self._refresh_loop)
            if self.copy_dirty:
                nursery.start_soon(self._save_copy_later)
            await pyfuse3.main(max_tasks=64)
            self.prefetcher.stop()  # and with it the GETs only prefetch wanted
            await self.cache.settle(timeout=5.0)  # what was fetched is kept for the next mount
            nursery.cancel_scope.cancel()

    async def _stop_on_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                pyfuse3.terminate()
                return

    async def _save_copy_later(self) -> None:
        """Save the catalog copy once the mount has settled: a large catalog takes
        seconds of CPU to write, which a player's first scan should not share."""
        await trio.sleep(COPY_SAVE_DELAY)
        async with self._catalog_lock:
            await trio.to_thread.run_sync(self._save_copy)

    def _save_copy(self) -> None:
        write_catalog_copy(self.reader, self.catalog_copy)
        self.copy_dirty = False

    async def _refresh_loop(self) -> None:
        offline = False
        while True:
            await trio.sleep(self.options.refresh)
            async with self._catalog_lock:
                offline = await self._refresh(offline)

    async def _refresh(self, offline: bool) -> bool:
        """One refresh of the catalog; returns whether the locker is out of reach now."""
        try:
            changed = await trio.to_thread.run_sync(self.reader.refresh)
        except StoreError as exc:
            if not offline:
                log.warning("catalog refresh failed, showing what we have: %s", exc)
            return True
        except catalog.FormatError as exc:
            # Someone else's bad (or newer) file must not end this mount.
            log.warning("catalog refresh: %s; showing what we have", exc)
            return offline
        except Exception:  # noqa: BLE001 - the catalog is untrusted input; a bug must not end the mount
            log.exception("catalog refresh failed; showing what we have")
            return offline
        if offline:
            log.info("the locker is reachable again")
        if changed:
            try:
                await self._apply_catalog()
            except Exception:  # a bug here must cost a refresh, not the mount
                log.exception("applying the refreshed catalog failed; showing the previous one")
        return False

    async def _apply_catalog(self) -> None:
        paths, extra_files = await trio.to_thread.run_sync(extras.lay_out, self.reader.state, self.template)
        changes = await trio.to_thread.run_sync(self.tree.rebuild, paths, extra_files)
        log.info("catalog refreshed: %d tracks, %d entries changed", len(paths), len(changes.entries))
        for parent, name in changes.entries:
            pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
        for inode in changes.dirs:
            await trio.to_thread.run_sync(_invalidate_inode, inode)
        await trio.to_thread.run_sync(self._save_copy)

    def close(self) -> None:
        if self.copy_dirty:  # unmounted before the delayed save: save it now
            self._save_copy()
        self.cache.close()


def write_catalog_copy(reader: CatalogReader, copy: Path) -> None:
    """Keep the local catalog copy; a full or read-only disk costs offline mounting, not this one."""
    try:
        reader.save(copy)
    except OSError as exc:
        log.warning("cannot save the catalog copy %s (%s); mounting offline may show less",
                    copy, exc.strerror or exc)


def _invalidate_inode(inode: int) -> None:
    try:
        pyfuse3.invalidate_inode(inode, attr_only=False)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # the kernel never looked at it: nothing to drop
            log.debug("invalidate_inode(%d): %s", inode, exc)


def _prepare(options: MountOptions, cache_dir: Path) -> Mounted:
    """Everything that can fail before the kernel sees the mount."""
    store = S3Store(options.locker, options.endpoint_url, MOUNT_RETRIES,
                    pool_size=FOREGROUND_SLOTS + BACKGROUND_SLOTS + 4)
    cache = BlockCache(store, cache_dir, disk_limit=options.cache_size, memory_limit=options.memory_cache,
                       foreground_slots=FOREGROUND_SLOTS, background_slots=BACKGROUND_SLOTS)
    cache.open()
    try:
        catalog_copy = cache_dir / f"catalog-{config.locker_id(options.locker, store.endpoint)}.json.gz"
        reader, fresh = _load_catalog(store, catalog_copy)
        mounted = Mounted(options, store, cache, reader, catalog_copy, copy_dirty=fresh)
        mount_options = {f"fsname={options.locker}", "subtype=lockerfs", "ro", "default_permissions", "noatime"}
        if options.allow_other:
            mount_options.add("allow_other")
        if options.debug:
            mount_options.add("debug")
        pyfuse3.init(mounted.operations, str(options.mountpoint), mount_options)
    except BaseException:
        cache.close()
        raise
    return mounted


def _load_catalog(store: S3Store, copy: Path) -> tuple[CatalogReader, bool]:
    """The catalog from the bucket, or from the local copy when the bucket is out of reach;
    and whether the bucket had news the local copy lacks."""
    reader = CatalogReader(store)
    have_copy = reader.load_local(copy)
    try:
        catalog.check_locker(store)
        changed = reader.refresh()
    except Unreachable as exc:
        if not have_copy:
            raise MountError(f"{exc}, and there is no cached catalog of {store.url} to show offline") from None
        log.warning("%s: mounting offline with the cached catalog (%d tracks)", exc, len(reader.tracks()))
        return reader, False
    except NotFound:
        raise MountError(f"{store.url} is not a lockerfs locker (no locker.json): "
                         "`lockerfs upload` creates one") from None
    return reader, changed


# --- which process serves which mount point ----------------------------------------------

def _registry(mountpoint: Path) -> Path:
    name = config.locker_id(str(mountpoint.resolve()), None)
    return config.state_dir() / "mounts" / f"{name}.pid"


def run_umount(args: argparse.Namespace) -> int:
    """Unmount, then wait until the serving process has exited."""
    mountpoint = Path(args.mountpoint).absolute()
    registry = _registry(mountpoint)
    try:
        pid = int(registry.read_text())
    except (OSError, ValueError):
        pid = None
    if not os.path.ismount(mountpoint):
        print(f"lockerfs: {mountpoint} is not mounted", file=sys.stderr)
        return 1
    result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"lockerfs: cannot unmount {mountpoint}: {result.stderr.strip()}", file=sys.stderr)
        return 1
    if pid is not None:
        _wait_for_exit(pid, timeout=20.0)
    return 0


def _wait_for_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state == "Z":  # exited; waiting for a parent (or a PID 1 that never reaps) to collect it
            return
        time.sleep(0.05)
    log.warning("mount process %d still running %.0f s after unmount", pid, timeout)

