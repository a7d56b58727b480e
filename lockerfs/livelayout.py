"""The mount's layout of a large catalog: kept up to date by refreshes, named folder by folder.

layout.build_paths (with extras.lay_out) names every track and other file of a
catalog in one go; for 300,000 tracks that is seconds of work at every mount
and at every refresh. LiveLayout gives the same names (tests compare the two
on varied and hostile libraries), but does only what is asked:

- at load it files each track into its album and its folder; the folder part
  of the template is rendered once per distinct set of values it reads (once
  per album under the default template), the file name part not at all;
- a folder's file names (titles, collisions, covers, lyrics, cue sheets) are
  made the first time the folder is asked for (`files`), and again only after
  a refresh touched it;
- `update` applies the rows and records a catalog merge changed: the albums
  and folders of those rows are recomputed, nothing else, and the folders
  whose listing may differ are returned for the tree to re-list.

Folders are keyed by their folded path (how a case-insensitive client
compares names), as build_paths merges them; PLAYLISTS is the key of the
playlists folder in the root.

Known cost that is not in proportion to a refresh: a refresh that removes a
track places every asset again (a removal may end or redirect a chain of
replacements that assets follow); the walk order is recomputed when asked
after any change of folders.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterator, Mapping, MutableSequence
from dataclasses import dataclass
from typing import TypeVar

from lockerfs import layout
from lockerfs.catalog import CatalogState, PlacedAsset, PlacedPlaylist
from lockerfs.extras import PLAYLISTS_FOLDER, ExtraFile, _stamp_time, place_folder, place_playlists, render_m3u8
from lockerfs.layout import (EXT_MAX, NAME_MAX, UNKNOWN_ALBUM, UNKNOWN_ARTIST, VARIOUS_ARTISTS, Template, _clean,
                             _cut, _fold, _Memo, _most_common, _render, _sanitize, _strip_end, _suffixed,
                             compile_render, split_template, unique_name)
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo
from lockerfs.tracktable import NONE

Key = tuple[str, ...]  # a folder's folded path
Path = tuple[str, ...]  # a path as shown
AlbumKey = tuple[str, str]
PLAYLISTS: Key = ("\0playlists",)  # no folded name holds a NUL: never a layout folder's key
FileRef = int | ExtraFile  # a track's row, or another file
T = TypeVar("T")


def _discard(items: MutableSequence[T], item: T) -> None:
    """Take an item out of an album's or folder's rows or heads (a few dozen, as a rule)."""
    try:
        items.remove(item)
    except ValueError:
        pass


def _add_once(items: list[T], item: T) -> None:
    if item not in items:
        items.append(item)


@dataclass(slots=True)
class _Album:
    rows: array[int]
    year: int | None = None
    multi_disc: bool = False


class LiveLayout:
    """See the module docstring."""

    def __init__(self, state: CatalogState, template: Template) -> None:
        self.state = state
        self.table = state.entries
        self.template = template
        self.split = split_template(template)  # None: render whole paths, track by track
        rules = template.names
        self.clean = _Memo(lambda text: _clean(text, rules))
        self.fold = _Memo(_fold)
        self.extension = _Memo(lambda ext: _strip_end(_cut(_clean(ext, rules).lstrip("."), EXT_MAX)))
        self.dotted = _Memo(lambda ext: f".{self.extension[ext]}" if self.extension[ext] else "")
        self.sanitize = _Memo(lambda text: _sanitize(text, NAME_MAX, rules))
        self._album_names: dict[tuple[object, ...], tuple[str, str, AlbumKey]] = {}
        self._heads: dict[tuple[object, ...], str] = {}  # head field values -> rendered folders
        self.row_album: list[AlbumKey | None] = []
        self.row_head: list[str | None] = []
        self.albums: dict[AlbumKey, _Album] = {}
        self.head_rows: dict[str, array[int]] = {}  # rows as 32-bit numbers: no int object per row
        self._head_folder: dict[str, tuple[Key, tuple[str, ...]]] = {}  # head -> (key, sanitized names)
        self.spellings: dict[Key, dict[str, int]] = {}  # folder -> its spellings' track counts
        # Lists, not sets: one or two items a folder, as a rule, and 50,000 folders at 300,000
        # tracks (a set costs 216 bytes before its first item, a list 56).
        self.children: dict[Key, list[Key]] = {(): []}
        self.folder_heads: dict[Key, list[str]] = {(): []}
        self.shown: dict[Key, Path] = {(): ()}
        self._names: dict[Key, list[tuple[str, int]]] = {}  # track names of folders others point into
        self._depends: dict[Key, set[Key]] = {}  # folder -> folders whose extras read its names
        # Each playlist's .m3u8 as last made, and the folders whose tracks it names: the
        # playlists folder is listed again whenever any of them changes, and making every
        # playlist again each time cost most of a refresh (0.4 s for 149 at 300,000 tracks).
        self._m3u8: dict[str, tuple[PlacedPlaylist, bytes]] = {}  # by name (names are unique)
        self._m3u8_depends: dict[Key, set[str]] = {}
        self._mtimes: dict[Key, float] = {}
        # Assets: each placed one's tracks, and which assets each row carries.
        self.placed: dict[str, PlacedAsset] = {}
        self.row_asset: list[str | None] = []
        self.row_more: dict[int, list[str]] = {}
        self._pending: dict[str, set[str]] = {}  # a sha no live track answers for -> assets naming it
        self._asset_stamps: dict[str, object] = {}
        self.playlists: list[PlacedPlaylist] = []
        self.playlists_name: str | None = None  # the playlists folder's name, once the root is listed
        self._root_taken: set[str] = set()  # the root's names before the playlists folder took its own
        self._counted = array("q")  # per row, the size counted in total_size (0: not counted)
        # Under templates whose folders read album fields only (the default), the folders
        # are one rendering per album.
        self._album_level = self.split is not None and set(self.split.head_fields) <= _ALBUM_FIELDS
        self._album_head: dict[AlbumKey, str] = {}
        self._getters = self._make_getters()
        if self.split is not None:
            stem_getters = [self._getters[name] for name in self.split.stem_fields]
            render_stem = compile_render(self.split.stem, self.split.stem_fields)
            self._render_stem: Callable[[int], str] = lambda row: render_stem(*[get(row) for get in stem_getters])
        self.total_size = 0
        self.track_count = 0
        self.update(self.table.take_changed(), everything=True)

    # --- what the tree asks -----------------------------------------------------------

    def folders(self) -> Iterator[Key]:
        yield from self.shown
        if self.playlists:
            yield PLAYLISTS

    def exists(self, key: Key) -> bool:
        return key in self.shown or (key == PLAYLISTS and bool(self.playlists))

    def parent(self, key: Key) -> Key:
        return () if key == PLAYLISTS else key[:-1]

    def name(self, key: Key) -> str:
        if key == PLAYLISTS:
            if self.playlists_name is None:
                self.files(())  # the root's names decide it
            assert self.playlists_name is not None
            return self.playlists_name
        return self.shown[key][-1] if key else ""

    def subfolders(self, key: Key) -> list[Key]:
        found = list(self.children.get(key, ()))
        if key == () and self.playlists:
            found.append(PLAYLISTS)
        return found

    def holds_tracks(self, key: Key) -> bool:
        return any(self.head_rows.get(head) for head in self.folder_heads.get(key, ()))

    def rows(self, key: Key) -> list[int]:
        return [row for head in self.folder_heads.get(key, ()) for row in self.head_rows[head]]

    def mtime(self, key: Key) -> float:
        """The newest track below the folder (the playlists folder: the newest playlist)."""
        found = self._mtimes.get(key)
        if found is None:
            if key == PLAYLISTS:
                found = max((p.playlist.mtime or _stamp_time(p.stamp) for p in self.playlists), default=0.0)
            else:
                mtimes = self.table.mtime.__getitem__
                found = max((max(map(mtimes, self.head_rows[head]), default=0.0)
                             for head in self.folder_heads.get(key, ())), default=0.0)
                for child in self.subfolders(key):
                    found = max(found, self.mtime(child))
            self._mtimes[key] = found
        return found

    def files(self, key: Key) -> list[tuple[str, FileRef]]:
        """The folder's files (tracks and others) and their names; the tree keeps them."""
        return self._list(key)

    # --- naming a folder --------------------------------------------------------------

    def _track_names(self, key: Key) -> list[tuple[str, int]]:
        named = self._names.get(key)
        if named is None:
            named = self._names[key] = self._name_tracks(key)
        return named

    def _name_tracks(self, key: Key) -> list[tuple[str, int]]:
        """build_paths' rule within one folder: in sha256 order the lowest takes the plain
        name; the others (and files named like a subfolder) get a suffix afterwards."""
        shas = self.table.shas
        taken = {child[-1] for child in self.children.get(key, ())}
        named: list[tuple[str, int]] = []
        lost = []
        # Each row as the table's own int object (its sha256 -> row map holds one per row):
        # the listings keep these for the life of the mount, 9 MB of copies at 300,000 tracks.
        rows = map(self.table.rows_by_sha.__getitem__, sorted(map(shas.__getitem__, self.rows(key))))
        for row in rows:
            stem, suffix = self._stem(row)
            name = stem + suffix
            folded = _fold(name)
            if folded in taken:
                lost.append((stem, suffix, row))
            else:
                taken.add(folded)
                named.append((name, row))
        for stem, suffix, row in lost:
            named.append((_suffixed(stem, suffix, shas[row], taken), row))
        return named

    def _list(self, key: Key) -> list[tuple[str, FileRef]]:
        if key == PLAYLISTS:
            if self.playlists_name is None:
                self.files(())  # names the playlists folder
            _, files = place_playlists(self.playlists, self._m3u8_of, set(self._root_taken), self.template)
            return list(files.items())
        named = self._names.get(key)  # kept only for folders other folders' files point into
        if named is None:
            named = self._name_tracks(key)
        listing: list[tuple[str, FileRef]] = list(named)
        taken = {child[-1] for child in self.children.get(key, ())} | {_fold(name) for name, _ in listing}
        assets = self._folder_assets(key)
        if assets:
            where = _Where(self, key, named)
            extras = place_folder(self.shown[key], assets, where, self._info_of, taken, self.template)
            listing.extend((path[-1], file) for path, file in extras.items())
        if key == () and self.playlists:  # its name now; its files when it is listed
            self._root_taken = set(taken)
            self.playlists_name = unique_name(PLAYLISTS_FOLDER, "", PLAYLISTS_SHA, taken)
        return listing

    def _m3u8_of(self, placed: PlacedPlaylist) -> bytes:
        """A playlist's .m3u8, made again only when it or a folder it names has changed."""
        name = placed.playlist.name
        made = self._m3u8.get(name)
        if made is not None and made[0] == placed:
            return made[1]
        data = render_m3u8(placed, self._track_of, _Where(self, PLAYLISTS))
        self._m3u8[name] = (placed, data)
        for sha in placed.tracks:
            key = self._folder_of(sha) if sha is not None else None
            if key is not None:
                self._m3u8_depends.setdefault(key, set()).add(name)
        return data

    def _folder_of(self, sha: str) -> Key | None:
        """The folder a live track is shown in; None if it is not shown."""
        return self._folder_of_row(self.table.row(sha))

    def _folder_of_row(self, row: int | None) -> Key | None:
        head = self.row_head[row] if row is not None and row < len(self.row_head) else None
        return None if head is None else self._head_folder[head][0]

    def path_of(self, sha: str, asking: Key, own: list[tuple[str, int]] | None = None) -> Path | None:
        """Where a live track is shown (naming its folder if need be); `asking` is
        recorded as depending on that folder's names (`own`: the asking folder's)."""
        row = self.table.row(sha)
        key = self._folder_of_row(row)
        if key is None:
            return None
        if key != asking:
            self._depends.setdefault(key, set()).add(asking)
        for name, named_row in (own if own is not None and key == asking else self._track_names(key)):
            if named_row == row:
                return (*self.shown[key], name)
        return None

    def where(self, sha: str) -> Path | None:
        """Where a live track is shown, for a command that asks (`lockerfs tag` prints the
        new names); no folder is recorded as depending on another."""
        key = self._folder_of(sha)
        return None if key is None else self.path_of(sha, key)

    def _info_of(self, sha: str) -> TrackInfo:
        return self._track_of(sha).info

    def _track_of(self, sha: str) -> Track:
        row = self.table.row(sha)
        assert row is not None
        return self.table.track(row)

    def _folder_assets(self, key: Key) -> list[PlacedAsset]:
        ids = {asset for row in self.rows(key) for asset in self._assets_of(row)}
        return [self.placed[ident] for ident in sorted(ids)]

    def _assets_of(self, row: int) -> list[str]:
        first = self.row_asset[row] if row < len(self.row_asset) else None
        if first is None:
            return []
        return [first, *self.row_more.get(row, ())]

    # --- a track's values -------------------------------------------------------------

    def _album_of(self, row: int) -> tuple[str, str, AlbumKey]:
        text = self.table.text
        raw = (text["albumartist"][row], text["artist"][row], text["album"][row], self.table.compilation[row])
        found = self._album_names.get(raw)
        if found is None:
            clean = self.clean
            if raw[3]:
                albumartist = VARIOUS_ARTISTS
            else:
                albumartist = clean[raw[0] or ""] or clean[raw[1] or ""] or UNKNOWN_ARTIST
            album = clean[raw[2] or ""] or UNKNOWN_ALBUM
            found = self._album_names[raw] = (albumartist, album, (self.fold[albumartist], self.fold[album]))
        return found

    def _values(self, row: int, fields: tuple[str, ...]) -> dict[str, str | int | None]:
        """layout._track_values, for the fields asked only."""
        getters = self._getters
        return {name: getters[name](row) for name in fields}

    def _make_getters(self) -> dict[str, Callable[[int], str | int | None]]:
        """Per field, its value for a row as layout._track_values makes it (the table's columns
        are looked up on each call: a first snapshot may replace them)."""
        table, clean, albums, row_album = self.table, self.clean, self.albums, self.row_album

        def title(row: int) -> str:
            raw = table.title[row]
            text = clean.function(raw) if raw else ""
            if not text:
                source = table.source[row].rpartition("/")[2]
                text = clean.function(source.rpartition(".")[0] or source)
            return text

        def number(name: str) -> Callable[[int], int | None]:
            def value(row: int) -> int | None:
                stored = table.numbers[name][row]
                return None if stored == NONE else stored - 1
            return value

        track_number, disc_number = number("track"), number("disc")

        def disc(row: int) -> int | None:
            return disc_number(row) if albums[row_album[row]].multi_disc else None  # type: ignore[index]

        return {
            "albumartist": lambda row: self._album_of(row)[0],
            "album": lambda row: self._album_of(row)[1],
            "artist": lambda row: (clean[table.text["artist"][row] or ""] or clean[table.text["albumartist"][row] or ""]
                                   or UNKNOWN_ARTIST),
            "title": title,
            "track": track_number, "tracktotal": number("tracktotal"), "disctotal": number("disctotal"),
            "disc": disc,
            "year": lambda row: albums[row_album[row]].year,  # type: ignore[index]
            "genre": lambda row: clean[table.text["genre"][row] or ""],
            "format": lambda row: clean[table.text["format"][row] or ""],
            "ext": lambda row: self.extension[table.ext[row]],
        }

    def _head(self, row: int) -> str:
        if self.split is None:
            rendered = _render(self.template, self._values(row, _ALL_FIELDS))
            return rendered[: len(rendered) - len(rendered.rpartition("/")[2])]
        if self._album_level:
            key = self.row_album[row]
            assert key is not None
            head = self._album_head.get(key)
            if head is None:
                head = self._album_head[key] = _render(self.split.head, self._values(row, self.split.head_fields))
            return head
        fields = self.split.head_fields
        values = self._values(row, fields)
        memo = tuple(values[name] for name in fields)
        head = self._heads.get(memo)
        if head is None:
            head = self._heads[memo] = _render(self.split.head, values)
        return head

    def _stem(self, row: int) -> tuple[str, str]:
        suffix = self.dotted[self.table.ext[row]]
        if self.split is None:
            last = _render(self.template, self._values(row, _ALL_FIELDS)).rpartition("/")[2]
        else:
            last = self._render_stem(row)
        return _sanitize(last, NAME_MAX - len(suffix.encode()), self.template.names), suffix

    # --- keeping up with the catalog ----------------------------------------------------

    def update(self, changed: set[int], everything: bool = False) -> set[Key]:
        """Apply changed rows (and the assets and playlists, compared with what was placed);
        returns the folders whose listing or attributes may have changed."""
        table = self.table
        grow = len(table.shas) - len(self.row_album)
        if grow > 0:
            self.row_album.extend([None] * grow)
            self.row_head.extend([None] * grow)
            self.row_asset.extend([None] * grow)
            self._counted.frombytes(bytes(8 * grow))
        affected: set[Key] = set()
        if everything and not self.albums:
            return self._load()
        albums: set[AlbumKey] = set()
        removed = False
        for row in changed:
            old = self.row_album[row]
            if old is not None:
                _discard(self.albums[old].rows, row)
                albums.add(old)
                self.track_count -= 1
                self.total_size -= self._counted[row]
                self._counted[row] = 0
                removed = removed or not table.live[row]
            if table.live[row]:
                key = self._album_of(row)[2]
                album = self.albums.get(key)
                if album is None:
                    album = self.albums[key] = _Album(array("I"))
                album.rows.append(row)
                self.row_album[row] = key
                albums.add(key)
                self.track_count += 1
                self._counted[row] = table.size[row]
                self.total_size += table.size[row]
            else:
                self.row_album[row] = None
        render = set(changed)
        for key in albums:
            album = self.albums[key]
            if not album.rows:
                del self.albums[key]
                self._album_head.pop(key, None)
                continue
            before = (album.year, album.multi_disc)
            self._album_facts(album)
            if (album.year, album.multi_disc) != before:
                render.update(album.rows)
                self._album_head.pop(key, None)
        heads: dict[str, int] = {}  # head -> change in its number of tracks
        for row in render:
            old_head = self.row_head[row]
            new_head = self._head(row) if table.live[row] else None
            if old_head is not None:
                _discard(self.head_rows[old_head], row)
                heads[old_head] = heads.get(old_head, 0) - 1
                affected.add(self._head_folder[old_head][0])
            self.row_head[row] = new_head
            if new_head is not None:
                rows = self.head_rows.get(new_head)
                if rows is None:
                    rows = self.head_rows[new_head] = array("I")
                rows.append(row)
                heads[new_head] = heads.get(new_head, 0) + 1
        affected |= self._count_heads(heads)
        affected |= self._place_assets(changed, removed or everything)
        self._place_playlists(affected)
        self._forget(affected)
        return affected

    def _load(self) -> set[Key]:
        """update() of every row into an empty layout: the same steps in tight loops (a
        300,000-track mount runs them before it is ready). A row's album is looked up by its
        raw values, the memo _album_of fills, without a call per row."""
        table = self.table
        live, sizes = table.live, table.size
        album_of, albums, album_names = self._album_of, self.albums, self._album_names
        row_album, counted = self.row_album, self._counted
        text = table.text
        raws = zip(text["albumartist"], text["artist"], text["album"], table.compilation)
        total = count = 0
        for row, raw in enumerate(raws):
            if live[row]:
                named = album_names.get(raw)
                key = (named or album_of(row))[2]
                album = albums.get(key)
                if album is None:
                    album = albums[key] = _Album(array("I"))
                album.rows.append(row)
                row_album[row] = key
                counted[row] = size = sizes[row]
                total += size
                count += 1
        self.total_size, self.track_count = total, count
        for album in albums.values():
            self._album_facts(album)
        head_of, row_head, head_rows = self._head, self.row_head, self.head_rows
        for album in albums.values():
            if self._album_level:  # one head for all of the album's rows
                head = head_of(album.rows[0])
                for row in album.rows:
                    row_head[row] = head
                rows = head_rows.get(head)
                if rows is None:
                    head_rows[head] = array("I", album.rows)
                else:
                    rows.extend(album.rows)
                continue
            for row in album.rows:
                head = row_head[row] = head_of(row)
                rows = head_rows.get(head)
                if rows is None:
                    rows = head_rows[head] = array("I")
                rows.append(row)
        affected = self._count_heads({head: len(rows) for head, rows in head_rows.items()})
        affected |= self._place_assets(set(), True)
        self._place_playlists(affected)
        return affected

    def _album_facts(self, album: _Album) -> None:
        """The album's year (the one its tracks agree on, else the most common) and whether
        it has several discs; the columns are read by map() in C (25,000 albums at load)."""
        numbers = self.table.numbers
        rows = album.rows
        years = set(map(numbers["year"].__getitem__, rows))
        years.discard(NONE)
        album.year = years.pop() - 1 if len(years) == 1 else _most_common(
            year - 1 for year in map(numbers["year"].__getitem__, rows) if year != NONE)
        discs = set(map(numbers["disc"].__getitem__, rows))
        discs.discard(NONE)
        # disctotal is stored + 1 (0: unknown), so "more than one disc" is a stored value above 2
        album.multi_disc = len(discs) > 1 or max(map(numbers["disctotal"].__getitem__, rows), default=NONE) > 2

    def _count_heads(self, heads: dict[str, int]) -> set[Key]:
        """Move each changed head's tracks between folder spellings; rename folders whose
        majority spelling changed (with everything below them)."""
        affected: set[Key] = set()
        touched: set[Key] = set()
        for head, delta in heads.items():
            found = self._head_folder.get(head)
            if found is None:
                names = tuple(self.sanitize[text] for text in head.split("/")[:-1])
                key = tuple(self.fold[name] for name in names)
                found = self._head_folder[head] = (key, names)
            key, names = found
            for depth in range(1, len(names) + 1):
                folder = key[:depth]
                spelling = self.spellings.get(folder)
                if spelling is None:
                    spelling = self.spellings[folder] = {}
                    self.children.setdefault(folder[:-1], []).append(folder)  # new: not there yet
                    affected.add(folder[:-1])
                name = names[depth - 1]
                count = spelling[name] = spelling.get(name, 0) + delta
                if count <= 0:
                    del spelling[name]
                touched.add(folder)
            if self.head_rows.get(head):
                _add_once(self.folder_heads.setdefault(key, []), head)
            else:
                _discard(self.folder_heads.get(key, []), head)
                self.head_rows.pop(head, None)
            affected.add(key)
        dropped: set[Key] = set()
        for folder in sorted(touched, key=len):
            spelling = self.spellings.get(folder)
            if spelling is None:
                continue
            if not spelling:  # no track below any more
                self._drop(folder, affected)
                dropped.add(folder)
                continue
            if len(spelling) == 1:  # one spelling (the rule): it is the name
                name = next(iter(spelling))
            else:
                name = min(spelling.items(), key=lambda item: (-item[1], item[0]))[0]
            shown = (*self.shown[folder[:-1]], name)
            if self.shown.get(folder) != shown:
                self._rename(folder, shown, affected)
        self._unlink(dropped)
        return affected

    def _drop(self, folder: Key, affected: set[Key]) -> None:
        """Forget a folder and everything below it; its parent's list is _unlink's."""
        for child in self.children.get(folder, ()):
            self._drop(child, affected)
        self.spellings.pop(folder, None)
        self.children.pop(folder, None)
        self.folder_heads.pop(folder, None)
        self.shown.pop(folder, None)
        affected.update((folder, folder[:-1]))

    def _unlink(self, dropped: set[Key]) -> None:
        """Take dropped folders out of their parents' lists, one pass per parent: a refresh
        may drop thousands of the root's folders, which one removal each would make quadratic."""
        for parent in {folder[:-1] for folder in dropped}:
            siblings = self.children.get(parent)
            if siblings is not None:
                siblings[:] = [child for child in siblings if child not in dropped]

    def _rename(self, folder: Key, shown: Path, affected: set[Key]) -> None:
        self.shown[folder] = shown
        affected.update((folder, folder[:-1]))
        for child in self.children.get(folder, ()):
            if child in self.shown:
                self._rename(child, (*shown, self.shown[child][-1]), affected)

    def _forget(self, affected: set[Key]) -> None:
        """Drop what was computed for the affected folders, and for folders whose other
        files read their names (cue sheets, playlists); and the mtimes above them."""
        pending = list(affected)
        while pending:
            key = pending.pop()
            for dependent in self._depends.pop(key, ()):
                if dependent not in affected:
                    affected.add(dependent)
                    pending.append(dependent)
        for key in affected:
            self._names.pop(key, None)
            for name in self._m3u8_depends.pop(key, ()):
                self._m3u8.pop(name, None)
            for depth in range(len(key), -1, -1):
                self._mtimes.pop(key[:depth], None)
        if affected and self.playlists:
            self._mtimes.pop(PLAYLISTS, None)

    # --- assets and playlists ----------------------------------------------------------

    def _place_assets(self, changed: set[int], all_of_them: bool) -> set[Key]:
        state = self.state
        shas = self.table.shas
        alive = self.table.live
        if all_of_them:
            idents = set(state.assets) | set(self.placed) | set(self._asset_stamps)
        else:
            idents = {ident for ident, versioned in state.assets.items()
                      if self._asset_stamps.get(ident) != versioned.stamp}
            for row in changed:
                idents |= self._pending.get(shas[row], set())
                idents.update(self._assets_of(row))
        affected: set[Key] = set()
        rows_of = self.table.rows_by_sha.get  # a lookup per reference: 600,000 of them at 300,000 tracks
        for ident in idents:
            if ident in self._asset_stamps or ident in self.placed:  # else nothing of it to take back
                affected |= self._unplace(ident)
            versioned = state.assets.get(ident)
            if versioned is None:
                self._asset_stamps.pop(ident, None)
                continue
            self._asset_stamps[ident] = versioned.stamp
            asset = versioned.value
            if asset is None:
                continue
            live: dict[str, int] = {}  # the live tracks it leads to, and their rows
            for sha in asset.tracks:
                row = rows_of(sha)
                if row is not None and alive[row]:
                    live[sha] = row
                    continue
                current = state.current(sha)
                if current is None:
                    self._pending.setdefault(sha, set()).add(ident)
                else:
                    live[current] = rows_of(current)  # type: ignore[assignment]
            if not live:
                continue
            files = tuple((name, state.current(sha)) for name, sha in asset.cue.files) if asset.cue else ()
            placed = self.placed[ident] = PlacedAsset(asset, versioned.stamp, tuple(sorted(live)), files)
            for sha in placed.tracks:
                row = live[sha]
                if self.row_asset[row] is None:
                    self.row_asset[row] = ident
                else:
                    self.row_more.setdefault(row, []).append(ident)
                if self.row_head[row] is not None:
                    affected.add(self._head_folder[self.row_head[row]][0])  # type: ignore[index]
        return affected

    def _unplace(self, ident: str) -> set[Key]:
        affected: set[Key] = set()
        versioned = self.state.assets.get(ident)
        old = self.placed.pop(ident, None)
        for sha in (versioned.value.tracks if versioned is not None and versioned.value is not None else ()):
            waiting = self._pending.get(sha)
            if waiting is not None:
                waiting.discard(ident)
                if not waiting:
                    del self._pending[sha]
        if old is None:
            return affected
        for sha in old.asset.tracks:  # the removed version's own references
            waiting = self._pending.get(sha)
            if waiting is not None:
                waiting.discard(ident)
                if not waiting:
                    del self._pending[sha]
        for sha in old.tracks:
            row = self.table.row(sha)
            if row is None:
                continue
            more = self.row_more.get(row)
            if self.row_asset[row] == ident:
                self.row_asset[row] = more.pop(0) if more else None
            elif more and ident in more:
                more.remove(ident)
            if more is not None and not more:
                del self.row_more[row]
            head = self.row_head[row]
            if head is not None:
                affected.add(self._head_folder[head][0])
        return affected

    def _place_playlists(self, affected: set[Key]) -> None:
        state = self.state
        playlists = [PlacedPlaylist(versioned.value, versioned.stamp,
                                    tuple(state.current(entry.sha256) if entry.sha256 else None
                                          for entry in versioned.value.entries))
                     for versioned in state.playlists.values() if versioned.value is not None]
        # A renamed folder they point into reaches them through _depends (see _forget).
        if playlists != self.playlists:
            self.playlists = playlists
            affected.update((PLAYLISTS, ()))
            names = {placed.playlist.name for placed in playlists}  # a changed one is made again when listed
            self._m3u8 = {name: made for name, made in self._m3u8.items() if name in names}


_ALL_FIELDS = tuple(sorted(layout.FIELDS))
PLAYLISTS_SHA = hashlib.sha256(PLAYLISTS_FOLDER.encode()).hexdigest()  # as extras names the folder
_ALBUM_FIELDS = frozenset({"albumartist", "album", "year"})


class _Where(Mapping[str, Path]):
    """sha256 -> path as shown, for the extras of one folder: names other folders on demand."""

    def __init__(self, live: LiveLayout, asking: Key, own: list[tuple[str, int]] | None = None) -> None:
        self.live = live
        self.asking = asking
        self.own = own

    def __getitem__(self, sha: str) -> Path:
        path = self.live.path_of(sha, self.asking, self.own)
        if path is None:
            raise KeyError(sha)
        return path

    def __iter__(self) -> Iterator[str]:
        raise TypeError("a lazy mapping: look up, do not list")

    def __len__(self) -> int:
        return self.live.track_count


