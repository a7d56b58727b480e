"""gc: what is garbage, and every order in which a writer, a compaction and gc can meet.

The races are played out exactly, in an in-memory bucket whose operations
can run a step of another party at a chosen moment (before or after a given
DELETE, COPY, GET or LIST): each test names the interleaving it forces. The
same protocol against a real server, with real uploads, compactions and a
mount running at once, is tests/integration/test_gc.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from lockerfs import catalog, gc, writeorder
from lockerfs.asset import Asset, asset_id_for_file, stored_object
from lockerfs.playlist import Playlist, PlaylistEntry
from lockerfs.store import MemoryStore, ServerError
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo
from tests.unit.test_catalog import put_raw_journal

OLD = datetime.now(timezone.utc) - timedelta(days=30)


@dataclass
class Hook:
    op: str
    key_part: str
    after: bool
    action: Callable[[], None]
    skip: int = 0  # matching operations to let pass first


class HookedStore(MemoryStore):
    """A MemoryStore that runs another party's step just before or after a chosen operation (once)."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[Hook] = []
        self._hook_lock = threading.Lock()

    def at(self, op: str, key_part: str, action: Callable[[], None], *, after: bool = False, nth: int = 1) -> None:
        """Run `action` (once) before (or after) the nth operation `op` on a key containing `key_part`."""
        self.hooks.append(Hook(op, key_part, after, action, nth - 1))

    def _fire(self, op: str, key: str, after: bool) -> None:
        due = []
        with self._hook_lock:
            for hook in [h for h in self.hooks if h.op == op and h.key_part in key and h.after == after]:
                if hook.skip:
                    hook.skip -= 1
                else:
                    self.hooks.remove(hook)
                    due.append(hook)
        for hook in due:
            hook.action()

    def delete(self, key: str) -> None:
        self._fire("DELETE", key, False)
        super().delete(key)
        self._fire("DELETE", key, True)

    def copy(self, source: str, destination: str, size: int) -> None:
        self._fire("COPY", f"{source} -> {destination}", False)
        super().copy(source, destination, size)
        self._fire("COPY", f"{source} -> {destination}", True)

    def get(self, key: str) -> bytes:
        self._fire("GET", key, False)
        return super().get(key)

    def list(self, prefix: str):  # type: ignore[no-untyped-def]
        self._fire("LIST", prefix, False)
        return super().list(prefix)


@pytest.fixture
def store() -> HookedStore:
    store = HookedStore()
    catalog.ensure_locker(store)
    return store


def audio(n: int) -> bytes:
    return f"fLaC track {n} ".encode() * (50 + n)


def track_of(n: int) -> Track:
    data = audio(n)
    sha = hashlib.sha256(data).hexdigest()
    return Track(sha256=sha, key=catalog.object_key(sha, "flac"), size=len(data), ext="flac",
                 source=f"Album/{n:02d}.flac", mtime=1_700_000_000.0,
                 info=TrackInfo(format="flac", codec="flac", artist=f"Artist {n}", title=f"Title {n}"))


def put_object(store: MemoryStore, key: str, data: bytes, when: datetime = OLD) -> None:
    store.objects[key] = (data, when)


def uploaded(store: MemoryStore, n: int, when: datetime = OLD) -> Track:
    """A track as upload leaves it: object first, then its record."""
    track = track_of(n)
    put_object(store, track.key, audio(n), when)
    catalog.append_records(store, [catalog.add_record(track)])
    return track


def orphan(store: MemoryStore, n: int, when: datetime = OLD) -> Track:
    """An object an interrupted upload left without a record."""
    track = track_of(n)
    put_object(store, track.key, audio(n), when)
    return track


def record_as_upload_does(store: MemoryStore, track: Track, n: int) -> writeorder.Appended:
    """The writer's half: the record, then a look at the object, storing it again if it is gone."""
    return writeorder.append_confirmed(store, [catalog.add_record(track)],
                                       lambda key: store.put_bytes(key, audio(n)))


def objects(store: MemoryStore) -> set[str]:
    return {key for key in store.objects if key.startswith("objects/")}


def trash(store: MemoryStore) -> set[str]:
    return {key for key in store.objects if key.startswith("trash/")}


