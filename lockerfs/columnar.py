"""The columnar snapshot (format 3): every track entry as columns of machine numbers.

A JSON snapshot of 300,000 tracks is about 200 MB of text; parsing it and
validating each record takes longer than the whole mount may. This encoding
keeps the same entries (docs/FORMAT.md, "Columnar snapshots") as one
gzip stream:

    b"lockerfs-columns\\n"
    one line of JSON: {"kind": "snapshot", "version": 3, "id": ..., "rows": N,
                       "files": [stamp file ids], "strings": S,
                       "sections": [[name, byte length], ...], ...}
    the sections, in that order

Sections: `sha256` (N x 32 raw bytes), `strings` (S strings, UTF-8, each
ended by NUL), integer and float columns of N little-endian items, and
`other`: the JSON list of snapshot entries that are not tracks (assets,
playlists, removal details), read as in a JSON snapshot. A text column holds
indexes into the strings, 0 meaning none.

Like every catalog file it is untrusted: lengths must agree, indexes must be
in range, a row with a bad extension or size is skipped and counted,
out-of-range numbers are dropped as the record reader drops them, and the
stream may not inflate past the catalog file cap. A file that breaks the
structure is refused whole (CorruptCatalogFile).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import sys
import zlib
from array import array
from collections.abc import Callable
from typing import Any

from lockerfs.asset import (CONTENT_TYPE_RE, CONTENT_TYPES, MAX_ATTACHED, Asset, StoredObject, base_name,
                            clean_mtime, clean_text, object_key)
from lockerfs.asset import MAX_SOURCE as MAX_ASSET_SOURCE
from lockerfs.insets import MIN_INSET
from lockerfs.objectref import ObjectRef
from lockerfs.tracktable import NONE, NUMBERS, REGIONS, SHARED_TEXT, Stamp, TrackTable, widened

MAGIC = b"lockerfs-columns\n"
VERSION = 3
MAX_HEADER = 16 << 20  # the header holds the stamp file ids and a local copy's list of applied files
MAX_ROWS = 1 << 26
MAX_TEXT = 1024  # as catalog.MAX_TEXT: tag values are capped at this many characters
MAX_SOURCE = 4096
MAX_OBJECT_SIZE = 1 << 40
_EXT_RE = re.compile(r"^[a-z0-9]{1,8}$")

TEXT_COLUMNS = ("ext", "source", "title", *SHARED_TEXT)
INT_COLUMNS = ("stamp_file", "stamp_pos", "size", *NUMBERS, *REGIONS)
FLOAT_COLUMNS = ("mtime", "duration")
BYTE_COLUMNS = ("live", "compilation")


class ColumnError(ValueError):
    """The stream is not a valid columnar snapshot; the message says why."""


def is_columnar(raw: bytes) -> bool:
    """Whether gzip'd bytes hold a columnar snapshot (the first bytes inflate to MAGIC)."""
    try:
        head = zlib.decompressobj(wbits=31).decompress(raw[:4096], len(MAGIC))
    except zlib.error:
        return False
    return head == MAGIC


