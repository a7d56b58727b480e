"""The mount's files that are not tracks: covers, images, lyrics, cue sheets, playlists.

Laid out after the tracks (layout.build_paths), from what the catalog's
records say, with no request to the bucket; pure and deterministic like the
tracks' layout, so every mount of a locker shows the same files:

- cover.jpg / cover.png (the extension is what the bytes are) in each album
  folder, chosen among the assets attached to the folder's tracks: a side
  image (upload's choice of cover first, then by name: cover.*, folder.*,
  front.*, albumart*.*, then the largest, then the newest record);
  otherwise the front cover extracted from the embedded art of the
  earliest track (disc, track number, name) that has one.
- the folder's other side images under their own names.
- <track's mount name>.lrc next to its track.
- cue sheets, with FILE lines rewritten to the mounted names (relative to
  the sheet's folder); a sheet of one file (an image+cue rip) is named after
  that file, as players look for "<audio file>.cue".
- a top folder "Playlists" (renamed by the tracks' collision rule if a
  track folder already has that name) with <name>.m3u8 for each playlist:
  entries are paths relative to it (../Artist/Album (Year)/01 Title.flac)
  with #EXTINF durations and titles; an entry whose track is not in the
  locker is a comment.

Names are made by layout's pipeline (the names mode included), and never
take a name a track or folder holds: they follow the tracks' collision rule.
A file's identity is its content (object sha256, or sha256 of generated
bytes), so a refresh that changes a file gives it a new inode.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from lockerfs import cuesheet
from lockerfs.asset import StoredObject, clean_text
from lockerfs.cache import ObjectRef
from lockerfs.catalog import CatalogState, Library, PlacedAsset, PlacedPlaylist, Stamp
from lockerfs.layout import Template, build_paths, file_stem, fold, unique_name
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo

Path = tuple[str, ...]

PLAYLISTS_FOLDER = "Playlists"
COVER_STEMS = ("cover", "folder", "front")  # in this order; then albumart*, then any other name
_DISPLAY_EXT = {"jpeg": "jpg", "tiff": "tif"}


@dataclass(frozen=True, slots=True)
class ExtraFile:
    """What the mount serves for one non-track file."""

    content: ObjectRef | bytes  # an object read through the block cache, or bytes made here
    mtime: float
    identity: str  # sha256 of the content: what makes two versions of the file different inodes
    kind: str  # cover, image, lyrics, cue, playlist

    @property
    def size(self) -> int:
        return self.content.size if isinstance(self.content, ObjectRef) else len(self.content)

    @classmethod
    def of_object(cls, obj: StoredObject, mtime: float, kind: str) -> ExtraFile:
        return cls(ObjectRef(obj.key, obj.sha256, obj.size), mtime, obj.sha256, kind)

    @classmethod
    def of_bytes(cls, data: bytes, mtime: float, kind: str) -> ExtraFile:
        return cls(data, mtime, hashlib.sha256(data).hexdigest(), kind)


def lay_out(state: CatalogState, template: Template) -> tuple[dict[Path, Track], dict[Path, ExtraFile]]:
    """Everything the mount shows: the tracks' paths, and the other files' paths."""
    library = state.library()
    paths = build_paths(library.tracks, template)
    return paths, lay_out_extras(library, paths, template)


def lay_out_extras(library: Library, paths: Mapping[Path, Track], template: Template) -> dict[Path, ExtraFile]:
    if not library.assets and not library.playlists:
        return {}  # the common case costs nothing
    where = {track.sha256: path for path, track in paths.items()}
    extras: dict[Path, ExtraFile] = {}
    by_folder: defaultdict[Path, list[PlacedAsset]] = defaultdict(list)
    for placed in library.assets:
        for folder in sorted({where[sha][:-1] for sha in placed.tracks if sha in where}):
            by_folder[folder].append(placed)
    taken = _taken_names(paths, {*by_folder, *([()] if library.playlists else [])})

    def info_of(sha: str) -> TrackInfo:
        return paths[where[sha]].info

    for folder in sorted(by_folder):
        extras.update(place_folder(folder, by_folder[folder], where, info_of, taken[folder], template))
    if library.playlists:
        folder_name, files = place_playlists(
            library.playlists, lambda placed: render_m3u8(placed, lambda sha: paths[where[sha]], where), taken[()],
            template)
        extras.update(((folder_name, name), file) for name, file in files.items())
    return extras


def place_folder(folder: Path, assets: list[PlacedAsset], where: Mapping[str, Path],
                 info_of: Callable[[str], TrackInfo], taken: set[str], template: Template) -> dict[Path, ExtraFile]:
    """The other files of one folder of tracks, from the assets attached to its tracks.
    `where` maps a live track to its path (the mount computes it lazily); `taken` holds
    the folded names the folder's tracks and subfolders have, and gets these files' names."""
    extras: dict[Path, ExtraFile] = {}
    _AlbumFolder(folder, where, info_of, taken, template).place(assets, extras)
    return extras


def _taken_names(paths: Iterable[Path], folders: set[Path]) -> dict[Path, set[str]]:
    """For each of `folders`, the folded names its tracks and subfolders hold.

    Only the folders that get other files are looked at: a library of 100,000
    tracks has a few thousand album folders, and this runs on every refresh."""
    depths = sorted({len(folder) for folder in folders})
    taken: dict[Path, set[str]] = {folder: set() for folder in folders}
    folded: dict[str, str] = {}  # artist and album names repeat
    for path in paths:
        for depth in depths:
            if depth >= len(path):
                break
            names = taken.get(path[:depth])
            if names is not None:
                name = path[depth]
                key = folded.get(name)
                if key is None:
                    key = folded[name] = fold(name)
                names.add(key)
    return taken


def _stamp_time(stamp: Stamp) -> float:
    """When a record was written (its file id starts with milliseconds): the mtime of last resort."""
    head = stamp[0][:13]
    return int(head) / 1000 if head.isdigit() else 0.0


def _newest_first(candidates: list[PlacedAsset]) -> list[PlacedAsset]:
    """Newest record first, so min() over any other key breaks its ties by age."""
    return sorted(candidates, key=lambda placed: placed.stamp, reverse=True)


def cover_rank(name: str) -> int:
    """How strongly a side image's name says "cover": cover.* 0, folder.* 1, front.* 2, albumart*.* 3, else 4."""
    stem = name.rpartition(".")[0].casefold() if "." in name else name.casefold()
    if stem in COVER_STEMS:
        return COVER_STEMS.index(stem)
    return len(COVER_STEMS) if stem.startswith("albumart") else len(COVER_STEMS) + 1


