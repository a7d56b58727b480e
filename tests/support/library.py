"""Which mounted path must serve which source file: the test library's manifest, read back.

A mount that swaps two tracks' bytes still shows the right *set* of bytes, so
comparing sets of hashes cannot catch it. Tests compare each path with its
own source instead. The synthesizer writes OUT/manifest.json (source path,
tags as written, size, sha256); `expected_paths` predicts from those tags
where the default layout puts each track. The prediction follows README's
layout rules and is written here, not borrowed from lockerfs.layout, so a
naming bug fails as well as a tree that serves one track under another's name.
It covers the tags the synthesizer writes; hostile tags go through
`catalog_paths` instead, which asks lockerfs's own layout about the catalog.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from lockerfs import catalog, layout
from lockerfs.tags import FORMAT_EXTENSIONS
from tests.support.mounting import lockerfs


@dataclass(frozen=True)
class Source:
    """One file of a synthesized library, as its manifest describes it."""

    path: Path  # absolute
    relative: str  # as `lockerfs upload ROOT` records it (the catalog's `source`)
    sha256: str
    size: int
    format: str  # container
    tags: dict[str, object]


def load_manifest(root: Path) -> list[Source]:
    """ROOT/manifest.json, as scripts/synth_library.py writes it."""
    entries = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    return [Source(root / e["path"], e["path"], e["sha256"], e["size"], e["format"], e["tags"])
            for e in entries]


# --- the default layout, predicted from tags ----------------------------------------------

_NAME_SUBSTITUTES = str.maketrans({"/": "\u2215", "\\": "\u29f5"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _name_part(value: object) -> str:
    text = str(value)
    if _CONTROL.search(text):
        raise ValueError(f"{text!r}: control characters are for catalog_paths(), not this prediction")
    return unicodedata.normalize("NFC", text.translate(_NAME_SUBSTITUTES)).strip()


def _number(value: object) -> int | None:
    """3, "3" and "3/12" are 3; "A1", "" and 0 are no number (as lockerfs.tags reads them)."""
    text = str(value).partition("/")[0].strip() if value is not None else ""
    return int(text) if re.fullmatch(r"[0-9]{1,6}", text) and int(text) > 0 else None


def _year(tags: dict[str, object]) -> int | None:
    match = re.match(r"\d{4}", str(tags.get("date") or ""))
    year = int(match.group()) if match else 0
    return year if 1000 <= year <= 9999 else None


def _album_of(source: Source) -> tuple[str, str]:
    tags = source.tags
    if tags.get("compilation"):
        artist = "Various Artists"
    else:
        artist = _name_part(tags.get("albumartist") or "") or _name_part(tags.get("artist") or "") \
            or "Unknown Artist"
    return artist, _name_part(tags.get("album") or "") or "Unknown Album"


def expected_paths(sources: list[Source]) -> dict[str, Source]:
    """Mount path -> source, for the default layout
    `{albumartist}/{album}[ ({year})]/[[{disc}-]{track:02} ]{title}.ext`.

    Per album: the most common year (ties: the earliest), and disc numbers
    only when the album has a disctotal above 1 or several disc numbers.
    """
    albums: defaultdict[tuple[str, str], list[Source]] = defaultdict(list)
    for source in sources:
        artist, album = _album_of(source)
        albums[(artist.casefold(), album.casefold())].append(source)
    paths: dict[str, Source] = {}
    for members in albums.values():
        years = Counter(y for s in members if (y := _year(s.tags)) is not None)
        year = min(years.items(), key=lambda item: (-item[1], item[0]))[0] if years else None
        discs = {d for s in members if (d := _number(s.tags.get("disc"))) is not None}
        multi_disc = len(discs) > 1 or any((_number(s.tags.get("disctotal")) or 0) > 1 for s in members)
        for source in members:
            artist, album = _album_of(source)
            track, disc = _number(source.tags.get("track")), _number(source.tags.get("disc"))
            number = ""
            if track is not None:
                number = (f"{disc}-" if multi_disc and disc is not None else "") + f"{track:02d} "
            title = _name_part(source.tags.get("title") or "") or _name_part(source.path.stem)
            ext = FORMAT_EXTENSIONS.get(source.format, source.path.suffix.lower().lstrip("."))
            folder = f"{artist}/{album}" + (f" ({year})" if year is not None else "")
            path = f"{folder}/{number}{title}.{ext}"
            assert path not in paths, f"two sources would share {path!r}: pick other tags"
            paths[path] = source
    return paths


# --- what the mount shows ------------------------------------------------------------------

def mounted_files(mountpoint: Path) -> dict[str, Path]:
    """Relative path -> file, for every file in the mount."""
    return {p.relative_to(mountpoint).as_posix(): p for p in mountpoint.rglob("*") if p.is_file()}


SIDE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".lrc", ".cue", ".m3u8"})


def mounted_tracks(mountpoint: Path) -> dict[str, Path]:
    """mounted_files without what upload stores beside the tracks: covers and other images,
    lyrics, cue sheets and playlists (the synthesized tracks carry embedded covers)."""
    return {name: path for name, path in mounted_files(mountpoint).items()
            if path.suffix.lower() not in SIDE_SUFFIXES and not name.startswith("Playlists/")}


def embedded_pictures(path: Path) -> list[bytes]:
    """Every picture embedded in a track (ID3 APIC, FLAC and Ogg pictures, MP4 covr), read
    with mutagen directly: what a cover shown in the mount may be made of."""
    import base64

    import mutagen
    from mutagen.flac import Picture

    audio = mutagen.File(path)
    if audio is None:
        return []
    pictures = [picture.data for picture in getattr(audio, "pictures", [])]
    tags = audio.tags or {}
    for key in list(getattr(tags, "keys", lambda: [])()):
        values = tags[key] if isinstance(tags[key], list) else [tags[key]]
        if key.startswith("APIC"):
            pictures += [frame.data for frame in values]
        elif key == "covr":
            pictures += [bytes(cover) for cover in values]
        elif key.lower() == "metadata_block_picture":
            pictures += [Picture(base64.b64decode(value)).data for value in values]
    return pictures


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_serves_sources(files: dict[str, Path], expected: dict[str, Source]) -> None:
    """Every expected path is mounted and reads as its own source, byte for byte."""
    missing = sorted(set(expected) - set(files))
    assert not missing, f"not in the mount: {missing}; mounted: {sorted(files)}"
    by_sha = {source.sha256: name for name, source in expected.items()}
    for name, source in expected.items():
        data = files[name].read_bytes()
        if sha256_of(data) != source.sha256:
            other = by_sha.get(sha256_of(data))
            raise AssertionError(f"{name} serves the bytes of {other!r}" if other else
                                 f"{name}: {len(data)} bytes that are not its source's {source.size}")


def catalog_paths(locker: str, env: dict[str, str], template: str = layout.DEFAULT_TEMPLATE) -> dict[str, str]:
    """Mount path -> sha256, as lockerfs's layout places the locker's catalog (`lockerfs ls --json`).

    For corpora whose names only lockerfs's sanitizer can predict; it checks
    that the tree serves each path the object the layout gave it.
    """
    output = lockerfs("ls", "--json", locker, env=env).stdout
    tracks = [catalog.track_from_dict(json.loads(line)) for line in output.splitlines()]
    placed = layout.build_paths(tracks, layout.parse_template(template))
    return {"/".join(path): track.sha256 for path, track in placed.items()}
