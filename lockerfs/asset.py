"""Assets: the files of an album that are not audio (covers, other images, lyrics, cue sheets).

An asset is a content-addressed object in the bucket plus what it is to the
library: its role, the track(s) it belongs to (by SHA-256), and the name it
had. It is attached to tracks, not to a folder, so the mount shows it in
whatever folder those tracks land in under the current layout, and it
vanishes when they are removed. Roles:

- cover: the album's picture. Either a side image that upload chose as the
  cover of its source folder (`embedded` false), or the front cover
  extracted from a track's embedded art into its own object (`embedded`
  true), so that showing it never reads a track.
- image: another image of the album folder (back, CD, booklet scan).
- lyrics: the .lrc of one track.
- cue: a cue sheet; its text is kept in the record, with each FILE name it
  names mapped to a track, so the mount can rewrite FILE lines to the
  mount's names without fetching anything.

Records come from a bucket others may write to: asset_from_dict validates
every field and raises ValueError saying what is wrong, and the writers use
the same function, so nothing a writer accepts is refused by a reader.
"""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any

ROLES = ("cover", "image", "lyrics", "cue")
OBJECT_PREFIX = "objects/sha256/"
MAX_OBJECT_SIZE = 1 << 40
MAX_NAME = 255  # characters of a file's base name
MAX_SOURCE = 4096
MAX_ATTACHED = 10_000  # tracks one asset belongs to (a folder of an unsorted library)
MAX_CUE_TEXT = 256 * 1024  # characters; real cue sheets are a few KiB
MAX_CUE_FILES = 1000

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
EXT_RE = re.compile(r"^[a-z0-9]{1,8}$")
_HEX_RUN = re.compile(r"[0-9a-f]*")
CONTENT_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}/[a-z0-9][a-z0-9.+-]{0,63}(; ?charset=[a-z0-9_-]{1,32})?$",
                              re.IGNORECASE)
# Controls, and the separators some programs split lines at: no text of ours spans two lines.
_CONTROLS = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029])

# What a browser or player is told an object is when it fetches it directly
# (a presigned URL); upload sets the same value on the object.
CONTENT_TYPES = {
    "jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp",
    "tif": "image/tiff", "lrc": "text/plain", "txt": "text/plain", "cue": "application/x-cue",
    "m3u": "audio/x-mpegurl", "m3u8": "audio/x-mpegurl",
}
IMAGE_EXTENSIONS = frozenset({"jpg", "png", "gif", "webp", "bmp", "tif"})


def object_key(sha256: str, ext: str) -> str:
    return f"{OBJECT_PREFIX}{sha256[:2]}/{sha256}.{ext}"


def image_type(head: bytes) -> str | None:
    """The canonical extension of an image from its first bytes, or None if it is not one we show.

    Writers name an image object by what its bytes are, not by its file name,
    so the mount can call the cover cover.jpg or cover.png truthfully.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tif"
    return None


def clean_text(value: object, limit: int) -> str:
    """A display string from untrusted input: no controls (so no line breaks), NFC, capped."""
    if not isinstance(value, str):
        return ""
    if value.isascii() and value.isprintable():  # most names: nothing to remove, already NFC
        return value[:limit].strip()
    text = value[: limit * 2]
    if text.isprintable() and unicodedata.is_normalized("NFC", text):  # nothing to remove or compose
        return text[:limit].strip()
    text = text.translate(_CONTROLS)
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become "?"
    return unicodedata.normalize("NFC", text)[:limit].strip()


def base_name(value: object) -> str:
    """The last component of a path (either separator), cleaned: a name never carries folders."""
    text = value.replace("\\", "/").rsplit("/", 1)[-1] if isinstance(value, str) else ""
    return clean_text(text, MAX_NAME)


def _all_shas(values: list[Any]) -> bool:
    """Whether every item is a sha256 in hex: one regex over all of them (an album's cover
    names a dozen tracks, and a large catalog has tens of thousands of covers)."""
    if not all(type(value) is str and len(value) == 64 for value in values):
        return False
    return _HEX_RUN.fullmatch("".join(values)) is not None


def _sha(value: object, what: str) -> str:
    if not isinstance(value, str) or not SHA_RE.match(value):
        raise ValueError(f"bad {what}: not 64 lower-case hex digits")
    return value


def clean_mtime(value: object) -> float:
    """A plausible modification time (seconds since the epoch) from untrusted input, else 0."""
    return float(value) if type(value) in (int, float) and 0 <= value < 1e11 else 0.0  # type: ignore[operator]


# --- stored objects ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoredObject:
    """An immutable object in the bucket, named by the SHA-256 of its bytes."""

    sha256: str
    key: str  # objects/sha256/<aa>/<sha256>.<ext>
    size: int
    ext: str
    content_type: str


def stored_object(sha256: str, size: int, ext: str, content_type: str | None = None) -> StoredObject:
    """A StoredObject for bytes a writer has stored (or is about to); validated like a record."""
    return object_from_dict({"sha256": sha256, "key": object_key(sha256, ext), "size": size, "ext": ext,
                             "content_type": content_type or CONTENT_TYPES.get(ext, "application/octet-stream")})


def object_to_dict(obj: StoredObject) -> dict[str, Any]:
    return {"sha256": obj.sha256, "key": obj.key, "size": obj.size, "ext": obj.ext,
            "content_type": obj.content_type}


def object_from_dict(raw: Any) -> StoredObject:
    """Validate an untrusted object reference; the key must be derived from sha256 and ext."""
    if not isinstance(raw, dict):
        raise ValueError("object is not a JSON object")
    sha = _sha(raw.get("sha256"), "object sha256")
    ext = raw.get("ext")
    if not isinstance(ext, str) or not EXT_RE.match(ext):
        raise ValueError("bad object ext")
    if raw.get("key") != object_key(sha, ext):
        raise ValueError("object key does not match sha256 and ext")
    size = raw.get("size")
    if type(size) is not int or not 0 <= size <= MAX_OBJECT_SIZE:
        raise ValueError("bad object size")
    content_type = raw.get("content_type")
    if not isinstance(content_type, str) or not CONTENT_TYPE_RE.match(content_type):
        content_type = CONTENT_TYPES.get(ext, "application/octet-stream")  # a label, not worth a rejection
    return StoredObject(sha, object_key(sha, ext), size, sys.intern(ext), content_type.lower())


# --- assets ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CueSheet:
    """A cue sheet's text and, for each FILE it names, the track holding that audio."""

    text: str  # decoded by the writer (the sheet's own encoding), served as UTF-8
    files: tuple[tuple[str, str], ...]  # (FILE name exactly as written in the sheet, track sha256)


