"""`lockerfs gc`: delete the objects no current record names, safely next to writers, compactions and mounts.

Garbage is every object under objects/ (audio, art, lyrics, cue sheets,
playlist files) that no current record names (a live track, a live asset, a
live playlist) and that is older than the grace period. A removed or replaced
track's object is garbage: removal is undoable only until gc.

S3 cannot delete "if still unreferenced", and writers need no lock, so gc can
never know that no writer is about to name an object it found unnamed: an
upload matches an existing object (HEAD) and writes only a record; a slow
writer's record may arrive long after its object. Safety therefore comes
from two halves that need no clocks:

- gc moves each object aside before deleting it (server-side copy to
  trash/<batch id>/<key>), and after the deletions have returned reads the
  catalog again: an object that a record written meanwhile names is copied
  back at once. Only then are the copies deleted.
- every writer looks at its objects once more after storing its records and
  stores again any that is gone (lockerfs/writeorder.py).

A record written before gc's re-read is seen by it, so gc puts the object
back; a record written after the re-read was written after the deletion, so
its writer's look finds the object gone and stores it again. Either way the
object is there when both are done. docs/FORMAT.md ("Garbage collection")
has the whole argument, compaction and mounts included.

gc deletes nothing while any catalog file or record cannot be read (a
damaged file, a newer format's folder): it cannot know which objects those
name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from lockerfs import catalog
from lockerfs.asset import SHA_RE
from lockerfs.catalog import CatalogReader, CatalogState
from lockerfs.store import NotFound, ObjectInfo, Store

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(days=7)
OBJECTS_PREFIX = "objects/"
TRASH_PREFIX = "trash/"
BATCH = 64  # objects moved aside, deleted, checked against the catalog and put back at a time
PARALLEL = 16  # copies and deletes in flight at once
# Trash older than this was left by a gc that was killed between deleting and
# checking; the next gc puts back what the catalog names, and deletes the rest.
ABANDONED = timedelta(days=1)
CATALOG_PASSES = 5  # reads of the catalog that may each find it changed (compaction) before gc gives up
_TRASHED_RE = re.compile(r"^trash/[0-9]{13}-[0-9a-f]{16}/(objects/.+)$")


class GcRefused(Exception):
    """gc cannot be sure what the catalog names, so it deletes nothing; str() says why."""


@dataclass(frozen=True)
class Garbage:
    key: str
    size: int
    last_modified: datetime
    was: str  # what the catalog remembers of it ("Artist - Title"), or ""


@dataclass
class GcResult:
    dry_run: bool
    deleted: list[Garbage] = field(default_factory=list)  # (would be, with dry_run) deleted for good
    young: list[ObjectInfo] = field(default_factory=list)  # unnamed, but within the grace period: kept
    put_back: list[str] = field(default_factory=list)  # deleted, then restored: a record written meanwhile names it
    trash_restored: list[str] = field(default_factory=list)  # left in trash/ by a killed gc, named again: restored
    trash_cleared: int = 0  # copies a killed gc left in trash/, deleted now
    objects: int = 0  # objects listed
    named: int = 0  # object keys the catalog names

    @property
    def freed(self) -> int:
        return sum(item.size for item in self.deleted)


def referenced_keys(state: CatalogState) -> set[str]:
    """Every object key a current record names: live tracks and the covers they hold as insets,
    live assets, live playlists' files."""
    tracks = state.tracks()
    keys = {track.key for track in tracks}
    keys.update(track.art.object.key for track in tracks if track.art is not None)
    keys.update(v.value.object.key for v in state.assets.values() if v.value is not None)
    keys.update(v.value.object.key for v in state.playlists.values()
                if v.value is not None and v.value.object is not None)
    return keys


def collect(store: Store, grace: timedelta = DEFAULT_GRACE, *, dry_run: bool = False,
            on_deleted: Callable[[Garbage], None] | None = None, batch: int = BATCH) -> GcResult:
    """Delete the garbage in the locker (with `dry_run`, only find it). `on_deleted` hears of each
    object as it goes for good. Raises GcRefused (nothing deleted) when the catalog cannot be
    wholly read, StoreError when the bucket fails."""
    catalog.check_locker(store)
    result = GcResult(dry_run)
    started = datetime.now(timezone.utc)
    # Objects are listed before the catalog is read: an object whose record was
    # written before the read is then seen as named, not taken for garbage.
    objects = list(store.list(OBJECTS_PREFIX))
    trash = list(store.list(TRASH_PREFIX))
    reader = CatalogReader(store)
    _read_whole_catalog(reader)
    named = referenced_keys(reader.state)
    result.objects, result.named = len(objects), len(named)
    if not dry_run:
        _recover_trash(store, trash, named, {item.key for item in objects}, started, result)
    cutoff = started - grace
    garbage = []
    for item in objects:
        if item.key in named:
            continue
        if item.last_modified >= cutoff:
            result.young.append(item)
        else:
            garbage.append(Garbage(item.key, item.size, item.last_modified, _what_it_was(reader.state, item.key)))
    if dry_run:
        result.deleted = garbage
        return result
    for start in range(0, len(garbage), batch):
        _delete_batch(store, reader, garbage[start:start + batch], result, on_deleted or (lambda item: None))
    return result


