"""The files beside the tracks that are part of the music: images, lyrics, cue sheets, playlists.

What a side file is comes from its name (an image's extension, .lrc, .cue,
.m3u, .m3u8, any case, trailing dots and spaces forgiven as for audio); what
it holds is then checked against that: an image must be one by its bytes
(asset.image_type; the object is named by what the bytes are), a lyrics
file, cue sheet or playlist must be text. Everything else that is not audio
(.txt, .nfo, .log, Thumbs.db, .DS_Store) stays "not audio", as before.

read_side_file reads a file once: it hashes the bytes (SHA-256 names the
object, MD5 is the PUT's Content-MD5) and decodes the text kinds from the
same bytes. Files up to HOLD_BYTES are held in memory until sent; larger
images (a 50 MB booklet scan) are hashed in chunks and sent from the file,
as large tracks are. The text kinds have caps of their own: a file past its
cap is not what its name says, and it would be held in memory and, for cue
sheets and playlists, copied into the catalog.

Text is decoded as players decode it: a BOM (UTF-8, UTF-16) says the
encoding; else UTF-8 if the bytes are valid UTF-8; else Windows-1252 (what
"ANSI" meant on the Windows machines most .m3u and .cue files come from);
else Latin-1, which decodes anything. A NUL in the text means binary
content, not a cue sheet or playlist.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lockerfs.asset import CONTENT_TYPES, MAX_CUE_TEXT, StoredObject, image_type, stored_object
from lockerfs.containers import AUDIO_EXTENSIONS, name_extension

IMAGE_NAME_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "png", "gif", "webp", "bmp", "tif", "tiff"})
KINDS = {**dict.fromkeys(IMAGE_NAME_EXTENSIONS, "image"), "lrc": "lyrics", "cue": "cue",
         "m3u": "playlist", "m3u8": "playlist"}
HOLD_BYTES = 16 * 1024 * 1024  # as upload.MEMORY_THRESHOLD: at most this is held per file in flight
# Caps per kind, in bytes: real files are a few KiB (a 100,000-entry playlist is about 10 MB).
MAX_TEXT_BYTES = {"lyrics": 1024 * 1024, "cue": 4 * MAX_CUE_TEXT, "playlist": HOLD_BYTES}
HASH_CHUNK = 8 * 1024 * 1024
SNIFF_BYTES = 16  # enough for image_type


class NotASideFile(Exception):
    """The file's content is not what its name says; str() is the one-sentence reason."""


class ChangedWhileRead(Exception):
    """The file was written to while it was read: its bytes and its hash may disagree."""


@dataclass(slots=True)
class SideFile:
    """A side file read and hashed, waiting to be sent; or one recorded before (data None)."""

    path: Path
    relative: str  # as upload records `source`: below the folder given to upload
    stat: os.stat_result
    kind: str  # image, lyrics, cue, playlist
    object: StoredObject
    md5: str = ""  # "" when it was not read this run (unchanged)
    data: bytes | None = None  # the bytes while held in memory (let go once sent)
    text: str = ""  # cue sheets and playlists, decoded
    read: bool = True  # read this run (False: taken as recorded before)
    stored: bool = field(default=False)  # its object is in the bucket (sent, or found there)


def side_kind(name: str) -> str | None:
    """"image", "lyrics", "cue" or "playlist" from a file name; None for anything else."""
    return KINDS.get(name_extension(name))


def read_side_file(path: Path, relative: str, stat: os.stat_result, kind: str) -> SideFile:
    """Read, check and hash one side file; raises NotASideFile or OSError."""
    if kind in MAX_TEXT_BYTES and stat.st_size > MAX_TEXT_BYTES[kind]:
        raise NotASideFile(f"too large for a {_NOUNS[kind]} ({stat.st_size:,} bytes, at most "
                           f"{MAX_TEXT_BYTES[kind]:,})")
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
        ext = _object_ext(kind, path.name, head)
        data: bytes | None = head + f.read() if stat.st_size <= HOLD_BYTES else None
        size = 0
        for chunk in [data] if data is not None else _chunks(f, head):
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
        after = os.fstat(f.fileno())
    if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns) or size != stat.st_size:
        raise ChangedWhileRead("file changed while it was being read")
    side = SideFile(path, relative, stat, kind, stored_object(sha256.hexdigest(), size, ext), md5.hexdigest(), data)
    if kind in ("cue", "playlist"):
        assert data is not None  # within the cap, so held
        side.text = decode_text(data, keep_bom=kind == "cue")
        if "\x00" in side.text:
            raise NotASideFile(f"not a {_NOUNS[kind]} (binary content)")
        if kind == "cue" and len(side.text) > MAX_CUE_TEXT:
            raise NotASideFile(f"too large for a cue sheet ({len(side.text):,} characters)")
    elif kind == "lyrics" and "\x00" in decode_text(data or b""):
        raise NotASideFile("not a lyrics file (binary content)")
    return side