class _AlbumFolder:
    """The extras of one folder of tracks."""

    def __init__(self, folder: Path, where: Mapping[str, Path], info_of: Callable[[str], TrackInfo],
                 taken: set[str], template: Template) -> None:
        self.folder = folder
        self.info_of = info_of
        self.where = where
        self.taken = taken
        self.rules = template.names

    def place(self, assets: list[PlacedAsset], extras: dict[Path, ExtraFile]) -> None:
        # Names players look for first: the cover, then the lyrics and cue sheets named
        # after tracks, then the other images under whatever name is left.
        cover = self._cover(assets)
        if cover is not None:
            obj = cover.asset.object
            ext = _DISPLAY_EXT.get(obj.ext, obj.ext)
            self._add(extras, "cover", f".{ext}", obj.sha256, ExtraFile.of_object(obj, self._mtime(cover), "cover"))
        for placed in self._lyrics(assets):
            (sha,) = placed.tracks
            self._add(extras, self._track_stem(sha, ".lrc"), ".lrc", placed.asset.object.sha256,
                      ExtraFile.of_object(placed.asset.object, self._mtime(placed), "lyrics"))
        for placed in sorted((p for p in assets if p.asset.role == "cue"), key=lambda p: p.asset.id):
            self._add_cue(placed, extras)
        shown: set[tuple[str, str]] = set()
        images = [p for p in assets if p.asset.role in ("cover", "image") and not p.asset.embedded and p is not cover]
        for placed in sorted(_newest_first(images), key=lambda p: fold(p.asset.name)):
            stem, ext = self._own_name(placed)
            if (fold(stem + ext), placed.asset.object.sha256) in shown:
                continue  # the same image uploaded twice (from two roots): shown once
            shown.add((fold(stem + ext), placed.asset.object.sha256))
            self._add(extras, stem, ext, placed.asset.object.sha256,
                      ExtraFile.of_object(placed.asset.object, self._mtime(placed), "image"))

    def _add(self, extras: dict[Path, ExtraFile], stem: str, suffix: str, sha256: str, file: ExtraFile) -> None:
        extras[(*self.folder, unique_name(stem, suffix, sha256, self.taken))] = file

    def _cover(self, assets: list[PlacedAsset]) -> PlacedAsset | None:
        side = [p for p in assets if p.asset.role in ("cover", "image") and not p.asset.embedded]
        if side:
            return min(_newest_first(side), key=lambda p: (p.asset.role != "cover", cover_rank(p.asset.name),
                                                           -p.asset.object.size))
        embedded = [p for p in assets if p.asset.role == "cover" and p.asset.embedded]
        if embedded:
            return min(_newest_first(embedded), key=lambda p: min(self._track_order(sha) for sha in p.tracks
                                                                   if self._here(sha)))
        return None

    def _lyrics(self, assets: list[PlacedAsset]) -> list[PlacedAsset]:
        """One .lrc per track of this folder: its newest."""
        chosen: dict[str, PlacedAsset] = {}
        for placed in _newest_first([p for p in assets if p.asset.role == "lyrics"]):
            sha = placed.tracks[0]
            if self._here(sha):
                chosen.setdefault(sha, placed)
        return [chosen[sha] for sha in sorted(chosen, key=self._track_order)]

    def _add_cue(self, placed: PlacedAsset, extras: dict[Path, ExtraFile]) -> None:
        cue = placed.asset.cue
        assert cue is not None
        names = {name: posixpath.relpath("/".join(self.where[sha]), "/".join(self.folder) or ".")
                 for name, sha in placed.files if sha is not None and sha in self.where}
        data = cuesheet.rewrite(cue.text, names).encode()
        targets = {sha for _, sha in placed.files if sha is not None and sha in self.where}
        if len(targets) == 1 and self._here(next(iter(targets))):
            stem = self._track_stem(next(iter(targets)), ".cue")  # image+cue: "<image>.cue"
        else:
            stem = file_stem(placed.asset.name.rpartition(".")[0] or placed.asset.name or "album", self.rules, ".cue")
        self._add(extras, stem, ".cue", placed.asset.object.sha256,
                  ExtraFile.of_bytes(data, self._mtime(placed), "cue"))

    def _own_name(self, placed: PlacedAsset) -> tuple[str, str]:
        """An image's stem and ".ext" from the name it had (its object's extension if it had none)."""
        name = placed.asset.name
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, ext = name or placed.asset.role, placed.asset.object.ext
        suffix = "." + (file_stem(ext, self.rules) if ext else placed.asset.object.ext)
        return file_stem(stem, self.rules, suffix), suffix

    def _here(self, sha: str) -> bool:
        """Whether the track is in this folder of the mount."""
        path = self.where.get(sha)
        return path is not None and path[:-1] == self.folder

    def _track_stem(self, sha: str, suffix: str) -> str:
        """The mounted name of a track without its extension, cut so that `suffix` fits."""
        name = self.where[sha][-1]
        stem = name.rpartition(".")[0] or name
        return file_stem(stem, self.rules, suffix)

    def _track_order(self, sha: str) -> tuple[int, int, str]:
        path = self.where[sha]
        info = self.info_of(sha)
        return info.disc or 0, info.track or 0, path[-1]

    def _mtime(self, placed: PlacedAsset) -> float:
        return placed.asset.mtime or _stamp_time(placed.stamp)


