"""`--names` reaches the mount from the command line and from mount(8) options."""

from __future__ import annotations

import argparse

import pytest

from lockerfs import cli, mount, mount_helper


def mount_args(*extra: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["mount", *extra, "s3://bucket/music", "/mnt/music"])


def test_mount_option_names_windows_becomes_the_flag() -> None:
    assert mount_helper.translate(["s3://bucket/music", "/mnt/music", "-o", "ro,names=windows,cache_size=1G"]) == [
        "mount", "--names", "windows", "--cache-size", "1G", "s3://bucket/music", "/mnt/music"]


def test_names_mode_reaches_the_mount_options() -> None:
    assert mount.MountOptions.from_args(mount_args("--names", "windows")).names == "windows"
    assert mount.MountOptions.from_args(mount_args()).names == "default"


def test_an_unknown_names_mode_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        mount_args("--names", "dos")
    assert exit_info.value.code == 2
    assert "invalid choice: 'dos'" in capsys.readouterr().err
