"""Tree: inodes over layout paths, stable across rebuilds, and what a rebuild changed."""

from __future__ import annotations

import dataclasses

from lockerfs.asset import stored_object
from lockerfs.cache import ObjectRef
from lockerfs.extras import ExtraFile
from lockerfs.layout import DEFAULT_TEMPLATE, build_paths, parse_template
from lockerfs.track import Track
from lockerfs.tree import ROOT_INODE, DirNode, ExtraNode, FileNode, Tree
from tests.unit.test_catalog import make_track

TEMPLATE = parse_template(DEFAULT_TEMPLATE)


def aged(n: int, mtime: float, **info: object) -> Track:
    return dataclasses.replace(make_track(n, **info), mtime=mtime)


def paths_of(tracks: list[Track]) -> dict[tuple[str, ...], Track]:
    return build_paths(tracks, TEMPLATE)


def resolve(tree: Tree, *names: str) -> DirNode | FileNode:
    node: DirNode | FileNode | None = tree.nodes[ROOT_INODE]
    for name in names:
        assert node is not None
        node = tree.lookup(node.inode, name)
        assert node is not None, f"no {name!r} in {names}"
    assert node is not None
    return node


def inodes_by_path(tree: Tree) -> dict[tuple[str, ...], int]:
    """Every node's path from the root -> its inode."""
    found: dict[tuple[str, ...], int] = {}

    def walk(directory: DirNode, path: tuple[str, ...]) -> None:
        for name, inode in directory.children.items():
            found[(*path, name)] = inode
            node = tree.nodes[inode]
            if isinstance(node, DirNode):
                walk(node, (*path, name))

    root = tree.nodes[ROOT_INODE]
    assert isinstance(root, DirNode)
    walk(root, ())
    return found


# --- shape ----------------------------------------------------------------------

def test_rebuild_makes_the_layout_dirs_and_files() -> None:
    tracks = [make_track(n) for n in (1, 8, 14, 2)]
    tree = Tree()
    tree.rebuild(paths_of(tracks))
    root = tree.nodes[ROOT_INODE]
    assert isinstance(root, DirNode)
    assert root.names == ["Artist 0", "Artist 1", "Artist 2"]
    artist1 = resolve(tree, "Artist 1")
    assert isinstance(artist1, DirNode)
    assert artist1.names == ["Album 1", "Album 8"]
    song = resolve(tree, "Artist 1", "Album 8", "09 Title 8.flac")
    assert isinstance(song, FileNode)
    assert song.track == make_track(8)
    assert song.parent == resolve(tree, "Artist 1", "Album 8").inode
    assert tree.track_count == 4
    assert tree.total_size == sum(t.size for t in tracks)
    # every layout path resolves to its track, and nothing else is in the tree
    files = {path: tree.nodes[inode] for path, inode in inodes_by_path(tree).items()
             if isinstance(tree.nodes[inode], FileNode)}
    assert {path: node.track for path, node in files.items()} == paths_of(tracks)  # type: ignore[union-attr]


def test_lookup_of_missing_name_or_in_a_file_is_none() -> None:
    tree = Tree()
    tree.rebuild(paths_of([make_track(1)]))
    assert tree.lookup(ROOT_INODE, "Nobody") is None
    song = resolve(tree, "Artist 1", "Album 1", "02 Title 1.flac")
    assert tree.lookup(song.inode, "x") is None
    assert tree.lookup(999_999, "x") is None


def test_empty_rebuild_leaves_an_empty_root() -> None:
    tree = Tree()
    tree.rebuild(paths_of([make_track(1)]))
    tree.rebuild({})
    assert list(tree.nodes) == [ROOT_INODE]
    root = tree.nodes[ROOT_INODE]
    assert isinstance(root, DirNode) and root.names == [] and root.subdirs == 0
    assert tree.track_count == 0 and tree.total_size == 0


# --- inode stability --------------------------------------------------------------