def encode(table: TrackTable, snapshot_id: str, assets: list[tuple[Stamp, Asset]], other: list[dict[str, Any]],
           extra_header: dict[str, Any] | None = None, level: int = 6) -> bytes:
    """The table's rows, the assets (but cue sheets) in columns, and the other entries, as
    one gzip'd stream. Columns are written as the table holds them (no per-row work but for
    text): a mount saves its local copy this way after every refresh."""
    strings: dict[str, int] = {}

    def index(value: str | None) -> int:
        if value is None:
            return 0
        found = strings.get(value)
        if found is None:
            found = strings[value] = len(strings) + 1
        return found

    sections: list[tuple[str, bytes]] = [("sha256", bytes.fromhex("".join(table.shas)))]
    columns: dict[str, list[Any]] = {
        "ext": table.ext, "source": table.source, "title": table.title, **table.text}
    for name in TEXT_COLUMNS:
        sections.append((name, _little(array("I", map(index, columns[name])))))
    # tag numbers as value + 1 (0: unknown), as the table keeps them, in 64 bits again
    ints: dict[str, Any] = {"stamp_file": table.stamp_file, "stamp_pos": table.stamp_pos, "size": table.size,
                            **{name: widened(column) for name, column in table.numbers.items()}}
    for name in INT_COLUMNS:
        sections.append((name, _little(array("q", ints[name]))))
    floats = {"mtime": table.mtime, "duration": table.duration}
    for name in FLOAT_COLUMNS:
        sections.append((name, _little(array("d", floats[name]))))
    sections.append(("live", bytes(table.live)))
    sections.append(("compilation", bytes(table.compilation)))
    arts, art_sections = _art_sections(table, index)
    sections.extend(art_sections)
    sections.extend(_asset_sections(assets, index, table))
    sections.append(("strings", b"".join(text.encode("utf-8", "surrogatepass").replace(b"\0", b"") + b"\0"
                                         for text in strings)))  # a tag may hold a lone surrogate
    sections.append(("other", json.dumps(other, separators=(",", ":")).encode()))
    header = {"kind": "snapshot", "version": VERSION, "id": snapshot_id, "rows": len(table.shas),
              "files": table.files, "strings": len(strings), "assets": len(assets),
              "refs": sum(len(asset.tracks) for _, asset in assets), "arts": arts,
              "sections": [[name, len(data)] for name, data in sections], **(extra_header or {})}
    body = io.BytesIO()
    with gzip.GzipFile(fileobj=body, mode="wb", compresslevel=level, mtime=0) as out:
        out.write(MAGIC)
        out.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        for _, data in sections:
            out.write(data)
    return body.getvalue()


def _art_sections(table: TrackTable, index: Callable[[str | None], int]) -> tuple[int, list[tuple[str, bytes]]]:
    """Embedded covers held as their own objects (Track.art): a table of the objects, and
    per row its 1-based number there (0: none) and where the track holds it."""
    numbers: dict[str, int] = {}
    objects: list[ObjectRef] = []

    def number(art: ObjectRef | None) -> int:
        if art is None:
            return 0
        found = numbers.get(art.sha256)
        if found is None:
            found = numbers[art.sha256] = len(objects) + 1
            objects.append(art)
        return found

    rows = array("I", map(number, table.art))
    return len(objects), [
        ("art", _little(rows)), ("art_at", _little(array("q", (max(at, 0) for at in table.art_at)))),
        ("art_sha256", bytes.fromhex("".join(art.sha256 for art in objects))),
        ("art_size", _little(array("q", [art.size for art in objects]))),
        ("art_ext", _little(array("I", [index(art.key.rsplit(".", 1)[1]) for art in objects])))]


def _decode_art(header: dict[str, Any], sized: Callable[[str, int, int], memoryview], rows: int,
                strings: list[str | None], size: array[int]) -> tuple[list[ObjectRef | None], array[int]]:
    """The rows' embedded-cover objects and offsets; a snapshot written before them has none.
    A bad object or offset drops that row's cover (it is read from the track), never the row."""
    art: list[ObjectRef | None] = [None] * rows
    offsets = array("q", [-1]) * rows
    count = header.get("arts", 0)
    if count == 0:
        return art, offsets
    if type(count) is not int or not 0 <= count <= MAX_ROWS:
        raise ColumnError("bad embedded cover count")
    digests = sized("art_sha256", count, 32).hex()
    sizes, exts = _from_little("q", sized("art_size", count, 8)), _from_little("I", sized("art_ext", count, 4))
    objects: list[ObjectRef | None] = [None]
    for n in range(count):
        ext = strings[exts[n]] if exts[n] < len(strings) else None
        good = ext is not None and _EXT_RE.match(ext) and MIN_INSET <= sizes[n] <= MAX_OBJECT_SIZE
        sha = digests[n * 64:n * 64 + 64]
        objects.append(ObjectRef(object_key(sha, ext), sha, sizes[n]) if good else None)  # type: ignore[arg-type]
    numbers, at = _from_little("I", sized("art", rows, 4)), _from_little("q", sized("art_at", rows, 8))
    for row in (row for row, number in enumerate(numbers) if number):
        obj = objects[numbers[row]] if numbers[row] <= count else None
        if obj is not None and 0 <= at[row] and at[row] + obj.size <= size[row]:
            art[row], offsets[row] = obj, at[row]
    return art, offsets