def _chunks(f: object, head: bytes) -> Iterator[bytes]:
    """A large file's bytes in chunks, the head already read first (hashlib lets go of the GIL)."""
    yield head
    while chunk := f.read(HASH_CHUNK):  # type: ignore[attr-defined]
        yield chunk


_NOUNS = {"image": "image", "lyrics": "lyrics file", "cue": "cue sheet", "playlist": "playlist"}


def _object_ext(kind: str, name: str, head: bytes) -> str:
    """The object's extension: what an image's bytes are; the kind's own for text."""
    if kind == "image":
        ext = image_type(head)
        if ext is None:
            raise NotASideFile(f"not an image (.{name_extension(name)} content not recognized)")
        return ext
    if kind == "playlist":
        return "m3u8" if name_extension(name) == "m3u8" else "m3u"
    return {"lyrics": "lrc", "cue": "cue"}[kind]


def content_type(side: SideFile) -> str:
    return CONTENT_TYPES.get(side.object.ext, "application/octet-stream")


def decode_text(data: bytes, keep_bom: bool = False) -> str:
    """Text from a cue sheet's or playlist's bytes (see the module docstring).

    keep_bom: a UTF-8 BOM stays in the text as U+FEFF (a cue sheet is served
    with it, as written); otherwise it is dropped.
    """
    for bom, encoding in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            return data[len(bom):].decode(encoding, "replace")
    if data.startswith(codecs.BOM_UTF8):
        text = data.decode("utf-8", "replace")
        return text if keep_bom else text[1:]
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


@dataclass(frozen=True, slots=True)
class _Look:
    """What a folder's listing says about it (names only; an image is confirmed by 16 bytes)."""

    image: bool  # holds an image
    audio_stems: frozenset[str]  # folded stems of the files named as audio
    subfolders: tuple[str, ...]


class FolderProbe:
    """Answers the read stage's questions about a side file's or track's neighbours, from a
    listing of each folder made once (the walk finishes a folder before the next):

    - should a track's embedded cover be extracted? Only if no image is beside it and
      none is lent from above (albumassets.py);
    - does a side file belong to any track? An image needs audio in its folder, the
      folder above or one below; lyrics, an audio file of the same stem; a cue sheet,
      audio beside it. One that does not is reported and not uploaded at all.
    """

    REMEMBERED = 256  # folders

    def __init__(self) -> None:
        self._looks: OrderedDict[str, _Look] = OrderedDict()
        self._lock = threading.Lock()

    def wants_art(self, folder: Path) -> bool:
        above = self._look(str(folder.parent))
        return not self._look(str(folder)).image and not (above.image and not above.audio_stems)

    def why_homeless(self, path: Path, kind: str) -> str | None:
        """Why the side file belongs to no track, or None if it may."""
        folder = str(path.parent)
        here = self._look(folder)
        if kind == "image":
            if here.audio_stems or self._look(str(path.parent.parent)).audio_stems or any(
                    self._look(os.path.join(folder, sub)).audio_stems for sub in here.subfolders):
                return None
            return "an image with no track in its folder, the folder above or the folders below"
        if kind == "lyrics":
            own = stem(path.name)
            return None if fold_name(own) in here.audio_stems else f"lyrics of no audio file (no {own!r} beside it)"
        if kind == "cue":
            return None if here.audio_stems else "a cue sheet with no audio file beside it"
        return None

    def _look(self, folder: str) -> _Look:
        with self._lock:
            look = self._looks.get(folder)
            if look is not None:
                self._looks.move_to_end(folder)
                return look
        look = _listing(folder)
        with self._lock:
            self._looks[folder] = look
            if len(self._looks) > self.REMEMBERED:
                self._looks.popitem(last=False)
        return look


def _listing(folder: str) -> _Look:
    """An unreadable folder holds nothing."""
    image = False
    stems: set[str] = set()
    subfolders: list[str] = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.name)
                    continue
                ext = name_extension(entry.name)
                if ext in AUDIO_EXTENSIONS:
                    stems.add(fold_name(stem(entry.name)))
                elif not image and KINDS.get(ext) == "image":
                    image = _sniffs_as_image(entry.path)
    except OSError:
        pass
    return _Look(image, frozenset(stems), tuple(subfolders))


def stem(name: str) -> str:
    """A file name without its extension (trailing dots and spaces forgiven, as for audio)."""
    trimmed = name.rstrip(". ")
    stem, dot, _ext = trimmed.rpartition(".")
    return stem if dot and stem else trimmed


def fold_name(text: str) -> str:
    """How Windows compares names: NFC, case-folded."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


def _sniffs_as_image(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return image_type(f.read(SNIFF_BYTES)) is not None
    except OSError:
        return False