def test_inodes_are_stable_when_other_tracks_come_and_go() -> None:
    tree = Tree()
    tree.rebuild(paths_of([make_track(n) for n in range(10)]))
    before = inodes_by_path(tree)
    # remove 0-2, add 10-14: the other entries keep their inodes
    tree.rebuild(paths_of([make_track(n) for n in range(3, 15)]))
    after = inodes_by_path(tree)
    kept = set(before) & set(after)
    assert kept, "the test needs entries present in both trees"
    assert {path: before[path] for path in kept} == {path: after[path] for path in kept}
    # new entries get inodes never used before
    new = set(after) - set(before)
    assert new
    assert not {after[path] for path in new} & set(before.values())


def test_rebuild_with_the_same_paths_changes_nothing() -> None:
    tree = Tree()
    paths = paths_of([make_track(n) for n in range(10)])
    tree.rebuild(paths)
    before = inodes_by_path(tree)
    changes = tree.rebuild(paths)
    assert not changes
    assert inodes_by_path(tree) == before


def test_retagged_track_at_the_same_path_gets_a_new_inode() -> None:
    tree = Tree()
    tree.rebuild({("A", "song.flac"): make_track(1), ("A", "other.flac"): make_track(2)})
    old = resolve(tree, "A", "song.flac")
    other = resolve(tree, "A", "other.flac")
    folder = resolve(tree, "A")
    tree.rebuild({("A", "song.flac"): make_track(3), ("A", "other.flac"): make_track(2)})
    new = resolve(tree, "A", "song.flac")
    assert isinstance(new, FileNode) and new.track == make_track(3)
    assert new.inode != old.inode
    assert old.inode not in tree.nodes
    assert resolve(tree, "A", "other.flac").inode == other.inode
    assert resolve(tree, "A").inode == folder.inode


def test_removed_and_readded_entry_does_not_reuse_a_stale_inode_for_other_content() -> None:
    tree = Tree()
    tree.rebuild({("A", "x.flac"): make_track(1)})
    first = resolve(tree, "A", "x.flac").inode
    tree.rebuild({("A", "x.flac"): make_track(2)})
    tree.rebuild({("A", "x.flac"): make_track(1)})
    assert resolve(tree, "A", "x.flac").inode != first  # no inode ever means two contents


# --- Changes ------------------------------------------------------------------------

def test_changes_list_added_and_removed_entries_and_changed_dirs() -> None:
    tree = Tree()
    tree.rebuild({("A", "1.flac"): make_track(1), ("A", "2.flac"): make_track(2),
                  ("B", "3.flac"): make_track(3), ("C", "D", "4.flac"): make_track(4)})
    a, b, c = (resolve(tree, name).inode for name in "ABC")
    d = resolve(tree, "C", "D").inode
    changes = tree.rebuild({("A", "1.flac"): make_track(1), ("A", "5.flac"): make_track(5),
                            ("B", "3.flac"): make_track(3), ("E", "6.flac"): make_track(6)})
    e = resolve(tree, "E").inode
    assert sorted(changes.entries) == sorted([
        (a, "2.flac"), (a, "5.flac"),  # removed and added in a kept folder
        (ROOT_INODE, "C"), (c, "D"), (d, "4.flac"),  # a removed subtree, entry by entry
        (ROOT_INODE, "E"), (e, "6.flac"),  # an added subtree
    ])
    assert changes.dirs == {ROOT_INODE, a, e}
    assert b not in changes.dirs
    assert bool(changes)


def test_retag_is_one_entry_change_in_its_folder() -> None:
    tree = Tree()
    tree.rebuild({("A", "song.flac"): make_track(1)})
    folder = resolve(tree, "A").inode
    changes = tree.rebuild({("A", "song.flac"): make_track(2)})
    assert set(changes.entries) == {(folder, "song.flac")}
    assert changes.dirs == {folder}


# --- siblings, nlink, mtime ----------------------------------------------------------

def test_siblings_are_the_files_of_the_folder_in_name_order() -> None:
    tree = Tree()
    tree.rebuild({("A", "b.flac"): make_track(2), ("A", "a.flac"): make_track(1),
                  ("A", "c.flac"): make_track(3), ("A", "sub", "z.flac"): make_track(4),
                  ("B", "0.flac"): make_track(5)})
    node = resolve(tree, "A", "b.flac")
    assert isinstance(node, FileNode)
    assert [s.name for s in tree.siblings(node)] == ["a.flac", "b.flac", "c.flac"]


