"""LiveLayout + Tree: the same names as build_paths + extras.lay_out, made folder by folder,
and refreshes that re-file only what changed."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any

import pytest

from lockerfs import catalog, extras, livelayout
from lockerfs.catalog import CatalogState
from lockerfs.cache import ObjectRef
from lockerfs.layout import DEFAULT_TEMPLATE, Template, parse_template
from lockerfs.livelayout import LiveLayout
from lockerfs.store import MemoryStore
from lockerfs.tree import ROOT_INODE, DirNode, ExtraNode, FileNode, Tree
from tests.support.scale_catalog import scale_records, track_sha
from lockerfs.playlist import Playlist, PlaylistEntry
from tests.unit.test_extras import cue_asset, embedded, lyrics, side, track
from tests.unit.test_layout import HOSTILE_TITLES, _varied_library, make_track

TEMPLATES = [DEFAULT_TEMPLATE, "{artist} - {title}", "[{genre}/]{album}/{title}",
             "{albumartist}/[{year} - ]{album}/[{disc}/]{title}", "{title}", "{format}/{artist}/{album}/{track:03} {title}",
             "{genre}/{artist}/{albumartist} - {album}[ ({year})]/[{disc}-][{track:02} ]{title} [{format}]"]


def state_of(records: list[dict[str, Any]]) -> CatalogState:
    state = CatalogState()
    for index, record in enumerate(records):
        state.apply(("1700000000000-0000000000000000", index), record)
    return state


def shown(tree: Tree) -> dict[tuple[str, ...], object]:
    """Every file of the tree by its path, as a client walking it sees them."""
    found: dict[tuple[str, ...], object] = {}

    def walk(folder: DirNode, path: tuple[str, ...]) -> None:
        for name in folder.names:
            node = tree.lookup(folder.inode, name)
            assert node is not None and node.name == name and node.parent == folder.inode
            if isinstance(node, DirNode):
                walk(node, (*path, name))
            elif isinstance(node, FileNode):
                found[(*path, name)] = node.track.sha256
                assert tree.nodes[node.inode] == node
            else:
                assert isinstance(node, ExtraNode)
                content = node.content
                identity = content.sha256 if isinstance(content, ObjectRef) else hashlib.sha256(content).hexdigest()
                found[(*path, name)] = ("extra", identity)

    walk(tree.nodes[ROOT_INODE], ())  # type: ignore[arg-type]
    return found


def comparable(found: dict[tuple[str, ...], object]) -> dict[tuple[str, ...], object]:
    """Paths -> what is there: a track's sha256, another file's content hash (generated cue
    sheets and playlists by the hash of their bytes, so their content is compared too)."""
    return found


def reference(state: CatalogState, template: Template) -> dict[tuple[str, ...], object]:
    paths, files = extras.lay_out(state, template)
    found: dict[tuple[str, ...], object] = {path: track.sha256 for path, track in paths.items()}
    found.update((path, ("extra", file.identity)) for path, file in files.items())
    return found


def live_tree(state: CatalogState, template: Template) -> tuple[LiveLayout, Tree]:
    live = LiveLayout(state, template)
    tree = Tree()
    tree.use(live)
    return live, tree


def library_records() -> list[dict[str, Any]]:
    """Collisions, case variants, compilations, multi-disc, untagged, hostile names, every kind of extra."""
    tracks = _varied_library()
    tracks += [make_track(f"src/h{i}.flac", albumartist=t, album=t, title=t, year=2000)
               for i, (t, _) in enumerate(HOSTILE_TITLES)]
    album = [track(n) for n in (1, 2, 3)]
    records = [catalog.add_record(t) for t in [*tracks, *album]]
    records += [catalog.asset_record(side("cover.jpg", role="cover", tracks=album)),
                catalog.asset_record(side("back.jpg", tracks=album)),
                catalog.asset_record(embedded("pic", tracks[:5])),
                catalog.asset_record(lyrics(album[0])),
                catalog.asset_record(cue_asset("FILE \"a.wav\" WAVE\n", [("a.wav", album[1]), ("b.wav", tracks[3])])),
                catalog.playlist_record(Playlist("Mix", "m.m3u", tuple(
                    PlaylistEntry(t.sha256) for t in [*album, *tracks[:4]])))]
    return records


@pytest.mark.parametrize("template_text", TEMPLATES)
def test_the_names_are_those_of_build_paths_and_extras(template_text: str) -> None:
    template = parse_template(template_text)
    state = state_of(library_records())
    _, tree = live_tree(state, template)
    assert comparable(shown(tree)) == reference(state, template)


def test_a_generated_catalog_with_covers_and_playlists_is_named_alike() -> None:
    state = state_of(list(scale_records(3000, seed=3)))
    assert state.playlists and len(state.assets) > 100
    _, tree = live_tree(state, parse_template(DEFAULT_TEMPLATE))
    assert comparable(shown(tree)) == reference(state, parse_template(DEFAULT_TEMPLATE))


def test_windows_names_mode_reaches_every_name() -> None:
    template = parse_template(DEFAULT_TEMPLATE, "windows")
    state = state_of(library_records())
    _, tree = live_tree(state, template)
    assert comparable(shown(tree)) == reference(state, template)


def test_nothing_is_named_before_it_is_asked_for() -> None:
    state = state_of(list(scale_records(1200, seed=1)))
    live, tree = live_tree(state, parse_template(DEFAULT_TEMPLATE))
    assert tree.track_count == 1200
    listed = [node for node in tree._dirs.values() if node.listing is not None]
    assert not listed and not live._names  # folders exist; no folder has been listed
    root = tree.nodes[ROOT_INODE]
    assert isinstance(root, DirNode)
    artist = tree.lookup(ROOT_INODE, root.names[0])
    assert isinstance(artist, DirNode)
    album = tree.lookup(artist.inode, artist.names[0])
    assert isinstance(album, DirNode) and album.names
    listed = [node.key for node in tree._dirs.values() if node.listing is not None]
    assert sorted(listed) == sorted([(), artist.key, album.key])


# --- refreshes ---------------------------------------------------------------------------

def apply(state: CatalogState, records: list[dict[str, Any]], stamp: str) -> None:
    for index, record in enumerate(records):
        state.apply((stamp, index), record)


def changes_of(rng: random.Random, state: CatalogState, step: int) -> list[dict[str, Any]]:
    """A random batch: new tracks (some into existing albums), removals, retags, covers."""
    live = state.tracks()
    records: list[dict[str, Any]] = list(scale_records(rng.randint(0, 40), seed=step, first=100_000 * step))
    listed = {entry.sha256 for versioned in state.playlists.values() if versioned.value is not None
              for entry in versioned.value.entries}
    in_playlists = [track for track in live if track.sha256 in listed]
    for old in rng.sample(live, min(len(live), rng.randint(0, 6))) + rng.sample(in_playlists, min(2, len(in_playlists))):
        kind = rng.random()
        if kind < 0.4:
            records.append(catalog.remove_record(old.sha256))
        elif kind < 0.7:  # same bytes, a new record: retitled, or moved to another year
            info = dataclasses.replace(old.info, title=f"Re {step}", year=(old.info.year or 2000) + 1)
            records.append(catalog.add_record(dataclasses.replace(old, info=info)))
        else:  # retagged bytes: removed, replaced by a new track in the same album
            new = dataclasses.replace(old, sha256=track_sha(900_000 + step * 10 + len(records)),
                                      key=catalog.object_key(track_sha(900_000 + step * 10 + len(records)), old.ext))
            records += [catalog.add_record(new), catalog.remove_record(old.sha256, replaced_by=new.sha256)]
    return records


@pytest.mark.parametrize("template_text", [DEFAULT_TEMPLATE, "{artist} - {title}",
                                           "{albumartist}/[{year} - ]{album}/[{disc}/]{title}"])
def test_refreshes_give_what_a_fresh_layout_gives(template_text: str) -> None:
    template = parse_template(template_text)
    rng = random.Random(5)
    state = state_of(list(scale_records(2100, seed=9)))  # one playlist, whose tracks the changes may hit
    live, tree = live_tree(state, template)
    shown(tree)  # the kernel has seen everything: every change must be reported
    for step in range(1, 8):
        before = {path: inode for path, inode in _inodes(tree).items()}
        apply(state, changes_of(rng, state, step), f"17000000{step:05d}-0000000000000000")
        changes = tree.sync(live.update(state.entries.take_changed()))
        after = _inodes(tree)
        assert comparable(shown(tree)) == reference(state, template)
        for path in set(before) & set(after):  # unchanged entries keep their inodes
            if before[path][1] == after[path][1]:
                assert before[path][0] == after[path][0], path
        changed = {path for path in set(before) ^ set(after)} | {
            path for path in set(before) & set(after) if before[path] != after[path]}
        reported = set(changes.entries)
        seen_folders = {inode for inode, identity in before.values() if identity == "dir"} | {ROOT_INODE}
        for path in changed:  # every entry the kernel may know that came, went or changed is invalidated
            for inodes in (before, after):
                parent = inodes[path[:-1]][0] if path[:-1] in inodes else ROOT_INODE
                if path in inodes and parent in seen_folders:  # a new folder's files were never seen
                    assert (parent, path[-1]) in reported, path


def _inodes(tree: Tree) -> dict[tuple[str, ...], tuple[int, object]]:
    found: dict[tuple[str, ...], tuple[int, object]] = {}

    def walk(folder: DirNode, path: tuple[str, ...]) -> None:
        for name in folder.names:
            node = tree.lookup(folder.inode, name)
            assert node is not None
            identity: object = node.track.sha256 if isinstance(node, FileNode) else (
                "dir" if isinstance(node, DirNode) else getattr(node.content, "sha256", node.content))
            found[(*path, name)] = (node.inode, identity)
            if isinstance(node, DirNode):
                walk(node, (*path, name))

    walk(tree.nodes[ROOT_INODE], ())  # type: ignore[arg-type]
    return found


def test_a_refresh_of_new_tracks_re_files_only_their_folders() -> None:
    state = state_of(list(scale_records(3000, seed=2)))
    live, tree = live_tree(state, parse_template(DEFAULT_TEMPLATE))
    shown(tree)
    apply(state, list(scale_records(30, seed=4, first=50_000)), "1800000000000-0000000000000000")
    affected = live.update(state.entries.take_changed())
    # new albums under new artists, their parents, and the playlists (they name tracks)
    assert len(affected) < 20
    tree.sync(affected)
    assert comparable(shown(tree)) == reference(state, parse_template(DEFAULT_TEMPLATE))


def test_a_refresh_makes_again_only_the_playlists_that_name_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refresh lists the playlists folder again; making every playlist again each
    time cost most of a 300,000-track refresh. A playlist is made again when a track it
    names was re-filed (here: retitled), and never kept stale."""
    state = state_of(list(scale_records(6100, seed=3)))  # three playlists, of different albums
    template = parse_template(DEFAULT_TEMPLATE)
    live, tree = live_tree(state, template)
    shown(tree)
    made: list[str] = []
    render = extras.render_m3u8
    for module in (extras, livelayout):
        monkeypatch.setattr(module, "render_m3u8", lambda placed, *args: made.append(placed.playlist.name)
                            or render(placed, *args))
    first = next(v.value for v in state.playlists.values() if v.value is not None)
    named = state.entries[first.entries[0].sha256].track  # type: ignore[index, union-attr]
    assert named is not None and len(live.playlists) == 3
    steps = [list(scale_records(30, seed=4, first=50_000)),  # new albums: no playlist names them
             [catalog.add_record(dataclasses.replace(named, info=dataclasses.replace(named.info, title="Renamed")))]]
    for step, records in enumerate(steps):
        made.clear()
        apply(state, records, f"18000000{step:05d}-0000000000000000")
        tree.sync(live.update(state.entries.take_changed()))
        now = comparable(shown(tree))
        assert made == ([] if step == 0 else [first.name]), step
        assert now == reference(state, template)  # no playlist stale


