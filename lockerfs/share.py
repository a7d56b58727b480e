"""`lockerfs share`: an M3U8 playlist of presigned links to tracks of a mounted locker, for anyone to play.

Everything comes from this machine; nothing is asked of the mount or the
bucket, so sharing works offline and writes nothing to the bucket:

1. the mount holding each PATH: the kernel's table of mounts
   (/proc/self/mountinfo, type fuse.lockerfs);
2. how that mount was made (locker, endpoint, region, its catalog copy and its
   layout): the description it wrote in the state dir (mountregistry.py);
3. which track each file is: the catalog copy laid out with the mount's
   layout names every path of the mount, and the files under PATH are walked
   in the mount itself (names and sizes come from its catalog, no request),
   so the playlist holds exactly what the mount shows. A file the copy does
   not know yet (the mount saves the copy just after it changes) is waited
   for briefly, then reported.

Each link is a SigV4 presigned GET, signed locally with the user's credentials
from boto3's chain, naming the Content-Type to answer with (so a browser
plays it whatever the object was stored with) and the file's name.
"""

from __future__ import annotations

import dataclasses
import os
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lockerfs import extras, layout, mountpoints, mountregistry
from lockerfs.catalog import CatalogReader
from lockerfs.mountregistry import MountDescription
from lockerfs.store import PRESIGN_MAX_SECONDS, S3Store
from lockerfs.track import Track

DEFAULT_EXPIRES = PRESIGN_MAX_SECONDS
COPY_WAIT = 3.0  # seconds to wait for a mount to save a catalog copy that knows every file under PATH
COPY_POLL = 0.25

# What a browser or player is told each track is (response-content-type).
AUDIO_TYPES = {
    "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg", "oga": "audio/ogg", "opus": "audio/ogg",
    "m4a": "audio/mp4", "m4b": "audio/mp4", "mp4": "audio/mp4", "aac": "audio/aac", "wav": "audio/wav",
    "aiff": "audio/aiff", "aif": "audio/aiff", "wma": "audio/x-ms-wma", "ape": "audio/x-ape",
    "wv": "audio/x-wavpack", "mpc": "audio/x-musepack",
}
_CONTROLS = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029], " ")


class ShareError(Exception):
    """Nothing was shared; str() is the sentence to show."""


@dataclass(frozen=True)
class SharedTrack:
    track: Track
    name: str  # its file name in the mount
    mount: MountDescription


@dataclass(frozen=True)
class Shared:
    text: str  # the M3U8
    tracks: int
    expires_at: datetime
    temporary: bool = False  # signed with a session token, which may expire first


def check_expiry(seconds: float) -> int:
    if seconds > PRESIGN_MAX_SECONDS:
        raise ShareError(f"links cannot live longer than 7 days, the most a presigned S3 (SigV4) URL allows "
                         f"({seconds / 86400:g} days asked)")
    if seconds < 1:
        raise ShareError("links must live at least one second")
    return int(seconds)


def share(paths: Iterable[Path], expires: float = DEFAULT_EXPIRES) -> Shared:
    """The playlist of every track under `paths` (files or folders inside mounted lockers), in
    the order given, each folder in name order; a track named twice is listed once."""
    seconds = check_expiry(expires)
    chosen: dict[tuple[str, str], SharedTrack] = {}
    for path in paths:
        for shared in tracks_under(path):
            chosen.setdefault((shared.mount.locker, shared.track.sha256), shared)
    stores: dict[str, S3Store] = {}
    signed_at = datetime.now(timezone.utc)
    lines = ["#EXTM3U"]
    for shared in chosen.values():
        mount = shared.mount
        store = stores.get(mount.mountpoint)
        if store is None:
            store = stores[mount.mountpoint] = S3Store(mount.locker, mount.endpoint, region_name=mount.region)
        lines.append(extinf(shared.track, shared.name))
        lines.append(store.presign_get(shared.track.key, seconds, AUDIO_TYPES.get(shared.track.ext),
                                       disposition(shared.name)))
    temporary = any(store.signs_with_temporary_credentials() for store in stores.values())
    return Shared("\n".join(lines) + "\n", len(chosen), signed_at + timedelta(seconds=seconds), temporary)


