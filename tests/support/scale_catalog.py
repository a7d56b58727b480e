"""A large catalog that looks like a real one, written without any audio: the mount's scale
without the upload (scripts/bench's scale step, the scale tests).

Albums of 8 to 16 tracks under artists of 1 to 6 albums; a few compilations, multi-disc
albums, untagged tracks and names that collide; most albums with a side cover (an asset
record attached to the album's tracks), some with an embedded cover instead, a few with
lyrics; one playlist per 2,000 tracks. Deterministic for a given count and seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from lockerfs.asset import Asset, asset_id_for_embedded, asset_id_for_file, stored_object
from lockerfs.catalog import (add_record, append_records, asset_record, compact, ensure_locker, object_key,
                              playlist_record, track_from_dict)
from lockerfs.layout import DEFAULT_TEMPLATE, VARIOUS_ARTISTS, build_paths, parse_template
from lockerfs.playlist import Playlist, PlaylistEntry
from lockerfs.store import Store
from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo

GENRES = ("Rock", "Jazz", "Classical", "Electronic", "Hip-Hop", "Folk", "Pop", "Metal", "Soul", "Ambient")
WORDS = ("Blue", "Night", "Train", "River", "Glass", "Echo", "Summer", "Stone", "Light", "Dream", "Fire",
         "Ghost", "Paper", "Silver", "Wild", "Heart", "Ocean", "Velvet", "Déjà", "Ünder", "Café", "Noir")
BATCH = 10_000  # records per journal file, as one upload run writes them


def _sha(kind: str, number: int) -> str:
    """A valid sha256 for generated object `number` of a kind ("c" cover, "e" embedded, "a" lyrics)."""
    return f"{kind}{number:060x}"[-64:].rjust(64, "0")


def track_sha(number: int) -> str:
    """The sha256 of generated track `number`: distinct, valid, and stable across runs."""
    return f"{number:016x}" * 4


def _title(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))


def scale_records(count: int, seed: int = 0, first: int = 0) -> Iterator[dict[str, Any]]:
    """Records of `count` tracks numbered from `first`, album by album, each album's cover
    (or lyrics) after its tracks, and a playlist every 2,000 tracks."""
    rng = random.Random(seed * 1_000_003 + first)
    number = first
    end = first + count
    album_number = first  # albums (and so artists) of a later batch never meet an earlier batch's
    recent: list[str] = []
    while number < end:
        album_number += 1
        size = min(rng.randint(8, 16), end - number)
        artist = f"{rng.choice(WORDS)} {rng.choice(WORDS)} {album_number // 3}"
        album = f"{_title(rng)} {album_number}"
        compilation = rng.random() < 0.05
        discs = 2 if rng.random() < 0.05 else 1
        year = rng.randint(1950, 2026)
        genre = rng.choice(GENRES)
        shas = []
        for index in range(size):
            sha = track_sha(number)
            disc = 1 + index * discs // size
            untagged = rng.random() < 0.002
            info = TrackInfo(
                format="flac", codec="flac",
                artist=None if untagged else (f"Guest {number % 500}" if compilation else artist),
                albumartist=None if untagged or compilation else artist,
                album=None if untagged else album,
                title=None if untagged else _title(rng), track=index + 1, tracktotal=size,
                disc=disc if discs > 1 else None, disctotal=discs if discs > 1 else None,
                date=str(year), year=year, genre=genre, compilation=compilation,
                duration=round(rng.uniform(90, 600), 3), bitrate=rng.randint(600_000, 1_200_000),
                sample_rate=44100, channels=2, head_size=rng.randint(4096, 65536), tail_size=160)
            source = f"{artist}/{album}/{index + 1:02d} track.flac"
            yield add_record(Track(sha256=sha, key=object_key(sha, "flac"), size=rng.randint(5, 60) << 20,
                                   ext="flac", source=source, mtime=1.7e9 + number, info=info))
            shas.append(sha)
            recent.append(sha)
            number += 1
        roll = rng.random()
        folder = f"{artist}/{album}"
        if roll < 0.85:
            cover = stored_object(_sha("c", album_number), rng.randint(50_000, 900_000), "jpg")
            yield asset_record(Asset(asset_id_for_file(f"{folder}/cover.jpg"), "cover", cover, tuple(shas),
                                     "cover.jpg", f"{folder}/cover.jpg", mtime=1.7e9))
        elif roll < 0.95:
            picture = _sha("e", album_number)
            cover = stored_object(picture, rng.randint(50_000, 900_000), "png")
            yield asset_record(Asset(asset_id_for_embedded(folder, picture), "cover", cover, tuple(shas),
                                     "", "", embedded=True))
        if rng.random() < 0.03:
            lyrics = stored_object(_sha("a", album_number), rng.randint(500, 5000), "lrc")
            yield asset_record(Asset(asset_id_for_file(f"{folder}/01 track.lrc"), "lyrics", lyrics,
                                     (shas[0],), "01 track.lrc", f"{folder}/01 track.lrc"))
        if len(recent) >= 2_000:
            picks = rng.sample(recent, 60)
            entries = tuple(PlaylistEntry(sha) for sha in picks) + (PlaylistEntry(None, "lost/track.mp3"),)
            yield playlist_record(Playlist(f"Mix {number // 2_000}", f"playlists/mix {number}.m3u8", entries,
                                           mtime=1.7e9))
            recent = []


def write_scale_catalog(store: Store, count: int, seed: int = 0) -> None:
    """A locker whose catalog holds `count` tracks (and their covers and playlists), written
    as journal batches and compacted to snapshots, as a long-lived locker would be."""
    ensure_locker(store)
    batch: list[dict[str, Any]] = []
    for record in scale_records(count, seed):
        batch.append(record)
        if len(batch) >= BATCH:
            append_records(store, batch)
            batch = []
    if batch:
        append_records(store, batch)
    compact(store, grace=timedelta(0))


def append_new_tracks(store: Store, count: int, first: int, seed: int = 1) -> tuple[list[str], tuple[str, ...]]:
    """One journal of `count` new tracks numbered from `first` (and their covers): what an
    upload on another machine adds. Returns the keys written, and the folder (as the
    default layout shows it) of the last new album that is not a compilation."""
    records = list(scale_records(count, seed, first))
    tracks = [track_from_dict(record["track"]) for record in records if record["op"] == "add"]
    paths = build_paths(tracks, parse_template(DEFAULT_TEMPLATE))
    folder = max(path[:-1] for path in paths if path[0] != VARIOUS_ARTISTS)
    return append_records(store, records), folder