def named_objects_present(store: MemoryStore) -> bool:
    state = catalog.load_catalog(store).state
    return gc.referenced_keys(state) <= objects(store)


# --- what is garbage --------------------------------------------------------------------------

def test_unnamed_objects_older_than_the_grace_go_and_named_ones_stay(store: HookedStore) -> None:
    kept = uploaded(store, 1)
    removed = uploaded(store, 2)
    catalog.append_records(store, [catalog.remove_record(removed.sha256, track=removed)])
    left_behind = orphan(store, 3)
    young = orphan(store, 4, when=datetime.now(timezone.utc) - timedelta(hours=1))
    reported: list[gc.Garbage] = []
    result = gc.collect(store, timedelta(days=7), on_deleted=reported.append)
    assert {item.key for item in result.deleted} == {removed.key, left_behind.key}
    assert reported == result.deleted
    assert result.freed == removed.size + left_behind.size
    assert [item.key for item in result.young] == [young.key]
    assert objects(store) == {kept.key, young.key}
    assert trash(store) == set()
    assert {item.key: item.was for item in result.deleted}[removed.key] == "Artist 2 - Title 2"


def test_grace_zero_takes_every_unnamed_object(store: HookedStore) -> None:
    now = orphan(store, 1, when=datetime.now(timezone.utc))
    result = gc.collect(store, timedelta(0))
    assert [item.key for item in result.deleted] == [now.key]
    assert objects(store) == set()


def test_assets_and_playlist_files_are_named_while_their_records_live(store: HookedStore) -> None:
    track = uploaded(store, 1)
    cover = Asset(asset_id_for_file("Album/cover.jpg"), "cover", stored_object("a" * 64, 10, "jpg"),
                  (track.sha256,), "cover.jpg", "Album/cover.jpg")
    dropped = Asset(asset_id_for_file("Album/back.jpg"), "image", stored_object("b" * 64, 20, "jpg"),
                    (track.sha256,), "back.jpg", "Album/back.jpg")
    listed = Playlist("Road", "Road.m3u", (PlaylistEntry(sha256=track.sha256),),
                      object=stored_object("c" * 64, 30, "m3u"))
    for obj in (cover.object, dropped.object, listed.object):
        assert obj is not None
        put_object(store, obj.key, b"x" * obj.size)
    catalog.append_records(store, [catalog.asset_record(cover), catalog.asset_record(dropped),
                                   catalog.playlist_record(listed)])
    catalog.append_records(store, [catalog.remove_asset_record(dropped.id)])
    result = gc.collect(store, timedelta(0))
    assert [item.key for item in result.deleted] == [dropped.object.key]
    assert objects(store) == {track.key, cover.object.key, listed.object.key}  # type: ignore[union-attr]


def test_a_replaced_track_goes_and_its_successor_stays(store: HookedStore) -> None:
    old = uploaded(store, 1)
    new = uploaded(store, 2)
    catalog.append_records(store, [catalog.remove_record(old.sha256, replaced_by=new.sha256, track=old)])
    gc.collect(store, timedelta(0))
    assert objects(store) == {new.key}


def test_dry_run_changes_nothing(store: HookedStore) -> None:
    uploaded(store, 1)
    gone = orphan(store, 2)
    before = dict(store.objects)
    store.requests.clear()
    result = gc.collect(store, timedelta(0), dry_run=True)
    assert [item.key for item in result.deleted] == [gone.key]
    assert store.objects == before
    assert not [op for op, _ in store.requests if op in ("PUT", "DELETE", "COPY")]


# --- refusing when the catalog cannot be wholly read ------------------------------------------

def test_a_damaged_catalog_file_stops_gc_before_anything_is_deleted(store: HookedStore) -> None:
    orphan(store, 1)
    store.put_bytes(f"{catalog.JOURNAL_PREFIX}{catalog.new_id()}.json", b"{not json")
    before = dict(store.objects)
    with pytest.raises(gc.GcRefused, match="damaged"):
        gc.collect(store, timedelta(0))
    assert store.objects == before


def test_an_unreadable_record_stops_gc(store: HookedStore) -> None:
    orphan(store, 1)
    put_raw_journal(store, [{"op": "add", "track": {"sha256": "nonsense"}}])
    with pytest.raises(gc.GcRefused, match="1 catalog records could not be read"):
        gc.collect(store, timedelta(0))
    assert len(objects(store)) == 1


