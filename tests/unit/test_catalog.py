"""The catalog format: records, merge order, snapshots + journal, untrusted input."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import threading
from datetime import timedelta

import pytest

from lockerfs import catalog
from lockerfs.catalog import CatalogReader, CatalogState, FormatError
from lockerfs.store import MemoryStore
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo


def make_track(n: int, **info: object) -> Track:
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    fields = {"format": "flac", "codec": "flac", "artist": f"Artist {n % 7}", "album": f"Album {n % 13}",
              "title": f"Title {n}", "track": n % 20 + 1, "duration": 201.5, "head_size": 8192,
              "tail_size": 128}
    fields.update(info)
    return Track(sha256=sha, key=catalog.object_key(sha, "flac"), size=100_000 + n, ext="flac",
                 source=f"Artist/Album/{n:02d}.flac", mtime=1_700_000_000.5, info=TrackInfo(**fields))


def put_raw_journal(store: MemoryStore, records: list[object], version: int = 1,
                    prefix: str = catalog.JOURNAL_PREFIX) -> str:
    """A journal file written as a hostile or older writer would: nothing validated."""
    file_id = catalog.new_id()
    key = f"{prefix}{file_id}.json"
    store.put_bytes(key, json.dumps({"kind": "journal", "version": version, "id": file_id,
                                     "records": records}).encode())
    return key


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    catalog.ensure_locker(store)
    return store


def test_record_round_trip_keeps_every_field() -> None:
    track = make_track(3, albumartist="Various Artists", compilation=True, disc=2, disctotal=2,
                       date="1959-08-17", year=1959, genre="Jazz", bitrate=900_000,
                       sample_rate=44100, channels=2)
    record = json.loads(json.dumps(catalog.add_record(track)))
    assert catalog.track_from_dict(record["track"]) == track


def test_journal_ids_are_unique_and_time_sortable() -> None:
    ids = [catalog.new_id(1_700_000_000.0) for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert catalog.new_id(1_700_000_000.0) < catalog.new_id(1_700_000_001.0)


def test_load_is_snapshot_plus_newer_journal(store: MemoryStore) -> None:
    catalog.append_records(store, [catalog.add_record(make_track(n)) for n in range(5)])
    catalog.compact(store, grace=timedelta(0))
    catalog.append_records(store, [catalog.add_record(make_track(n)) for n in range(5, 8)])
    catalog.append_records(store, [catalog.remove_record(make_track(0).sha256)])
    keys = [info.key for info in store.list("catalog/")]
    assert sum(k.startswith(catalog.SNAPSHOT_PREFIX) for k in keys) == 1
    assert sum(k.startswith(catalog.JOURNAL_PREFIX) for k in keys) == 2
    tracks = catalog.load_catalog(store).tracks()
    assert {t.sha256 for t in tracks} == {make_track(n).sha256 for n in range(1, 8)}


def test_merge_is_order_independent() -> None:
    documents = []
    for n in range(6):
        records = [catalog.add_record(make_track(n)), catalog.add_record(make_track(n + 1, title="retagged"))]
        if n % 2:
            records.append(catalog.remove_record(make_track(n - 1).sha256))
        documents.append((catalog.new_id(1_700_000_000 + n), {"kind": "journal", "version": 1, "records": records}))
    results = []
    for seed in range(5):
        shuffled = documents * 2  # applying a file twice changes nothing
        random.Random(seed).shuffle(shuffled)
        state = CatalogState()
        for file_id, document in shuffled:
            state.merge_file(file_id, document)
        results.append(sorted((t.sha256, t.info.title) for t in state.tracks()))
    assert all(result == results[0] for result in results)


def test_refresh_applies_only_new_files(store: MemoryStore) -> None:
    catalog.append_records(store, [catalog.add_record(make_track(1))])
    reader = catalog.load_catalog(store)
    assert not reader.refresh()
    gets_before = sum(op == "GET" for op, _ in store.requests)
    catalog.append_records(store, [catalog.add_record(make_track(2))])
    assert reader.refresh()
    assert sum(op == "GET" for op, _ in store.requests) == gets_before + 1
    assert len(reader.tracks()) == 2


def test_compaction_concurrent_with_writers_loses_nothing(store: MemoryStore) -> None:
    written: list[Track] = []
    lock = threading.Lock()

    def writer(base: int) -> None:
        for batch in range(20):
            tracks = [make_track(base + batch * 10 + i) for i in range(10)]
            catalog.append_records(store, [catalog.add_record(t) for t in tracks])
            with lock:
                written.extend(tracks)

    threads = [threading.Thread(target=writer, args=(base,)) for base in (0, 100_000)]
    for thread in threads:
        thread.start()
    for _ in range(10):
        catalog.compact(store, grace=timedelta(0))
    for thread in threads:
        thread.join()
    catalog.compact(store, grace=timedelta(0))
    assert {t.sha256 for t in catalog.load_catalog(store).tracks()} == {t.sha256 for t in written}


def test_grace_period_keeps_young_files(store: MemoryStore) -> None:
    catalog.append_records(store, [catalog.add_record(make_track(1))])
    result = catalog.compact(store, grace=timedelta(hours=1))
    assert result.files_deleted == 0
    assert any(k.key.startswith(catalog.JOURNAL_PREFIX) for k in store.list("catalog/"))


def test_newer_format_is_refused_with_a_clear_message(store: MemoryStore) -> None:
    newer = catalog.FORMAT_VERSION + 1
    store.put_bytes(catalog.LOCKER_KEY, json.dumps({"format": "lockerfs", "version": newer}).encode())
    with pytest.raises(FormatError, match=f"version {newer}.*upgrade lockerfs"):
        catalog.load_catalog(store)


def test_newer_journal_file_is_refused(store: MemoryStore) -> None:
    key = f"{catalog.JOURNAL_PREFIX}{catalog.new_id()}.json"
    store.put_bytes(key, json.dumps({"kind": "journal", "version": 9, "records": []}).encode())
    with pytest.raises(FormatError, match="version 9"):
        catalog.load_catalog(store)


def test_not_a_locker() -> None:
    store = MemoryStore()
    store.put_bytes(catalog.LOCKER_KEY, b"{\"hello\": 1}")
    with pytest.raises(FormatError, match="not describe a lockerfs locker"):
        catalog.check_locker(store)


@pytest.mark.parametrize("mutate", [
    lambda r: r.update(sha256="../../etc/passwd"),
    lambda r: r.update(key="objects/sha256/../../secret"),
    lambda r: r.update(size=-1),
    lambda r: r.update(size=10**30),
    lambda r: r.update(size="12"),
    lambda r: r.update(ext="flac/../x"),
    lambda r: r.pop("sha256"),
    lambda r: r.clear(),
])
def test_invalid_records_are_skipped_not_fatal(store: MemoryStore, mutate) -> None:  # type: ignore[no-untyped-def]
    bad = catalog.add_record(make_track(1))
    mutate(bad["track"])
    with pytest.raises(ValueError, match="record 0 is invalid"):
        catalog.append_records(store, [bad, catalog.add_record(make_track(2))])  # the writer refuses it
    put_raw_journal(store, [bad, catalog.add_record(make_track(2)), "junk", {"op": "explode"}])
    reader = catalog.load_catalog(store)
    assert [t.sha256 for t in reader.tracks()] == [make_track(2).sha256]
    assert reader.state.rejected == 3


def test_hostile_field_values_are_cleaned(store: MemoryStore) -> None:
    record = catalog.add_record(make_track(1))
    record["track"]["info"].update(title="x" * 100_000, track="7", duration=float("inf"),
                                   head_size=10**12, compilation="yes", artist=["a"])
    record["track"]["source"] = "a\x00b"
    catalog.append_records(store, [record])
    (track,) = catalog.load_catalog(store).tracks()
    assert len(track.info.title) == catalog.MAX_TEXT
    assert track.info.track is None and track.info.duration is None and track.info.artist is None
    assert track.info.head_size == 0 and track.info.compilation is False
    assert track.source == "ab"


def test_damaged_files_are_skipped_and_kept(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip bomb, bad gzip, bad JSON: skipped with a warning, never deleted by compaction."""
    monkeypatch.setattr(catalog, "MAX_CATALOG_FILE_BYTES", 1000)
    catalog.append_records(store, [catalog.add_record(make_track(1))])
    damaged = [f"{catalog.SNAPSHOT_PREFIX}{catalog.new_id()}.json.gz",
               f"{catalog.SNAPSHOT_PREFIX}{catalog.new_id()}.json.gz",
               f"{catalog.JOURNAL_PREFIX}{catalog.new_id()}.json"]
    for key, body in zip(damaged, [gzip.compress(b" " * 100_000), b"not gzip", b"{not json"]):
        store.put_bytes(key, body)
    with pytest.raises(catalog.CorruptCatalogFile, match="inflates"):
        catalog.decode_catalog_file(damaged[0], store.get(damaged[0]))
    reader = catalog.load_catalog(store)
    assert [t.sha256 for t in reader.tracks()] == [make_track(1).sha256]
    assert reader.corrupt == set(damaged)
    catalog.compact(store, grace=timedelta(0))
    assert all(store.head(key) is not None for key in damaged)


def test_local_copy_round_trip(store: MemoryStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    catalog.append_records(store, [catalog.add_record(make_track(n)) for n in range(3)])
    reader = catalog.load_catalog(store)
    reader.save(tmp_path / "copy.json.gz")
    offline = CatalogReader(MemoryStore())
    assert offline.load_local(tmp_path / "copy.json.gz")
    assert sorted(offline.tracks(), key=lambda t: t.sha256) == sorted(reader.tracks(), key=lambda t: t.sha256)
    assert set(offline.seen) == set(reader.seen)
    (tmp_path / "bad.json.gz").write_bytes(b"garbage")
    assert not CatalogReader(MemoryStore()).load_local(tmp_path / "bad.json.gz")
