"""Tracks -> the mounted directory tree: names from tags, sanitizing, collisions.

Pure and deterministic: the same set of tracks gives the same paths on every
machine, whatever order the catalog hands them over in, so two mounts of one
locker show the same tree and a path a player remembered stays valid.

Template syntax (validated once by parse_template, at mount start)::

    {field}       the field's value; fields are FIELDS below
    {field:0N}    a number zero-padded to N digits (N = 1..9), e.g. {track:02}
    [...]         optional group: vanishes when a field directly inside it is
                  empty; groups nest, and every group needs a field of its own
    /             separates folders; only the template makes folders
    \\{ \\} \\[ \\]   literal braces and brackets

The extension (".flac") is appended to the last component, never templated.

Field values:

- albumartist: "Various Artists" for compilations, else the album artist,
  else the track artist, else "Unknown Artist". With album it is the album's
  key: an album's tracks share one folder whatever their track artists.
- artist: the track artist, else the album artist, else "Unknown Artist".
- album: else "Unknown Album". title: else the source file name's stem, so an
  untagged file is named from its path.
- year: one per album, the most common among its tracks (ties: the earliest),
  so one stray tag does not split an album into two folders.
- disc: empty unless the album is multi-disc (a disctotal > 1, or more than
  one distinct disc number among its tracks).
- track, tracktotal, disctotal, genre, format (container), ext: as tagged;
  empty when missing.

Sanitizing (every component is a valid name on Linux and through Samba):
'/' in a value becomes U+2215 DIVISION SLASH and '\\' U+29F5 REVERSE SOLIDUS
OPERATOR, lookalikes that keep "AC/DC" readable; control characters (C0, DEL,
C1) and the explicit bidirectional embedding, override and isolate
characters (U+202A-U+202E, U+2066-U+2069, which can make "evil\u202egalf.exe"
look like "evilexe.flag") are removed, except line breaks and tabs, which
become a space; then NFC;
surrounding whitespace and trailing dots are stripped; a leading '.' becomes
U+2024 ONE DOT LEADER so "...And Justice for All" is not a hidden file; an
empty name becomes "_"; a name is cut to 255 bytes of UTF-8 at a grapheme
boundary (combining marks, ZWJ emoji sequences, skin tones, flags), keeping
the extension.

Names mode "windows" (`--names windows`, for re-sharing the mount over
Samba or NFS to Windows machines and TVs) also maps : * ? " < > | to their
fullwidth look-alikes (U+FF1A U+FF0A U+FF1F U+FF02 U+FF1C U+FF1E U+FF5C),
and puts "_" after a name that Windows reserves for a device (CON, PRN, AUX,
NUL, COM1-COM9, LPT1-LPT9, alone or before a dot: "aux.flac" -> "aux_.flac").
Trailing dots and spaces are stripped in every mode already.

Collisions, compared after NFC + casefold as case-insensitive clients see
them: folders whose names match are one folder, spelled as most of their
tracks spell it. Among files whose names match each other or a folder's, the
track with the lowest sha256 keeps the plain name (a folder always keeps its
name) and the others get " [<first 8 hex of sha256>]" before the extension;
16 hex digits, then all 64, then "-2", "-3"... if even that name is taken.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import count

from lockerfs.track import Track
from lockerfs.trackinfo import TrackInfo

DEFAULT_TEMPLATE = "{albumartist}/{album}[ ({year})]/[[{disc}-]{track:02} ]{title}"
NAME_MODES = ("default", "windows")

NUMBER_FIELDS = frozenset({"track", "tracktotal", "disc", "disctotal", "year"})
TEXT_FIELDS = frozenset({"albumartist", "artist", "album", "title", "genre", "format", "ext"})
FIELDS = NUMBER_FIELDS | TEXT_FIELDS

VARIOUS_ARTISTS = "Various Artists"
UNKNOWN_ARTIST = "Unknown Artist"
UNKNOWN_ALBUM = "Unknown Album"

NAME_MAX = 255  # bytes of UTF-8 per component: Linux NAME_MAX, and Samba's
EXT_MAX = 16  # bytes; a longer "extension" is a bad record, not a format
EMPTY_NAME = "_"

_ZWJ = "\u200d"
_LINE_BREAKS = "\t\n\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
_BIDI_CONTROLS = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # embeddings, overrides, isolates
_TRANSLATION = {
    **{c: None for c in _CONTROLS},
    **{c: None for c in _BIDI_CONTROLS},
    **{ord(c): " " for c in _LINE_BREAKS},
    ord("\r"): None,  # "\r\n" is one line break, one space
    ord("/"): "\u2215",
    ord("\\"): "\u29f5",
}
_WINDOWS_TRANSLATION = {
    **_TRANSLATION,
    **{ord(c): chr(ord(c) - 0x21 + 0xFF01) for c in ':*?"<>|'},  # the fullwidth forms: ：＊？＂＜＞｜
}
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{n}" for n in range(1, 10)),
                              *(f"lpt{n}" for n in range(1, 10))})
_WIDTH = re.compile(r"0([1-9])")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class NameRules:
    """What a names mode changes: which characters become what, and Windows' device names."""

    mode: str
    translation: dict[int, str | None]
    unsafe: re.Pattern[str]  # any character the translation changes
    windows: bool


