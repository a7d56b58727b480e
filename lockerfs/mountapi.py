"""What a running mount does for commands that reach it through the control channel.

control.py carries requests; this module answers them from the mount's own
state, so that commands act on what the user sees: paths resolve through
the mount's tree (its layout, names mode and collision suffixes), and a
change a command wrote to the bucket shows at once, not at the next refresh.

The mount never writes to the bucket (its credentials may be read-only, and
docs/SECURITY.md promises GET and HEAD only): commands write, then tell the
mount which catalog files to read (`news`). Requests:

    info                       the locker, its endpoint, this mount's layout and cache
    tracks   paths             the tracks and other files under paths, as shown now
    removed  paths             removed tracks that `restore` would put under paths
    news     keys, show        apply catalog files just written; where the `show` tracks are now
    pin      paths             pin what is under paths, fetching it (progress: bytes on disk)
    unpin    paths             take pins back
    pinned                     the pins, their sizes, how much of each is on disk

Catalog state is read only under the mount's catalog lock (the refresh
thread changes it). The tree and its layout name folders when first asked
(tree.py, livelayout.py), which changes them: they are walked on the trio
thread only, under the catalog lock (so no refresh re-files them meanwhile),
letting other tasks run every WALK_BATCH files; only turning what was found
into JSON-ready records happens in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import trio

from lockerfs import catalog, layout
from lockerfs.control import ControlError, Send
from lockerfs.objectref import ObjectRef
from lockerfs.pins import PIN_SHARE, Pin, PinError
from lockerfs.prefetch import object_of
from lockerfs.store import StoreError
from lockerfs.track import Track
from lockerfs.tree import ROOT_INODE, DirNode, ExtraNode, FileNode, Node

if TYPE_CHECKING:
    from lockerfs.mount import Mounted

CATALOG_WAIT = 20.0  # seconds a request waits for a refresh (or a first load) to let go of the catalog
MAX_PATHS = 10_000
WALK_BATCH = 500  # files walked between checkpoints: a walk of the whole library never stalls a reader


class MountApi:
    """The request handler for one mount (control.Handler)."""

    def __init__(self, mounted: Mounted) -> None:
        self.mounted = mounted

    async def __call__(self, op: str, request: dict[str, Any], send: Send) -> dict[str, Any]:
        handler = getattr(self, f"_{op}", None) if op.isidentifier() else None
        if handler is None:
            raise ControlError(f"this mount does not know the request {op[:40]!r}: use the lockerfs that mounted it")
        return await handler(request, send)

    # --- requests ---

    async def _info(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        mounted = self.mounted
        options = mounted.options
        return {"locker": options.locker, "endpoint": mounted.store.endpoint,
                "profile": os.environ.get("AWS_PROFILE"), "mountpoint": str(options.mountpoint),
                "layout": options.template, "names": options.names, "pid": os.getpid(),
                "cache_size": mounted.cache.disk.limit, "pin_capacity": mounted.pins.capacity}

    async def _tracks(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        found: list[tuple[str, list[tuple[str, Track]]]] = []
        missing = []
        async with self._catalog():
            for path in _paths(request):
                node = self._node_at(path)
                if node is None:
                    missing.append(path)
                else:
                    files = await self._files_under(path, node)
                    found.append((path, [(where, file.track) for where, file in files if isinstance(file, FileNode)]))

        def describe() -> list[dict[str, Any]]:  # a large folder: thousands of records, not on the loop
            return [{"path": path, "tracks": [{"path": where, "track": catalog.track_to_dict(track)}
                                              for where, track in tracks]}
                    for path, tracks in found]

        return {"found": await trio.to_thread.run_sync(describe), "missing": missing}

    async def _removed(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        paths = _paths(request)
        async with self._catalog():
            state = self.mounted.reader.state
            restorable = state.restorable()
            live = state.tracks()
        placed = await trio.to_thread.run_sync(layout.build_paths, [*live, *restorable], self.mounted.template)
        wanted = {track.sha256 for track in restorable}
        found = []
        for path in paths:
            tracks = [{"path": "/".join(where), "track": catalog.track_to_dict(track)}
                      for where, track in sorted(placed.items())
                      if track.sha256 in wanted and _under("/".join(where), path)]
            found.append({"path": path, "tracks": tracks})
        return {"found": found}

    async def _news(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        keys = request.get("keys")
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise ControlError("a news request names catalog files")
        async with self._catalog():
            try:
                await self.mounted.apply_keys(keys)
            except ValueError as exc:
                raise ControlError(str(exc)) from None
            except StoreError as exc:
                raise ControlError(f"the mount could not read what was written ({exc}); it shows it at "
                                   "its next refresh") from None
            paths = {}
            for count, sha in enumerate(dict.fromkeys(str(sha) for sha in request.get("show") or []), 1):
                where = self.mounted.layout.where(sha)
                if where is not None:
                    paths[sha] = "/".join(where)
                if count % WALK_BATCH == 0:
                    await trio.sleep(0)
        return {"paths": paths}

    async def _pin(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        pins: list[Pin] = []
        names: dict[str, str] = {}
        given = _given(request)
        for path in _paths(request):
            async with self._catalog():
                node = self._node_at(path)
                if node is None:
                    raise ControlError(f"no such track or folder in the locker: {given(path)}")
                files = await self._files_under(path, node)
            names.update((obj.sha256, where) for where, file in files if (obj := _object(file)) is not None)
            tracks = [file.track.sha256 for _, file in files if isinstance(file, FileNode)]
            objects = [_object(file) for _, file in files]
            if not tracks and not any(obj is not None for obj in objects):
                raise ControlError(f"nothing under {given(path)} can be pinned (it holds no track, cover or lyrics)")
            pins.append(Pin(path, tuple(tracks), tuple(obj for obj in objects if obj is not None), 0.0))

        async def progress(done: int, total: int) -> None:
            await send({"bytes": done, "total": total})

        began = trio.current_time()
        before = sum(self.mounted.cache.on_disk(obj) for obj in {o.sha256: o for p in pins for o in p.objects}.values())
        try:
            added = await self.mounted.pins.pin(pins, progress, names)
        except PinError as exc:
            raise ControlError(str(exc)) from None
        return {"pins": [_pin_dict(pin, pin.size) for pin in added], "seconds": trio.current_time() - began,
                "fetched": sum(obj.size for obj in {o.sha256: o for p in added for o in p.objects}.values()) - before}

    async def _unpin(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        changed: dict[str, Pin] = {}
        released = 0
        given = _given(request)
        for path in _paths(request):
            async with self._catalog():
                node = self._node_at(path)
                files = [] if node is None else await self._files_under(path, node)
            under = [obj.sha256 for _, file in files if (obj := _object(file)) is not None]
            try:
                touched, freed = await self.mounted.pins.unpin(path, under)
            except PinError as exc:
                raise ControlError(str(exc)) from None
            if not touched:
                raise ControlError(f"nothing under {given(path)} is pinned")
            changed.update((pin.path, pin) for pin in touched)
            released += freed
        return {"unpinned": sorted(changed), "released": released}

    async def _pinned(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        pins = self.mounted.pins
        return {"pins": [_pin_dict(status.pin, status.on_disk) for status in pins.status()],
                "pinned_bytes": pins.pinned_bytes, "capacity": pins.capacity,
                "cache_size": self.mounted.cache.disk.limit, "share": PIN_SHARE}

    # --- the tree ---

    def _node_at(self, path: str) -> Node | None:
        tree = self.mounted.tree
        node: Node | None = tree.nodes[ROOT_INODE]
        for name in path.split("/") if path else []:
            if node is None or not isinstance(node, DirNode):
                return None
            node = tree.lookup(node.inode, name)
        return node

    async def _files_under(self, path: str, node: Node) -> list[tuple[str, FileNode | ExtraNode]]:
        """Every file at or below `node` (the caller holds the catalog lock)."""
        files = []
        for where, file in _walk(self.mounted.tree.nodes, path, node):
            files.append((where, file))
            if len(files) % WALK_BATCH == 0:
                await trio.sleep(0)
        return files

    def _catalog(self) -> _CatalogHold:
        return _CatalogHold(self.mounted.catalog_lock)


class _CatalogHold:
    """The mount's catalog lock, waited for at most CATALOG_WAIT."""

    def __init__(self, lock: trio.Lock) -> None:
        self.lock = lock

    async def __aenter__(self) -> None:
        with trio.move_on_after(CATALOG_WAIT):
            await self.lock.acquire()
            return
        raise ControlError("the mount is still loading the catalog from the bucket; try again in a moment")

    async def __aexit__(self, *exc: object) -> None:
        self.lock.release()


