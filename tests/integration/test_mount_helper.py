"""`mount.fuse.lockerfs`, run the way mount(8) runs it: `HELPER LOCKER MOUNTPOINT -o OPTIONS`.

mount(8) finds the helper as /sbin/mount.fuse.lockerfs (scripts/setup.sh links
it there); these tests run this checkout's helper directly with the argument
list mount(8) would pass, so they test this code, and need no root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.library import assert_serves_sources, expected_paths, load_manifest, mounted_files
from tests.support.mounting import LOCKERFS, force_unmount, lockerfs
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY

HELPER = str(Path(sys.executable).with_name("mount.fuse.lockerfs"))
UNREACHABLE = "http://127.0.0.1:9"


def helper(locker: str, mountpoint: Path, options: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELPER, locker, str(mountpoint), "-o", options], env=env, capture_output=True,
                          text=True, timeout=60)


def test_profile_and_endpoint_url_options_reach_the_mount(library, locker, env, proxy: FaultProxy,
                                                          tmp_path) -> None:
    """No keys and a dead endpoint in the environment: the mount can only work if
    `profile=` picked the profile that holds the keys and `endpoint_url=` the server."""
    root, _ = library
    lockerfs("upload", str(root), locker, env=env)
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(f"[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"
                           f"[music]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\nregion = {REGION}\n\n[profile music]\nregion = {REGION}\n")
    mount_env = {name: value for name, value in env.items()
                 if name not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")}
    mount_env.update(AWS_ENDPOINT_URL=UNREACHABLE, AWS_SHARED_CREDENTIALS_FILE=str(credentials),
                     AWS_CONFIG_FILE=str(config))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = f"profile=music,endpoint_url={proxy.endpoint},cache_dir={tmp_path / 'cache'},noauto,_netdev,nofail"
    proxy.reset_counts()
    try:
        result = helper(locker, mnt, options, mount_env)
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mnt)
        assert_serves_sources(mounted_files(mnt), expected_paths(load_manifest(root)))
    finally:
        subprocess.run([LOCKERFS, "umount", str(mnt)], env=env, capture_output=True, timeout=60)
        force_unmount(mnt)
    assert proxy.count("GET", "/objects/") > 0, "the mount did not use endpoint_url"


@pytest.mark.parametrize("option", ["bogus=1", "allow_other=yes", "cache_size", "profile"])
def test_an_unknown_option_is_refused_in_one_sentence(locker, env, tmp_path, option: str) -> None:
    """A typo in /etc/fstab is named, nothing is mounted, and mount(8) gets exit status 2."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        result = helper(locker, mnt, f"cache_size=1G,{option},noauto", env)
        assert result.returncode == 2
        assert result.stderr == f"mount.fuse.lockerfs: unknown mount option {option!r}\n"
        assert not os.path.ismount(mnt)
    finally:
        force_unmount(mnt)
