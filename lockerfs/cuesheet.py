"""Cue sheets: find the files a sheet names, and rewrite its FILE lines to other names.

A cue sheet describes an album as tracks inside one or more audio files,
each introduced by a line `FILE "name" TYPE`. In the mount those files have
the layout's names, not the ones the sheet was written against, so the
mount serves the sheet with each FILE line pointing at the mounted file
(relative to the sheet's folder) and every other byte as it was: a player
that opens the sheet from the mount plays the right file, image+cue rips
included.

Pure text in, text out; the FILE type (WAVE, MP3, ...) is kept as written,
as players decode whatever the file holds. The cue syntax has no escape for
'"' inside a quoted name: a mounted name holding one (possible in the
default names mode, never with `--names windows`) cannot be written so that
every player reads it back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_BOM = "\ufeff"
_FILE_LINE = re.compile(r'^(?P<lead>[ \t]*FILE[ \t]+)(?:"(?P<quoted>[^"]*)"|(?P<bare>[^ \t"]+))(?P<rest>.*)$',
                        re.IGNORECASE)


def file_names(text: str) -> list[str]:
    """The names the sheet's FILE lines give, in order, each once (what a writer maps to tracks)."""
    names: dict[str, None] = {}
    for line in text.removeprefix(_BOM).splitlines():
        match = _FILE_LINE.match(line)
        if match:
            names.setdefault(match["quoted"] if match["quoted"] is not None else match["bare"])
    return list(names)


def rewrite(text: str, names: Mapping[str, str]) -> str:
    """The sheet with each FILE line whose name is in `names` pointing at names[name].

    Line endings, indentation, the FILE type and every other line are kept.
    A FILE line naming something not in `names` is left as it was.
    """
    bom = _BOM if text.startswith(_BOM) else ""
    lines = text[len(bom):].splitlines(keepends=True)
    for index, line in enumerate(lines):
        body = line.rstrip("\r\n")
        match = _FILE_LINE.match(body)
        if not match:
            continue
        old = match["quoted"] if match["quoted"] is not None else match["bare"]
        new = names.get(old)
        if new is not None:
            lines[index] = f'{match["lead"]}"{new}"{match["rest"]}{line[len(body):]}'
    return bom + "".join(lines)