def test_siblings_in_album_play_order_from_the_layout() -> None:
    tracks = [make_track(n, album="Kind of Blue", artist="Miles Davis", track=t)
              for n, t in ((11, 3), (12, 1), (13, 2))]
    tree = Tree()
    tree.rebuild(paths_of(tracks))
    folder = resolve(tree, "Miles Davis", "Kind of Blue")
    assert isinstance(folder, DirNode)
    first = tree.nodes[folder.children[folder.names[0]]]
    assert isinstance(first, FileNode)
    assert [s.track.info.track for s in tree.siblings(first)] == [1, 2, 3]


def test_subdirs_count_child_folders_only() -> None:
    tree = Tree()
    tree.rebuild({("A", "x", "1.flac"): make_track(1), ("A", "y", "2.flac"): make_track(2),
                  ("A", "3.flac"): make_track(3), ("B", "4.flac"): make_track(4)})
    root = tree.nodes[ROOT_INODE]
    assert isinstance(root, DirNode) and root.subdirs == 2
    assert resolve(tree, "A").subdirs == 2  # type: ignore[union-attr]
    assert resolve(tree, "A", "x").subdirs == 0  # type: ignore[union-attr]
    assert resolve(tree, "B").subdirs == 0  # type: ignore[union-attr]


def test_dir_mtime_is_the_newest_track_below() -> None:
    tree = Tree()
    tree.rebuild({("A", "x", "1.flac"): aged(1, 100.0), ("A", "y", "2.flac"): aged(2, 300.0),
                  ("A", "3.flac"): aged(3, 200.0), ("B", "4.flac"): aged(4, 50.0)})
    assert resolve(tree, "A", "x").mtime == 100.0  # type: ignore[union-attr]
    assert resolve(tree, "A", "y").mtime == 300.0  # type: ignore[union-attr]
    assert resolve(tree, "A").mtime == 300.0  # type: ignore[union-attr]
    assert resolve(tree, "B").mtime == 50.0  # type: ignore[union-attr]
    assert tree.nodes[ROOT_INODE].mtime == 300.0  # type: ignore[union-attr]


def test_dir_mtime_is_the_same_for_the_same_catalog() -> None:
    tracks = [aged(n, 1_700_000_000.0 + n) for n in range(20)]
    one, two = Tree(), Tree()
    one.rebuild(paths_of(tracks))
    two.rebuild(paths_of(list(reversed(tracks))))
    assert ({path: one.nodes[i].mtime for path, i in inodes_by_path(one).items()  # type: ignore[union-attr]
             if isinstance(one.nodes[i], DirNode)}
            == {path: two.nodes[i].mtime for path, i in inodes_by_path(two).items()  # type: ignore[union-attr]
                if isinstance(two.nodes[i], DirNode)})


def test_root_mtime_counts_files_directly_in_the_root() -> None:
    """A template without folders ("{title}") puts files in the root; its mtime is theirs."""
    tree = Tree()
    tree.rebuild(build_paths([aged(1, 500.0), aged(2, 700.0)], parse_template("{title}")))
    root = tree.nodes[ROOT_INODE]
    assert isinstance(root, DirNode) and len(root.names) == 2
    assert root.mtime == 700.0


def test_changes_include_dirs_whose_mtime_changed() -> None:
    """Attributes are cached for an hour: a newer track deep down must invalidate its
    ancestors' mtimes, or a player that rescans by folder mtime misses it."""
    tree = Tree()
    tree.rebuild({("A", "x", "1.flac"): aged(1, 100.0)})
    artist = resolve(tree, "A").inode
    changes = tree.rebuild({("A", "x", "1.flac"): aged(1, 100.0), ("A", "x", "2.flac"): aged(2, 900.0)})
    assert resolve(tree, "A").mtime == 900.0  # type: ignore[union-attr]
    assert {ROOT_INODE, artist} <= changes.dirs