ROLE_CODES = {"cover": 1, "image": 2, "lyrics": 3}  # cue sheets stay in the other entries (their text)
ROLES = {code: role for role, code in ROLE_CODES.items()}


def _asset_sections(assets: list[tuple[Stamp, Asset]], index: Callable[[str | None], int],
                    table: TrackTable) -> list[tuple[str, bytes]]:
    """Assets in columns: a large catalog has a cover per album, tens of thousands of them."""
    offsets = array("I", [0])
    for _, asset in assets:
        offsets.append(offsets[-1] + len(asset.tracks))
    files = table._file  # stamp files share the tracks' table of ids
    return [
        ("asset_id", bytes.fromhex("".join(asset.id for _, asset in assets))),
        ("asset_stamp_file", _little(array("I", [files(stamp[0]) for stamp, _ in assets]))),
        ("asset_stamp_pos", _little(array("q", [stamp[1] for stamp, _ in assets]))),
        ("asset_role", bytes(ROLE_CODES[asset.role] for _, asset in assets)),
        ("asset_sha256", bytes.fromhex("".join(asset.object.sha256 for _, asset in assets))),
        ("asset_size", _little(array("q", [asset.object.size for _, asset in assets]))),
        ("asset_ext", _little(array("I", [index(asset.object.ext) for _, asset in assets]))),
        ("asset_type", _little(array("I", [index(asset.object.content_type) for _, asset in assets]))),
        ("asset_name", _little(array("I", [index(asset.name) for _, asset in assets]))),
        ("asset_source", _little(array("I", [index(asset.source) for _, asset in assets]))),
        ("asset_embedded", bytes(1 if asset.embedded else 0 for _, asset in assets)),
        ("asset_mtime", _little(array("d", [asset.mtime for _, asset in assets]))),
        ("asset_tracks", _little(offsets)),
        ("asset_refs", bytes.fromhex("".join(sha for _, asset in assets for sha in asset.tracks))),
    ]