@dataclass(frozen=True, slots=True)
class Asset:
    id: str  # 64 hex digits chosen by the writer (asset_id_for_file / asset_id_for_embedded)
    role: str  # one of ROLES
    object: StoredObject
    tracks: tuple[str, ...]  # sha256s of the tracks it belongs to: sorted, distinct, at least one
    name: str  # the file's base name where it came from; "" for art extracted from a track
    source: str  # its path relative to the folder given to upload; "" for extracted art
    embedded: bool = False  # a cover extracted from a track's embedded art
    mtime: float = 0.0  # modification time of the source file (the mounted file's mtime)
    cue: CueSheet | None = None  # role "cue" only


def asset_id(*parts: str) -> str:
    """An id from the parts that make an asset "the same one" when uploaded again."""
    return hashlib.sha256("\0".join(unicodedata.normalize("NFC", part) for part in parts).encode()).hexdigest()


def asset_id_for_file(source: str) -> str:
    """The id of a side file (image, .lrc, .cue): its source path. Uploading the folder
    again, or an edited file at the same path, replaces the record instead of adding one."""
    return asset_id("file", source)


def asset_id_for_embedded(source_folder: str, picture_sha256: str) -> str:
    """The id of a front cover extracted from the tracks of one source folder: one record
    per distinct picture per folder, attached to every track that embeds it."""
    return asset_id("embedded", source_folder, picture_sha256)


def asset_to_dict(asset: Asset) -> dict[str, Any]:
    record: dict[str, Any] = {"id": asset.id, "role": asset.role, "object": object_to_dict(asset.object),
                              "tracks": list(asset.tracks), "name": asset.name, "source": asset.source,
                              "mtime": asset.mtime}
    if asset.embedded:
        record["embedded"] = True
    if asset.cue is not None:
        record["cue"] = {"text": asset.cue.text,
                         "files": [{"name": name, "sha256": sha} for name, sha in asset.cue.files]}
    return record


def asset_from_dict(raw: Any) -> Asset:
    """Validate an untrusted asset record; raises ValueError saying what is wrong.

    Structure (ids, object, role, tracks) must be right or the record is
    refused; descriptive text is cleaned (controls removed, capped) instead.
    """
    if not isinstance(raw, dict):
        raise ValueError("asset is not a JSON object")
    ident = _sha(raw.get("id"), "asset id")
    role = raw.get("role")
    if role not in ROLES:
        raise ValueError(f"unknown asset role {str(role)[:20]!r}")
    obj = object_from_dict(raw.get("object"))
    tracks = raw.get("tracks")
    if not isinstance(tracks, list) or len(tracks) > MAX_ATTACHED:
        raise ValueError(f"asset tracks must be a list of at most {MAX_ATTACHED} sha256s")
    attached = set(tracks) if _all_shas(tracks) else {_sha(sha, "track sha256") for sha in tracks}
    cue = None
    if role == "cue":
        cue = _cue_from_dict(raw.get("cue"))
        attached.update(sha for _, sha in cue.files)
    if not attached:
        raise ValueError("an asset must belong to at least one track")
    if role == "lyrics" and len(attached) != 1:
        raise ValueError("a lyrics asset belongs to exactly one track")
    return Asset(
        id=ident, role=role, object=obj, tracks=tuple(sorted(attached)), name=base_name(raw.get("name")),
        source=clean_text(raw.get("source"), MAX_SOURCE), embedded=role == "cover" and raw.get("embedded") is True,
        mtime=clean_mtime(raw.get("mtime")), cue=cue)


def _cue_from_dict(raw: Any) -> CueSheet:
    if not isinstance(raw, dict):
        raise ValueError("a cue asset needs its sheet (\"cue\": {\"text\", \"files\"})")
    text = raw.get("text")
    if not isinstance(text, str) or len(text) > MAX_CUE_TEXT:
        raise ValueError(f"cue text must be a string of at most {MAX_CUE_TEXT} characters")
    files = raw.get("files")
    if not isinstance(files, list) or len(files) > MAX_CUE_FILES:
        raise ValueError(f"cue files must be a list of at most {MAX_CUE_FILES} entries")
    mapped: dict[str, str] = {}
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError("a cue file entry needs a name and a sha256")
        name = item["name"]
        if not name or len(name) > MAX_NAME * 4 or any(c in name for c in "\r\n\x00"):
            raise ValueError("a cue FILE name must be one non-empty line")
        mapped.setdefault(name, _sha(item.get("sha256"), "cue file sha256"))
    clean = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return CueSheet(clean, tuple(mapped.items()))