def test_hostile_catalog_from_the_bucket_lays_out_like_the_reference() -> None:
    store = MemoryStore()
    catalog.ensure_locker(store)
    catalog.append_records(store, library_records())
    catalog.compact(store)
    reader = catalog.load_catalog(store)
    assert any(key.startswith(catalog.SNAPSHOT3_PREFIX) for key in store.objects)
    _, tree = live_tree(reader.state, parse_template(DEFAULT_TEMPLATE))
    assert comparable(shown(tree)) == reference(reader.state, parse_template(DEFAULT_TEMPLATE))


def test_a_naming_bug_costs_its_folder_not_the_mount(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Names are made inside requests now: only FUSEError may leave a pyfuse3 handler."""
    state = state_of(list(scale_records(50, seed=1)))
    live, tree = live_tree(state, parse_template(DEFAULT_TEMPLATE))
    artist = tree.lookup(ROOT_INODE, tree.nodes[ROOT_INODE].names[0])  # type: ignore[union-attr]
    assert isinstance(artist, DirNode)

    def broken(row: int) -> tuple[str, str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(live, "_stem", broken)
    album = tree.lookup(artist.inode, artist.names[0])
    assert isinstance(album, DirNode) and album.names == []
    assert "naming the files of" in caplog.text


def newest_below(state: CatalogState, template: Template) -> dict[tuple[str, ...], float]:
    """Each shown folder's mtime by its own definition: the newest track anywhere below it."""
    paths, _ = extras.lay_out(state, template)
    found: dict[tuple[str, ...], float] = {}
    for path, t in paths.items():
        for depth in range(len(path)):
            found[path[:depth]] = max(found.get(path[:depth], 0.0), t.mtime)
    return found


def test_folder_mtimes_are_the_newest_track_below_at_first_and_after_refreshes() -> None:
    template = parse_template(DEFAULT_TEMPLATE)
    rng = random.Random(3)
    state = state_of(list(scale_records(1500, seed=4)))
    live = LiveLayout(state, template)
    for step in range(4):
        expected = newest_below(state, template)
        expected[()] = max(expected[()], live.mtime(livelayout.PLAYLISTS))  # the root also holds the playlists
        assert {live.shown[key]: live.mtime(key) for key in live.shown} == expected
        apply(state, changes_of(rng, state, step + 1), f"17000000{step:05d}-0000000000000000")
        live.update(state.entries.take_changed())  # worked out again for the folders it touched
