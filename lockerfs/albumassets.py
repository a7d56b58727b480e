"""The catalog records an upload makes of the music's other files: covers, images, lyrics,
cue sheets (asset records) and playlists, once the run knows every track.

Upload stores each side file's object as it walks (sidefiles.py), and the
front cover embedded in tracks as it reads their tags (artwork.py); this
module collects what the run saw, folder by folder, and at the end of the
run makes the records (docs/FORMAT.md, "What upload records"):

- Images of a folder of tracks: the cover, chosen by cover_rank (cover.*,
  folder.*, front.*, albumart*.*, then the largest), with role `cover`,
  the others `image`, attached to every track of the folder. A folder with
  images and no tracks (a box set's `cover.jpg` above `Disc 1/`,
  `Disc 2/`) lends them to the folders of tracks right below it that have
  none of their own.
- A folder of tracks with no image: one `embedded` cover per distinct front
  cover its tracks carry, attached to those tracks.
- `<track's stem>.lrc`: lyrics of that track (same folder; exact name, else
  the one name that matches case-insensitively).
- A cue sheet: each FILE name mapped to the track it names, relative to the
  sheet's folder (exact, case-insensitive, then the same stem with another
  extension: a rip's "CDImage.wav" compressed to "CDImage.flac" later);
  the sheet belongs to those tracks, or to its folder's if it maps none.
- A playlist: named after its file's stem, each entry resolved to a track
  (trackpaths.py) or kept unresolved with its line.

Tracks are named by SHA-256, so a track recorded by an earlier run (the run
found it unchanged, or matched it) still gets its cover. Every record is
compared with the catalog's: one that says the same is not written again, so
a rerun over an unchanged tree writes nothing. A side file found unchanged
(same path, size and mtime as recorded, and the catalog's record names the
same bytes) is not read again: its object comes from that record.

Only objects this run stored or found stored are named (objects first,
then records); a file that failed to upload is left out and reported.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lockerfs import cuesheet, m3u
from lockerfs.asset import (MAX_ATTACHED, MAX_CUE_FILES, Asset, CueSheet, StoredObject, asset_from_dict,
                            asset_id_for_embedded, asset_id_for_file, asset_to_dict)
from lockerfs.catalog import CatalogState
from lockerfs.playlist import MAX_ENTRIES, MAX_LINE, Playlist, PlaylistEntry, playlist_from_dict, playlist_key, \
    playlist_to_dict
from lockerfs.sidefiles import SideFile, stem as _stem
from lockerfs.trackpaths import EntryResolver, fold

NO_HOME = "an image with no track in its folder, the folder above or the folders below"
COVER_STEMS = ("cover", "folder", "front")  # in this order; then albumart*, then any other name


def cover_rank(name: str) -> int:
    """How strongly an image's name says "cover": cover.* 0, folder.* 1, front.* 2, albumart*.* 3, else 4.
    (The mount's lockerfs/extras.py applies the same rule to records that lack a chosen cover.)"""
    stem = _stem(name).casefold()
    if stem in COVER_STEMS:
        return COVER_STEMS.index(stem)
    return len(COVER_STEMS) if stem.startswith("albumart") else len(COVER_STEMS) + 1


def choose_cover(images: list[SideFile]) -> SideFile:
    """The image that is the album's cover: the best name by cover_rank, else the largest."""
    return min(images, key=lambda side: (cover_rank(side.path.name), -side.object.size, side.path.name))




@dataclass
class _Folder:
    """What the run saw of one folder: never a list of its tracks (the local state has them)."""

    relative: str  # below the folder given to upload: what embedded covers' ids are derived from
    side: list[SideFile] = field(default_factory=list)
    dirty: bool = False  # a track or side file in it was read this run: its records may change
    art: dict[str, StoredObject] = field(default_factory=dict)  # track sha256 -> cover extracted this run

    def images(self) -> list[SideFile]:
        return [side for side in self.side if side.kind == "image" and side.stored]


@dataclass
class ExtrasPlan:
    """What the run writes to the catalog for side files and embedded art, and what it reports."""

    records: list[dict] = field(default_factory=list)
    written: Counter[str] = field(default_factory=Counter)  # cover, embedded cover, image, lyrics, cue, playlist
    unchanged: int = 0  # records that already said the same
    remember: list[SideFile] = field(default_factory=list)  # read this run, recorded: the local state learns them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, why it is not recorded)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (source, what of it was left out)
    unresolved: list[tuple[str, str, str]] = field(default_factory=list)  # (source, entry or FILE name, why)


TracksOf = Callable[[str], dict[str, str]]  # folder -> {file name: sha256} of the tracks recorded from it


class RunExtras:
    """What one upload run saw beside its tracks, and the records that calls for.

    Memory grows with the folders walked and the side files, not with the tracks: a
    folder's tracks come from the local state when its records are made (`tracks_of`,
    once every track of the run is recorded), and only for folders where something
    was read this run, with the folders that lend them images or borrow theirs.
    One thread uses it (the uploader's main thread).
    """

    def __init__(self, catalog: CatalogState, tracks_of: TracksOf) -> None:
        self.catalog = catalog
        self._tracks_of = tracks_of
        self._folders: dict[str, _Folder] = {}
        self._last: _Folder | None = None
        self._last_path = ""
        self._playlists: list[SideFile] = []
        self._embedded: dict[str, list[Asset]] | None = None

    # --- what the run saw ------------------------------------------------------------------

    def add_track(self, path: str, relative: str, sha256: str, art: StoredObject | None, read: bool) -> None:
        """A track recorded (read: True) or found unchanged (read: False) at `path`."""
        folder = self._folder(path, relative)
        if read:
            folder.dirty = True
            if art is not None:
                folder.art[sha256] = art

    def add_side(self, side: SideFile) -> None:
        if side.kind == "playlist":
            self._playlists.append(side)
            return
        folder = self._folder(str(side.path), side.relative)
        folder.side.append(side)
        folder.dirty = folder.dirty or side.read

    def _folder(self, path: str, relative: str) -> _Folder:
        folder = posixpath.dirname(path)
        if folder == self._last_path and self._last is not None:  # a folder's files come together
            return self._last
        entry = self._folders.get(folder)
        if entry is None:
            entry = self._folders[folder] = _Folder(posixpath.dirname(relative))
        self._last, self._last_path = entry, folder
        return entry

    # --- side files recorded before ------------------------------------------------------

    def recorded_side(self, path: Path, relative: str, stat: os.stat_result, kind: str, sha256: str
                      ) -> SideFile | None:
        """The side file as the catalog recorded it, if its record names these bytes (`sha256`,
        which the local state knows for this path, size and mtime); None: read it again.
        A playlist with entries that were not resolved is read again: their tracks may be here now."""
        if kind == "playlist":
            versioned = self.catalog.playlists.get(playlist_key(_stem(path.name)))
            playlist = versioned.value if versioned is not None else None
            if (playlist is None or playlist.object is None or playlist.object.sha256 != sha256
                    or playlist.source != relative or not all(e.sha256 for e in playlist.entries)):
                return None
            return SideFile(path, relative, stat, kind, playlist.object, read=False, stored=True)
        versioned = self.catalog.assets.get(asset_id_for_file(relative))
        asset = versioned.value if versioned is not None else None
        if asset is None or asset.object.sha256 != sha256 or (kind == "cue") != (asset.cue is not None):
            return None
        return SideFile(path, relative, stat, kind, asset.object, text=asset.cue.text if asset.cue else "",
                        read=False, stored=True)

    # --- the records -----------------------------------------------------------------------

    def plan(self, resolver: EntryResolver) -> ExtrasPlan:
        """Every record the run's side files and embedded covers call for, compared with the catalog's.
        Call once every track of the run is recorded (and so known to `tracks_of`)."""
        plan = ExtrasPlan()
        for unit in self._units():
            tracks = {folder: self._tracks_of(folder) for folder in unit}
            self._plan_images(unit, tracks, plan)
            for folder in unit:
                entry = self._folders[folder]
                self._plan_lyrics(entry, tracks[folder], plan)
                for side in sorted((s for s in entry.side if s.kind == "cue"), key=lambda s: s.relative):
                    self._plan_cue(folder, tracks[folder], side, resolver, plan)
        self._plan_playlists(resolver, plan)
        return plan

    def _units(self) -> list[list[str]]:
        """The folders whose records are made together, those with something read this run.

        A folder with images and no tracks joins the folder above it and the folders
        below it (it lends them its images); every other folder is a unit of its own."""
        below: defaultdict[str, list[str]] = defaultdict(list)
        for folder in self._folders:
            below[posixpath.dirname(folder)].append(folder)
        unit_of = {folder: folder for folder in self._folders}

        def root(folder: str) -> str:
            while unit_of[folder] != folder:
                unit_of[folder] = unit_of[unit_of[folder]]
                folder = unit_of[folder]
            return folder

        for folder, entry in self._folders.items():
            if entry.images() and not self._tracks_of(folder):
                for neighbour in [posixpath.dirname(folder), *below.get(folder, ())]:
                    if neighbour in unit_of and neighbour != folder:
                        unit_of[root(neighbour)] = root(folder)
        units: defaultdict[str, list[str]] = defaultdict(list)
        for folder in self._folders:
            units[root(folder)].append(folder)
        return [sorted(members) for _, members in sorted(units.items())
                if any(self._folders[folder].dirty for folder in members)]

    def _plan_images(self, unit: list[str], tracks: dict[str, dict[str, str]], plan: ExtrasPlan) -> None:
        """Per folder of tracks: the images that belong to its tracks, and its cover.

        Its own images and those of the folder above it if that one has no tracks (a box
        set's cover above Disc 1/, Disc 2/) compete for the cover; without any, its tracks'
        embedded covers are the cover; without those either, the images of folders below it
        that have no tracks (Scans/, Artwork/). Those are attached in any case, as other images.
        """
        attached: defaultdict[str, list[str]] = defaultdict(list)  # image source -> tracks
        images: dict[str, SideFile] = {}
        covers: set[str] = set()
        for folder in unit:
            if not tracks[folder]:
                continue
            above = posixpath.dirname(folder)
            lent = self._folders[above].images() if above in tracks and not tracks[above] else []
            candidates = self._folders[folder].images() + lent
            scans = [side for sub in unit if posixpath.dirname(sub) == folder and not tracks[sub]
                     for side in self._folders[sub].images()]
            if not candidates and not self._plan_embedded(folder, tracks[folder], plan):
                candidates, scans = scans, []
            if candidates:
                covers.add(choose_cover(candidates).relative)
            for side in candidates + scans:
                images[side.relative] = side
                attached[side.relative] += tracks[folder].values()
        for folder in unit:
            for side in self._folders[folder].images():
                if side.relative not in images:
                    plan.skipped.append((side.relative, NO_HOME))
        for relative in sorted(images):
            side = images[relative]
            role = "cover" if relative in covers else "image"
            self._want(Asset(asset_id_for_file(relative), role, side.object, _attached(attached[relative], relative, plan),
                             side.path.name, relative, mtime=side.stat.st_mtime), plan, role, side)

    def _plan_embedded(self, folder: str, tracks: dict[str, str], plan: ExtrasPlan) -> bool:
        """Records for the front covers the folder's tracks carry; whether there were any."""
        entry = self._folders[folder]
        pictures: dict[str, StoredObject] = {}
        carriers: defaultdict[str, list[str]] = defaultdict(list)
        for sha in tracks.values():
            for picture in self._pictures_of(sha, entry):
                pictures[picture.sha256] = picture
                carriers[picture.sha256].append(sha)
        for sha, picture in sorted(pictures.items()):
            attached = _attached(carriers[sha], entry.relative or ".", plan)
            self._want(Asset(asset_id_for_embedded(entry.relative, sha), "cover", picture, attached, "", "",
                             embedded=True), plan, "embedded cover")
        return bool(pictures)

    def _pictures_of(self, track: str, entry: _Folder) -> list[StoredObject]:
        """The cover extracted from the track this run, else the ones the catalog attaches to it
        from this folder (a track not read this run)."""
        if track in entry.art:
            return [entry.art[track]]
        if self._embedded is None:  # track -> its embedded covers in the catalog, built once
            self._embedded = defaultdict(list)
            for versioned in self.catalog.assets.values():
                asset = versioned.value
                if asset is not None and asset.embedded:
                    for sha in asset.tracks:
                        self._embedded[sha].append(asset)
        return [asset.object for asset in self._embedded.get(track, ())
                if asset.id == asset_id_for_embedded(entry.relative, asset.object.sha256)]

    def _plan_lyrics(self, entry: _Folder, tracks: dict[str, str], plan: ExtrasPlan) -> None:
        by_stem = {_stem(name): sha for name, sha in tracks.items()}
        by_folded: dict[str, str | None] = {}
        for stem, sha in by_stem.items():
            by_folded[fold(stem)] = None if fold(stem) in by_folded else sha
        for side in sorted((s for s in entry.side if s.kind == "lyrics" and s.stored), key=lambda s: s.relative):
            stem = _stem(side.path.name)
            sha = by_stem.get(stem) or by_folded.get(fold(stem))
            if sha is None:
                plan.skipped.append((side.relative, f"lyrics of no uploaded track (no audio file named {stem!r} "
                                                    "beside it)"))
                continue
            self._want(Asset(asset_id_for_file(side.relative), "lyrics", side.object, (sha,), side.path.name,
                             side.relative, mtime=side.stat.st_mtime), plan, "lyrics", side)

    def _plan_cue(self, folder: str, tracks: dict[str, str], side: SideFile, resolver: EntryResolver,
                  plan: ExtrasPlan) -> None:
        if not side.stored:
            return
        files: list[tuple[str, str]] = []
        for name in cuesheet.file_names(side.text)[:MAX_CUE_FILES]:
            sha, why = cue_target(name, folder, tracks, resolver)
            if sha is None:
                plan.unresolved.append((side.relative, name, why))
            else:
                files.append((name, sha))
        attached = [sha for _, sha in files] or list(tracks.values())
        if not attached:
            plan.skipped.append((side.relative, "a cue sheet that names no uploaded track, in a folder without "
                                                "tracks"))
            return
        self._want(Asset(asset_id_for_file(side.relative), "cue", side.object, _attached(attached, side.relative, plan),
                         side.path.name, side.relative, mtime=side.stat.st_mtime,
                         cue=CueSheet(side.text, tuple(files))), plan, "cue", side)

    def _plan_playlists(self, resolver: EntryResolver, plan: ExtrasPlan) -> None:
        chosen: dict[str, SideFile] = {}
        for side in sorted(self._playlists, key=lambda s: s.relative):
            if not side.stored:
                continue
            key = playlist_key(_stem(side.path.name))
            if key in chosen:  # the last one walked stands, as a later upload would replace it
                plan.skipped.append((chosen[key].relative, f"a playlist of the same name, {side.relative}, "
                                                           "replaces it"))
            chosen[key] = side
        for side in chosen.values():
            if not side.read:
                plan.unchanged += 1  # recorded before with every entry resolved: nothing can change
                continue
            folder = posixpath.dirname(str(side.path))
            lines = m3u.entries(side.text)
            if len(lines) > MAX_ENTRIES:
                plan.notes.append((side.relative, f"only its first {MAX_ENTRIES:,} entries are kept "
                                                    f"(it has {len(lines):,})"))
                lines = lines[:MAX_ENTRIES]
            entries = []
            for line in lines:
                sha, why = resolver.resolve(line, folder)
                if sha is None:
                    plan.unresolved.append((side.relative, line, why))
                entries.append(PlaylistEntry(sha, line[:MAX_LINE] if sha is None else ""))
            playlist = Playlist(_stem(side.path.name), side.relative, tuple(entries), side.stat.st_mtime,
                                side.object)
            self._want_playlist(playlist, plan, side)

    # --- compared with the catalog --------------------------------------------------------

    def _want(self, asset: Asset, plan: ExtrasPlan, what: str, side: SideFile | None = None) -> None:
        asset = asset_from_dict(asset_to_dict(asset))  # as a reader will see it
        versioned = self.catalog.assets.get(asset.id)
        if versioned is not None and versioned.value == asset:
            plan.unchanged += 1
        else:
            plan.records.append({"op": "asset", "asset": asset_to_dict(asset)})
            plan.written[what] += 1
        if side is not None and side.read:
            plan.remember.append(side)

    def _want_playlist(self, playlist: Playlist, plan: ExtrasPlan, side: SideFile) -> None:
        playlist = playlist_from_dict(playlist_to_dict(playlist))
        versioned = self.catalog.playlists.get(playlist_key(playlist.name))
        if versioned is not None and versioned.value == playlist:
            plan.unchanged += 1
        else:
            plan.records.append({"op": "playlist", "playlist": playlist_to_dict(playlist)})
            plan.written["playlist"] += 1
        plan.remember.append(side)


def _attached(tracks: Iterable[str], source: str, plan: ExtrasPlan) -> tuple[str, ...]:
    """The distinct tracks an asset belongs to, in order; at most MAX_ATTACHED (said if cut)."""
    distinct = sorted(set(tracks))
    if len(distinct) > MAX_ATTACHED:
        plan.notes.append((source, f"attached to the first {MAX_ATTACHED:,} of its {len(distinct):,} tracks"))
    return tuple(distinct[:MAX_ATTACHED])


def cue_target(name: str, folder: str, tracks: dict[str, str], resolver: EntryResolver) -> tuple[str | None, str]:
    """The track a cue sheet's FILE name leads to: the path from the sheet's folder; else a track
    of that folder (`tracks`: name -> sha256) with the same name or, failing that, the same stem
    (case-insensitively); (None, why not) if none or several."""
    sha, why = resolver.resolve(name, folder)
    if sha is not None:
        return sha, ""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    exact = {sha for track, sha in tracks.items() if track == name}
    folded = {sha for track, sha in tracks.items() if fold(track) == fold(name)}
    same_stem = {sha for track, sha in tracks.items() if fold(_stem(track)) == fold(_stem(name))}
    for found in (exact, folded, same_stem):
        if len(found) == 1:
            return next(iter(found)), ""
    if len(same_stem) > 1:
        return None, "several uploaded files have that name"
    return None, why
