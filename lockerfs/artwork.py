"""The front cover embedded in a track, taken from the tag objects mutagen has already parsed.

Upload extracts it in the same parse that reads the tags (a tag worker
process), so the picture costs no read of its own: mutagen has loaded every
picture of the head and tail regions anyway. The mount then shows it as the
album's cover.jpg without ever reading a track.

Which picture: the first one marked front cover (ID3 APIC type 3, FLAC and
Vorbis METADATA_BLOCK_PICTURE type 3, ASF WM/Picture type 3, APEv2
"Cover Art (Front)"), else the first picture of any type (an MP4 `covr` has
no types: its first). A picture whose bytes are no image we show (image_type)
or that is larger than MAX_ART_BYTES is passed over for the next one, so one
broken frame does not cost the album its cover.

Reading a picture never raises: a malformed frame, block or attribute is
skipped (tags.py's habit: reading one field never fails the file).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from mutagen.apev2 import APEv2
from mutagen.asf import ASFTags
from mutagen.flac import FLAC, Picture
from mutagen.id3 import ID3
from mutagen.mp4 import MP4Tags

from lockerfs.asset import image_type

log = logging.getLogger(__name__)

FRONT_COVER = 3  # the picture type every tag format shares (ID3v2 APIC's list)
# Larger embedded pictures are left in the track: a cover is a few MB at most,
# and the picture crosses a pipe from the tag worker and is held in memory.
MAX_ART_BYTES = 16 * 1024 * 1024


def front_cover(audio: Any, tag_objects: Iterable[Any]) -> bytes | None:
    """The bytes of the track's front cover (see the module docstring), or None."""
    front: list[bytes] = []
    others: list[bytes] = []
    try:
        for kind, data in _pictures(audio, tag_objects):
            (front if kind == FRONT_COVER else others).append(data)
    except Exception as exc:  # noqa: BLE001 - corrupt tags make mutagen's objects raise almost anything
        log.debug("unreadable picture: %r", exc)
    for data in (*front, *others):
        if len(data) <= MAX_ART_BYTES and image_type(data[:16]) is not None:
            return data
    return None


def _pictures(audio: Any, tag_objects: Iterable[Any]) -> Iterator[tuple[int, bytes]]:
    """(picture type, bytes) of every picture, in the order the file has them; -1: no type."""
    if isinstance(audio, FLAC):
        for picture in audio.pictures:
            yield picture.type, bytes(picture.data)
    for tags in tag_objects:
        if isinstance(tags, ID3):
            for frame in tags.getall("APIC"):
                yield int(frame.type), bytes(frame.data)
        elif isinstance(tags, MP4Tags):
            for cover in tags.get("covr", []):
                yield -1, bytes(cover)
        elif isinstance(tags, ASFTags):
            for attribute in tags.get("WM/Picture", []):
                picture = _asf_picture(attribute.value)
                if picture is not None:
                    yield picture
        elif isinstance(tags, APEv2):
            yield from _ape_pictures(tags)
        elif tags is not None and hasattr(tags, "get"):  # Vorbis comments (Ogg, FLAC)
            yield from _vorbis_pictures(tags)


def _vorbis_pictures(tags: Any) -> Iterator[tuple[int, bytes]]:
    for encoded in tags.get("metadata_block_picture", []):
        try:
            picture = Picture(base64.b64decode(encoded))
        except Exception:  # noqa: BLE001 - a broken block (bad base64, bad structure) is skipped
            continue
        yield picture.type, bytes(picture.data)
    for encoded in tags.get("coverart", []):  # the old unofficial field: a bare image, no type
        try:
            yield -1, base64.b64decode(encoded)
        except (ValueError, binascii.Error):
            continue


def _asf_picture(value: bytes) -> tuple[int, bytes] | None:
    """WM/Picture: type (1 byte), size (4 bytes LE), MIME and description (UTF-16LE, NUL-ended), data."""
    if len(value) < 9:
        return None
    kind, size = value[0], int.from_bytes(value[1:5], "little")
    offset = 5
    for _ in range(2):  # the MIME type, then the description
        end = _utf16_nul(value, offset)
        if end < 0:
            return None
        offset = end + 2
    data = value[offset:offset + size]
    return (kind, data) if len(data) == size else None


def _utf16_nul(value: bytes, start: int) -> int:
    """Offset of the UTF-16LE NUL that ends the string at `start`, or -1."""
    for offset in range(start, len(value) - 1, 2):
        if value[offset] == 0 and value[offset + 1] == 0:
            return offset
    return -1


def _ape_pictures(tags: APEv2) -> Iterator[tuple[int, bytes]]:
    """APEv2 "Cover Art (Front)" and its siblings: a file name, a NUL, the image."""
    for key in tags.keys():
        if not key.lower().startswith("cover art"):
            continue
        value = getattr(tags[key], "value", b"")
        if not isinstance(value, bytes):
            continue
        _name, nul, data = value.partition(b"\x00")
        if nul:
            yield (FRONT_COVER if key.lower() == "cover art (front)" else -1), data
