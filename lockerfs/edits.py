"""Changing what a locker holds: remove, restore and re-tag tracks, as catalog records.

Records are written with catalog.py's writer API, objects before the records
that name them (docs/FORMAT.md, "Writing"):

- remove: `remove_record(sha, track=record)`, so the removal keeps what
  `restore` needs; the object stays in the bucket until gc.
- restore: `add_record(record)` from what the removal kept, once a HEAD has
  shown its object is still there (gc may have taken it).
- tag: the track's bytes with their tags rewritten (retag.py) are stored as a
  new content-addressed object (Content-MD5, Content-Type), then recorded:
  the new track, and the old one removed with `replaced_by`, so its covers,
  lyrics and playlist entries follow it.

One change is one append_records call: a journal file of track records, then
for removals with details a journal2 file. If the second write fails after
the first succeeded, the change is taken back (the opposite records are
appended), so a failure leaves the locker as it was; only if that fails too
does the user get told what is left.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockerfs import catalog, retag, writeorder
from lockerfs.asset import CONTENT_TYPES, object_key
from lockerfs.containers import CONTENT_TYPES as AUDIO_CONTENT_TYPES
from lockerfs.editfields import MATCH_FIELDS, MATCH_NUMBERS, MATCH_RECORD, MATCH_TEXT
from lockerfs.insets import Edges, locate
from lockerfs.objectref import Inset
from lockerfs.retag import Edit, TagError
from lockerfs.store import Store, StoreError
from lockerfs.tags import read_track_info
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo

log = logging.getLogger(__name__)

HEAD_PARALLEL = 8
PARALLEL_TRACKS = 4  # tracks fetched, rewritten and stored at once by `tag`


class EditError(Exception):
    """A change that was not made; str() is one sentence for the user."""


@dataclass(frozen=True, slots=True)
class Placed:
    """A track and where the user sees it (a mount path, or a description without a mount)."""

    where: str
    track: Track


# --- choosing tracks without a mount ---------------------------------------------------

def parse_matches(assignments: Sequence[str]) -> list[tuple[str, str]]:
    """`--match FIELD=VALUE` arguments -> (field, value); raises EditError for a bad one."""
    matches = []
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        field = name.strip().lower()
        if not sep or field not in MATCH_FIELDS:
            raise EditError(f"cannot match on {name!r}: --match takes FIELD=VALUE with a field among "
                            f"{', '.join(MATCH_FIELDS)}")
        if field in MATCH_NUMBERS and not value.strip().isdigit():
            raise EditError(f"--match {field}= takes a number, not {value!r}")
        matches.append((field, value.strip()))
    return matches


def matches(track: Track, wanted: Iterable[tuple[str, str]]) -> bool:
    """Whether the track has every FIELD=VALUE (text compared case-blind, exactly)."""
    for field, value in wanted:
        if field in MATCH_NUMBERS:
            if getattr(track.info, field) != int(value):
                return False
        elif field in MATCH_RECORD:
            if str(getattr(track, field)).casefold() != value.casefold():
                return False
        elif (getattr(track.info, field) or "").casefold() != value.casefold():
            return False
    return True


def describe(track: Track) -> str:
    """A track named without a mount: artist - album - NN title (its uploaded path)."""
    info = track.info
    number = f"{info.track:02d} " if info.track else ""
    parts = [info.albumartist or info.artist or "Unknown Artist", info.album or "Unknown Album",
             f"{number}{info.title or Path(track.source).name}"]
    return " - ".join(parts) + f" ({track.source})"


# --- writing changes -----------------------------------------------------------------------

def write(store: Store, records: list[dict[str, Any]], undo: list[dict[str, Any]]) -> list[str]:
    """Append the records; returns the keys written. If a write fails after another
    succeeded, `undo` is appended to take the change back. Raises EditError."""
    written: list[str] = []
    try:
        return catalog.append_records(store, records, written)
    except StoreError as exc:
        if not written:
            raise EditError(f"nothing was changed: {exc}") from None
        try:
            catalog.append_records(store, undo)
        except StoreError as again:
            raise EditError(f"the change was only half written ({exc}), and taking it back failed too "
                            f"({again}): run the same command again once the locker answers") from None
        raise EditError(f"nothing was changed (a write failed half way and was taken back): {exc}") from None


def remove(store: Store, tracks: Sequence[Track]) -> list[str]:
    """Remove the tracks, keeping their records in the removals for `restore`."""
    records = [catalog.remove_record(track.sha256, track=track) for track in tracks]
    return write(store, records, [catalog.add_record(track) for track in tracks])


def restore(store: Store, tracks: Sequence[Track]) -> list[str]:
    """Add removed tracks back, once their objects are known to be still stored."""
    with ThreadPoolExecutor(max_workers=HEAD_PARALLEL) as pool:
        sizes = list(pool.map(lambda track: store.head(track.key), tracks))
    gone = [track for track, size in zip(tracks, sizes) if size != track.size]
    if gone:
        raise EditError(f"{describe(gone[0])} cannot be restored: its object is no longer in the locker "
                        f"(gc deleted it){_and_more(gone)}; upload the file again instead")
    records = [catalog.add_record(track) for track in tracks]
    undo = [catalog.remove_record(track.sha256, track=track) for track in tracks]
    keys = write(store, records, undo)

    def vanished(key: str) -> None:  # the bytes are not ours to store again
        raise StoreError(f"{key} is gone")

    # Between the HEADs above and the records, a gc elsewhere may have deleted an object
    # nothing named (writeorder.py): then the restore is taken back, not left naming nothing.
    lost = writeorder.confirm(store, records, vanished).failed
    if lost:
        write(store, undo, records)
        gone = [track for track in tracks if track.key in lost]
        raise EditError(f"{describe(gone[0])} cannot be restored: its object could not be found as it was "
                        f"being restored (a gc elsewhere deletes objects nothing names){_and_more(gone)}, so "
                        "nothing was restored; upload the file again instead")
    return keys


def _and_more(items: Sequence[object]) -> str:
    return f", and {len(items) - 1} more" if len(items) > 1 else ""


# --- re-tagging --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Retagged:
    old: Placed
    new: Track
    path: Path  # the rewritten file, in the caller's work folder
    md5: str  # of its bytes, for the server to check the upload against


def retag_copies(store: Store, placed: Sequence[Placed], edits: Sequence[Edit], workdir: Path,
                 progress: Callable[[], None] = lambda: None) -> tuple[list[Retagged], list[Placed]]:
    """Fetch each track's bytes, check them, rewrite their tags in `workdir` and read them back.

    Returns the rewritten tracks (their files stay in `workdir` for store_retagged) and
    those the edits leave as they are. Nothing is stored: any failure raises EditError
    before the locker is touched. A few tracks at a time, so that round trips overlap
    (and at most that many are in memory).
    """
    now = time.time()

    def one(numbered: tuple[int, Placed]) -> Retagged | Placed:
        result = _retag_one(store, numbered[1], edits, workdir / f"{numbered[0]}.{numbered[1].track.ext}", now)
        progress()
        return result

    with ThreadPoolExecutor(max_workers=PARALLEL_TRACKS) as pool:
        results = list(pool.map(one, enumerate(placed)))
    return ([r for r in results if isinstance(r, Retagged)], [r for r in results if isinstance(r, Placed)])


def _retag_one(store: Store, item: Placed, edits: Sequence[Edit], copy: Path, now: float) -> Retagged | Placed:
    """One track rewritten (or the track itself if the edits change nothing in it)."""
    track = item.track
    try:
        data = store.get(track.key)
    except StoreError as exc:
        raise EditError(f"nothing was changed: cannot fetch {item.where}: {exc}") from None
    if hashlib.sha256(data).hexdigest() != track.sha256:
        raise EditError(f"nothing was changed: the locker's copy of {item.where} is damaged "
                        "(its bytes do not hash to its name)")
    copy.write_bytes(data)
    cover = data[track.art.offset:track.art.offset + track.art.object.size] if track.art else b""
    del data
    try:
        retag.rewrite(copy, track.info.format, edits, track.info)
        info = read_track_info(copy)
    except (TagError, OSError) as exc:
        raise EditError(f"nothing was changed: {item.where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - reading back untrusted bytes: any parser error
        raise EditError(f"nothing was changed: {item.where} cannot be read after rewriting ({exc})") from None
    wrong = retag.mismatch(info, edits)
    if wrong is not None:
        raise EditError(f"nothing was changed: after rewriting {item.where}, {wrong}")
    sha, md5, size = _digests(copy)
    if sha == track.sha256:
        copy.unlink()
        return item
    # mtime: now, so players that look for changed files by date (MPD, Jellyfin) read the new tags
    new = Track(sha256=sha, key=object_key(sha, track.ext), size=size, ext=track.ext,
                source=track.source, mtime=now, info=info, art=_inset_after(track, cover, copy, info))
    return Retagged(item, new, copy, md5)


def _inset_after(track: Track, cover: bytes, copy: Path, info: TrackInfo) -> Inset | None:
    """The old track's embedded cover, where the rewritten copy still holds it (tags were
    rewritten around it, so it has moved): the mount goes on reading it from the shared object."""
    if track.art is None or hashlib.sha256(cover).hexdigest() != track.art.object.sha256:
        return None  # (a record may claim anything: the bytes must be the cover's)
    rewritten = copy.read_bytes()
    at = locate(cover, Edges(rewritten, rewritten, len(rewritten)), info.head_size, info.tail_size)
    return None if at is None else Inset(at, track.art.object)


def _digests(path: Path) -> tuple[str, str, int]:
    """SHA-256 (the object's name), MD5 (for Content-MD5) and size of a file, in one read."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha256.hexdigest(), md5.hexdigest(), size


def store_retagged(store: Store, retagged: Sequence[Retagged]) -> list[str]:
    """Store the new objects (verified by Content-MD5), then record them, each replacing its old track."""
    def put(item: Retagged) -> None:
        # The container's MIME type, as upload sets it.
        content_type = AUDIO_CONTENT_TYPES.get(item.new.info.format) or CONTENT_TYPES.get(item.new.ext)
        store.put_file(item.new.key, item.path, md5=item.md5, content_type=content_type)

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_TRACKS) as pool:
            list(pool.map(put, retagged))
    except StoreError as exc:
        raise EditError(f"nothing was changed: {exc}") from None
    records, undo = [], []
    for item in retagged:
        old = item.old.track
        records += [catalog.add_record(item.new),
                    catalog.remove_record(old.sha256, replaced_by=item.new.sha256, track=old)]
        undo += [catalog.add_record(old), catalog.remove_record(item.new.sha256, track=item.new)]
    keys = write(store, records, undo)
    # A gc elsewhere with a short grace may have taken a new object before its record was
    # written (writeorder.py): the work folder still has its bytes.
    by_key = {item.new.key: item for item in retagged}
    failed = writeorder.confirm(store, records, lambda key: put(by_key[key])).failed
    if failed:
        write(store, undo, records)
        key, why = next(iter(failed.items()))
        raise EditError(f"nothing was changed: {key} vanished as it was recorded and could not be stored "
                        f"again ({why})")
    return keys
