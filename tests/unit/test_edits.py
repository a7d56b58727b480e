"""edits.py next to a gc on another machine: an object deleted between a writer's check and its record.

The store below runs "gc" at the moment the writer appends its journal file:
the worst moment, after restore's HEADs and tag's PUTs (writeorder.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lockerfs import catalog, edits
from lockerfs.edits import EditError, Placed, Retagged
from lockerfs.store import MemoryStore
from tests.unit.test_catalog import make_track


class GcAtRecordStore(MemoryStore):
    """Deletes `doomed` just before the first journal file is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.doomed: list[str] = []

    def put_bytes(self, key: str, data: bytes, **kwargs: object) -> None:
        if key.startswith(catalog.CATALOG_PREFIX) and self.doomed:
            for doomed in self.doomed:
                self.delete(doomed)
            self.doomed = []
        super().put_bytes(key, data, **kwargs)  # type: ignore[arg-type]


def live(store: MemoryStore) -> set[str]:
    return {track.sha256 for track in catalog.load_catalog(store).state.tracks()}


def test_a_restore_whose_object_gc_deletes_meanwhile_is_taken_back(tmp_path: Path) -> None:
    store = GcAtRecordStore()
    catalog.ensure_locker(store)
    track = make_track(1)
    store.put_bytes(track.key, b"x" * track.size)
    catalog.append_records(store, [catalog.add_record(track)])
    edits.remove(store, [track])
    store.doomed = [track.key]
    with pytest.raises(EditError, match="could not be found as it was being restored.*nothing was restored"):
        edits.restore(store, [track])
    assert store.head(track.key) is None
    assert track.sha256 not in live(store)  # removed, as before the command
    assert catalog.load_catalog(store).state.removed_track(track.sha256) == track  # and restorable by upload


def test_a_retagged_object_gc_deletes_before_its_record_is_stored_again(tmp_path: Path) -> None:
    store = GcAtRecordStore()
    catalog.ensure_locker(store)
    old = make_track(1)
    store.put_bytes(old.key, b"o" * old.size)
    catalog.append_records(store, [catalog.add_record(old)])
    rewritten = tmp_path / "new.flac"
    rewritten.write_bytes(b"n" * 1000)
    sha = hashlib.sha256(rewritten.read_bytes()).hexdigest()
    new = make_track(2)
    new = type(new)(sha256=sha, key=catalog.object_key(sha, "flac"), size=1000, ext="flac", source=old.source,
                    mtime=old.mtime, info=old.info)
    md5 = hashlib.md5(rewritten.read_bytes(), usedforsecurity=False).hexdigest()
    store.doomed = [new.key]
    edits.store_retagged(store, [Retagged(Placed("A/01.flac", old), new, rewritten, md5)])
    assert store.get(new.key) == rewritten.read_bytes()  # stored again from the work folder
    assert live(store) == {new.sha256}
    assert store.content_types[new.key] == "audio/flac"