def test_a_folder_of_a_newer_format_stops_gc(store: HookedStore) -> None:
    orphan(store, 1)
    file_id = catalog.new_id()
    store.put_bytes(f"catalog/journal3/{file_id}.json",
                    json.dumps({"kind": "journal", "version": 3, "id": file_id, "records": []}).encode())
    with pytest.raises(gc.GcRefused, match="catalog/journal3/"):
        gc.collect(store, timedelta(0))
    assert len(objects(store)) == 1


# --- races with writers -----------------------------------------------------------------------

def test_a_record_written_before_the_batch_starts_saves_its_object(store: HookedStore) -> None:
    """Upload matched an old orphan by HEAD; its record lands after gc listed objects and read the
    catalog (found it unnamed), but before the batch's own read: the object is never touched."""
    track = orphan(store, 1)
    # gc's first whole read lists the journal twice (read, then check); the batch's read is the third
    store.at("LIST", "catalog/journal", lambda: record_as_upload_does(store, track, 1), nth=3)
    result = gc.collect(store, timedelta(0))
    assert result.deleted == [] and result.put_back == []
    assert track.key in objects(store)
    assert not [key for op, key in store.requests if op == "DELETE" and key.startswith("objects/")]


def test_writer_checked_before_the_delete_and_gc_puts_the_object_back(store: HookedStore) -> None:
    """The interleaving that needs the copy aside: the writer's record and its look at the object
    both happen after gc decided, before gc deletes. Only gc's re-read can save the object."""
    track = orphan(store, 1)
    appended: list[writeorder.Appended] = []
    store.at("DELETE", track.key, lambda: appended.append(record_as_upload_does(store, track, 1)))
    result = gc.collect(store, timedelta(0))
    assert appended[0].stored_again == []  # the writer saw its object: it was not deleted yet
    assert result.put_back == [track.key] and result.deleted == []
    assert store.objects[track.key][0] == audio(1)
    assert trash(store) == set()
    assert named_objects_present(store)


def test_writer_records_between_the_delete_and_gc_reading_again(store: HookedStore) -> None:
    """Both halves act: the writer stores the object again, and gc (seeing the record) puts it back."""
    track = orphan(store, 1)
    appended: list[writeorder.Appended] = []
    store.at("DELETE", track.key, lambda: appended.append(record_as_upload_does(store, track, 1)), after=True)
    result = gc.collect(store, timedelta(0))
    assert appended[0].stored_again == [track.key]
    assert result.put_back == [track.key]
    assert store.objects[track.key][0] == audio(1)
    assert named_objects_present(store)


def test_a_slow_writer_recording_after_gc_finished_stores_the_object_again(store: HookedStore) -> None:
    """It matched the orphan before gc ran; its record comes after gc is done: gc deleted the
    object for good, and the writer's look after recording finds it gone and stores it again."""
    track = orphan(store, 1)
    matched = store.holds(track.key, track.size, hashlib.md5(audio(1)).hexdigest())
    result = gc.collect(store, timedelta(0))
    assert matched and [item.key for item in result.deleted] == [track.key]
    appended = record_as_upload_does(store, track, 1)
    assert appended.stored_again == [track.key]
    assert store.objects[track.key][0] == audio(1)


def test_a_writer_that_cannot_store_again_reports_it(store: HookedStore) -> None:
    track = track_of(1)

    def fail(key: str) -> None:
        raise ServerError("the S3 server keeps failing (503)")

    appended = writeorder.append_confirmed(store, [catalog.add_record(track)], fail)
    assert appended.failed == {track.key: "the S3 server keeps failing (503)"}


# --- compaction and gc ------------------------------------------------------------------------

def test_compaction_deleting_journal_files_while_gc_reads_them_loses_no_name(store: HookedStore) -> None:
    tracks = [uploaded(store, n) for n in range(1, 6)]
    garbage = orphan(store, 9)
    # the moment gc fetches the first journal file, a compaction merges and deletes them all
    store.at("GET", catalog.JOURNAL_PREFIX, lambda: catalog.compact(store, timedelta(0)))
    result = gc.collect(store, timedelta(0))
    assert [item.key for item in result.deleted] == [garbage.key]
    assert objects(store) == {t.key for t in tracks}
    assert not any(key.startswith(catalog.JOURNAL_PREFIX) for key in store.objects)  # it did compact