def _rules(mode: str, translation: dict[int, str | None]) -> NameRules:
    unsafe = re.compile("[" + re.escape("".join(map(chr, translation))) + "]")
    return NameRules(mode, translation, unsafe, mode == "windows")


NAME_RULES = {"default": _rules("default", _TRANSLATION), "windows": _rules("windows", _WINDOWS_TRANSLATION)}
DEFAULT_RULES = NAME_RULES["default"]


class TemplateError(ValueError):
    """A layout template that cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Template:
    """A layout template compiled to str.format strings; build with parse_template.

    A track renders from a dict of its field values: text fields under their
    names, numbers formatted into keys of their own ("track_2" for {track:02}),
    then groups ("_g0"), innermost first, so str.format does the filling.
    """

    source: str
    numbers: tuple[tuple[str, str, str], ...]  # (key, field name, format spec)
    groups: tuple[tuple[str, str, tuple[str, ...]], ...]  # (key, format, keys of its own fields)
    format: str
    names: NameRules = DEFAULT_RULES


def parse_template(template: str, names: str = "default") -> Template:
    """Validate template once, so a typo fails the mount instead of every listing.

    `names` is the names mode (NAME_MODES): it shapes every name the mount
    shows, so it travels with the template."""

    def fail(message: str, at: int) -> TemplateError:
        return TemplateError(f"layout template {template!r}, position {at}: {message}")

    rules = NAME_RULES.get(names)
    if rules is None:
        raise TemplateError(f"unknown names mode {names!r}; modes are {', '.join(NAME_MODES)}")
    if not template:
        raise TemplateError("layout template is empty")
    try:
        template.encode()
    except UnicodeEncodeError as error:
        raise fail("not valid Unicode (an undecodable byte?)", error.start) from None
    if template.startswith("/") or template.endswith("/") or "//" in template:
        at = template.find("//") if "//" in template else 0 if template[0] == "/" else len(template) - 1
        raise fail("empty folder name: '/' must sit between two names (paths are relative to the mount)", at)

    numbers: dict[str, tuple[str, str, str]] = {}
    groups: list[tuple[str, str, tuple[str, ...]]] = []
    # Per open group: where it opened, its format pieces, the keys of its own
    # fields; stack[0] is the template itself.
    stack: list[tuple[int, list[str], list[str]]] = [(0, [], [])]
    i = 0
    while i < len(template):
        char = template[i]
        pieces, own_fields = stack[-1][1], stack[-1][2]
        if char == "\\":
            escaped = template[i + 1 : i + 2]
            if escaped not in ("{", "}", "[", "]"):
                raise fail("'\\' escapes only { } [ ]", i)
            pieces.append(escaped * 2 if escaped in "{}" else escaped)
            i += 2
            continue
        if char == "{":
            end = template.find("}", i)
            if end < 0:
                raise fail("'{' is never closed", i)
            name, colon, spec = template[i + 1 : end].partition(":")
            if name not in FIELDS:
                raise fail(f"unknown field {name!r}; fields are {', '.join(sorted(FIELDS))}", i)
            width = 0
            if colon:
                match = _WIDTH.fullmatch(spec)
                if match is None:
                    raise fail(f"unsupported format {spec!r}; write {{{name}:02}} to zero-pad", i)
                if name not in NUMBER_FIELDS:
                    raise fail(f"{name!r} is text; only {', '.join(sorted(NUMBER_FIELDS))} can be zero-padded", i)
                width = int(match[1])
            key = name
            if name in NUMBER_FIELDS:
                key = f"{name}_{width}"
                numbers[key] = (key, name, f"0{width}d" if width else "d")
            pieces.append(f"{{{key}}}")
            own_fields.append(key)
            i = end + 1
            continue
        if char == "}":
            raise fail("'}' without '{' (write \\} for a literal one)", i)
        if char == "[":
            stack.append((i, [], []))
        elif char == "]":
            if len(stack) == 1:
                raise fail("']' without '[' (write \\] for a literal one)", i)
            start, group_pieces, group_fields = stack.pop()
            if not group_fields:
                raise fail("an optional group needs a field of its own (write \\[ \\] for literal brackets)", start)
            key = f"_g{len(groups)}"
            groups.append((key, "".join(group_pieces), tuple(group_fields)))
            stack[-1][1].append(f"{{{key}}}")
        else:
            # Cleaned here, so each track's rendered name needs no translating.
            pieces.append(char if char == "/" else char.translate(rules.translation))
        i += 1
    if len(stack) > 1:
        raise fail("'[' is never closed", stack[-1][0])
    return Template(template, tuple(numbers.values()), tuple(groups), "".join(stack[0][1]), rules)


@dataclass(frozen=True, slots=True)
class SplitTemplate:
    """A template cut at its last top-level '/': the folders ("a/b/", the same for a whole
    album under the default template, so rendered once per album) and the file stem."""

    head: Template
    stem: Template
    head_fields: tuple[str, ...]  # the fields the folders read
    stem_fields: tuple[str, ...]


def split_template(template: Template) -> SplitTemplate | None:
    """None when the file name part could itself make folders (a '/' in one of its groups)."""
    groups = {key: (group_format, own) for key, group_format, own in template.groups}
    numbers = {key: name for key, name, _ in template.numbers}
    pieces = list(string.Formatter().parse(template.format))
    cut = max((i for i, (literal, *_) in enumerate(pieces) if "/" in literal), default=None)

    def text(parts: list[tuple[str, str | None, str | None, str | None]]) -> str:
        return "".join(literal.replace("{", "{{").replace("}", "}}") + (f"{{{key}}}" if key is not None else "")
                       for literal, key, *_ in parts)

    if cut is None:
        head_format, stem_format = "", template.format
    else:
        literal, key, spec, conversion = pieces[cut]
        at = literal.rindex("/") + 1
        head_format = text([*pieces[:cut], (literal[:at], None, None, None)])
        stem_format = text([(literal[at:], key, spec, conversion), *pieces[cut + 1:]])

    def keys_of(fmt: str) -> set[str]:
        found: set[str] = set()
        for _, key, *_ in string.Formatter().parse(fmt):
            if key is None:
                continue
            found.add(key)
            if key in groups:
                found |= keys_of(groups[key][0])
        return found

    def part(fmt: str) -> tuple[Template, tuple[str, ...]]:
        keys = keys_of(fmt)
        fields = sorted({numbers.get(key, key) for key in keys if key not in groups})
        return (Template(template.source, tuple(n for n in template.numbers if n[0] in keys),
                         tuple(g for g in template.groups if g[0] in keys), fmt, template.names), tuple(fields))

    stem, stem_fields = part(stem_format)
    if any("/" in groups[key][0] for key in keys_of(stem_format) if key in groups):
        return None
    head, head_fields = part(head_format)
    return SplitTemplate(head, stem, head_fields, stem_fields)


def compile_render(template: Template, fields: tuple[str, ...]) -> Callable[..., str]:
    """_render as one Python function of the `fields`' values, in that order: what a
    folder of a large catalog calls once per file when it is first listed (a third of
    the cost of filling a dict and formatting it piece by piece).

    Generated from the parsed template: names are ours (fields, "track_2", "_g0"),
    template text enters only as repr() literals."""
    lines = [f"def render({', '.join(fields)}):"]
    for key, name, spec in template.numbers:
        lines.append(f"    {key} = '' if {name} is None else _format({name}, {spec!r})")  # 'format' is a field

    def concat(fmt: str) -> str:
        parts = []
        for literal, key, _, _ in string.Formatter().parse(fmt):
            if literal:
                parts.append(repr(literal))
            if key is not None:
                parts.append(key)
        return " + ".join(parts) or "''"

    for key, group_format, own in template.groups:  # innermost first, as _render
        lines.append(f"    {key} = ({concat(group_format)}) if ({' and '.join(own)}) else ''")
    lines.append(f"    return {concat(template.format)}")
    namespace: dict[str, object] = {}
    exec(compile("\n".join(lines), "<layout template>", "exec"), {"_format": format}, namespace)  # noqa: S102
    return namespace["render"]  # type: ignore[return-value]


def build_paths(tracks: Iterable[Track], template: Template) -> dict[tuple[str, ...], Track]:
    """Map each distinct track to its path (folders..., file name) in the mounted tree.

    Even the dict's order is the same everywhere: tracks with their plain
    names by sha256, then the suffixed ones by sha256.
    """
    ordered = _distinct(tracks)
    rules = template.names
    clean = _Memo(lambda text: _clean(text, rules))
    fold = _Memo(_fold)
    extension = _Memo(lambda ext: _strip_end(_cut(_clean(ext, rules).lstrip("."), EXT_MAX)))
    dotted = _Memo(lambda ext: f".{extension[ext]}" if extension[ext] else "")
    albums = _albums(ordered, clean, fold)

    heads: Counter[str] = Counter()  # rendered folders, "a/b/" -> tracks in them
    placed: list[tuple[str, str, str]] = []  # (rendered folders, file stem, ".ext")
    for track, album in zip(ordered, albums, strict=True):
        rendered = _render(template, _track_values(track, album, clean, extension))
        last = rendered.rpartition("/")[2]
        head = rendered[: len(rendered) - len(last)]
        heads[head] += 1
        suffix = dotted[track.ext]
        placed.append((head, _sanitize(last, NAME_MAX - len(suffix.encode()), rules), suffix))
    folders = _name_folders(heads, fold, rules)

    paths: dict[tuple[str, ...], Track] = {}
    lost: list[tuple[tuple[str, ...], set[str], str, str, Track]] = []
    # In sha order, so the lowest sha keeps the plain name.
    for (head, stem, suffix), track in zip(placed, ordered, strict=True):
        folder, taken = folders[head]
        name = stem + suffix
        key = _fold(name)
        if key in taken:
            lost.append((folder, taken, stem, suffix, track))
        else:
            taken.add(key)
            paths[(*folder, name)] = track
    for folder, taken, stem, suffix, track in lost:  # after every plain name is taken
        paths[(*folder, _suffixed(stem, suffix, track.sha256, taken))] = track
    return paths


def file_stem(text: str, rules: NameRules, suffix: str = "") -> str:
    """A file name's stem from free text (a playlist's name, an image's own name), made
    as track names are made: cleaned, sanitized, cut so that `suffix` (".m3u8") fits."""
    return _sanitize(_clean(text, rules), NAME_MAX - len(suffix.encode()), rules)


def fold(name: str) -> str:
    """How a case-insensitive client compares names: two names that fold alike collide."""
    return _fold(name)


def unique_name(stem: str, suffix: str, sha256: str, taken: set[str]) -> str:
    """The first of "stem.ext", "stem [<8 hex>].ext", ... not in `taken` (folded names);
    claims it in `taken`. The mount's other files follow the tracks' collision rule."""
    name = stem + suffix
    if _fold(name) not in taken:
        taken.add(_fold(name))
        return name
    return _suffixed(stem, suffix, sha256, taken)


def _distinct(tracks: Iterable[Track]) -> list[Track]:
    """One record per sha256, in sha256 order: nothing may depend on the input order."""
    chosen: dict[str, Track] = {}
    for track in tracks:
        other = chosen.get(track.sha256)
        # Two records of the same bytes that differ: keep one chosen by
        # content, not by which came first.
        if other is None or (track != other and _record_order(track) < _record_order(other)):
            chosen[track.sha256] = track
    return [chosen[sha] for sha in sorted(chosen)]


def _name_folders(heads: Counter[str], fold: _Memo, rules: NameRules) -> dict[str, tuple[tuple[str, ...], set[str]]]:
    """Name the folders: sanitize each distinct rendered folder path once, and
    merge folders that a case-insensitive client cannot tell apart.

    Maps each rendered folder path to the path shown and to the folded names
    taken in that folder so far (its subfolders'), a set shared by every
    rendered path that lands there.
    """
    sanitize = _Memo(lambda text: _sanitize(text, NAME_MAX, rules))
    folded: dict[str, tuple[str, ...]] = {}
    spellings: defaultdict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for head, tracks_in_head in heads.items():
        folder: tuple[str, ...] = ()
        for text in head.split("/")[:-1]:
            name = sanitize[text]
            folder = (*folder, fold[name])
            spellings[folder][name] += tracks_in_head
        folded[head] = folder

    shown: dict[tuple[str, ...], tuple[str, ...]] = {(): ()}
    taken: defaultdict[tuple[str, ...], set[str]] = defaultdict(set)
    for folder in sorted(spellings, key=len):
        # The majority spelling names a folder; ties go to the lowest string.
        name = min(spellings[folder].items(), key=lambda item: (-item[1], item[0]))[0]
        shown[folder] = (*shown[folder[:-1]], name)
        taken[folder[:-1]].add(folder[-1])
    return {head: (shown[folder], taken[folder]) for head, folder in folded.items()}


def _record_order(track: Track) -> tuple[str, str]:
    """Which of two records of the same bytes to show: the first source path."""
    return track.source, repr(track)


@dataclass(frozen=True, slots=True)
class _Album:
    """What an album's tracks share, so they land in one folder and agree on prefixes."""

    year: int | None  # the most common year among its tracks; ties: the earliest
    multi_disc: bool  # a disctotal > 1, or more than one distinct disc number


def _albums(tracks: list[Track], clean: _Memo, fold: _Memo) -> list[_Album]:
    """Each track's album, grouped by album artist and album as a case-insensitive client sees them."""
    members: defaultdict[tuple[str, str], list[TrackInfo]] = defaultdict(list)
    keys = []
    for track in tracks:
        albumartist, album = _album_names(track.info, clean)
        key = (fold[albumartist], fold[album])
        members[key].append(track.info)
        keys.append(key)
    albums: dict[tuple[str, str], _Album] = {}
    for key, infos in members.items():
        years = {info.year for info in infos if info.year is not None}
        year = years.pop() if len(years) == 1 else _most_common(info.year for info in infos if info.year is not None)
        discs = {info.disc for info in infos if info.disc is not None}
        albums[key] = _Album(year, len(discs) > 1 or any((info.disctotal or 0) > 1 for info in infos))
    return [albums[key] for key in keys]


def _album_names(info: TrackInfo, clean: _Memo) -> tuple[str, str]:
    """The album artist and album a track is filed under, fallbacks applied."""
    if info.compilation:
        albumartist = VARIOUS_ARTISTS
    else:
        albumartist = clean[info.albumartist or ""] or clean[info.artist or ""] or UNKNOWN_ARTIST
    return albumartist, clean[info.album or ""] or UNKNOWN_ALBUM


def _track_values(track: Track, album: _Album, clean: _Memo, extension: _Memo) -> dict[str, str | int | None]:
    """A track's field values as the template sees them: cleaned, with fallbacks."""
    info = track.info
    albumartist, album_name = _album_names(info, clean)
    title = clean.function(info.title) if info.title else ""  # mostly unique: not worth caching
    if not title:
        name = track.source.rpartition("/")[2]
        title = clean.function(name.rpartition(".")[0] or name)
    return {
        "albumartist": albumartist,
        "artist": clean[info.artist or ""] or clean[info.albumartist or ""] or UNKNOWN_ARTIST,
        "album": album_name,
        "title": title,
        "track": info.track,
        "tracktotal": info.tracktotal,
        "disc": info.disc if album.multi_disc else None,
        "disctotal": info.disctotal,
        "year": album.year,
        "genre": clean[info.genre or ""],
        "format": clean[info.format],
        "ext": extension[track.ext],
    }


def _most_common(years: Iterator[int]) -> int | None:
    """The year most tracks of an album carry; ties go to the earliest."""
    counts = Counter(years)
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0] if counts else None


