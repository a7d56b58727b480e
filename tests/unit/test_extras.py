"""The mount's other files, laid out from catalog records: covers, images, lyrics, cue sheets, playlists."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any

import pytest

from lockerfs import catalog, extras
from lockerfs.asset import Asset, CueSheet, asset_id_for_embedded, asset_id_for_file, stored_object
from lockerfs.cache import ObjectRef
from lockerfs.catalog import CatalogState
from lockerfs.extras import ExtraFile, cover_rank
from lockerfs.layout import DEFAULT_TEMPLATE, parse_template
from lockerfs.playlist import Playlist, PlaylistEntry
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo

TEMPLATE = parse_template(DEFAULT_TEMPLATE)
ALBUM = ("Miles Davis", "Kind of Blue (1959)")


def track(n: int, album: str = "Kind of Blue", artist: str = "Miles Davis", ext: str = "flac", **info: Any) -> Track:
    sha = hashlib.sha256(f"track {n} {album} {info}".encode()).hexdigest()
    fields = {"artist": artist, "album": album, "title": f"Song {n}", "track": n, "year": 1959, "duration": 60.4 + n,
              **info}
    return Track(sha, catalog.object_key(sha, ext), 1000 + n, ext, f"{album}/{n:02d}.{ext}", 1_700_000_000.0,
                 TrackInfo(format=ext, codec=ext, **fields))


TRACKS = [track(1), track(2), track(3)]


def obj(label: str, ext: str, size: int = 1000) -> Any:
    return stored_object(hashlib.sha256(label.encode()).hexdigest(), size, ext)


def side(name: str, role: str = "image", size: int = 1000, tracks: list[Track] = TRACKS, source: str = "src",
         ext: str = "jpg") -> Asset:
    return Asset(asset_id_for_file(f"{source}/{name}"), role, obj(f"{source}/{name}", ext, size),
                 tuple(t.sha256 for t in tracks), name, f"{source}/{name}", mtime=1_700_000_100.0)


def embedded(picture: str, tracks: list[Track], ext: str = "jpg") -> Asset:
    return Asset(asset_id_for_embedded("src", picture), "cover", obj(picture, ext), tuple(t.sha256 for t in tracks),
                 "", "", embedded=True)


def lyrics(of: Track, label: str = "lrc") -> Asset:
    return Asset(asset_id_for_file(f"src/{label}/{of.sha256}"), "lyrics", obj(label + of.sha256, "lrc", 40),
                 (of.sha256,), f"{label}.lrc", "")


def lay_out(*records: dict[str, Any], tracks: list[Track] = TRACKS, template: Any = TEMPLATE,
            order: int = 0) -> dict[str, ExtraFile]:
    """Apply tracks and records (in `order`-shuffled order, stamps by position) and lay out the extras."""
    stamped = list(enumerate([*(catalog.add_record(t) for t in tracks), *records]))
    random.Random(order).shuffle(stamped)
    state = CatalogState()
    for position, record in stamped:
        state.apply((catalog.new_id(1_700_000_000 + position), 0), record)
    _, files = extras.lay_out(state, template)
    return {"/".join(path): file for path, file in files.items()}


def in_album(files: dict[str, ExtraFile]) -> dict[str, ExtraFile]:
    prefix = "/".join(ALBUM) + "/"
    return {path[len(prefix):]: file for path, file in files.items() if path.startswith(prefix)}


def object_of(file: ExtraFile) -> ObjectRef:
    assert isinstance(file.content, ObjectRef)
    return file.content


# --- covers ---------------------------------------------------------------------------

def test_a_side_cover_is_cover_jpg_read_from_its_object() -> None:
    cover = side("folder.jpg", role="cover")
    files = in_album(lay_out(catalog.asset_record(cover)))
    assert list(files) == ["cover.jpg"]
    assert object_of(files["cover.jpg"]) == ObjectRef(cover.object.key, cover.object.sha256, cover.object.size)
    assert files["cover.jpg"].mtime == cover.mtime and files["cover.jpg"].size == 1000


@pytest.mark.parametrize("name, rank", [("cover.jpg", 0), ("Cover.PNG", 0), ("folder.jpg", 1), ("FRONT.jpeg", 2),
                                        ("AlbumArtSmall.jpg", 3), ("AlbumArt_{GUID}_Large.jpg", 3),
                                        ("back.jpg", 4), ("covers.jpg", 4), ("cover", 0), ("my cover.jpg", 4)])
def test_cover_names_rank_as_the_rule_says(name: str, rank: int) -> None:
    assert cover_rank(name) == rank


def test_among_side_images_the_rule_picks_by_name_then_size() -> None:
    # Two source folders landing in one mount folder, each with its own choice of cover.
    big_folder = side("folder.jpg", role="cover", size=900_000, tracks=TRACKS[:2], source="cd1")
    small_cover = side("cover.png", role="cover", size=20_000, tracks=TRACKS[2:], source="cd2", ext="png")
    files = in_album(lay_out(catalog.asset_record(big_folder), catalog.asset_record(small_cover)))
    assert object_of(files["cover.png"]).sha256 == small_cover.object.sha256  # cover.* before folder.*
    assert object_of(files["folder.jpg"]).sha256 == big_folder.object.sha256  # still shown, under its name
    assert set(files) == {"cover.png", "folder.jpg"}


def test_without_a_chosen_cover_the_largest_side_image_is_the_cover() -> None:
    small, large = side("scan1.jpg", size=10_000), side("scan2.jpg", size=50_000)
    files = in_album(lay_out(catalog.asset_record(small), catalog.asset_record(large)))
    assert object_of(files["cover.jpg"]).sha256 == large.object.sha256
    assert set(files) == {"cover.jpg", "scan1.jpg"}


def test_embedded_art_of_the_first_track_is_the_cover_when_there_is_no_side_image() -> None:
    later = embedded("picture of track 3", TRACKS[2:], ext="jpg")
    first = embedded("picture of tracks 1-2", TRACKS[:2], ext="png")
    for order in range(4):
        files = in_album(lay_out(catalog.asset_record(later), catalog.asset_record(first), order=order))
        assert list(files) == ["cover.png"]  # whichever the bytes are
        assert object_of(files["cover.png"]).sha256 == first.object.sha256


def test_a_side_image_wins_over_embedded_art() -> None:
    files = in_album(lay_out(catalog.asset_record(embedded("pic", TRACKS)), catalog.asset_record(side("back.jpg"))))
    assert list(files) == ["cover.jpg"] and files["cover.jpg"].size == 1000


def test_no_art_no_cover_and_no_extras_at_all() -> None:
    assert lay_out() == {}
    files = in_album(lay_out(catalog.asset_record(lyrics(TRACKS[0]))))
    assert "cover.jpg" not in files and "cover.png" not in files


def test_the_same_image_uploaded_from_two_roots_is_shown_once() -> None:
    one, two = side("back.jpg", source="root1"), side("back.jpg", source="root2")
    two = dataclasses.replace(two, object=one.object)
    files = in_album(lay_out(catalog.asset_record(side("cover.jpg", role="cover")), catalog.asset_record(one),
                             catalog.asset_record(two)))
    assert set(files) == {"cover.jpg", "back.jpg"}


def test_other_images_never_take_a_name_already_used() -> None:
    other_cover = side("cover.jpg", source="other")  # not chosen: cover.jpg is taken
    clash = side("01 Song 1.flac", ext="jpg")  # an image whose name is a track's
    files = in_album(lay_out(catalog.asset_record(side("cover.jpg", role="cover")), catalog.asset_record(other_cover),
                             catalog.asset_record(clash)))
    assert f"cover [{other_cover.object.sha256[:8]}].jpg" in files
    assert f"01 Song 1 [{clash.object.sha256[:8]}].flac" in files
    assert len(files) == 3


def test_an_asset_shows_in_every_folder_its_tracks_land_in() -> None:
    elsewhere = track(9, album="Sketches of Spain")
    files = lay_out(catalog.asset_record(side("cover.jpg", role="cover", tracks=[TRACKS[0], elsewhere])),
                    tracks=[*TRACKS, elsewhere])
    assert set(files) == {"Miles Davis/Kind of Blue (1959)/cover.jpg", "Miles Davis/Sketches of Spain (1959)/cover.jpg"}


# --- lyrics -----------------------------------------------------------------------------

def test_lyrics_sit_next_to_their_track_under_its_name() -> None:
    files = in_album(lay_out(catalog.asset_record(lyrics(TRACKS[1]))))
    assert list(files) == ["02 Song 2.lrc"] and files["02 Song 2.lrc"].kind == "lyrics"


def test_of_two_lyrics_for_one_track_the_newest_record_is_shown() -> None:
    old, new = lyrics(TRACKS[0], "old"), lyrics(TRACKS[0], "new")
    files = in_album(lay_out(catalog.asset_record(old), catalog.asset_record(new)))
    assert list(files) == ["01 Song 1.lrc"]
    assert object_of(files["01 Song 1.lrc"]).sha256 == new.object.sha256


def test_lyrics_of_a_track_with_a_maximal_name_still_fit() -> None:
    long = track(4, title="x" * 300, ext="wv")
    files = in_album(lay_out(catalog.asset_record(lyrics(long)), tracks=[long]))
    (name,) = files
    assert name.endswith(".lrc") and len(name.encode()) <= 255


# --- cue sheets ---------------------------------------------------------------------------

def cue_asset(text: str, files: list[tuple[str, Track]], name: str = "Kind of Blue.cue") -> Asset:
    return Asset(asset_id_for_file(f"src/{name}"), "cue", obj(text, "cue", len(text)), (), name, f"src/{name}",
                 cue=CueSheet(text, tuple((file, t.sha256) for file, t in files)))


def test_a_cue_sheet_points_at_the_mounted_names() -> None:
    text = 'TITLE "Kind of Blue"\nFILE "01.wav" WAVE\n  TRACK 01 AUDIO\nFILE "02.wav" WAVE\n  TRACK 02 AUDIO\n'
    files = in_album(lay_out(catalog.asset_record(cue_asset(text, [("01.wav", TRACKS[0]), ("02.wav", TRACKS[1])]))))
    assert files["Kind of Blue.cue"].content == (
        b'TITLE "Kind of Blue"\nFILE "01 Song 1.flac" WAVE\n  TRACK 01 AUDIO\n'
        b'FILE "02 Song 2.flac" WAVE\n  TRACK 02 AUDIO\n')
    assert files["Kind of Blue.cue"].size == len(files["Kind of Blue.cue"].content)


def test_an_image_cue_sheet_is_named_after_its_image() -> None:
    image = track(1, album="Live", title="Live at the Plugged Nickel", track=None)
    text = 'FILE "CDImage.ape" WAVE\n  TRACK 01 AUDIO\n    INDEX 01 00:00:00\n  TRACK 02 AUDIO\n    INDEX 01 05:00:00\n'
    files = lay_out(catalog.asset_record(cue_asset(text, [("CDImage.ape", image)], name="CDImage.cue")), tracks=[image])
    assert set(files) == {"Miles Davis/Live (1959)/Live at the Plugged Nickel.cue"}
    assert b'FILE "Live at the Plugged Nickel.flac" WAVE' in files.popitem()[1].content  # type: ignore[operator]


def test_a_cue_sheet_whose_files_landed_in_two_folders_uses_relative_paths() -> None:
    other = track(7, album="Bonus")
    text = 'FILE "a.wav" WAVE\nFILE "b.wav" WAVE\n'
    files = lay_out(catalog.asset_record(cue_asset(text, [("a.wav", TRACKS[0]), ("b.wav", other)])),
                    tracks=[*TRACKS, other])
    here = files["Miles Davis/Kind of Blue (1959)/Kind of Blue.cue"].content
    assert here == b'FILE "01 Song 1.flac" WAVE\nFILE "../Bonus (1959)/07 Song 7.flac" WAVE\n'
    there = files["Miles Davis/Bonus (1959)/Kind of Blue.cue"].content
    assert there == b'FILE "../Kind of Blue (1959)/01 Song 1.flac" WAVE\nFILE "07 Song 7.flac" WAVE\n'


def test_a_cue_sheet_changes_bytes_and_identity_when_a_track_is_renamed() -> None:
    text = 'FILE "a.wav" WAVE\n'
    record = catalog.asset_record(cue_asset(text, [("a.wav", TRACKS[0])], name="x.cue"))
    before = lay_out(record)
    renamed = dataclasses.replace(TRACKS[0], info=dataclasses.replace(TRACKS[0].info, title="Renamed"))
    after = lay_out(record, tracks=[renamed, *TRACKS[1:]])
    (old,), (new,) = before.values(), after.values()
    assert old.identity != new.identity and b"01 Renamed.flac" in new.content  # type: ignore[operator]


# --- playlists -------------------------------------------------------------------------------

def test_a_playlist_is_an_m3u8_of_relative_paths_with_extinf() -> None:
    gone = track(99)  # resolved at upload, since removed from the locker
    entries = (PlaylistEntry(TRACKS[2].sha256, "music/03.flac"), PlaylistEntry(None, r"C:\Music\never.mp3"),
               PlaylistEntry(TRACKS[0].sha256), PlaylistEntry(gone.sha256, "old/gone.flac"))
    files = lay_out(catalog.playlist_record(Playlist("Road Trip", "lists/road.m3u", entries, mtime=1_700_000_500.0)))
    playlist = files["Playlists/Road Trip.m3u8"]
    assert playlist.content == (
        "#EXTM3U\n#PLAYLIST:Road Trip\n"
        "#EXTINF:63,Miles Davis - Song 3\n../Miles Davis/Kind of Blue (1959)/03 Song 3.flac\n"
        "# not in the locker: C:\\Music\\never.mp3\n"
        "#EXTINF:61,Miles Davis - Song 1\n../Miles Davis/Kind of Blue (1959)/01 Song 1.flac\n"
        "# not in the locker: old/gone.flac\n").encode()
    assert playlist.mtime == 1_700_000_500.0 and playlist.kind == "playlist"


def test_the_playlists_folder_gives_way_to_an_artist_called_playlists() -> None:
    artist = track(5, artist="Playlists", album="Greatest")
    files = lay_out(catalog.playlist_record(Playlist("Mix", "", (PlaylistEntry(artist.sha256),))),
                    tracks=[*TRACKS, artist])
    (path,) = files
    folder, name = path.split("/")
    assert folder.startswith("Playlists [") and name == "Mix.m3u8"
    assert files[path].content.endswith(b"\n../Playlists/Greatest (1959)/05 Song 5.flac\n")  # type: ignore[union-attr]


def test_playlist_names_are_sanitized_and_kept_apart() -> None:
    records = [catalog.playlist_record(Playlist(name, "", (PlaylistEntry(TRACKS[0].sha256),)))
               for name in ("AC/DC: best?", "AC\u2215DC: best?", ".hidden")]
    names = {path.split("/")[1] for path in lay_out(*records)}
    plain = "AC\u2215DC: best?.m3u8"
    assert plain in names and "\u2024hidden.m3u8" in names and len(names) == 3
    windows = {path.split("/")[1] for path in lay_out(*records, template=parse_template(DEFAULT_TEMPLATE, "windows"))}
    assert "AC\u2215DC\uff1a best\uff1f.m3u8" in windows and len(windows) == 3


def test_playlist_entries_follow_a_retagged_track() -> None:
    old, new = TRACKS[0], track(1, title="Song One")
    files = lay_out(catalog.playlist_record(Playlist("Mix", "", (PlaylistEntry(old.sha256),))),
                    catalog.add_record(new), catalog.remove_record(old.sha256, replaced_by=new.sha256))
    assert files["Playlists/Mix.m3u8"].content.endswith(b"/01 Song One.flac\n")  # type: ignore[union-attr]


# --- the whole ----------------------------------------------------------------------------------

def everything() -> list[dict[str, Any]]:
    return [catalog.asset_record(side("cover.jpg", role="cover")), catalog.asset_record(side("back.jpg")),
            catalog.asset_record(side("cd.jpg", source="x")), catalog.asset_record(embedded("pic", TRACKS)),
            catalog.asset_record(lyrics(TRACKS[0])), catalog.asset_record(lyrics(TRACKS[2], "two")),
            catalog.asset_record(cue_asset('FILE "a.wav" WAVE\n', [("a.wav", TRACKS[0])])),
            catalog.playlist_record(Playlist("B", "", (PlaylistEntry(TRACKS[1].sha256),))),
            catalog.playlist_record(Playlist("a", "", (PlaylistEntry(None, "x"),)))]


def test_the_layout_is_the_same_whatever_order_the_records_come_in() -> None:
    results = [sorted((path, file.identity) for path, file in lay_out(*everything(), order=seed).items())
               for seed in range(5)]
    assert all(result == results[0] for result in results)
    assert [path for path, _ in results[0]] == [
        "Miles Davis/Kind of Blue (1959)/01 Song 1.cue", "Miles Davis/Kind of Blue (1959)/01 Song 1.lrc",
        "Miles Davis/Kind of Blue (1959)/03 Song 3.lrc", "Miles Davis/Kind of Blue (1959)/back.jpg",
        "Miles Davis/Kind of Blue (1959)/cd.jpg", "Miles Davis/Kind of Blue (1959)/cover.jpg",
        "Playlists/B.m3u8", "Playlists/a.m3u8"]


def test_windows_names_reach_the_other_files_too() -> None:
    odd = track(1, album='What? "Live" <at> Home|Away', title="Intro: Part*1")
    files = lay_out(catalog.asset_record(lyrics(odd)), catalog.asset_record(side("cover.jpg", "cover", tracks=[odd])),
                    tracks=[odd], template=parse_template(DEFAULT_TEMPLATE, "windows"))
    assert set(files) == {
        "Miles Davis/What\uff1f \uff02Live\uff02 \uff1cat\uff1e Home\uff5cAway (1959)/01 Intro\uff1a Part\uff0a1.lrc",
        "Miles Davis/What\uff1f \uff02Live\uff02 \uff1cat\uff1e Home\uff5cAway (1959)/cover.jpg"}


def test_hostile_names_in_records_still_make_a_valid_tree() -> None:
    from lockerfs.tree import Tree
    from tests.unit.test_untrusted_catalog import HOSTILE_TEXT, assert_valid_tree

    records = []
    for n, text in enumerate(HOSTILE_TEXT):
        records.append(catalog.asset_record(dataclasses.replace(side(f"img{n}.jpg"), name=text,
                                                                id=hashlib.sha256(f"h{n}".encode()).hexdigest())))
        if text.strip("\x00 "):
            records.append(catalog.playlist_record(Playlist(text, text, (PlaylistEntry(TRACKS[0].sha256, text),
                                                                         PlaylistEntry(None, text)))))
    odd = track(8, album="../..", title="/etc/passwd\u202e", artist="\x00")
    records.append(catalog.asset_record(lyrics(odd)))
    for names in ("default", "windows"):
        state = CatalogState()
        for index, record in enumerate([*(catalog.add_record(t) for t in [*TRACKS, odd]), *records]):
            state.apply((catalog.new_id(1_700_000_000 + index), 0), record)
        assert state.rejected == 0
        tree = Tree()
        paths, files = extras.lay_out(state, parse_template(DEFAULT_TEMPLATE, names))
        tree.rebuild(paths, files)
        assert_valid_tree(tree)
        assert len(files) == len(records)  # every playlist, the lyrics, the images (one of them as the cover)
        for file in files.values():
            if file.kind == "playlist":
                assert isinstance(file.content, bytes)
                lines = file.content.decode().splitlines()
                assert all(line.startswith("#") or line.startswith("../") for line in lines)
