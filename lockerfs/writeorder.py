"""Object, record, confirm: the order every catalog writer follows, so that a record's object stays.

A writer stores an object (or finds it already stored), then appends the
record naming it. Meanwhile `lockerfs gc` may run on another machine, and to
it an object that no record names yet is garbage: with a short grace period,
or when the writer matched an old object that an interrupted upload left
behind, gc can delete it between the writer's check and its record. So once
its records are stored, a writer looks at every object they name once more
(HEAD) and stores again any that is gone: it still has the bytes.

gc's half (lockerfs/gc.py) covers the other order of events: it moves an
object aside before deleting it, re-reads the catalog after deleting, and
puts back whatever a record written meanwhile names. docs/FORMAT.md
("Garbage collection") has the argument that the two halves leave every
current record's object in the bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lockerfs import catalog
from lockerfs.store import Store, StoreError

log = logging.getLogger(__name__)

CONFIRM_PARALLEL = 16  # HEADs in flight at once (the CLI's pool holds 32 connections)


@dataclass
class Appended:
    files: list[str]  # the journal files written
    stored_again: list[str] = field(default_factory=list)  # objects a concurrent gc had deleted, stored again
    failed: dict[str, str] = field(default_factory=dict)  # object key -> why it could not be stored again


def objects_named(records: Iterable[dict[str, Any]]) -> list[str]:
    """The object keys the records point at (track adds, assets, playlists' files), each once.

    Records are in the writer API's form (catalog.add_record, asset_record,
    playlist_record): already validated, so their keys are well formed."""
    keys: dict[str, None] = {}
    for record in records:
        op = record.get("op")
        if op == "add":
            keys[record["track"]["key"]] = None
        elif op == "asset":
            keys[record["asset"]["object"]["key"]] = None
        elif op == "playlist" and record["playlist"].get("object"):
            keys[record["playlist"]["object"]["key"]] = None
    return list(keys)


def append_confirmed(store: Store, records: list[dict[str, Any]],
                     store_again: Callable[[str], None]) -> Appended:
    """catalog.append_records, then make sure every object the records name is (still) stored.

    `store_again(key)` stores the object once more (the writer has its
    bytes); it is called only for an object that vanished since the writer
    checked it, which only a concurrent `lockerfs gc` does. Its failures are
    returned, not raised: the records are written either way.
    """
    return confirm(store, records, store_again, Appended(catalog.append_records(store, records)))


def confirm(store: Store, records: list[dict[str, Any]], store_again: Callable[[str], None],
            appended: Appended | None = None) -> Appended:
    """The second half of append_confirmed, for writers that append their own way (edits.py)."""
    appended = appended if appended is not None else Appended([])
    keys = objects_named(records)
    if not keys:
        return appended
    with ThreadPoolExecutor(max_workers=min(CONFIRM_PARALLEL, len(keys))) as pool:
        present = list(pool.map(lambda key: _present(store, key), keys))
    for key, there in zip(keys, present, strict=True):
        if there:
            continue
        if there is False:
            log.warning("%s is gone since it was checked (a concurrent gc took it); storing it again", key)
        try:
            store_again(key)
        except (StoreError, OSError) as exc:
            appended.failed[key] = str(exc)
        else:
            appended.stored_again.append(key)
    return appended


def _present(store: Store, key: str) -> bool | None:
    """Whether the object is there; None if the HEAD failed, which the caller treats as "no":
    storing the same bytes again is harmless, a record without its object is not."""
    try:
        return store.head(key) is not None
    except StoreError as exc:
        log.info("cannot check %s after recording it (%s); storing it again to be sure", key, exc)
        return None
