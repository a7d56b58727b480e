"""Offline pins: what a user asked this machine to keep on disk, and keeping it there.

A pin is what one `lockerfs pin PATH` named: the path as the mount showed it,
the tracks under it (by sha256) and every object to keep: the tracks' audio,
and the covers, images and lyrics under the path. Pins live in
<cache dir>/pins.json, written atomically and durably (temp file, fsync,
rename, fsync of the folder), so they last across unmount and mount and a
crash at any moment leaves the old set or the new one. Their blocks sit in
the disk cache's pinned index, which is never evicted (diskcache.py).

A pin is all or nothing: its objects are fetched, each checked against its
SHA-256 on disk, and only then is the pin saved; a failure (the bucket is
out of reach, a full disk) or a command that goes away takes it back, and
the blocks already fetched stay as ordinary cached blocks.

Pinned bytes count against the disk cache's size: pins together may use
PIN_SHARE of it, so the rest stays for playing and scanning what is not
pinned. A pin that does not fit is refused with the figures.

Tracks follow `lockerfs tag`: when the catalog says a pinned track was
replaced, the pin names the replacement and the keeper fetches it; a track
that was removed leaves its pin. The keeper also fetches what a pin lacks
after a mount starts (blocks lost to a damaged disk, say), quietly, when
the bucket answers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from lockerfs.cache import BlockCache
from lockerfs.catalog import CatalogState
from lockerfs.diskcache import HEADER
from lockerfs.durable import human_bytes, write_atomically
from lockerfs.objectref import ObjectRef

log = logging.getLogger(__name__)

PIN_SHARE = 0.9  # of the disk cache that pins may fill together
PARALLEL_OBJECTS = 4  # objects fetched at once, each in one streamed GET
PROGRESS_EVERY = 0.25  # seconds between progress reports
FILE_VERSION = 1
_KEY_RE = re.compile(r"^objects/sha256/([0-9a-f]{2})/([0-9a-f]{64})\.[a-z0-9]{1,8}$")

Progress = Callable[[int, int], Awaitable[None]]  # (bytes on disk, bytes in all), as fetching goes on


class PinError(Exception):
    """A pin was refused or could not be completed; str() is the sentence for the user."""


@dataclass(frozen=True, slots=True)
class Pin:
    path: str  # as the mount showed it when pinned, relative to the mount point ("" for all of it)
    tracks: tuple[str, ...]  # sha256 of the pinned tracks
    objects: tuple[ObjectRef, ...]  # what is kept on disk: the tracks' audio, covers, images, lyrics
    created: float

    @property
    def size(self) -> int:
        return sum(obj.size for obj in self.objects)


@dataclass(frozen=True, slots=True)
class PinStatus:
    pin: Pin
    on_disk: int  # bytes of its objects the disk holds


def footprint(objects: Iterable[ObjectRef], block_size: int) -> int:
    """Bytes the objects take in the disk cache: their data and one header per block."""
    return sum(obj.size + HEADER.size * math.ceil(obj.size / block_size) for obj in objects)


# --- the pins file -------------------------------------------------------------------

def pin_to_dict(pin: Pin) -> dict[str, Any]:
    return {"path": pin.path, "created": pin.created, "tracks": list(pin.tracks),
            "objects": [{"key": obj.key, "sha256": obj.sha256, "size": obj.size} for obj in pin.objects]}


def pin_from_dict(raw: Any) -> Pin:
    """Validate one pin from the file; raises ValueError. The file is ours, but a key
    read from it is fetched from the bucket, so it must name an object and nothing else."""
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
        raise ValueError("a pin without a path")
    tracks = raw.get("tracks")
    objects = raw.get("objects")
    if not isinstance(tracks, list) or not isinstance(objects, list):
        raise ValueError("a pin without its tracks and objects")
    refs = []
    for item in objects:
        if not isinstance(item, dict) or type(item.get("size")) is not int:
            raise ValueError("a pinned object without a size")
        match = _KEY_RE.match(str(item.get("key")))
        if match is None or match[2] != item.get("sha256") or match[1] != match[2][:2]:
            raise ValueError(f"a pinned object with a bad key: {str(item.get('key'))[:100]!r}")
        refs.append(ObjectRef(item["key"], item["sha256"], item["size"]))
    shas = {obj.sha256 for obj in refs}
    if not all(isinstance(sha, str) and sha in shas for sha in tracks):
        raise ValueError("a pinned track without its object")
    created = raw.get("created")
    return Pin(raw["path"], tuple(tracks), tuple(refs), float(created) if type(created) in (int, float) else 0.0)


def load_pins(path: Path) -> list[Pin]:
    """The pins saved at `path`; none if it is missing. A damaged file is set aside (logged),
    never a reason not to mount: its blocks become ordinary cached blocks."""
    try:
        document = json.loads(path.read_bytes())
        if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
            raise ValueError(f"not a version {FILE_VERSION} pins file")
        pins = [pin_from_dict(raw) for raw in document.get("pins", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        aside = path.with_name(path.name + ".damaged")
        log.warning("cannot read the pins in %s (%s); moved it to %s and starting without pins",
                    path, exc, aside.name)
        try:
            os.replace(path, aside)
        except OSError:
            pass
        return []
    return pins


def save_pins(path: Path, pins: list[Pin]) -> None:
    """Write the pins atomically and durably: a crash leaves the previous file or this one."""
    data = json.dumps({"version": FILE_VERSION, "pins": [pin_to_dict(pin) for pin in pins]},
                      separators=(",", ":")).encode()
    write_atomically(path, lambda out: out.write(data))


# --- the mount's pins ------------------------------------------------------------------

class Pins:
    """The pins of one mount: the saved set, the disk cache's pinned index, and the keeper.

    load() runs before the cache opens (so blocks already on disk are indexed as
    pinned); everything else on the trio thread. Changes are serialized by
    `_lock`, so the fit check always sees every pin, those still being fetched
    included; the file holds only complete pins.
    """

    def __init__(self, path: Path, cache: BlockCache, capacity: int) -> None:
        self.path = path
        self.cache = cache
        self.capacity = capacity  # bytes the pins may take in the disk cache
        self.pins: list[Pin] = []
        self._incomplete: set[str] = set()  # paths of pins still being fetched: pinned, not saved
        self._lock = trio.Lock()
        self._kick = trio.Event()

    def load(self) -> None:
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # a save cut short by a crash
            leftover.unlink(missing_ok=True)
        self.pins = load_pins(self.path)
        self.cache.set_pinned(self.objects())

    def objects(self) -> dict[str, ObjectRef]:
        return {obj.sha256: obj for pin in self.pins for obj in pin.objects}

    def is_pinned(self, sha256: str) -> bool:
        return any(obj.sha256 == sha256 for pin in self.pins for obj in pin.objects)

    def status(self) -> list[PinStatus]:
        return [PinStatus(pin, sum(self.cache.on_disk(obj) for obj in pin.objects)) for pin in self.pins]

    @property
    def pinned_bytes(self) -> int:
        """What the pins take in the disk cache once all is fetched."""
        return footprint(self.objects().values(), self.cache.block_size)

    # --- pin and unpin ---

    async def pin(self, new: list[Pin], progress: Progress, names: dict[str, str] | None = None) -> list[Pin]:
        """Pin (a pin of a path pinned before replaces it), fetch every object to disk
        verified, and save; all or nothing (see the module). Returns the pins made.
        `names` (sha256 -> the file's path in the mount) makes messages speak of files.

        The lock is held to admit the pin and to save it, not while fetching: a long
        pin must not hold up the catalog's refreshes (follow) or other pins.
        """
        async with self._lock:
            added, replaced = self._admit(new)
        paths = {pin.path for pin in added}
        try:
            await self._fetch([obj for obj in {o.sha256: o for p in added for o in p.objects}.values()],
                              progress, names or {})
            async with self._lock:
                self._incomplete -= paths
                await trio.to_thread.run_sync(save_pins, self.path, self._saved())
        except BaseException as exc:
            with trio.CancelScope(shield=True):  # a command that hung up: take the pin back all the same
                async with self._lock:
                    self._incomplete -= paths
                    self.pins = [pin for pin in self.pins if pin.path not in paths] + replaced
                    self.cache.set_pinned(self.objects())
            if isinstance(exc, OSError):
                raise PinError(f"cannot save the pins in {self.path}: {exc.strerror or exc}") from None
            raise
        return added

    def _admit(self, new: list[Pin]) -> tuple[list[Pin], list[Pin]]:
        """Check that the pins fit and make them pinned (not saved: incomplete); returns them
        and the pins of the same paths they replace. Called under the lock."""
        if not self.cache.disk.enabled:
            raise PinError("the mount's disk cache is not being written (a full or failing disk: "
                           "see its mount.log), so nothing can be pinned")
        now = time.time()
        added = list({pin.path: Pin(pin.path, tuple(dict.fromkeys(pin.tracks)), pin.objects, now)
                      for pin in new}.values())
        held = self.objects()
        pinned = self.pinned_bytes
        needed = footprint({obj.sha256: obj for pin in added for obj in pin.objects
                            if obj.sha256 not in held}.values(), self.cache.block_size)
        if any(pin.path in self._incomplete for pin in added):
            raise PinError(f"{', '.join(pin.path for pin in added)} is being pinned already")
        if pinned + needed > self.capacity:
            what = ", ".join(pin.path or "the whole locker" for pin in added)
            raise PinError(f"pinning {what} needs {human_bytes(needed)} more; pins may use "
                           f"{human_bytes(self.capacity)} of the {human_bytes(self.cache.disk.limit)} disk cache "
                           f"({PIN_SHARE:.0%} of --cache-size) and {human_bytes(pinned)} are pinned already: "
                           "unpin something or mount with a larger --cache-size")
        paths = {pin.path for pin in added}
        replaced = [pin for pin in self.pins if pin.path in paths]
        self.pins = [pin for pin in self.pins if pin.path not in paths] + added
        self._incomplete |= paths
        self.cache.set_pinned(self.objects())
        return added, replaced

    def _saved(self) -> list[Pin]:
        """The pins to save: those whose objects are all on disk and checked."""
        return [pin for pin in self.pins if pin.path not in self._incomplete]

    async def unpin(self, path: str, objects: Iterable[str]) -> tuple[list[Pin], int]:
        """Take back the pins of `path` and of what lies under it, and pin none of `objects`
        (sha256: what is under the path now) in the pins that remain. Returns the pins
        removed or changed, and the bytes they release."""
        unwanted = set(objects)
        async with self._lock:
            before = self.pinned_bytes
            kept, touched = [], []
            for pin in self.pins:
                if _under(pin.path, path):
                    touched.append(pin)
                    continue
                left = tuple(obj for obj in pin.objects if obj.sha256 not in unwanted)
                if len(left) == len(pin.objects):
                    kept.append(pin)
                    continue
                touched.append(pin)
                if left:
                    kept.append(Pin(pin.path, tuple(sha for sha in pin.tracks if sha not in unwanted), left,
                                    pin.created))
            if touched:
                await self._replace(kept)
            return touched, before - self.pinned_bytes

    async def follow(self, state: CatalogState) -> None:
        """After a catalog change: pinned tracks that `lockerfs tag` replaced are pinned as their
        replacements (fetched by the keeper), removed ones leave their pins. The caller makes
        sure nothing changes `state` meanwhile."""
        async with self._lock:
            pins = [_followed(pin, state) for pin in self.pins]
            if pins != self.pins:
                await self._replace([pin for pin in pins if pin.objects])
                self._kick.set()

    async def _replace(self, pins: list[Pin]) -> None:
        """Save a new set of pins, then make the disk cache hold exactly them."""
        try:
            await trio.to_thread.run_sync(save_pins, self.path, [pin for pin in pins if pin.path not in self._incomplete])
        except OSError as exc:
            raise PinError(f"cannot save the pins in {self.path}: {exc.strerror or exc}") from None
        self.pins = pins
        self.cache.set_pinned(self.objects())

    # --- fetching ---

    async def _fetch(self, objects: list[ObjectRef], progress: Progress, names: dict[str, str]) -> None:
        """Every object whole on disk and verified, reporting progress; raises PinError
        naming the first failure (and how many failed). Progress looks at the disk for the
        objects being fetched only, so a pin of a whole library costs the loop little."""
        total = sum(obj.size for obj in objects)
        failures: list[tuple[ObjectRef, str]] = []
        held = {obj.sha256: self.cache.on_disk(obj) for obj in objects}
        running: dict[str, ObjectRef] = {}
        queue = iter(sorted(objects, key=lambda o: o.key))

        async def worker() -> None:
            for obj in queue:  # PARALLEL_OBJECTS workers share it: one task each, however many objects
                running[obj.sha256] = obj
                try:
                    error = await self.cache.keep_on_disk(obj)
                finally:
                    del running[obj.sha256]
                    held[obj.sha256] = self.cache.on_disk(obj)
                if error is not None:
                    failures.append((obj, error))

        async def report() -> None:
            while True:
                held.update((sha, self.cache.on_disk(obj)) for sha, obj in running.items())
                await progress(sum(held.values()), total)
                await trio.sleep(PROGRESS_EVERY)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            async with trio.open_nursery() as fetching:
                for _ in range(PARALLEL_OBJECTS):
                    fetching.start_soon(worker)
            nursery.cancel_scope.cancel()
        if failures:
            obj, error = failures[0]
            more = f" ({len(failures) - 1} more objects failed too)" if len(failures) > 1 else ""
            raise PinError(f"cannot fetch {names.get(obj.sha256, obj.key)}: {error}{more}; nothing was pinned")
        await progress(total, total)

    async def keep(self) -> None:
        """Run for the mount's life: whenever kicked, fetch what pinned objects lack on disk."""
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            lacking = [obj for obj in self.objects().values() if self.cache.on_disk(obj) < obj.size]
            fetched = 0
            for obj in lacking:
                error = await self.cache.keep_on_disk(obj)
                if error is not None:  # most likely offline: the next kick tries again
                    log.info("pins: fetched %d of the %d pinned objects the disk lacked; %s: %s; the rest "
                             "when the locker answers again", fetched, len(lacking), obj.key, error)
                    break
                fetched += 1
            else:
                if lacking:
                    log.info("pins: fetched the %d pinned objects the disk lacked", len(lacking))

    def kick(self) -> None:
        """Have the keeper look for pinned objects the disk lacks (mount start, back online)."""
        self._kick.set()


def _followed(pin: Pin, state: CatalogState) -> Pin:
    """The pin with its tracks replaced by what now stands for them."""
    tracks: list[str] = []
    replaced: dict[str, ObjectRef | None] = {}
    for sha in pin.tracks:
        current = state.current(sha)
        entry = state.entries.get(current) if current is not None else None
        if current is None or entry is None or entry.track is None:
            replaced[sha] = None
            continue
        tracks.append(current)
        if current != sha:
            replaced[sha] = ObjectRef(entry.track.key, current, entry.track.size)
    if not replaced:
        return pin
    objects = {obj.sha256: obj for obj in pin.objects if obj.sha256 not in replaced}
    objects.update({obj.sha256: obj for obj in replaced.values() if obj is not None})
    return Pin(pin.path, tuple(dict.fromkeys(tracks)), tuple(objects.values()), pin.created)


def _under(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it (mount-relative, "/"-separated)."""
    return folder == "" or path == folder or path.startswith(folder + "/")