def test_walk_order_is_depth_first_in_name_order() -> None:
    tree = Tree()
    tree.rebuild({("B", "y", "1.flac"): aged(1, 1.0), ("A", "x", "1.flac"): aged(2, 1.0),
                  ("A", "w", "1.flac"): aged(3, 1.0), ("loose.flac",): aged(4, 1.0)})
    names = {node.inode: node.name for node in tree.nodes.values()}
    assert [names[inode] for inode in tree.walk_order] == ["", "w", "x", "y"]
    w = resolve(tree, "A", "w")
    assert [folder.name for folder in tree.folders_after(w.inode, 2)] == ["x", "y"]
    assert tree.folders_after(resolve(tree, "B", "y").inode, 2) == []


# --- files that are not tracks ------------------------------------------------------------

def extra(data: bytes, mtime: float = 1_700_000_500.0) -> ExtraFile:
    return ExtraFile.of_bytes(data, mtime, "playlist")


def test_extras_are_files_that_prefetch_never_sees() -> None:
    cover = ExtraFile.of_object(stored_object("ab" * 32, 5000, "jpg"), 1.0, "cover")
    tree = Tree()
    tree.rebuild({("A", "01.flac"): make_track(1), ("A", "02.flac"): make_track(2)},
                 {("A", "cover.jpg"): cover, ("A", "01.lrc"): extra(b"[00:01]x"), ("Playlists", "Mix.m3u8"): extra(b"#")})
    node = resolve(tree, "A", "cover.jpg")
    assert isinstance(node, ExtraNode) and node.size == 5000
    assert node.content == ObjectRef("objects/sha256/ab/" + "ab" * 32 + ".jpg", "ab" * 32, 5000)
    track = resolve(tree, "A", "01.flac")
    assert isinstance(track, FileNode) and track.content == ObjectRef(track.track.key, track.track.sha256,
                                                                      track.track.size)
    folder = resolve(tree, "A")
    assert isinstance(folder, DirNode) and folder.names == ["01.flac", "01.lrc", "02.flac", "cover.jpg"]
    assert [n.name for n in tree.files_in(folder)] == ["01.flac", "02.flac"]
    assert [n.name for n in tree.siblings(track)] == ["01.flac", "02.flac"]
    assert tree.walk_order == [folder.inode]  # a folder of playlists alone holds no tracks
    assert tree.track_count == 2 and tree.total_size == make_track(1).size + make_track(2).size + 5000 + 8 + 1
    assert resolve(tree, "Playlists").mtime == 1_700_000_500.0


def test_a_changed_playlist_is_exactly_one_entry_change() -> None:
    tracks = {("A", "01.flac"): make_track(1)}
    tree = Tree()
    tree.rebuild(tracks, {("Playlists", "Mix.m3u8"): extra(b"one"), ("Playlists", "Other.m3u8"): extra(b"x")})
    folder = resolve(tree, "Playlists").inode
    old = resolve(tree, "Playlists", "Mix.m3u8").inode
    other = resolve(tree, "Playlists", "Other.m3u8").inode
    assert not tree.rebuild(tracks, {("Playlists", "Mix.m3u8"): extra(b"one"), ("Playlists", "Other.m3u8"): extra(b"x")})
    changes = tree.rebuild(tracks, {("Playlists", "Mix.m3u8"): extra(b"two"), ("Playlists", "Other.m3u8"): extra(b"x")})
    assert set(changes.entries) == {(folder, "Mix.m3u8")}
    assert changes.dirs == {folder}
    assert resolve(tree, "Playlists", "Mix.m3u8").inode != old  # no cached page of the old bytes is reused
    assert resolve(tree, "Playlists", "Other.m3u8").inode == other


def test_a_removed_playlist_takes_its_folder_away() -> None:
    tracks = {("A", "01.flac"): make_track(1)}
    tree = Tree()
    tree.rebuild(tracks, {("Playlists", "Mix.m3u8"): extra(b"one")})
    folder = resolve(tree, "Playlists").inode
    changes = tree.rebuild(tracks, {})
    assert set(changes.entries) == {(ROOT_INODE, "Playlists"), (folder, "Mix.m3u8")}
    assert changes.dirs == {ROOT_INODE}