def place_playlists(playlists: list[PlacedPlaylist], render: Callable[[PlacedPlaylist], bytes],
                    root_taken: set[str], template: Template) -> tuple[str, dict[str, ExtraFile]]:
    """The playlists folder's name (claimed in `root_taken`) and its .m3u8 files, each made
    by `render` (render_m3u8, or a memo of it)."""
    files: dict[str, ExtraFile] = {}
    folder_name = unique_name(PLAYLISTS_FOLDER, "", hashlib.sha256(PLAYLISTS_FOLDER.encode()).hexdigest(),
                              root_taken)
    taken: set[str] = set()
    for placed in sorted(playlists, key=lambda p: (fold(p.playlist.name), p.playlist.name)):
        key_sha = hashlib.sha256(fold(placed.playlist.name).encode()).hexdigest()
        name = unique_name(file_stem(placed.playlist.name, template.names, ".m3u8"), ".m3u8", key_sha, taken)
        data = render(placed)
        mtime = placed.playlist.mtime or _stamp_time(placed.stamp)
        files[name] = ExtraFile.of_bytes(data, mtime, "playlist")
    return folder_name, files


def render_m3u8(placed: PlacedPlaylist, track_of: Callable[[str], Track], where: Mapping[str, Path]) -> bytes:
    """An extended M3U in UTF-8 whose entries lead from the Playlists folder to the mounted tracks."""
    lines = ["#EXTM3U", f"#PLAYLIST:{clean_text(placed.playlist.name, 255)}"]
    for entry, sha in zip(placed.playlist.entries, placed.tracks, strict=True):
        path = where.get(sha) if sha is not None else None
        if path is None or sha is None:
            lines.append(f"# not in the locker: {entry.line or entry.sha256}")
            continue
        track = track_of(sha)
        info = track.info
        seconds = round(info.duration) if info.duration is not None else -1
        artist = clean_text(info.artist or info.albumartist or "", 1024) or "Unknown Artist"
        source_name = track.source.rpartition("/")[2]
        title = clean_text(info.title or source_name.rpartition(".")[0] or source_name, 1024)
        lines.append(f"#EXTINF:{seconds},{artist} - {title}")
        lines.append("../" + "/".join(path))
    return ("\n".join(lines) + "\n").encode()