def _read_whole_catalog(reader: CatalogReader) -> None:
    """Bring `reader` up to date with every record visible when this call's last listing began.

    A refresh may miss a file that compaction deleted and replaced while it
    read; listing again afterwards and finding nothing unapplied proves the
    state holds everything listed (so everything visible when that listing
    began). A file that stays unapplied across a refresh is one the reader
    skips: a folder of a newer format, or a name it does not know.
    """
    store = reader.store
    unapplied: set[str] = set()
    for _ in range(CATALOG_PASSES):
        reader.refresh()
        if reader.corrupt:
            raise GcRefused(f"the catalog file {sorted(reader.corrupt)[0]} is damaged, so gc cannot tell which "
                            "objects it names; nothing was deleted")
        if reader.state.rejected:
            raise GcRefused(f"{reader.state.rejected} catalog records could not be read, so gc cannot tell which "
                            "objects they name; nothing was deleted (`lockerfs compact --grace 0` drops them)")
        listed = {item.key for prefix in ("catalog/journal", "catalog/snapshot") for item in store.list(prefix)}
        still = listed - reader.seen.keys()
        if not still:
            return
        skipped = still & unapplied
        if skipped:
            raise GcRefused(f"gc cannot read {sorted(skipped)[0]} (from a newer lockerfs?), so it cannot tell "
                            "which objects it names; nothing was deleted")
        unapplied = still
    raise GcRefused(f"the catalog kept changing while gc read it ({CATALOG_PASSES} times); "
                    "nothing was deleted: run gc again")


def _what_it_was(state: CatalogState, key: str) -> str:
    """'Artist - Title' of a removed track, when its removal kept the record."""
    sha = key.rsplit("/", 1)[-1].partition(".")[0]
    track = state.removed_track(sha) if SHA_RE.match(sha) else None
    if track is None or track.key != key:
        return ""
    info = track.info
    return f"{info.artist or info.albumartist or '?'} - {info.title or track.source}"


def _delete_batch(store: Store, reader: CatalogReader, batch: list[Garbage], result: GcResult,
                  on_deleted: Callable[[Garbage], None]) -> None:
    """Move aside, delete, re-read, put back what a record written meanwhile names, drop the copies."""
    _read_whole_catalog(reader)  # a record written since the last read: not garbage any more
    named = referenced_keys(reader.state)
    batch = [item for item in batch if item.key not in named]
    if not batch:
        return
    folder = f"{TRASH_PREFIX}{catalog.new_id()}/"
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(batch))) as pool:
        moved = [item for item, copied in zip(batch, pool.map(lambda item: _copy(store, item, folder), batch),
                                               strict=True) if copied]
        try:
            list(pool.map(lambda item: store.delete(item.key), moved))
            _read_whole_catalog(reader)  # after every deletion has returned
            named = referenced_keys(reader.state)
        except BaseException:
            # Not knowing what was written meanwhile, put the whole batch back; what
            # cannot be put back now waits in trash/ for the next gc to check.
            try:
                _put_back(pool, store, folder, moved)
                list(pool.map(lambda item: store.delete(folder + item.key), moved))
            except Exception as exc:  # noqa: BLE001 - the first failure is the one to report
                log.warning("could not put back what gc had just deleted (%s); it waits in %s for the next gc",
                            exc, folder)
            raise
        again = [item for item in moved if item.key in named]
        _put_back(pool, store, folder, again)
        list(pool.map(lambda item: store.delete(folder + item.key), moved))
    for item in again:
        log.warning("%s is named by a record written while gc ran: put back", item.key)
        result.put_back.append(item.key)
    for item in moved:
        if item not in again:
            result.deleted.append(item)
            on_deleted(item)


def _copy(store: Store, item: Garbage, folder: str) -> bool:
    """Copy an object into the trash folder; False if it is gone already (another gc took it)."""
    try:
        store.copy(item.key, folder + item.key, item.size)
    except NotFound:
        return False
    return True


def _put_back(pool: ThreadPoolExecutor, store: Store, folder: str, items: Iterable[Garbage]) -> None:
    list(pool.map(lambda item: store.copy(folder + item.key, item.key, item.size), items))


def _recover_trash(store: Store, trash: list[ObjectInfo], named: set[str], present: set[str],
                   now: datetime, result: GcResult) -> None:
    """Deal with what a killed gc left in trash/: put back what the catalog names, drop old copies.

    Putting back a named object is always right (same bytes, same key), even
    from a gc still running elsewhere; deleting a copy is left to its own gc
    unless the copy is older than ABANDONED."""
    for item in trash:
        match = _TRASHED_RE.match(item.key)
        original = match[1] if match else None
        if original is not None and original in named and original not in present and store.head(original) is None:
            store.copy(item.key, original, item.size)
            present.add(original)
            result.trash_restored.append(original)
            log.warning("%s, left in trash/ by a gc that stopped, is named by the catalog: put back", original)
        if now - item.last_modified > ABANDONED:
            store.delete(item.key)
            result.trash_cleared += 1
