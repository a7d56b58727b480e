"""mountinfo parsing: which filesystem is mounted where (stale-mount recovery trusts it)."""

from __future__ import annotations

from pathlib import Path

from lockerfs.mountpoints import MountEntry, mounted_at, parse_mountinfo

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
80 27 0:52 / /home/me/My\\040Music rw,nosuid,nodev,relatime shared:40 - fuse.lockerfs s3://bucket/music ro,user_id=0
81 27 0:53 / /mnt/nas rw,relatime - fuse.sshfs me@nas:/ rw
82 81 0:54 / /mnt/nas rw,relatime master:3 - fuse.lockerfs s3://b/x ro
83 27 0:55 / /mnt/tab\\011and\\134slash rw - tmpfs tmpfs rw
garbage line
"""


def test_fields_and_octal_escapes_are_decoded() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert entries[1] == MountEntry("/home/me/My Music", "fuse.lockerfs", "s3://bucket/music")
    assert entries[-1].mountpoint == "/mnt/tab\tand\\slash"
    assert len(entries) == 5  # the line it cannot read is left out, not guessed at


def test_optional_fields_do_not_shift_the_type() -> None:
    entries = {e.mountpoint: e for e in parse_mountinfo(MOUNTINFO)}
    assert entries["/home/me/My Music"].fstype == "fuse.lockerfs"  # one optional field
    assert entries["/proc"].fstype == "proc"  # none


def test_the_topmost_mount_of_a_point_is_the_one_seen(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    found = mounted_at(Path("/mnt/nas"), table)
    assert found is not None and found.fstype == "fuse.lockerfs"  # mounted over the sshfs one
    assert mounted_at(Path("/mnt/nas/"), table) == found
    assert mounted_at(Path("/mnt/elsewhere"), table) is None
    assert mounted_at(Path("/home/me/My Music"), table).source == "s3://bucket/music"  # type: ignore[union-attr]