def _decode_assets(header: dict[str, Any], section: Callable[[str, int, int], memoryview],
                   strings: list[str | None], files: list[str],
                   same: dict[str, str]) -> tuple[list[tuple[Stamp, Asset]], int]:
    """Assets from their columns, each validated as asset_from_dict would; bad ones are counted."""
    count, refs = header.get("assets", 0), header.get("refs", 0)
    if type(count) is not int or type(refs) is not int or not 0 <= count <= MAX_ROWS or not 0 <= refs <= MAX_ROWS:
        raise ColumnError("bad asset or reference count")
    ids, shas = section("asset_id", count, 32).hex(), section("asset_sha256", count, 32).hex()
    stamp_file = _from_little("I", section("asset_stamp_file", count, 4))
    stamp_pos = _from_little("q", section("asset_stamp_pos", count, 8))
    roles, embedded = section("asset_role", count, 1), section("asset_embedded", count, 1)
    size = _from_little("q", section("asset_size", count, 8))
    ext, kind = _from_little("I", section("asset_ext", count, 4)), _from_little("I", section("asset_type", count, 4))
    name, source = _from_little("I", section("asset_name", count, 4)), _from_little("I", section("asset_source", count, 4))
    mtime = _from_little("d", section("asset_mtime", count, 8))
    offsets = _from_little("I", section("asset_tracks", count + 1, 4))
    if offsets[0] != 0 or offsets[-1] != refs or any(map(int.__gt__, offsets[:-1], offsets[1:])):
        raise ColumnError("asset track offsets are out of order")
    # Each reference once as a string, the table's own where the track is in it (a cover
    # names a dozen tracks: 300,000 references in a large catalog, no copy of each).
    references = _hex_items(section("asset_refs", refs, 32))
    references = list(map(same.get, references, references))
    names: dict[int, str] = {}
    objects: dict[tuple[int, int], tuple[str, str] | None] = {}
    found: list[tuple[Stamp, Asset]] = []
    rejected = 0
    for n in range(count):
        try:
            role = ROLES[roles[n]]
            kinds = objects.get((ext[n], kind[n]), False)
            if kinds is False:
                kinds = objects[(ext[n], kind[n])] = _object_kinds(strings[ext[n]], strings[kind[n]])
            if kinds is None or not 0 <= size[n] <= MAX_OBJECT_SIZE or stamp_file[n] >= len(files) or stamp_pos[n] < 0:
                raise ValueError
            tracks = tuple(sorted(set(references[offsets[n]:offsets[n + 1]])))
            if not tracks or len(tracks) > MAX_ATTACHED or (role == "lyrics" and len(tracks) != 1):
                raise ValueError
            own = names.get(name[n])
            if own is None:
                own = names[name[n]] = base_name(strings[name[n]] or "")
            sha = shas[n * 64:n * 64 + 64]
            obj = StoredObject(sha, object_key(sha, kinds[0]), size[n], kinds[0], kinds[1])
            found.append(((files[stamp_file[n]], stamp_pos[n]), Asset(
                ids[n * 64:n * 64 + 64], role, obj, tracks, own, clean_text(strings[source[n]] or "", MAX_ASSET_SOURCE),
                embedded=role == "cover" and embedded[n] == 1, mtime=clean_mtime(mtime[n]))))
        except (KeyError, IndexError, ValueError):
            rejected += 1
    return found, rejected


def _object_kinds(ext: str | None, content_type: str | None) -> tuple[str, str] | None:
    """An object's extension and Content-Type, checked as object_from_dict checks them."""
    if ext is None or not _EXT_RE.match(ext):
        return None
    if content_type is None or not CONTENT_TYPE_RE.match(content_type):
        content_type = CONTENT_TYPES.get(ext, "application/octet-stream")
    return sys.intern(ext), content_type.lower()


def _little(values: array[Any]) -> bytes:
    if sys.byteorder != "little":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _from_little(typecode: str, data: bytes | memoryview) -> array[Any]:
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


class Decoded:
    """A decoded columnar snapshot: its header, the validated columns, the other entries."""

    def __init__(self, header: dict[str, Any], rows: int, shas: list[str], columns: dict[str, Any],
                 other: list[Any], rejected: set[int], assets: list[tuple[Stamp, Asset]], bad_assets: int) -> None:
        self.header = header
        self.rows = rows
        self.shas = shas
        self.columns = columns
        self.other = other
        self.rejected = rejected  # rows skipped as invalid
        self.assets = assets
        self.bad_assets = bad_assets  # assets skipped as invalid