def tracks_under(path: Path) -> list[SharedTrack]:
    """The tracks the mount shows under `path`, in the mount's name order."""
    if not os.path.lexists(path):
        raise ShareError(f"no such file or folder: {path}")
    real = Path(os.path.realpath(path))
    mount = _mount_of(real, path)
    relative = real.relative_to(mount.mountpoint).parts
    deadline = time.monotonic() + COPY_WAIT
    while True:
        by_path, extra_paths = _laid_out(mount)
        try:
            found, unknown = _walk(Path(mount.mountpoint), relative, by_path, extra_paths)
        except OSError as exc:
            raise ShareError(f"cannot read {path}: {exc.strerror or exc} (is its mount still running?)") from None
        if not unknown:
            break
        if time.monotonic() >= deadline:
            raise ShareError(f"{Path(mount.mountpoint, *unknown[0])} is not in the mount's catalog copy yet "
                             "(the mount saves it just after a change); try again in a moment")
        time.sleep(COPY_POLL)
    if not found:
        what = "track" if real.is_file() else "folder with tracks"
        raise ShareError(f"{path} is not a {what} (covers, lyrics and playlists are not shared)")
    return [SharedTrack(track, parts[-1], mount) for parts, track in found]


def _mount_of(real: Path, given: Path) -> MountDescription:
    """The lockerfs mount holding `real` and how it was made."""
    try:
        table = mountpoints.MOUNTINFO.read_text(errors="surrogateescape")
    except OSError:
        raise ShareError("cannot read the table of mounts (/proc/self/mountinfo)") from None
    holders = [entry for entry in mountpoints.parse_mountinfo(table)
               if real == Path(entry.mountpoint) or Path(entry.mountpoint) in real.parents]
    if not holders or holders[-1].fstype != mountpoints.LOCKERFS_TYPE:  # the innermost mount holds it
        raise ShareError(f"{given} is not inside a mounted locker")
    mountpoint = holders[-1].mountpoint
    description = mountregistry.read_description(mountpoint)
    if description is None:
        raise ShareError(f"the locker mounted on {mountpoint} did not say how it was mounted "
                         "(mounted by another user or an older lockerfs?): unmount it and mount it again")
    return dataclasses.replace(description, mountpoint=mountpoint)


def _laid_out(mount: MountDescription) -> tuple[dict[tuple[str, ...], Track], set[tuple[str, ...]]]:
    """The mount's paths of tracks, and of its other files, from its catalog copy."""
    reader = CatalogReader(None)  # type: ignore[arg-type] - load_local never touches the bucket
    if not reader.load_local(Path(mount.catalog_copy)):
        raise ShareError(f"the mount on {mount.mountpoint} has no catalog copy yet; try again in a moment")
    template = layout.parse_template(mount.template, mount.names)
    tracks, others = extras.lay_out(reader.state, template)
    return tracks, set(others)


def _walk(mountpoint: Path, relative: tuple[str, ...], by_path: dict[tuple[str, ...], Track],
          extra_paths: set[tuple[str, ...]]) -> tuple[list[tuple[tuple[str, ...], Track]], list[tuple[str, ...]]]:
    """(the tracks under `relative` as the mount shows them, the files the copy does not know)."""
    found: list[tuple[tuple[str, ...], Track]] = []
    unknown: list[tuple[str, ...]] = []
    for parts, size in _files(mountpoint, relative):
        track = by_path.get(parts)
        if track is not None and track.size == size:
            found.append((parts, track))
        elif parts not in extra_paths:
            unknown.append(parts)
    return found, unknown


def _files(mountpoint: Path, relative: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], int]]:
    """Every regular file at or under `relative` in the mount, in name order, with its size."""
    top = mountpoint.joinpath(*relative)
    if not top.is_dir():
        yield relative, top.stat().st_size
        return
    with os.scandir(top) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _files(mountpoint, (*relative, entry.name))
        elif entry.is_file(follow_symlinks=False):
            yield (*relative, entry.name), entry.stat(follow_symlinks=False).st_size


def extinf(track: Track, name: str) -> str:
    """`#EXTINF:<seconds>,<artist> - <title>`; the catalog is untrusted, so no text may start a line."""
    info = track.info
    seconds = round(info.duration) if info.duration else -1
    title = info.title or name.rsplit(".", 1)[0]
    artist = info.artist or info.albumartist
    text = f"{artist} - {title}" if artist else title
    return f"#EXTINF:{seconds},{text.translate(_CONTROLS).strip()}"


def disposition(name: str) -> str:
    """Content-Disposition naming the file as the mount does (RFC 6266: an ASCII fallback and UTF-8)."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


def default_output(paths: list[Path]) -> Path:
    """<name of the first PATH>.m3u8 in the current folder."""
    name = Path(os.path.realpath(paths[0])).name if paths else ""
    return Path(f"{name or 'shared'}.m3u8")


def write_playlist(path: Path, text: str) -> None:
    """Written whole (temp file, rename) and readable by the user alone: each link is a bearer
    token for its track until it expires."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ShareError(f"cannot write the playlist {path}: {exc.strerror or exc}") from None
