"""Catalog format 2: assets, playlists, removal details; their validation, merge and migration.

The version 1 side of migration is tested against the real version 1 code
(tests/support/catalog_v1.py): an old mount and an old compactor running on
a locker that version 2 writes to, and a version 1 locker read by this code.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import random
from datetime import timedelta
from typing import Any

import pytest

from lockerfs import catalog, columnar
from lockerfs.asset import (Asset, CueSheet, asset_from_dict, asset_id_for_embedded, asset_id_for_file, image_type,
                            stored_object)
from lockerfs.catalog import CatalogReader, CatalogState
from lockerfs.playlist import Playlist, PlaylistEntry, playlist_key
from lockerfs.store import MemoryStore
from lockerfs.track import Track
from tests.support import catalog_v1
from tests.unit.test_catalog import make_track, put_raw_journal


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def image(name: str, tracks: list[Track], role: str = "image", size: int = 1000, **fields: Any) -> Asset:
    data_sha = sha(f"image {name} {size}")
    return Asset(asset_id_for_file(f"src/{name}"), role, stored_object(data_sha, size, "jpg"),
                 tuple(t.sha256 for t in tracks), name, f"src/{name}", **fields)


def lyrics(track: Track) -> Asset:
    return Asset(asset_id_for_file(f"src/{track.sha256}.lrc"), "lyrics", stored_object(sha(f"lrc {track.sha256}"), 50, "lrc"),
                 (track.sha256,), "01.lrc", "src/01.lrc")


def cue(tracks: list[Track], text: str = 'FILE "a.wav" WAVE\n  TRACK 01 AUDIO\n') -> Asset:
    return Asset(asset_id_for_file("src/album.cue"), "cue", stored_object(sha(text), len(text), "cue"), (tracks[0].sha256,),
                 "album.cue", "src/album.cue", cue=CueSheet(text, (("a.wav", tracks[0].sha256),)))


def playlist(name: str, *entries: PlaylistEntry) -> Playlist:
    return Playlist(name, f"lists/{name}.m3u", tuple(entries), mtime=1_700_000_000.0)


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    catalog.ensure_locker(store)
    return store


def load(store: MemoryStore) -> CatalogReader:
    return catalog.load_catalog(store)


# --- round trips -------------------------------------------------------------------

@pytest.mark.parametrize("asset", [
    image("cover.jpg", [make_track(1), make_track(2)], role="cover", mtime=1_700_000_000.5),
    image("back.jpg", [make_track(1)]),
    Asset(asset_id_for_embedded("src", sha("pic")), "cover", stored_object(sha("pic"), 70_000, "png"),
          (make_track(1).sha256,), "", "", embedded=True),
    lyrics(make_track(3)),
    cue([make_track(4)]),
], ids=["side cover", "image", "embedded cover", "lyrics", "cue"])
def test_asset_round_trip_keeps_every_field(store: MemoryStore, asset: Asset) -> None:
    catalog.append_records(store, [catalog.asset_record(asset)])
    state = load(store).state
    assert [v.value for v in state.assets.values()] == [asset]


def test_playlist_round_trip_keeps_entries_in_order(store: MemoryStore) -> None:
    entries = [PlaylistEntry(make_track(n).sha256, f"music/{n}.flac") for n in range(5)]
    entries.insert(2, PlaylistEntry(None, r"C:\Music\never uploaded.mp3"))
    entries.append(PlaylistEntry(make_track(1).sha256))  # a track listed twice stays twice
    original = dataclasses.replace(playlist("Road Trip", *entries),
                                   object=stored_object(sha("m3u"), 300, "m3u8"))
    catalog.append_records(store, [catalog.playlist_record(original)])
    (versioned,) = load(store).state.playlists.values()
    assert versioned.value == original


def test_removal_details_round_trip_through_journal_and_snapshot(store: MemoryStore) -> None:
    old, new = make_track(1), make_track(2, title="Fixed title")
    catalog.append_records(store, [catalog.add_record(old)])
    catalog.append_records(store, [catalog.add_record(new), catalog.remove_record(old.sha256, replaced_by=new.sha256,
                                                                                  track=old)])
    for _ in range(2):  # from the journal, then from the snapshots that replace it
        state = load(store).state
        assert [t.sha256 for t in state.tracks()] == [new.sha256]
        assert state.current(old.sha256) == new.sha256
        assert state.removed_track(old.sha256) == old
        catalog.compact(store, grace=timedelta(0))
    assert not [item for item in store.list(catalog.JOURNAL_PREFIX)] + list(store.list(catalog.JOURNAL2_PREFIX))


def test_image_type_names_the_bytes() -> None:
    assert image_type(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "jpg"
    assert image_type(b"\x89PNG\r\n\x1a\n\x00\x00") == "png"
    assert image_type(b"GIF89a....") == "gif"
    assert image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert image_type(b"ID3\x04\x00") is None
    assert image_type(b"") is None


# --- the writer API refuses what readers would skip ------------------------------------------

@pytest.mark.parametrize("build, message", [
    (lambda: catalog.asset_record(dataclasses.replace(image("x.jpg", [make_track(1)]), id="short")), "asset id"),
    (lambda: catalog.asset_record(dataclasses.replace(image("x.jpg", [make_track(1)]), role="poster")), "role"),
    (lambda: catalog.asset_record(dataclasses.replace(image("x.jpg", [make_track(1)]), tracks=())), "at least one"),
    (lambda: catalog.asset_record(dataclasses.replace(image("x.jpg", [make_track(1)]), tracks=("../x",))),
     "track sha256"),
    (lambda: catalog.asset_record(dataclasses.replace(lyrics(make_track(1)),
                                                      tracks=(make_track(1).sha256, make_track(2).sha256))),
     "exactly one"),
    (lambda: catalog.asset_record(dataclasses.replace(cue([make_track(1)]), cue=None)), "sheet"),
    (lambda: catalog.asset_record(dataclasses.replace(
        image("x.jpg", [make_track(1)]), object=dataclasses.replace(stored_object(sha("o"), 5, "jpg"),
                                                                     key="objects/../../etc"))), "key"),
    (lambda: stored_object(sha("o"), -1, "jpg"), "size"),
    (lambda: stored_object(sha("o"), 1, "JPG"), "ext"),
    (lambda: catalog.playlist_record(playlist("\x00\n ")), "needs a name"),
    (lambda: catalog.remove_record(sha("a"), replaced_by=sha("a")), "itself"),
    (lambda: catalog.remove_record(sha("a"), track=make_track(1)), "removed sha256"),
    (lambda: catalog.remove_record("../etc"), "sha256"),
    (lambda: catalog.remove_asset_record("nope"), "asset id"),
], ids=["id", "role", "no tracks", "bad track", "lyrics of two", "cue without sheet", "key", "size", "ext",
        "playlist name", "self replacement", "wrong removed record", "remove sha", "remove asset id"])
def test_writer_refuses_bad_records_with_a_reason(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        build()


def test_append_records_writes_nothing_when_one_record_is_bad(store: MemoryStore) -> None:
    before = dict(store.objects)
    good = catalog.add_record(make_track(1))
    bad = {"op": "asset", "asset": {"id": "x"}}
    with pytest.raises(ValueError, match="record 1 is invalid"):
        catalog.append_records(store, [good, bad])
    assert store.objects == before


def test_writer_normalizes_what_readers_would_clean() -> None:
    track = make_track(1)
    record = catalog.asset_record(Asset(asset_id_for_file("a/b.jpg"), "image", stored_object(sha("i"), 9, "jpg"),
                                        (track.sha256, track.sha256), "../../evil\x1b[2J/back.jpg", "a/b.jpg"))
    assert record["asset"]["name"] == "back.jpg" and record["asset"]["tracks"] == [track.sha256]
    entries = (PlaylistEntry(None, "line one\nline two"), PlaylistEntry(None, ""),
               PlaylistEntry(None, "a\u2028../b\u2029c\x85d"))
    cleaned = catalog.playlist_record(Playlist("Mix", "m.m3u", entries))
    # No entry can inject a line, however a player splits lines.
    assert cleaned["playlist"]["entries"] == [{"line": "line oneline two"}, {"line": "a../bcd"}]


# --- hostile records are skipped, never fatal ------------------------------------------------

def asset_dict(**changes: Any) -> dict[str, Any]:
    raw = catalog.asset_record(image("x.jpg", [make_track(1)]))["asset"]
    raw.update(changes)
    return raw


@pytest.mark.parametrize("record", [
    {"op": "asset"},
    {"op": "asset", "asset": []},
    {"op": "asset", "asset": asset_dict(id="../../x")},
    {"op": "asset", "asset": asset_dict(role=None)},
    {"op": "asset", "asset": asset_dict(tracks="abc")},
    {"op": "asset", "asset": asset_dict(tracks=[sha(str(n)) for n in range(20_000)])},
    {"op": "asset", "asset": asset_dict(object={"sha256": sha("o"), "key": "/etc/passwd", "size": 1, "ext": "jpg"})},
    {"op": "asset", "asset": asset_dict(object={"sha256": sha("o"), "key": catalog.object_key(sha("o"), "jpg"),
                                                 "size": 1 << 50, "ext": "jpg"})},
    {"op": "asset", "asset": asset_dict(role="cue", cue={"text": "x" * 300_000, "files": []})},
    {"op": "asset", "asset": asset_dict(role="cue", cue={"text": "FILE", "files": [{"name": "a\nb", "sha256": sha("t")}]})},
    {"op": "remove_asset", "id": 7},
    {"op": "playlist", "playlist": {"name": "", "entries": []}},
    {"op": "playlist", "playlist": {"name": "x", "entries": {"a": 1}}},
    {"op": "playlist", "playlist": {"name": "x", "entries": [{}] * 100_001}},
    {"op": "remove_playlist", "name": ["x"]},
    {"op": "remove", "sha256": "zz"},
], ids=repr)
def test_hostile_format2_records_are_skipped_and_counted(store: MemoryStore, record: dict[str, Any]) -> None:
    put_raw_journal(store, [record, catalog.add_record(make_track(2))], version=2, prefix=catalog.JOURNAL2_PREFIX)
    state = load(store).state
    assert state.rejected == 1
    assert [t.sha256 for t in state.tracks()] == [make_track(2).sha256]
    assert all(v.value is None or v.value.tracks for v in state.assets.values())


def test_hostile_but_harmless_fields_are_cleaned_not_fatal(store: MemoryStore) -> None:
    raw = asset_dict(name="a/b\\..\\c\x00.jpg", source=["no"], mtime=float("nan"), embedded="yes",
                     object={**asset_dict()["object"], "content_type": "text/html\r\nX-Evil: 1"})
    entries = [{"sha256": "bad"}, {"line": 5}, {"sha256": make_track(1).sha256, "line": "x\r\n#EXTINF:1,evil"},
               "junk", {"line": "kept"}]
    put_raw_journal(store, [{"op": "asset", "asset": raw},
                            {"op": "playlist", "playlist": {"name": " Mix\u0007 ", "entries": entries, "mtime": -5}}],
                    version=2, prefix=catalog.JOURNAL2_PREFIX)
    state = load(store).state
    assert state.rejected == 0
    (asset,) = [v.value for v in state.assets.values()]
    assert asset.name == "c.jpg" and asset.source == "" and asset.mtime == 0.0 and not asset.embedded
    assert asset.object.content_type == "image/jpeg"
    (versioned,) = state.playlists.values()
    assert versioned.value is not None and versioned.value.name == "Mix" and versioned.value.mtime == 0.0
    assert versioned.value.entries == (PlaylistEntry(make_track(1).sha256, "x#EXTINF:1,evil"),
                                       PlaylistEntry(None, "kept"))


# --- merge: last writer wins per id, in any order ---------------------------------------------

def test_playlists_are_one_per_name_compared_case_insensitively_after_nfc(store: MemoryStore) -> None:
    tracks = [make_track(n) for n in range(3)]
    catalog.append_records(store, [catalog.playlist_record(playlist("Café Mix", PlaylistEntry(tracks[0].sha256)))])
    catalog.append_records(store, [catalog.playlist_record(
        playlist("CAFE\u0301 MIX", PlaylistEntry(tracks[1].sha256), PlaylistEntry(tracks[2].sha256)))])
    state = load(store).state
    assert playlist_key("Café Mix") == playlist_key("CAFE\u0301 MIX")
    (versioned,) = state.playlists.values()
    assert versioned.value is not None and versioned.value.name == "CAF\u00c9 MIX"  # the newest spelling, in NFC
    assert [e.sha256 for e in versioned.value.entries] == [tracks[1].sha256, tracks[2].sha256]
    catalog.append_records(store, [catalog.remove_playlist_record("café mix")])
    assert load(store).state.library().playlists == []


def test_an_asset_uploaded_again_replaces_its_record(store: MemoryStore) -> None:
    first = image("cover.jpg", [make_track(1)], role="cover")
    edited = dataclasses.replace(first, object=stored_object(sha("edited"), 2000, "png"),
                                 tracks=(make_track(1).sha256, make_track(2).sha256))
    catalog.append_records(store, [catalog.asset_record(first)])
    catalog.append_records(store, [catalog.asset_record(edited)])
    assert [v.value for v in load(store).state.assets.values()] == [edited]
    catalog.append_records(store, [catalog.remove_asset_record(first.id)])
    assert [v.value for v in load(store).state.assets.values()] == [None]


def test_merge_of_every_kind_is_order_independent() -> None:
    tracks = [make_track(n) for n in range(8)]
    documents = []
    for n in range(8):
        records: list[dict[str, Any]] = [catalog.add_record(tracks[n])]
        if n % 2:
            records.append(catalog.remove_record(tracks[n - 1].sha256, replaced_by=tracks[n].sha256))
        records.append(catalog.asset_record(image("cover.jpg", tracks[: n + 1], role="cover", size=100 + n)))
        records.append(catalog.playlist_record(playlist("Mix" if n % 3 else "MIX",
                                                        *(PlaylistEntry(t.sha256) for t in tracks[:n]))))
        if n == 5:
            records.append(catalog.remove_playlist_record("mix"))
        documents.append((catalog.new_id(1_700_000_000 + n), {"kind": "journal", "version": 2, "records": records}))
    results = []
    for seed in range(6):
        shuffled = documents * 2  # applying a file twice changes nothing
        random.Random(seed).shuffle(shuffled)
        state = CatalogState()
        for file_id, document in shuffled:
            state.merge_file(file_id, document)
        library = state.library()
        results.append((sorted(t.sha256 for t in library.tracks),
                        sorted((p.asset.id, p.asset.object.size, p.tracks) for p in library.assets),
                        sorted((p.playlist.name, p.tracks) for p in library.playlists)))
    assert all(result == results[0] for result in results)
    assert results[0][1][0][1] == 107  # the last writer's cover


# --- replacement chains (prepared for `lockerfs tag`) -------------------------------------------

def chain_state(*records: dict[str, Any]) -> CatalogState:
    state = CatalogState()
    for index, record in enumerate(records):
        state.apply((catalog.new_id(1_700_000_000 + index), 0), record)
    return state


def test_assets_and_playlist_entries_follow_a_chain_of_replacements() -> None:
    a, b, c = make_track(1), make_track(2), make_track(3)
    state = chain_state(
        catalog.add_record(a), catalog.asset_record(lyrics(a)),
        catalog.playlist_record(playlist("Mix", PlaylistEntry(a.sha256), PlaylistEntry(None, "gone.mp3"))),
        catalog.add_record(b), catalog.remove_record(a.sha256, replaced_by=b.sha256),
        catalog.add_record(c), catalog.remove_record(b.sha256, replaced_by=c.sha256, track=b))
    library = state.library()
    assert [t.sha256 for t in library.tracks] == [c.sha256]
    assert [p.tracks for p in library.assets] == [(c.sha256,)]
    assert [p.tracks for p in library.playlists] == [(c.sha256, None)]


def test_a_chain_ending_in_a_plain_removal_or_a_cycle_leads_nowhere() -> None:
    a, b = make_track(1), make_track(2)
    ended = chain_state(catalog.add_record(a), catalog.add_record(b), catalog.asset_record(lyrics(a)),
                        catalog.remove_record(a.sha256, replaced_by=b.sha256), catalog.remove_record(b.sha256))
    assert ended.current(a.sha256) is None and ended.library().assets == []
    cycle = chain_state(catalog.add_record(a), catalog.asset_record(lyrics(a)),
                        catalog.remove_record(a.sha256, replaced_by=b.sha256),
                        catalog.remove_record(b.sha256, replaced_by=a.sha256))
    assert cycle.current(a.sha256) is None and cycle.library().assets == []


def test_a_restored_track_takes_its_assets_back_and_stale_details_are_ignored() -> None:
    a, b = make_track(1), make_track(2)
    state = chain_state(catalog.add_record(a), catalog.add_record(b), catalog.asset_record(lyrics(a)),
                        catalog.remove_record(a.sha256, replaced_by=b.sha256, track=a))
    assert state.library().assets[0].tracks == (b.sha256,)
    restored = state.removed_track(a.sha256)
    assert restored == a
    state.apply((catalog.new_id(1_800_000_000), 0), catalog.add_record(restored))
    assert state.library().assets[0].tracks == (a.sha256,)
    state.apply((catalog.new_id(1_800_000_001), 0), catalog.remove_record(a.sha256))  # removed plainly later
    assert state.current(a.sha256) is None and state.removed_track(a.sha256) is None  # old details are stale


def test_an_asset_vanishes_with_the_last_of_its_tracks() -> None:
    a, b = make_track(1), make_track(2)
    state = chain_state(catalog.add_record(a), catalog.add_record(b), catalog.asset_record(image("c.jpg", [a, b])),
                        catalog.remove_record(a.sha256))
    assert [p.tracks for p in state.library().assets] == [(b.sha256,)]
    state.apply((catalog.new_id(1_800_000_000), 0), catalog.remove_record(b.sha256))
    assert state.library().assets == []


# --- where records go, and what version 1 makes of it ----------------------------------------------

def format2_locker(store: MemoryStore) -> list[Track]:
    """Tracks, then every kind of format 2 record, as a version 2 uploader and `tag` would write them."""
    tracks = [make_track(n) for n in range(4)]
    catalog.append_records(store, [catalog.add_record(t) for t in tracks])
    retagged = make_track(10, title="Retagged")
    catalog.append_records(store, [
        catalog.asset_record(image("cover.jpg", tracks, role="cover")), catalog.asset_record(lyrics(tracks[1])),
        catalog.asset_record(cue(tracks)),
        catalog.playlist_record(playlist("Mix", *(PlaylistEntry(t.sha256) for t in tracks))),
        catalog.add_record(retagged),
        catalog.remove_record(tracks[0].sha256, replaced_by=retagged.sha256, track=tracks[0])])
    return [retagged, *tracks[1:]]


def test_format2_records_go_where_version_1_never_looks(store: MemoryStore) -> None:
    format2_locker(store)
    for info in store.list("catalog/"):
        document = json.loads(store.get(info.key))
        if info.key.startswith((catalog.JOURNAL_PREFIX, catalog.SNAPSHOT_PREFIX)):
            assert document["version"] == 1
            assert {(r["op"], tuple(sorted(r))) for r in document["records"]} <= {
                ("add", ("op", "track")), ("remove", ("op", "sha256"))}
        else:
            assert info.key.startswith(catalog.JOURNAL2_PREFIX) and document["version"] == 2
    assert json.loads(store.get(catalog.LOCKER_KEY))["version"] == 1  # version 1 may still mount and upload


def test_the_detailed_removal_is_written_after_its_plain_copy(store: MemoryStore) -> None:
    a, b = make_track(1), make_track(2)
    for _ in range(20):  # ids of one millisecond order by their random part: the writer must see to it
        keys = catalog.append_records(store, [catalog.remove_record(a.sha256, replaced_by=b.sha256)])
        plain, detailed = (key.rsplit("/", 1)[1] for key in keys)
        assert keys[0].startswith(catalog.JOURNAL_PREFIX) and keys[1].startswith(catalog.JOURNAL2_PREFIX)
        assert plain < detailed


def test_a_running_version_1_mount_keeps_seeing_tracks_on_a_format2_locker(store: MemoryStore) -> None:
    old_mount = catalog_v1.load_catalog(store)  # mounted before anything format 2 existed
    expected = format2_locker(store)
    assert old_mount.refresh()  # no FormatError: it never lists journal2/
    catalog.compact(store, grace=timedelta(0))
    more = make_track(20)
    catalog.append_records(store, [catalog.add_record(more)])
    old_mount.refresh()
    assert sorted(t.sha256 for t in old_mount.tracks()) == sorted(t.sha256 for t in [*expected, more])
    assert old_mount.state.rejected == 0  # not even a warning about records it cannot read
    fresh_v1 = catalog_v1.load_catalog(store)  # a version 1 mount started now is not refused
    assert sorted(t.sha256 for t in fresh_v1.tracks()) == sorted(t.sha256 for t in [*expected, more])


def v1_fields(track: Track) -> dict[str, object]:
    """A track's fields as format 1's Track takes them (it has no `art`)."""
    return {name: value for name, value in dataclasses.asdict(track).items() if name != "art"}


def test_a_version_1_compactor_loses_nothing_of_format2(store: MemoryStore) -> None:
    format2_locker(store)
    before = load(store).state
    catalog_v1.compact(store, grace=timedelta(0))
    catalog_v1.append_records(store, [catalog_v1.add_record(catalog_v1.Track(
        **{**v1_fields(make_track(30)), "info": catalog_v1.TrackInfo(format="flac", codec="flac")}))])
    catalog_v1.compact(store, grace=timedelta(0))
    after = load(store).state
    assert {k: v.value for k, v in after.assets.items()} == {k: v.value for k, v in before.assets.items()}
    assert {k: v.value for k, v in after.playlists.items()} == {k: v.value for k, v in before.playlists.items()}
    assert after.removals == before.removals
    assert len(after.tracks()) == len(before.tracks()) + 1


def test_version_2_reads_a_version_1_locker_and_its_local_copy(store: MemoryStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v1_store = MemoryStore()
    catalog_v1.ensure_locker(v1_store)
    v1_tracks = [catalog_v1.Track(**{**v1_fields(make_track(n)), "info": catalog_v1.TrackInfo(
        format="flac", codec="flac", artist="A", title=f"T{n}", duration=1.5)}) for n in range(5)]
    catalog_v1.append_records(v1_store, [catalog_v1.add_record(t) for t in v1_tracks])
    catalog_v1.compact(v1_store, grace=timedelta(0))
    catalog_v1.append_records(v1_store, [catalog_v1.remove_record(v1_tracks[0].sha256)])
    reader = load(v1_store)
    assert sorted((t.sha256, t.info.title) for t in reader.tracks()) == sorted(
        (t.sha256, t.info.title) for t in v1_tracks[1:])
    assert reader.state.rejected == 0
    # A local copy saved by a version 1 mount: the new reader starts from it, then
    # applies the format 2 files that version 1 never listed.
    old_mount = catalog_v1.load_catalog(v1_store)
    catalog.append_records(v1_store, [catalog.asset_record(image("cover.jpg", [make_track(2)], role="cover"))])
    old_mount.refresh()
    old_mount.save(tmp_path / "copy.json.gz")
    upgraded = CatalogReader(v1_store)
    assert upgraded.load_local(tmp_path / "copy.json.gz")
    assert upgraded.state.library().assets == []
    assert upgraded.refresh()
    assert [p.asset.name for p in upgraded.state.library().assets] == ["cover.jpg"]


def test_version_1_refuses_a_copy_written_by_version_3_and_starts_afresh(store: MemoryStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    format2_locker(store)
    load(store).save(tmp_path / "copy.json.gz")
    decoded = columnar.decode((tmp_path / "copy.json.gz").read_bytes(), 1 << 30, lambda version: None)
    assert decoded.header["version"] == 3
    assert not catalog_v1.CatalogReader(store).load_local(tmp_path / "copy.json.gz")


def test_compaction_splits_tracks_and_format2_records(store: MemoryStore) -> None:
    format2_locker(store)
    before = load(store).state.library()
    result = catalog.compact(store, grace=timedelta(0))
    assert result.extras_key is not None and result.extras_key.startswith(catalog.SNAPSHOT2_PREFIX)
    assert (result.tracks, result.assets, result.playlists) == (4, 3, 1)
    assert sorted(info.key.split("/")[1] for info in store.list("catalog/")) == ["snapshot", "snapshot2", "snapshot3"]
    after = load(store).state.library()
    assert sorted(t.sha256 for t in after.tracks) == sorted(t.sha256 for t in before.tracks)
    assert sorted(after.assets, key=lambda p: p.asset.id) == sorted(before.assets, key=lambda p: p.asset.id)
    assert after.playlists == before.playlists


def test_a_locker_without_format2_records_writes_no_snapshot2(store: MemoryStore) -> None:
    catalog.append_records(store, [catalog.add_record(make_track(1))])
    assert catalog.compact(store, grace=timedelta(0)).extras_key is None
    assert [info.key.split("/")[1] for info in store.list("catalog/")] == ["snapshot", "snapshot3"]


def test_refresh_lists_journals_before_snapshots_in_two_requests(store: MemoryStore) -> None:
    format2_locker(store)
    reader = load(store)
    store.requests.clear()
    assert not reader.refresh()
    assert store.requests == [("LIST", "catalog/journal"), ("LIST", "catalog/snapshot")]


def test_files_of_a_later_format_folder_are_not_read(store: MemoryStore) -> None:
    """A version 3 would put its new kinds in journal3/: this reader must not even fetch them."""
    put_raw_journal(store, [{"op": "hologram"}], version=3, prefix="catalog/journal3/")
    catalog.append_records(store, [catalog.add_record(make_track(1))])
    reader = load(store)
    assert len(reader.tracks()) == 1 and reader.state.rejected == 0
    assert not any(op == "GET" and "journal3" in key for op, key in store.requests)


def test_asset_from_dict_rejects_unknown_roles_quietly_in_the_reader() -> None:
    with pytest.raises(ValueError, match="unknown asset role"):
        asset_from_dict({**asset_dict(), "role": "x" * 10_000})


def test_ids_of_one_process_increase_strictly_so_the_last_write_wins(store: MemoryStore) -> None:
    ids = [catalog.new_id() for _ in range(5000)]  # far more than one per millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    cover = image("cover.jpg", [make_track(1)], role="cover")
    for _ in range(30):
        catalog.append_records(store, [catalog.asset_record(cover)])
        catalog.append_records(store, [catalog.remove_asset_record(cover.id)])
        assert [v.value for v in load(store).state.assets.values()] == [None]