def test_a_catalog_that_never_holds_still_is_refused_not_half_read(store: HookedStore) -> None:
    """A compaction on every catalog fetch: each file gc lists is gone when it asks for it.
    A plain refresh gives up after three listings with nothing applied; gc must not take
    that for an empty catalog."""
    tracks = [uploaded(store, n) for n in range(1, 4)]

    def compact_again() -> None:
        catalog.compact(store, timedelta(0))
        store.at("GET", "catalog/", compact_again)

    store.at("GET", "catalog/", compact_again)
    with pytest.raises(gc.GcRefused, match="kept changing"):
        gc.collect(store, timedelta(0))
    store.hooks.clear()
    assert {t.key for t in tracks} <= objects(store)


def test_a_record_compacted_away_between_delete_and_reread_is_still_seen(store: HookedStore) -> None:
    track = orphan(store, 1)

    def record_then_compact() -> None:
        catalog.append_records(store, [catalog.add_record(track)])
        catalog.compact(store, timedelta(0))

    store.at("DELETE", track.key, record_then_compact, after=True)
    result = gc.collect(store, timedelta(0))
    assert result.put_back == [track.key]
    assert named_objects_present(store)


# --- a gc that stops midway -------------------------------------------------------------------

def test_a_failure_after_deleting_puts_the_batch_back(store: HookedStore) -> None:
    orphans = [orphan(store, n) for n in range(1, 4)]

    def server_fails() -> None:
        raise ServerError("the S3 server keeps failing (503)")

    # the catalog read that follows the batch's deletes fails
    store.at("DELETE", orphans[-1].key, lambda: store.at("LIST", "catalog/journal", server_fails), after=True)
    with pytest.raises(ServerError):
        gc.collect(store, timedelta(0))
    assert objects(store) == {t.key for t in orphans}  # put back: gc could not tell what was written meanwhile
    assert trash(store) == set()


def test_trash_left_by_a_killed_gc_is_put_back_where_named_and_cleared_when_old(store: HookedStore) -> None:
    named = track_of(1)
    unnamed_old = track_of(2)
    unnamed_young = track_of(3)
    catalog.append_records(store, [catalog.add_record(named)])  # its object was moved aside, then the gc died
    old_folder = f"trash/{catalog.new_id(now=OLD.timestamp())}/"
    young_folder = f"trash/{catalog.new_id()}/"
    put_object(store, old_folder + named.key, audio(1))
    put_object(store, old_folder + unnamed_old.key, audio(2))
    put_object(store, young_folder + unnamed_young.key, audio(3), when=datetime.now(timezone.utc))
    result = gc.collect(store, timedelta(0))
    assert result.trash_restored == [named.key]
    assert result.trash_cleared == 2
    assert objects(store) == {named.key}
    assert trash(store) == {young_folder + unnamed_young.key}  # perhaps a gc still running elsewhere


def test_two_gcs_at_once_delete_each_object_once_and_keep_the_named(store: HookedStore) -> None:
    keep = uploaded(store, 1)
    orphans = [orphan(store, n) for n in range(2, 6)]
    results: list[gc.GcResult] = []
    store.at("DELETE", orphans[0].key, lambda: results.append(gc.collect(store, timedelta(0))))
    results.append(gc.collect(store, timedelta(0)))
    assert objects(store) == {keep.key}
    assert trash(store) == set()
    assert {item.key for r in results for item in r.deleted} == {t.key for t in orphans}


def test_snapshots_name_objects_too(store: HookedStore) -> None:
    tracks = [uploaded(store, n) for n in range(1, 4)]
    catalog.compact(store, timedelta(0))
    gc.collect(store, timedelta(0))
    assert objects(store) == {t.key for t in tracks}
    assert any(key.startswith(catalog.SNAPSHOT_PREFIX) for key in store.objects)
    snapshot = next(data for key, (data, _) in store.objects.items() if key.startswith(catalog.SNAPSHOT_PREFIX))
    assert len(json.loads(gzip.decompress(snapshot))["entries"]) == 3
