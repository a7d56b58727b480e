"""Mount lifecycle: options, daemonizing, the catalog refresh loop, clean unmount.

`lockerfs mount` returns once the filesystem is mounted (or with one clear
sentence and a non-zero exit if it cannot be). The work happens in a forked
child that reports "ready" or the error through a pipe, then serves until
unmounted (`lockerfs umount`, `fusermount3 -u`) or signalled.

The catalog is kept on disk in the cache dir (written as soon as the bucket
told us something new), so a mount starts and lists with the server
unreachable, within START_WAIT of asking it; the refresh loop applies what
other machines uploaded and invalidates exactly the kernel entries that
changed. A mount point left behind by a lockerfs process that died is
unmounted (lazily) before mounting on it again.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import errno
import gc
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from lockerfs import catalog, config, control, heap, layout, mountpoints, mountregistry
from lockerfs.cache import BlockCache, CacheInUse, UnsafeCacheDir, make_private_dir
from lockerfs.catalog import CatalogReader, CatalogState
from lockerfs.diskcache import claim_private_dir
from lockerfs.fs import LockerOperations
from lockerfs.livelayout import LiveLayout
from lockerfs.mountapi import MountApi
from lockerfs.pins import PIN_SHARE, Pins
from lockerfs.prefetch import Prefetcher
from lockerfs.store import MOUNT_RETRIES, NotFound, S3Store, StoreError, Unreachable
from lockerfs.tree import Tree

log = logging.getLogger(__name__)

FOREGROUND_SLOTS = 8
# A scan warms two small ranges per track, each about one round trip long: the
# number in flight, not the link, sets how many tracks a second it can warm.
BACKGROUND_SLOTS = 24
READ_DEADLINE = 8.0  # seconds a read may wait for the store before it fails with EIO
# A mount with a local catalog copy waits this long for the bucket's catalog,
# then shows the copy and applies the bucket's news when they come: booting
# offline (or behind a slow link) must not wait out connection retries.
START_WAIT = 0.5
LOW_PRIORITY = 19  # nice value of the thread that writes the catalog copy
# The handler thread answers the kernel; worker threads do bulk work (merging a catalog,
# writing its copy). A shorter switch interval than Python's 5 ms lets a request waiting
# for the interpreter lock in, instead of a stalled `ls` while the copy is written.
SWITCH_INTERVAL = 0.001
# A large catalog is millions of long-lived objects: the cyclic collector would walk
# them all again and again while they are made and while folders are listed (a third of
# a cold `find` at 300,000 tracks). They are moved out of its sight once made (gc.freeze).
GC_THRESHOLD = (50_000, 20, 100)


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


# --- `lockerfs mount` ----------------------------------------------------------------

def run_mount(args: argparse.Namespace) -> int:
    try:
        options = MountOptions.from_args(args)
        if recover_stale_mount(options.mountpoint):
            print(f"lockerfs: {options.mountpoint} was left mounted by a lockerfs process that died; "
                  "unmounted it", file=sys.stderr)
        check_mountpoint(options.mountpoint)
    except (MountError, ValueError) as exc:
        print(f"lockerfs: {exc}", file=sys.stderr)
        return 2
    if options.foreground:
        return serve(options, report=_print_report)
    return _daemonize(options)


def recover_stale_mount(path: Path) -> bool:
    """Lazily unmount a lockerfs mount whose process died; True if there was one.

    A dead mount of another filesystem is not ours to remove: it is refused."""
    state, entry = mountpoints.state(path)
    if state is not mountpoints.State.STALE:
        return False
    assert entry is not None
    if entry.fstype != mountpoints.LOCKERFS_TYPE:
        raise MountError(f"{path} is a {entry.fstype} mount whose process is gone: unmount it first")
    _fusermount(path, lazy=True)
    return True


def _fusermount(path: Path, lazy: bool) -> None:
    result = subprocess.run(["fusermount3", "-uz" if lazy else "-u", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise MountError(f"cannot unmount {path}: {result.stderr.strip() or 'fusermount3 failed'}")


def check_mountpoint(path: Path) -> None:
    if mountpoints.mounted_at(path) is not None or os.path.ismount(path):
        raise MountError(f"{path} is already a mount point (busy): unmount it first")
    if not path.is_dir():
        raise MountError(f"the mount point {path} does not exist or is not a folder")
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
    started = time.monotonic()
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
    canonical_mountpoint = str(options.mountpoint.resolve())
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
    description = _describe(mountregistry.MountDescription(
        canonical_mountpoint, options.locker, mounted.store.endpoint, mounted.store.region,
        str(mounted.catalog_copy), options.template, options.names, os.getpid()))
    log.info("mounted %s on %s in %.2f s", options.locker, options.mountpoint, time.monotonic() - started)
    report("ready")
    notify_systemd("READY=1")
    try:
        trio.run(mounted.serve)
    finally:
        pyfuse3.close(unmount=True)
        mounted.close()
        registry.unlink(missing_ok=True)
        if description is not None:
            description.unlink(missing_ok=True)
    return 0


def _describe(description: mountregistry.MountDescription) -> Path | None:
    """Say how this mount was made, for commands given paths inside it (`lockerfs share`);
    a full or read-only state dir costs them, not the mount."""
    try:
        return mountregistry.write_description(description)
    except OSError as exc:
        log.warning("cannot write the mount's description (%s): `lockerfs share` will not find this mount",
                    exc.strerror or exc)
        return None


def notify_systemd(message: str) -> None:
    """Tell systemd how the mount is doing (sd_notify(3), for `Type=notify` units such as
    contrib/systemd/lockerfs@.service); nothing happens outside such a unit."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc.strerror or exc)


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
    """A mounted locker: the pieces that live as long as the mount.

    One task keeps the catalog (`_keep_catalog`): it finishes a first load
    that was still on its way at mount time, saves the local copy as soon as
    the bucket told us something it lacks, then refreshes every `refresh`
    seconds. Commands on the control channel (mountapi.py) apply the catalog
    files they wrote at once, between refreshes. Whatever reads or changes
    the catalog reader holds `catalog_lock`, so the reader is only ever used
    by one thread at a time. Whether the locker is reachable is logged when
    it changes ("offline: ...", "back online: ..."), never per request.
    """

    def __init__(self, options: MountOptions, store: S3Store, cache: BlockCache,
                 start: CatalogStart, catalog_copy: Path, pins: Pins) -> None:
        self.options = options
        self.store = store
        self.cache = cache
        self.reader = start.reader
        self.catalog_copy = catalog_copy
        self.pins = pins
        self.catalog_lock = trio.Lock()
        self._copy_wanted = trio.Event()  # set when a command's change awaits saving in the copy
        self.copy_dirty = start.copy_stale  # the local catalog copy lacks what the bucket told us
        self._first_load = start.loading
        self._offline = False
        self.template = layout.parse_template(options.template, options.names)
        # Folders are made now; each folder's files are named when it is first looked into.
        began = time.monotonic()
        self.layout = LiveLayout(start.shown, self.template)
        self.tree = Tree()
        self.tree.use(self.layout)
        log.info("%d tracks in %d folders laid out in %.2f s", self.layout.track_count, len(self.layout.shown),
                 time.monotonic() - began)
        self.prefetcher = Prefetcher(cache, lambda: self.tree)
        self.control_socket = catalog_copy.parent / control.SOCKET_NAME
        self.operations = LockerOperations(self.tree, cache, self.prefetcher, direct_io=not options.page_cache,
                                           control_socket=os.fsencode(self.control_socket))
        if start.unreachable is not None:
            self._went_offline(start.unreachable)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_on_signals)
            await nursery.start(self.prefetcher.run)
            await nursery.start(self._keep_catalog)  # holds the catalog first if it is still loading
            await nursery.start(control.serve, self.control_socket, MountApi(self))
            nursery.start_soon(self.pins.keep)
            self.pins.kick()  # fetch what pinned objects lack on disk, if anything
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

    async def _keep_catalog(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._first_load is not None:
            first_load = self._first_load
            async with self.catalog_lock:  # the loading thread is changing the reader: nobody reads it
                task_status.started()
                await self._take_news_locked(lambda: trio.to_thread.run_sync(first_load.result,
                                                                             abandon_on_cancel=True))
            self._first_load = None
        else:
            task_status.started()
        refresh_at = trio.current_time() + self.options.refresh
        while True:
            if self.copy_dirty:  # the bucket told us something (a first load, a command's news)
                async with self.catalog_lock:
                    await self._save_copy()
            with trio.move_on_at(refresh_at):
                await self._copy_wanted.wait()  # a command's news: `lockerfs share` reads the copy
            self._copy_wanted = trio.Event()
            if trio.current_time() >= refresh_at:
                await self._take_news(lambda: trio.to_thread.run_sync(self.reader.refresh))
                refresh_at = trio.current_time() + self.options.refresh

    async def _take_news(self, load: Callable[[], Awaitable[bool]]) -> None:
        """Apply what one load of the catalog brings, and note whether the locker answered."""
        async with self.catalog_lock:
            await self._take_news_locked(load)

    async def _take_news_locked(self, load: Callable[[], Awaitable[bool]]) -> None:
        began = time.monotonic()
        try:
            changed = await load()
        except StoreError as exc:
            self._went_offline(exc)
            return
        except (catalog.FormatError, MountError) as exc:
            # Someone else's bad (or newer) file must not end this mount.
            log.warning("catalog refresh: %s; showing what we have", exc)
            return
        except Exception:  # noqa: BLE001 - the catalog is untrusted input; a bug must not end the mount
            log.exception("catalog refresh failed; showing what we have")
            return
        if self._offline:
            self._offline = False
            log.info("back online: %s answers again", self.store.url)
            self.pins.kick()
        if changed:
            try:
                await self._apply_catalog(began)
            except Exception:  # a bug here must cost a refresh, not the mount
                log.exception("applying the refreshed catalog failed; showing the previous one")

    def _went_offline(self, why: StoreError) -> None:
        if not self._offline:
            self._offline = True
            log.warning("offline: %s; showing the catalog we have and serving cached blocks", why)

    async def apply_keys(self, keys: list[str]) -> None:
        """Show at once the catalog files a command just wrote (the caller holds catalog_lock).
        The catalog copy is saved by the catalog task soon after, not while the command waits."""
        began = time.monotonic()
        if await trio.to_thread.run_sync(self.reader.apply_keys, keys):
            await self._apply_catalog(began, save=False)
            self._copy_wanted.set()

    async def _apply_catalog(self, began: float, save: bool = True) -> None:
        """Re-file what the merge changed, in the loop's thread: handlers read the layout and
        the tree, so they must never see them half updated. The work is in proportion to
        the changed records (livelayout), a few milliseconds per hundred tracks.

        The first time the bucket's catalog arrives after a mount that started from the
        local copy, the layout moves over to it whole (tree.use keeps inodes by path)."""
        state = self.reader.state
        if self.layout.state is not state:
            state.entries.take_changed()
            self.layout = LiveLayout(state, self.template)
            changes = self.tree.use(self.layout)
            affected = len(self.layout.shown)
        else:
            re_filed = self.layout.update(state.entries.take_changed())
            changes = self.tree.sync(re_filed)
            affected = len(re_filed)
        _settle_memory()
        log.info("catalog refreshed in %.3f s: %d tracks, %d folders re-filed, %d entries changed",
                 time.monotonic() - began, self.layout.track_count, affected, len(changes.entries))
        for parent, name in changes.entries:
            pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
        for inode in changes.dirs:
            await trio.to_thread.run_sync(_invalidate_inode, inode)
        try:
            await self.pins.follow(self.reader.state)
        except Exception:  # a pins file that cannot be saved must not cost the refresh
            log.exception("pins: following the catalog failed")
        self.copy_dirty = True
        if save:
            await self._save_copy()

    async def _save_copy(self) -> None:
        """Save the catalog copy without slowing the mount: a large catalog takes
        seconds of CPU to write, which a player's first scan should not share."""
        await in_low_priority_thread(self._write_copy)

    def _write_copy(self) -> None:
        write_catalog_copy(self.reader, self.catalog_copy)
        self.copy_dirty = False
        heap.trim()  # its temporaries: about 160 MB at their peak at 300,000 tracks

    def close(self) -> None:
        if self.copy_dirty and self._first_load is None:  # unmounted before the copy was saved
            self._write_copy()
        self.cache.close()


async def in_low_priority_thread(work: Callable[[], None]) -> None:
    """Run `work` in a thread of its own at the lowest CPU priority (nice 19), and wait for it.

    Not in one of trio's worker threads: those serve the reads players wait
    for, and an unprivileged process cannot raise a thread's priority back.
    If the mount ends first, the thread is abandoned (it is a daemon).
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY)  # Linux: this thread only
        except OSError:
            pass
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task
            failure.append(exc)
        finally:
            try:
                trio.from_thread.run_sync(done.set, trio_token=token)
            except trio.RunFinishedError:
                pass

    threading.Thread(target=run, name="lockerfs low priority", daemon=True).start()
    await done.wait()
    if failure:
        raise failure[0]


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
    heap.map_large_blocks()  # before the catalog's large temporaries: see heap.py
    gc.disable()  # while the catalog is loaded and laid out: see GC_THRESHOLD
    try:
        return _prepare_mount(options, cache_dir)
    finally:
        _settle_memory()
        gc.set_threshold(*GC_THRESHOLD)
        gc.enable()
        sys.setswitchinterval(SWITCH_INTERVAL)


def _settle_memory() -> None:
    """What is alive now (the catalog, its layout) lives as long as the mount: out of the
    cyclic collector's sight. The temporaries of making it are given back to the system."""
    gc.freeze()
    heap.trim()


def _prepare_mount(options: MountOptions, cache_dir: Path) -> Mounted:
    store = S3Store(options.locker, options.endpoint_url, MOUNT_RETRIES,
                    pool_size=FOREGROUND_SLOTS + BACKGROUND_SLOTS + 4)
    cache = BlockCache(store, cache_dir, disk_limit=options.cache_size, memory_limit=options.memory_cache,
                       foreground_slots=FOREGROUND_SLOTS, background_slots=BACKGROUND_SLOTS,
                       read_deadline=READ_DEADLINE)
    pins = Pins(cache_dir / "pins.json", cache, int(options.cache_size * PIN_SHARE))
    pins.load()  # before the cache indexes its blocks: pinned ones go to the index that is never evicted
    cache.open()
    try:
        catalog_copy = cache_dir / f"catalog-{config.locker_id(options.locker, store.endpoint)}.json.gz"
        began = time.monotonic()
        start = start_catalog(store, catalog_copy)
        log.info("catalog loaded in %.2f s", time.monotonic() - began)
        mounted = Mounted(options, store, cache, start, catalog_copy, pins)
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


@dataclass
class CatalogStart:
    """What a mount shows first, and what is still on its way."""

    reader: CatalogReader
    shown: CatalogState  # what the mount shows at first
    loading: Future[bool] | None = None  # the bucket's catalog, when it did not come within START_WAIT
    copy_stale: bool = False  # the bucket told us something the local copy lacks
    unreachable: StoreError | None = None  # why the bucket could not be asked at all


def start_catalog(store: S3Store, copy: Path) -> CatalogStart:
    """The catalog to mount with: the bucket's if it answers within START_WAIT,
    else the local copy, while the bucket's goes on loading in the background.

    Without a local copy there is nothing to show but the bucket's, so we wait
    for it (and fail if it is out of reach).
    """
    for leftover in copy.parent.glob(f".{copy.name}.*.tmp"):  # a save cut short by a crash
        leftover.unlink(missing_ok=True)
    reader = CatalogReader(store)

    def load_from_bucket() -> bool:
        try:
            catalog.check_locker(store)
        except NotFound:
            raise MountError(f"{store.url} is not a lockerfs locker (no locker.json): "
                             "`lockerfs upload` creates one") from None
        return reader.refresh()

    if not reader.load_local(copy):
        try:
            load_from_bucket()
        except Unreachable as exc:
            raise MountError(f"{exc}, and there is no cached catalog of {store.url} to show offline") from None
        return CatalogStart(reader, reader.state, copy_stale=True)
    copy_state = _snapshot(reader.state)  # the copy's, kept from what the loading thread changes
    loading = _in_background(load_from_bucket)
    try:
        changed = loading.result(timeout=START_WAIT)
    except concurrent.futures.TimeoutError:
        log.info("the bucket has not answered within %.1f s: mounting with the cached catalog "
                 "(%d tracks) while it loads", START_WAIT, copy_state.entries.live_count)
        return CatalogStart(reader, copy_state, loading=loading)
    except Unreachable as exc:
        return CatalogStart(reader, copy_state, unreachable=exc)
    return CatalogStart(reader, reader.state, copy_stale=changed)


def _snapshot(state: CatalogState) -> CatalogState:
    """A copy of `state` that merging more files into it leaves alone: its maps are
    copied, and its track table (a few copies of columns: tens of ms for 300k tracks);
    the records in the maps are never changed, only replaced."""
    maps = {f.name: dict(value) for f in dataclasses.fields(state)
            if isinstance(value := getattr(state, f.name), dict)}
    return dataclasses.replace(state, entries=state.entries.copy(), **maps)


def _in_background(work: Callable[[], bool]) -> Future[bool]:
    """Run work() in a daemon thread: an unmount never waits for a stalled server."""
    future: Future[bool] = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)

    threading.Thread(target=run, name="lockerfs catalog load", daemon=True).start()
    return future


# --- which process serves which mount point ----------------------------------------------

def _registry(mountpoint: Path) -> Path:
    return mountregistry.pid_path(mountpoint)


def run_umount(args: argparse.Namespace) -> int:
    """Unmount (lazily if its process died), then wait until the serving process has exited."""
    mountpoint = Path(args.mountpoint).absolute()
    registry = _registry(mountpoint)
    try:
        pid = int(registry.read_text())
    except (OSError, ValueError):
        pid = None
    try:
        state, entry = mountpoints.state(mountpoint)
        if state is mountpoints.State.NOT_MOUNTED:
            raise MountError(f"{mountpoint} is not mounted")
        assert entry is not None
        if entry.fstype != mountpoints.LOCKERFS_TYPE:
            raise MountError(f"{mountpoint} is a {entry.fstype} mount, not a lockerfs one")
        _fusermount(mountpoint, lazy=state is mountpoints.State.STALE)
    except (MountError, OSError) as exc:
        print(f"lockerfs: {exc}", file=sys.stderr)
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