def _walk(nodes: Mapping[int, Node], path: str, node: Node) -> Iterator[tuple[str, FileNode | ExtraNode]]:
    """Every file at or below `node`, with its mount-relative path, in name order."""
    if not isinstance(node, DirNode):
        yield path, node
        return
    for name in node.names:
        child = nodes.get(node.children[name])
        if child is not None:
            yield from _walk(nodes, f"{path}/{name}" if path else name, child)


def _object(file: FileNode | ExtraNode) -> ObjectRef | None:
    """The stored object a file reads (None for a generated cue sheet or playlist)."""
    if isinstance(file, FileNode):
        return object_of(file.track)
    return file.content if isinstance(file.content, ObjectRef) else None


def _paths(request: dict[str, Any]) -> list[str]:
    paths = request.get("paths")
    if not isinstance(paths, list) or not paths or len(paths) > MAX_PATHS \
            or not all(isinstance(path, str) for path in paths):
        raise ControlError("a request names between 1 and 10000 paths in the mount")
    return [path.strip("/") for path in paths]


def _given(request: dict[str, Any]) -> Callable[[str], str]:
    """A path as the user typed it (`names`, sent along with `paths`), for messages."""
    names = request.get("names")
    paths = _paths(request)
    typed = dict(zip(paths, names)) if isinstance(names, list) and len(names) == len(paths) else {}
    return lambda path: str(typed.get(path, path))


def _under(path: str, folder: str) -> bool:
    return folder == "" or path == folder or path.startswith(folder + "/")


def _pin_dict(pin: Pin, on_disk: int) -> dict[str, Any]:
    return {"path": pin.path, "tracks": len(pin.tracks), "objects": len(pin.objects), "bytes": pin.size,
            "on_disk": on_disk, "created": pin.created}