def _render(template: Template, values: dict[str, str | int | None]) -> str:
    """Fill the template into values; a group renders empty when one of its own fields is empty."""
    for key, name, spec in template.numbers:
        number = values[name]
        values[key] = "" if number is None else format(number, spec)
    for key, group_format, own_fields in template.groups:  # innermost first
        values[key] = group_format.format_map(values) if all(map(values.__getitem__, own_fields)) else ""
    return template.format.format_map(values)


def _suffixed(stem: str, suffix: str, sha256: str, taken: set[str]) -> str:
    """The first free "stem [sha].ext" for a track that lost its plain name."""
    candidates = (_with_tag(stem, suffix, tag) for tag in _sha_tags(sha256))
    name = next(name for name in candidates if _fold(name) not in taken)
    taken.add(_fold(name))
    return name


def _with_tag(stem: str, suffix: str, tag: str) -> str:
    mark = f" [{tag}]"
    budget = NAME_MAX - len(mark.encode()) - len(suffix.encode())
    return f"{_strip_end(_cut(stem, budget)) or EMPTY_NAME}{mark}{suffix}"


def _sha_tags(sha256: str) -> Iterator[str]:
    """Ever longer, never repeating tags from a sha256: short where it suffices."""
    yield sha256[:8]
    yield sha256[:16]
    yield sha256
    for n in count(2):
        yield f"{sha256}-{n}"


