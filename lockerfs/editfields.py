"""The names of the fields `lockerfs tag` sets and `lockerfs rm --match` compares.

Apart from retag.py and edits.py because the command line's help names them: building
the parser (which every command does, `lockerfs mount` too) must not load mutagen and
the tag writers, a quarter of a second of a mount's start.
"""

FIELDS = ("artist", "albumartist", "album", "title", "track", "disc", "year", "genre")

# --match FIELD=VALUE: tag fields compare case-blind; numbers as numbers.
MATCH_TEXT = ("artist", "albumartist", "album", "title", "genre", "format")
MATCH_NUMBERS = ("track", "disc", "year")
MATCH_RECORD = ("sha256", "source", "ext")
MATCH_FIELDS = (*MATCH_TEXT, *MATCH_NUMBERS, *MATCH_RECORD)