def decode(raw: bytes, limit: int, check_version: Callable[[object], None]) -> Decoded:
    """Inflate (at most `limit` bytes) and validate a columnar snapshot; raises ColumnError."""
    data = _inflate(raw, limit)
    if not data.startswith(MAGIC):
        raise ColumnError("not a columnar snapshot")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise ColumnError("no header line")
    try:
        header = json.loads(data[len(MAGIC):end])
    except (ValueError, RecursionError):
        raise ColumnError("the header is not valid JSON") from None
    if not isinstance(header, dict) or header.get("kind") != "snapshot":
        raise ColumnError("the header is not a snapshot's")
    check_version(header.get("version"))
    rows, files, count, layout = header.get("rows"), header.get("files"), header.get("strings"), header.get("sections")
    if type(rows) is not int or not 0 <= rows <= MAX_ROWS:
        raise ColumnError("bad row count")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files) or type(count) is not int:
        raise ColumnError("bad stamp files or string count")
    if not isinstance(layout, list):
        raise ColumnError("no section list")
    sections: dict[str, memoryview] = {}  # views: the columns are copied once, into their arrays
    view = memoryview(data)
    offset = end + 1
    for item in layout:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or type(item[1]) is not int or item[1] < 0):
            raise ColumnError("bad section entry")
        sections[item[0]] = view[offset:offset + item[1]]
        offset += item[1]
    if offset != len(data):
        raise ColumnError("the sections do not add up to the stream")

    def sized(name: str, items: int, width: int) -> memoryview:
        blob = sections.get(name)
        if blob is None or len(blob) != items * width:
            raise ColumnError(f"section {name} is missing or of the wrong length")
        return blob

    def section(name: str, width: int) -> memoryview:
        return sized(name, rows, width)

    shas = _hex_items(section("sha256", 32))
    try:
        strings: list[str | None] = [None, *str(sections.get("strings", b""), "utf-8", "surrogatepass").split("\0")]
    except UnicodeDecodeError:
        raise ColumnError("the strings are not UTF-8") from None
    if strings.pop() != "" or len(strings) != count + 1:
        raise ColumnError("the string count does not match")
    if count and max(map(len, strings[1:])) > MAX_SOURCE:
        strings = [None, *(text[:MAX_SOURCE] for text in strings[1:])]  # type: ignore[index]
    columns: dict[str, Any] = {}
    for name in TEXT_COLUMNS:  # indexes past the strings fail below, where they are looked up
        columns[name] = _from_little("I", section(name, 4))
    for name in INT_COLUMNS:
        columns[name] = _from_little("q", section(name, 8))
    for name in FLOAT_COLUMNS:
        columns[name] = _from_little("d", section(name, 8))
    for name in BYTE_COLUMNS:
        columns[name] = bytearray(section(name, 1))
    if rows and (max(columns["stamp_file"]) >= len(files) or min(columns["stamp_file"]) < 0):
        raise ColumnError("a stamp points past the file ids")
    try:
        other = json.loads(bytes(sections.get("other", b"[]")))
    except (ValueError, RecursionError):
        raise ColumnError("the other entries are not valid JSON") from None
    if not isinstance(other, list):
        raise ColumnError("the other entries are not a list")
    rejected = _clean(rows, columns, strings, sections)
    columns["art"], columns["art_at"] = _decode_art(header, sized, rows, strings, columns["size"])
    try:
        for name in TEXT_COLUMNS:  # indexes -> the strings themselves
            columns[name] = list(map(strings.__getitem__, columns[name]))
    except IndexError:
        raise ColumnError(f"column {name} points past the strings") from None
    same = dict(zip(shas, shas))  # an asset's tracks share the table's strings instead of copies
    assets, bad_assets = _decode_assets(header, sized, strings, files, same)
    del same
    return Decoded(header, rows, shas, columns, other, rejected, assets, bad_assets)


def _inflate(raw: bytes, limit: int) -> bytes:
    """The gzip stream's bytes, at most `limit` of them (ColumnError past it): one call into
    zlib per member, which checks each member's CRC and length. GzipFile's reads go 8 KiB at
    a time through Python: with the slices _hex_items replaced, 0.15 s of a 1.1 s decode of a
    300,000-track snapshot."""
    parts: list[bytes] = []
    room, rest = limit + 1, raw
    try:
        while True:
            member = zlib.decompressobj(wbits=31)
            part = member.decompress(rest, room)
            parts.append(part)
            room -= len(part)
            if room <= 0:
                raise ColumnError(f"inflates past {limit} bytes")
            if not member.eof:
                raise ColumnError("not valid gzip (cut short)")
            rest = member.unused_data
            if not rest:
                return b"".join(parts)  # one part: the part itself, no copy
    except zlib.error:
        raise ColumnError("not valid gzip") from None


