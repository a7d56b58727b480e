"""Cue sheets: the FILE names a sheet gives, and rewriting them (table tests, no I/O)."""

from __future__ import annotations

import pytest

from lockerfs import cuesheet

NAMES = {"CD1.wav": "01 Intro.flac", "track 2.flac": "../Other (2001)/02 B.flac", "bare.ape": "Album.ape"}


@pytest.mark.parametrize("sheet, expected", [
    ('FILE "CD1.wav" WAVE\n', 'FILE "01 Intro.flac" WAVE\n'),
    ('file "CD1.wav" wave\r\n', 'file "01 Intro.flac" wave\r\n'),  # keywords in any case, CRLF kept
    ('  FILE "track 2.flac" WAVE\n', '  FILE "../Other (2001)/02 B.flac" WAVE\n'),  # indent kept
    ("FILE bare.ape WAVE\n", 'FILE "Album.ape" WAVE\n'),  # an unquoted name comes back quoted
    ('\ufeffFILE "CD1.wav" MP3', '\ufeffFILE "01 Intro.flac" MP3'),  # BOM kept, last line without newline
    ('FILE "unknown.wav" WAVE\n', 'FILE "unknown.wav" WAVE\n'),  # a name not mapped stays
    ('REM FILE "CD1.wav" WAVE\n', 'REM FILE "CD1.wav" WAVE\n'),  # not a FILE line
    ('TITLE "FILE \\"CD1.wav\\""\n', 'TITLE "FILE \\"CD1.wav\\""\n'),
    ('FILE "CD1.wav"\n', 'FILE "01 Intro.flac"\n'),  # no type: still a FILE line
], ids=repr)
def test_file_lines_are_rewritten_and_nothing_else(sheet: str, expected: str) -> None:
    assert cuesheet.rewrite(sheet, NAMES) == expected


def test_a_whole_sheet_keeps_every_other_byte() -> None:
    sheet = ('REM GENRE Jazz\r\nPERFORMER "Miles Davis"\r\nTITLE "Kind of Blue"\r\n'
             'FILE "CD1.wav" WAVE\r\n  TRACK 01 AUDIO\r\n    TITLE "So What"\r\n    INDEX 01 00:00:00\r\n'
             '  TRACK 02 AUDIO\r\n    INDEX 00 09:22:00\r\n    INDEX 01 09:24:40\r\n'
             'FILE "track 2.flac" WAVE\r\n  TRACK 03 AUDIO\r\n    INDEX 01 00:00:00\r\n')
    rewritten = cuesheet.rewrite(sheet, NAMES)
    assert rewritten == sheet.replace('"CD1.wav"', '"01 Intro.flac"').replace(
        '"track 2.flac"', '"../Other (2001)/02 B.flac"')
    assert cuesheet.file_names(sheet) == ["CD1.wav", "track 2.flac"]


def test_file_names_are_listed_once_in_order() -> None:
    sheet = '\ufeffFILE "b.wav" WAVE\nFILE a.flac WAVE\nFILE "b.wav" WAVE\n'
    assert cuesheet.file_names(sheet) == ["b.wav", "a.flac"]
