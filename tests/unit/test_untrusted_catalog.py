"""A catalog is untrusted input, all the way to the mounted tree.

Records come from a bucket that others may write to (or damage): whatever
they hold, the tree they produce has only valid names inside the mount,
and a huge or inflated catalog costs bounded memory and time.
(tests/unit/test_catalog.py checks the record validation itself.)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import tracemalloc
import unicodedata
from typing import Any

import psutil
import pytest

from lockerfs import catalog, layout
from lockerfs.asset import clean_text
from lockerfs.catalog import CatalogReader, FormatError
from lockerfs.store import MemoryStore
from lockerfs.tree import DirNode, FileNode, Tree
from tests.support.bombs import gzip_of_zeros

HOSTILE_TEXT = ["../../etc", "..", ".", "/abs/olute", "/", "a/../../b", "nul\x00byte", "\x00", "\x1b[2J",
                "back\\..\\slash", "~root", "-rf", "  ", "", "\u202e\u2066", "x" * 5000, "é" * 3000,
                "\ud800lone surrogate", "CON", "aux.flac", ".hidden", "dot. ", "🎵" * 300]


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def record(n: int, **info: Any) -> dict[str, Any]:
    digest = sha(n)
    return {"op": "add", "track": {"sha256": digest, "key": catalog.object_key(digest, "flac"), "size": 1000 + n,
                                   "ext": "flac", "source": f"src/{n}.flac", "mtime": 1.7e9,
                                   "info": {"format": "flac", "codec": "flac", **info}}}


def journal(records: list[Any]) -> bytes:
    file_id = catalog.new_id()
    return json.dumps({"kind": "journal", "version": 1, "id": file_id, "records": records}).encode()


def put_journal(store: MemoryStore, records: list[Any], raw: bytes | None = None) -> str:
    key = f"{catalog.JOURNAL_PREFIX}{catalog.new_id()}.json"
    store.put_bytes(key, raw if raw is not None else journal(records))
    return key


def assert_valid_tree(tree: Tree) -> None:
    for node in tree.nodes.values():
        if node.inode == 1:
            continue
        name = node.name
        raw = name.encode("utf-8")  # strict: no lone surrogates
        assert 0 < len(raw) <= 255, name
        assert "/" not in name and "\0" not in name, name
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name), repr(name)
        assert name not in (".", "..") and not name.startswith("."), repr(name)
        assert unicodedata.normalize("NFC", name) == name
        parent = tree.nodes[node.parent]
        assert isinstance(parent, DirNode) and parent.children[name] == node.inode


def build_tree(store: MemoryStore, template: str = layout.DEFAULT_TEMPLATE) -> tuple[CatalogReader, Tree]:
    reader = catalog.load_catalog(store)
    tree = Tree()
    tree.rebuild(layout.build_paths(reader.tracks(), layout.parse_template(template)))
    return reader, tree


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    catalog.ensure_locker(store)
    return store


def test_path_like_tag_values_stay_inside_the_tree(store: MemoryStore) -> None:
    records = []
    n = 0
    for text in HOSTILE_TEXT:
        for field in ("artist", "albumartist", "album", "title", "genre", "date"):
            n += 1
            records.append(record(n, **{field: text}))
        n += 1
        rec = record(n, title=text)
        rec["track"]["source"] = text  # the fallback name when there is no title
        records.append(rec)
        n += 1
        records.append(record(n))
        records[-1]["track"]["source"] = text
    put_journal(store, records)
    for template in (layout.DEFAULT_TEMPLATE, "{genre}/{artist}/{album}/{title}", "{title}"):
        reader, tree = build_tree(store, template)
        assert reader.state.rejected == 0
        assert_valid_tree(tree)
        assert tree.track_count == len(records)
        files = [node for node in tree.nodes.values() if isinstance(node, FileNode)]
        assert len({node.track.sha256 for node in files}) == len(records)  # each record once


@pytest.mark.parametrize("bad", [
    {"sha256": "../../../../etc/passwd"}, {"sha256": "A" * 64}, {"sha256": None},
    {"key": "../../etc/passwd"}, {"key": "/abs"}, {"key": "objects/sha256/00/other.flac"},
    {"ext": "../x"}, {"ext": "fl/ac"}, {"ext": "x" * 40}, {"ext": ""}, {"ext": 3},
    {"size": -1}, {"size": 1 << 62}, {"size": "12"}, {"size": 1.5}, {"size": True}, {"size": None},
], ids=repr)
def test_records_pointing_outside_the_locker_are_skipped(store: MemoryStore, bad: dict[str, Any]) -> None:
    hostile = record(1)
    hostile["track"].update(bad)
    put_journal(store, [hostile, record(2)])
    reader, tree = build_tree(store)
    assert reader.state.rejected == 1
    assert [t.sha256 for t in reader.tracks()] == [sha(2)]
    assert_valid_tree(tree)


@pytest.mark.parametrize("info", [
    {"track": "3/12", "disc": [1], "year": "1999", "compilation": "yes", "duration": "long"},
    {"track": -5, "disc": 10**30, "year": -1, "duration": float("nan"), "bitrate": float("inf")},
    {"head_size": 10**12, "tail_size": -3, "sample_rate": 1e300},
    {"artist": {"nested": "object"}, "title": ["a", "b"], "album": 42, "genre": None},
    {"format": None, "codec": 7},
], ids=repr)
def test_wrong_types_and_absurd_values_are_dropped_not_fatal(store: MemoryStore, info: dict[str, Any]) -> None:
    put_journal(store, [record(1, **info)])
    reader, tree = build_tree(store)
    [track] = reader.tracks()
    assert 0 <= track.info.head_size <= track.size and 0 <= track.info.tail_size <= track.size
    assert_valid_tree(tree)


@pytest.mark.parametrize("junk", [
    None, 3, "add", [], {}, {"op": "add"}, {"op": "add", "track": None}, {"op": "add", "track": []},
    {"op": "remove"}, {"op": "remove", "sha256": "../x"}, {"op": "rm -rf", "sha256": sha(1)},
    {"op": "add", "track": {"sha256": sha(5)}},  # missing every other field
], ids=repr)
def test_malformed_records_are_skipped(store: MemoryStore, junk: Any) -> None:
    put_journal(store, [junk, record(2)])
    reader, tree = build_tree(store)
    assert reader.state.rejected == 1 and len(reader.tracks()) == 1
    assert_valid_tree(tree)


def _journal_store(count: int, per_file: int) -> MemoryStore:
    store = MemoryStore()
    catalog.ensure_locker(store)
    for start in range(0, count, per_file):
        put_journal(store, [record(n, artist=f"A{n % 500}", album=f"B{n % 3000}", title=f"T{n}", track=n % 20 + 1)
                            for n in range(start, min(count, start + per_file))])
    return store


def test_a_hundred_thousand_records_cost_bounded_memory_and_linear_time() -> None:
    """A huge catalog costs memory and time in proportion to its tracks, not worse.

    Time is compared with a tenth of the catalog, timed the same way in the same
    test, so a loaded machine slows both alike; linear is 10x, 20x allows for the
    allocator and the collector.
    """
    count = 100_000
    small = _journal_store(count // 10, 2_000)
    started = time.monotonic()
    build_tree(small)
    small_elapsed = time.monotonic() - started
    large = _journal_store(count, 20_000)
    process = psutil.Process()
    rss_before = process.memory_info().rss
    started = time.monotonic()
    reader, tree = build_tree(large)
    elapsed = time.monotonic() - started
    held = process.memory_info().rss - rss_before
    print(f"\n[100k records] {elapsed:.1f} s (10k: {small_elapsed:.1f} s), RSS +{held / 2**20:.0f} MiB, "
          f"{len(tree.nodes)} nodes")
    assert tree.track_count == count
    assert held < 3 * 1024 * count  # < 3 KiB per track: catalog, layout and tree together
    assert elapsed < 20 * small_elapsed


def test_gzip_bomb_snapshot_is_refused_with_bounded_memory(store: MemoryStore) -> None:
    """1 GiB of zeros is 1 MB gzipped: inflating stops at the cap, whatever the claim."""
    bomb = gzip_of_zeros(1 << 30)
    assert len(bomb) < 2 << 20
    key = f"{catalog.SNAPSHOT_PREFIX}{catalog.new_id()}.json.gz"
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="inflates past"):
            catalog.decode_catalog_file(key, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n[gzip bomb] {len(bomb)} bytes -> refused; peak {peak / 2**20:.0f} MiB "
          f"(cap {catalog.MAX_CATALOG_FILE_BYTES / 2**20:.0f} MiB)")
    assert peak < 2 * catalog.MAX_CATALOG_FILE_BYTES + (64 << 20)


def test_the_bomb_is_an_ordinary_gzip_of_zeros() -> None:
    """tests/support/bombs.py builds its bomb without compressing it: what it inflates to."""
    assert gzip.decompress(gzip_of_zeros(3 << 20)) == bytes(3 << 20)


def test_deeply_nested_json_is_a_bad_file_not_a_crash(store: MemoryStore) -> None:
    deep = b'{"kind":"journal","version":1,"records":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    key = put_journal(store, [], raw=deep)
    put_journal(store, [record(1)])
    with pytest.raises(FormatError):
        catalog.decode_catalog_file(key, deep)
    reader, tree = build_tree(store)  # the bad file is skipped, the good one read
    assert [t.sha256 for t in reader.tracks()] == [sha(1)]
    assert_valid_tree(tree)


def test_removes_of_unknown_tracks_and_duplicate_adds_are_harmless(store: MemoryStore) -> None:
    put_journal(store, [{"op": "remove", "sha256": sha(n)} for n in range(100, 200)])
    put_journal(store, [record(1)] * 1000 + [record(2, title="x")] * 3)
    reader, tree = build_tree(store)
    assert sorted(t.sha256 for t in reader.tracks()) == sorted([sha(1), sha(2)])
    assert tree.track_count == 2


@pytest.mark.parametrize("value", [
    "Café Noir", "Cafe\u0301 Noir", "line\u2028break", "tab\there", "nul\0byte", "lone \ud800 surrogate",
    "Déjà" * 300, "e" * 1023 + "e\u0301", "  padded Ünder  ", "\u0085next line", "ﬁ ligature (NFC keeps it)",
])
def test_clean_text_is_nfc_without_controls_and_capped(value: str) -> None:
    """Names from untrusted records: whatever path clean_text takes (ASCII, already clean
    Unicode, or the full cleaning), the result is NFC, has no control or separator
    character, is at most `limit` long and is what the full cleaning gives."""
    limit = 1024
    cleaned = clean_text(value, limit)
    assert unicodedata.is_normalized("NFC", cleaned) and len(cleaned) <= limit
    assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in cleaned)
    full = unicodedata.normalize("NFC", value[:limit * 2].translate(
        dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029])).encode("utf-8", "replace")
        .decode("utf-8"))[:limit].strip()
    assert cleaned == full