def _hex_items(blob: memoryview) -> list[str]:
    """Each 32-byte item of blob as 64 hex digits, split in C rather than by a slice per
    item in Python (300,000 of them, and as many asset references)."""
    return blob.hex(" ", 32).split()


def _below_2_40(blob: memoryview, rows: int) -> bool:
    """Whether every little-endian int64 in blob is in [0, 2**40): its top three bytes are zero.
    Byte slices and counts run in C; max() over 300,000 boxed numbers would not."""
    return all(bytes(blob[i::8]).count(0) == rows for i in (5, 6, 7))


def _clean(rows: int, columns: dict[str, Any], strings: list[str | None], raw: dict[str, memoryview]) -> set[int]:
    """Drop what the record reader drops; return the rows that must be skipped whole.

    The common case (a well-formed file) costs a few passes in C per column; a
    column that fails its quick check is cleaned value by value."""
    live, size = columns["live"], columns["size"]
    rejected: set[int] = set()
    if rows and (live.translate(None, b"\0\1") or columns["compilation"].translate(None, b"\0\1")):
        rejected.update(row for row in range(rows) if live[row] > 1)
        columns["compilation"] = bytearray(1 if flag else 0 for flag in columns["compilation"])
    bad_ext = {index for index in set(columns["ext"]) if strings[index] is None or not _EXT_RE.match(strings[index])}
    if bad_ext:
        rejected.update(row for row, index in enumerate(columns["ext"]) if live[row] and index in bad_ext)
    if not _below_2_40(raw["size"], rows):
        rejected.update(row for row in range(rows) if live[row] and not 0 <= size[row] <= MAX_OBJECT_SIZE)
    if bytes(raw["stamp_pos"][7::8]).translate(None, bytes(range(128))):  # a negative position
        rejected.update(row for row in range(rows) if columns["stamp_pos"][row] < 0)
    for name in NUMBERS:  # value + 1, as the table keeps them; 0: unknown
        if not _below_2_40(raw[name], rows):
            columns[name] = array("q", (v if 0 <= v <= 1e12 else NONE for v in columns[name]))
    for name in REGIONS:
        values = columns[name]
        if not _below_2_40(raw[name], rows) or any(map(int.__gt__, values, size)):
            columns[name] = array("q", (v if 0 <= v <= s else 0 for v, s in zip(values, size)))
    mtime = columns["mtime"]
    if rows and not (all(map(math.isfinite, mtime)) and min(mtime) >= 0 and max(mtime) < 1e11):
        columns["mtime"] = array("d", (m if math.isfinite(m) and 0 <= m < 1e11 else 0.0 for m in mtime))
    duration = columns["duration"]
    known = list(filter(math.isfinite, duration))  # NaN (unknown) and infinities left out, in C
    if known and (min(known) < 0 or max(known) >= 1e12) or len(known) + sum(map(math.isnan, duration)) != rows:
        columns["duration"] = array("d", (d if math.isnan(d) or 0 <= d < 1e12 else math.nan for d in duration))
    long_tags = [i for i, text in enumerate(strings) if text is not None and len(text) > MAX_TEXT] \
        if len(strings) > 1 and max(map(len, strings[1:])) > MAX_TEXT else []  # type: ignore[arg-type]
    if long_tags:  # tag values are capped shorter than sources
        capped = {index: len(strings) + n for n, index in enumerate(long_tags)}
        strings.extend(strings[index][:MAX_TEXT] for index in long_tags)  # type: ignore[index]
        for name in ("title", *SHARED_TEXT):
            columns[name] = array("I", (capped.get(i, i) for i in columns[name]))
    return rejected
