"""The columnar snapshot (format 3) and the track table: the same catalog as the JSON
snapshots, and untrusted input refused or cleaned as records are."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import struct
from array import array
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from lockerfs import catalog, columnar
from lockerfs.catalog import CatalogReader, CatalogState, CorruptCatalogFile, FormatError
from lockerfs.playlist import Playlist, PlaylistEntry
from lockerfs.store import MemoryStore
from lockerfs.tracktable import TrackTable, narrowest, widened
from tests.unit.test_catalog import make_track
from tests.unit.test_extras import cue_asset, embedded, lyrics, side, track

STAMP = "1700000000000-00000000000000aa"


def varied_state() -> CatalogState:
    """Every kind of entry: odd tags, absent values, removals with details, each asset role, playlists."""
    tracks = [make_track(n) for n in range(1, 6)]
    tracks.append(dataclasses.replace(make_track(6), source="", mtime=0.0, info=dataclasses.replace(
        make_track(6).info, title=None, artist="Ünïcödé ☃", album="", track=None, disc=3, disctotal=4,
        year=None, duration=None, compilation=True, head_size=0, tail_size=0, genre="a\u2028b")))
    album = [track(n) for n in (1, 2, 3)]
    records: list[dict[str, Any]] = [catalog.add_record(t) for t in [*tracks, *album]]
    records += [catalog.remove_record(tracks[0].sha256, replaced_by=tracks[1].sha256, track=tracks[0]),
                catalog.remove_record(tracks[2].sha256),
                catalog.asset_record(side("cover.jpg", role="cover", tracks=album)),
                catalog.asset_record(side("back.jpg", tracks=album)),
                catalog.asset_record(embedded("pic", tracks[3:5])),
                catalog.asset_record(lyrics(album[0])),
                catalog.asset_record(cue_asset('FILE "a.wav" WAVE\n', [("a.wav", album[1])])),
                catalog.remove_asset_record("ab" * 32),
                catalog.playlist_record(Playlist("Mix", "m.m3u", (PlaylistEntry(album[0].sha256),
                                                                  PlaylistEntry(None, "gone.mp3")))),
                catalog.remove_playlist_record("Old")]
    state = CatalogState()
    for index, record in enumerate(records):
        state.apply((STAMP, index), record)
    return state


def reload(data: bytes) -> CatalogState:
    state = CatalogState()
    state.merge_file("x", catalog.decode_catalog_file("catalog/snapshot3/x.columns.gz", data))
    return state


def test_a_columnar_snapshot_holds_what_the_json_snapshots_hold() -> None:
    state = varied_state()
    again = reload(state.to_columnar("1700000000001-0000000000000000"))
    assert again.snapshots("s") == state.snapshots("s")
    assert again.rejected == 0
    assert sorted(again.tracks(), key=lambda t: t.sha256) == sorted(state.tracks(), key=lambda t: t.sha256)


def test_merging_it_is_order_independent_like_any_catalog_file() -> None:
    state = varied_state()
    data = state.to_columnar("s")
    newer = dataclasses.replace(make_track(4), source="newer/path.flac")
    for order in ("columns first", "journal first"):
        merged = CatalogState()
        steps: list[Callable[[], None]] = [
            lambda: merged.merge_file("x", catalog.decode_catalog_file("catalog/snapshot3/x.columns.gz", data)),
            lambda: merged.apply(("1800000000000-0000000000000000", 0), catalog.add_record(newer))]
        for step in (steps if order == "columns first" else reversed(steps)):
            step()
        assert merged.entries[newer.sha256].track == newer


def test_the_reader_skips_json_snapshots_a_columnar_one_covers() -> None:
    store = MemoryStore()
    catalog.ensure_locker(store)
    catalog.append_records(store, [catalog.add_record(make_track(n)) for n in range(5)])
    catalog.compact(store, grace=timedelta(0))
    store.requests.clear()
    reader = catalog.load_catalog(store)
    fetched = [key for op, key in store.requests if op == "GET" and key.startswith("catalog/")]
    assert len(fetched) == 1 and fetched[0].startswith(catalog.SNAPSHOT3_PREFIX)
    assert len(reader.tracks()) == 5
    assert len([key for key in reader.seen if key.startswith("catalog/snapshot")]) == 2  # the JSON one counts


def test_a_damaged_columnar_snapshot_falls_back_to_the_json_ones() -> None:
    store = MemoryStore()
    catalog.ensure_locker(store)
    catalog.append_records(store, [catalog.add_record(make_track(n)) for n in range(5)])
    catalog.compact(store, grace=timedelta(0))
    (key,) = [key for key in store.objects if key.startswith(catalog.SNAPSHOT3_PREFIX)]
    store.put_bytes(key, store.objects[key][0][:100])
    reader = catalog.load_catalog(store)
    assert len(reader.tracks()) == 5 and reader.corrupt == {key}


def test_the_local_copy_is_columnar_and_an_older_json_copy_still_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = MemoryStore()
    catalog.ensure_locker(store)
    catalog.append_records(store, [catalog.add_record(make_track(n)) for n in range(5)])
    reader = catalog.load_catalog(store)
    reader.save(tmp_path / "copy")
    assert columnar.is_columnar((tmp_path / "copy").read_bytes())
    copy = CatalogReader(store)
    assert copy.load_local(tmp_path / "copy") and copy.seen.keys() == reader.seen.keys()
    assert sorted(t.sha256 for t in copy.tracks()) == sorted(t.sha256 for t in reader.tracks())
    document = reader.state.snapshots("local")[0]  # what a format 2 mount wrote: JSON with "seen"
    document["seen"] = [[k, v.last_modified.isoformat()] for k, v in reader.seen.items()]
    (tmp_path / "old.json.gz").write_bytes(gzip.compress(json.dumps(document).encode()))
    old = CatalogReader(store)
    assert old.load_local(tmp_path / "old.json.gz") and len(old.tracks()) == 5


# --- untrusted input ------------------------------------------------------------------

def sections(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    raw = gzip.decompress(data)
    end = raw.index(b"\n", len(columnar.MAGIC))
    header = json.loads(raw[len(columnar.MAGIC):end])
    found, at = {}, end + 1
    for name, length in header["sections"]:
        found[name] = raw[at:at + length]
        at += length
    return header, found


def pack(header: dict[str, Any], found: dict[str, bytes]) -> bytes:
    header = {**header, "sections": [[name, len(blob)] for name, blob in found.items()]}
    return gzip.compress(columnar.MAGIC + json.dumps(header).encode() + b"\n" + b"".join(found.values()))


def edited(change: Callable[[dict[str, Any], dict[str, bytes]], None]) -> bytes:
    header, found = sections(varied_state().to_columnar("s"))
    change(header, found)
    return pack(header, found)


def put(found: dict[str, bytes], name: str, row: int, value: Any, fmt: str = "<q") -> None:
    width = struct.calcsize(fmt)
    blob = bytearray(found[name])
    struct.pack_into(fmt, blob, row * width, value)
    found[name] = bytes(blob)


@pytest.mark.parametrize("damage", [
    lambda h, f: f.update(sha256=f["sha256"][:-1]),  # a column of the wrong length
    lambda h, f: h.update(rows=h["rows"] + 1),
    lambda h, f: put(f, "title", 0, 10**6, "<I"),  # a string index past the strings
    lambda h, f: put(f, "stamp_file", 0, 99, "<I"),
    lambda h, f: f.update(strings=f["strings"] + b"\xff\0"),  # not UTF-8
    lambda h, f: h.update(strings=h["strings"] + 1),
    lambda h, f: put(f, "asset_tracks", 1, 10**6, "<I"),  # asset offsets out of order
    lambda h, f: f.update(other=b"{not json"),
    lambda h, f: h.update(kind="journal"),
])
def test_a_broken_structure_refuses_the_file_whole(damage: Callable[[dict[str, Any], dict[str, bytes]], None]) -> None:
    with pytest.raises(CorruptCatalogFile):
        reload(edited(damage))


def test_a_file_of_a_newer_version_is_refused_with_the_upgrade_message() -> None:
    with pytest.raises(FormatError, match="upgrade lockerfs"):
        reload(edited(lambda h, f: h.update(version=4)))


@pytest.mark.parametrize("raw", [b"", b"not gzip", gzip.compress(b"lockerfs-columns\n", mtime=0),
                                 gzip.compress(b"lockerfs-columns\n{}\n", mtime=0), gzip.compress(b"\0" * 100, mtime=0)],
                         ids=["empty", "not gzip", "magic alone", "empty header", "zeros"])
def test_junk_is_a_damaged_file_not_a_crash(raw: bytes) -> None:
    with pytest.raises(CorruptCatalogFile):
        reload(raw)


def test_a_bomb_is_refused_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "MAX_CATALOG_FILE_BYTES", 1 << 20)
    bomb = gzip.compress(columnar.MAGIC + b"\0" * (4 << 20))
    with pytest.raises(CorruptCatalogFile, match="inflates past"):
        reload(bomb)


def test_a_stream_cut_short_or_with_a_wrong_checksum_is_refused_and_two_members_are_read() -> None:
    whole = varied_state().to_columnar("s")
    with pytest.raises(CorruptCatalogFile, match="cut short"):
        reload(whole[:-9])  # the last deflate bytes and the trailer
    wrong_crc = whole[:-8] + bytes(b ^ 0xFF for b in whole[-8:-4]) + whole[-4:]
    with pytest.raises(CorruptCatalogFile, match="not valid gzip"):
        reload(wrong_crc)
    inflated = gzip.decompress(whole)  # the same bytes as two gzip members, as `cat a.gz b.gz` makes
    split = gzip.compress(inflated[:1000], mtime=0) + gzip.compress(inflated[1000:], mtime=0)
    assert sorted(t.sha256 for t in reload(split).tracks()) == sorted(t.sha256 for t in reload(whole).tracks())


def row_of(state: CatalogState, sha: str) -> int:
    header, found = sections(state.to_columnar("s"))
    digests = found["sha256"]
    return [digests[i:i + 32].hex() for i in range(0, len(digests), 32)].index(sha)


def test_bad_rows_are_skipped_and_counted_bad_values_dropped() -> None:
    state = varied_state()
    target, other, third = make_track(4), make_track(5), make_track(2)
    rows = {t.sha256: row_of(state, t.sha256) for t in (target, other, third)}

    def change(header: dict[str, Any], found: dict[str, bytes]) -> None:
        put(found, "size", rows[target.sha256], -5)  # skipped
        strings = found["strings"].split(b"\0")
        strings.insert(-1, b"../x")
        found["strings"] = b"\0".join(strings)
        header["strings"] += 1
        put(found, "ext", rows[other.sha256], len(strings) - 1, "<I")  # a path as ext: skipped
        put(found, "year", rows[third.sha256], -7)  # dropped
        put(found, "track", rows[third.sha256], 1 << 50)  # dropped
        put(found, "head_size", rows[third.sha256], third.size + 1)  # past the end: 0
        put(found, "mtime", rows[third.sha256], math.nan, "<d")  # 0
        put(found, "duration", rows[third.sha256], -1.0, "<d")  # absent

    again = reload(edited(change))
    assert again.rejected == 2
    assert target.sha256 not in again.entries and other.sha256 not in again.entries
    kept = again.entries[third.sha256].track
    assert kept is not None
    assert (kept.info.year, kept.info.track, kept.info.head_size, kept.mtime, kept.info.duration) == (
        None, None, 0, 0.0, None)


def test_bad_assets_are_skipped_and_counted() -> None:
    def change(header: dict[str, Any], found: dict[str, bytes]) -> None:
        roles = bytearray(found["asset_role"])
        roles[0] = 9
        found["asset_role"] = bytes(roles)

    state = varied_state()
    again = reload(edited(change))
    assert again.rejected == 1
    assert len([v for v in again.assets.values() if v.value is not None]) == len(
        [v for v in state.assets.values() if v.value is not None]) - 1


def test_text_is_capped_as_in_records() -> None:
    long = dataclasses.replace(make_track(9), info=dataclasses.replace(make_track(9).info, title="t" * 900))
    state = CatalogState()
    state.apply((STAMP, 0), catalog.add_record(long))

    def change(header: dict[str, Any], found: dict[str, bytes]) -> None:
        found["strings"] = found["strings"].replace(b"t" * 900, b"t" * 3000)

    header, found = sections(state.to_columnar("s"))
    change(header, found)
    again = reload(pack(header, found))
    assert again.tracks()[0].info.title == "t" * catalog.MAX_TEXT


# --- the track table ----------------------------------------------------------------------

def test_the_table_keeps_the_newest_record_and_rows_for_good() -> None:
    table = TrackTable()
    first, second = make_track(1), dataclasses.replace(make_track(1), source="b.flac")
    assert table.put(first.sha256, ("2", 0), first)
    assert not table.put(first.sha256, ("1", 0), second)  # older: ignored
    assert table.put(first.sha256, ("3", 0), None)  # removed: the row stays, as a tombstone
    assert table.live_count == 0 and len(table) == 1 and table[first.sha256].track is None
    assert table.put(first.sha256, ("4", 0), second)
    assert table[first.sha256].track == second and table.row(first.sha256) == 0
    assert table.take_changed() == {0} and table.take_changed() == set()


def test_a_track_with_nothing_known_comes_back_as_it_went_in() -> None:
    bare = dataclasses.replace(make_track(2), info=type(make_track(2).info)(format="", codec=""))
    table = TrackTable()
    table.put(bare.sha256, ("1", 0), bare)
    assert table.track(0) == bare


def test_a_copy_of_the_table_is_left_alone_by_merges_into_the_original() -> None:
    table = TrackTable()
    table.put(make_track(1).sha256, ("1", 0), make_track(1))
    copy = table.copy()
    table.put(make_track(2).sha256, ("2", 0), make_track(2))
    table.put(make_track(1).sha256, ("3", 0), None)
    assert copy.tracks() == [make_track(1)] and len(copy) == 1
    assert table.live_count == 1 and copy.live_count == 1


# --- narrowed number columns ------------------------------------------------------------

@pytest.mark.parametrize(("values", "typecode"), [
    ([0, 1, 127, -128, -1], "b"), ([0, 128, -129, 32767], "h"), ([-32769, 2**31 - 1, -2**31], "i"),
    ([2**31, 0], "q"), ([-2**31 - 1], "q"), ([2**63 - 1, -2**63], "q")])
def test_a_column_is_held_in_the_narrowest_type_and_widened_back_exactly(values: list[int], typecode: str) -> None:
    wide = array("q", values * 1000)
    narrow = narrowest(wide)
    assert narrow.typecode == typecode and list(narrow) == list(wide)
    assert widened(narrow).typecode == "q" and widened(narrow) == wide


def test_a_value_past_a_narrowed_column_widens_it_and_nothing_is_lost() -> None:
    """Tags of a snapshot fit a byte; a journal then brings numbers that do not."""
    small = [make_track(n) for n in range(1, 4)]
    state = CatalogState()
    for index, t in enumerate(small):
        state.apply((STAMP, index), catalog.add_record(t))
    loaded = reload(state.to_columnar("s"))
    table = loaded.entries
    assert table.numbers["track"].typecode == "b" and table.numbers["bitrate"].typecode != "q"
    big = dataclasses.replace(make_track(9), size=2**34, info=dataclasses.replace(
        make_track(9).info, track=5000, bitrate=2**39, head_size=2**33, tail_size=70000))
    changed = dataclasses.replace(small[0], info=dataclasses.replace(small[0].info, track=300, year=40000))
    loaded.apply(("1800000000000-00000000000000aa", 0), catalog.add_record(big))
    loaded.apply(("1800000000000-00000000000000aa", 1), catalog.add_record(changed))
    assert table.numbers["track"].typecode == "q" and table.numbers["year"].typecode == "q"
    for t in (big, changed, *small[1:]):
        assert table.track(table.row(t.sha256)) == t  # type: ignore[arg-type]
    again = reload(loaded.to_columnar("t")).entries
    for t in (big, changed, *small[1:]):
        assert again.track(again.row(t.sha256)) == t  # type: ignore[arg-type]
