"""The mounted tree: inode numbers and parent/child links over layout's paths.

layout.py decides names; this module gives them inodes and keeps those
inodes stable when the catalog is refreshed, so an open file or a kernel
dentry never silently changes meaning. A file's inode is tied to its path and
its content (sha256): re-tagged or replaced audio gets a new inode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lockerfs.track import Track

ROOT_INODE = 1


@dataclass(slots=True)
class DirNode:
    inode: int
    parent: int
    name: str
    children: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # sorted; readdir offsets index into it
    mtime: float = 0.0  # newest track below: stable for the same catalog
    subdirs: int = 0  # for st_nlink, which find uses to skip stat calls


@dataclass(slots=True)
class FileNode:
    inode: int
    parent: int
    name: str
    track: Track


Node = DirNode | FileNode


@dataclass
class Changes:
    """What a rebuild changed, for kernel cache invalidation."""

    entries: list[tuple[int, str]] = field(default_factory=list)  # (parent inode, name) added or removed
    dirs: set[int] = field(default_factory=set)  # directories whose listing changed

    def __bool__(self) -> bool:
        return bool(self.entries or self.dirs)


class Tree:
    """Inodes for a set of layout paths; rebuild() swaps in a new set of paths."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {ROOT_INODE: DirNode(ROOT_INODE, ROOT_INODE, "")}
        self._inodes: dict[tuple[object, ...], int] = {}  # (path..., sha256 for files) -> inode
        self._next_inode = ROOT_INODE + 1
        self.track_count = 0
        self.total_size = 0
        # Folders holding tracks, in the order a depth-first walk in name order
        # (find, os.walk, a player's import) reaches them: lets a scan be predicted.
        self.walk_order: list[int] = []
        self.walk_position: dict[int, int] = {}

    def lookup(self, parent: int, name: str) -> Node | None:
        directory = self.nodes.get(parent)
        if not isinstance(directory, DirNode):
            return None
        inode = directory.children.get(name)
        return None if inode is None else self.nodes[inode]

    def siblings(self, node: FileNode) -> list[FileNode]:
        """The files in the node's folder, in name order (an album in play order)."""
        parent = self.nodes[node.parent]
        assert isinstance(parent, DirNode)
        return self.files_in(parent)

    def folders_after(self, folder: int, count: int) -> list[DirNode]:
        """The next `count` folders holding tracks after `folder`, in walk order."""
        position = self.walk_position.get(folder)
        if position is None:
            return []
        following = self.walk_order[position + 1:position + 1 + count]
        return [node for inode in following if isinstance(node := self.nodes[inode], DirNode)]

    def files_in(self, folder: DirNode) -> list[FileNode]:
        found = (self.nodes[folder.children[name]] for name in folder.names)
        return [node for node in found if isinstance(node, FileNode)]

    def rebuild(self, paths: Mapping[tuple[str, ...], Track]) -> Changes:
        """Make the tree show exactly `paths`, reusing inodes of unchanged entries."""
        old_nodes = self.nodes
        nodes: dict[int, Node] = {ROOT_INODE: DirNode(ROOT_INODE, ROOT_INODE, "")}
        inodes: dict[tuple[object, ...], int] = {}
        for path, track in paths.items():
            parent = nodes[ROOT_INODE]
            assert isinstance(parent, DirNode)
            for depth, name in enumerate(path[:-1], start=1):
                key = path[:depth]
                inode = inodes.get(key)
                if inode is None:
                    inode = inodes[key] = self._inode_for(key)
                    nodes[inode] = DirNode(inode, parent.inode, name)
                    parent.children[name] = inode
                    parent.subdirs += 1
                parent = nodes[inode]  # type: ignore[assignment]
                parent.mtime = max(parent.mtime, track.mtime)
            parent.mtime = max(parent.mtime, track.mtime)  # also for files placed in the root
            key = (*path, track.sha256)
            inode = inodes[key] = self._inode_for(key)
            nodes[inode] = FileNode(inode, parent.inode, path[-1], track)
            parent.children[path[-1]] = inode
        root = nodes[ROOT_INODE]
        assert isinstance(root, DirNode)
        for node in nodes.values():
            if isinstance(node, DirNode):
                node.names = sorted(node.children)
                root.mtime = max(root.mtime, node.mtime)
        walk_order = _walk_order(nodes)
        changes = _diff(old_nodes, nodes)
        self.nodes, self._inodes = nodes, inodes
        self.walk_order, self.walk_position = walk_order, {inode: i for i, inode in enumerate(walk_order)}
        self.track_count = len(paths)
        self.total_size = sum(track.size for track in paths.values())
        return changes

    def _inode_for(self, key: tuple[object, ...]) -> int:
        inode = self._inodes.get(key)
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
        return inode


def _walk_order(nodes: Mapping[int, Node]) -> list[int]:
    """Inodes of folders that hold files, depth first, children in name order."""
    order: list[int] = []
    stack = [ROOT_INODE]
    while stack:
        folder = nodes[stack.pop()]
        assert isinstance(folder, DirNode)
        children = [nodes[folder.children[name]] for name in folder.names]
        if any(isinstance(child, FileNode) for child in children):
            order.append(folder.inode)
        stack.extend(child.inode for child in reversed(children) if isinstance(child, DirNode))
    return order


def _diff(old: Mapping[int, Node], new: Mapping[int, Node]) -> Changes:
    changes = Changes()
    for inode in set(old) | set(new):
        before, after = old.get(inode), new.get(inode)
        if isinstance(after, DirNode) and (not isinstance(before, DirNode) or before.children != after.children
                                           or before.mtime != after.mtime):
            changes.dirs.add(inode)  # its listing or its attributes (mtime, nlink) changed
        if before is not None and after is None:
            changes.entries.append((before.parent, before.name))
            if before.parent in new:
                changes.dirs.add(before.parent)
        elif after is not None and before is None:
            changes.entries.append((after.parent, after.name))
    return changes