class _Memo(dict[str, str]):
    """A cache for one build_paths call: libraries repeat artists and albums,
    and a cache that ends with the call keeps memory bounded."""

    def __init__(self, function: Callable[[str], str]) -> None:
        super().__init__()
        self.function = function

    def __missing__(self, text: str) -> str:
        result = self[text] = self.function(text)
        return result


def _clean(text: str, rules: NameRules = DEFAULT_RULES) -> str:
    """A tag value fit to sit inside a name: no separators, no controls, NFC, stripped."""
    if rules.unsafe.search(text):  # rare, and translate is ten times slower than the search
        text = text.translate(rules.translation)
    if text.isascii():
        return text.strip()
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates, e.g. from an undecodable file name
        text = _SURROGATE.sub("\ufffd", text)
    # After translating: removing a control can bring a mark next to its base.
    return unicodedata.normalize("NFC", text).strip()


def _fold(name: str) -> str:
    """How a case-insensitive client compares names."""
    if name.isascii():
        return name.lower()
    return unicodedata.normalize("NFC", name.casefold())


def _sanitize(text: str, limit: int, rules: NameRules = DEFAULT_RULES) -> str:
    """One path component of at most limit bytes that every client accepts and shows."""
    # Values and template text are cleaned already; joining them can still
    # leave a mark after its base, undoing NFC.
    name = (text if text.isascii() else unicodedata.normalize("NFC", text)).strip()
    if name.endswith("."):
        name = _strip_end(name)
    if name.startswith("."):
        name = "\u2024" + name[1:]
    if rules.windows:
        name = _not_a_device(name)
    if len(name) * 4 > limit and len(name.encode()) > limit:
        name = _strip_end(_cut(name, limit))
    return name or EMPTY_NAME


