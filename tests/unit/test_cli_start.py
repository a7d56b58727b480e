"""What every command (`lockerfs mount` too) loads before it runs: the parser only."""

from __future__ import annotations

import subprocess
import sys


def test_building_the_parser_loads_no_tag_writer() -> None:
    """mutagen and the tag writers (edits, retag) are a quarter of a second of a mount's
    start on this machine: only the commands that re-tag or match load them."""
    probe = ("import sys; from lockerfs import cli; cli.build_parser(); "
             "print(sorted(name for name in ('mutagen', 'lockerfs.edits', 'lockerfs.retag', 'lockerfs.tags') "
             "if name in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