def _not_a_device(name: str) -> str:
    """"aux.flac" -> "aux_.flac": Windows opens a device for a name whose stem is a device's."""
    stem, dot, rest = name.partition(".")
    if stem.rstrip(" ").lower() in _WINDOWS_DEVICES:
        return f"{stem.rstrip(' ')}_{dot}{rest}"
    return name


def _strip_end(name: str) -> str:
    """name without trailing dots and whitespace, which Windows clients cannot use.

    A loop, not a regex: [\\s.]+$ is quadratic on a long run that does not reach the end.
    """
    end = len(name)
    while end and (name[end - 1] == "." or name[end - 1].isspace()):
        end -= 1
    return name[:end]


def _cut(name: str, limit: int) -> str:
    """name cut to limit bytes of UTF-8, at a grapheme boundary where one is in reach."""
    data = name.encode()
    if len(data) <= limit:
        return name
    end = len(data[:limit].decode("utf-8", "ignore"))
    cut = end
    while cut > 0 and _continues_grapheme(name, cut):
        cut -= 1
    return name[: cut or end]  # one grapheme longer than limit: cut it anyway


def _continues_grapheme(name: str, i: int) -> bool:
    """Whether name[i] belongs to the grapheme before it (a cheap subset of UAX #29)."""
    char = name[i]
    if unicodedata.category(char) in ("Mn", "Mc", "Me") or char == _ZWJ or name[i - 1] == _ZWJ:
        return True  # combining marks, variation selectors, ZWJ emoji sequences
    if "\U0001f3fb" <= char <= "\U0001f3ff" or "\U000e0020" <= char <= "\U000e007f":
        return True  # emoji skin tones, tag sequences (subdivision flags)
    if _is_regional_indicator(char):  # flags are pairs: break only after an even run
        run = 0
        while i - run > 0 and _is_regional_indicator(name[i - run - 1]):
            run += 1
        return run % 2 == 1
    return False


def _is_regional_indicator(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"
