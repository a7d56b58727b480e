"""`lockerfs share` for real: a mounted locker, presigned links fetched with plain urllib, no credentials."""

from __future__ import annotations

import os
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from urllib.parse import quote
from pathlib import Path

import pytest

from lockerfs.share import AUDIO_TYPES
from tests.support.faultproxy import FaultProxy
from tests.support.library import Source, expected_paths, load_manifest
from tests.support.lockers import copy_locker
from tests.support.mounting import lockerfs, mounted

SEVEN_DAYS = 7 * 24 * 3600


@pytest.fixture
def uploaded(library, small_locker, locker, s3_server) -> dict[str, Source]:
    """Mount path -> source, with the small library in the test's locker (a server-side copy
    of one upload, tests/support/lockers.py)."""
    copy_locker(s3_server, small_locker, locker)
    return expected_paths(load_manifest(library[0]))


def read_playlist(text: str) -> list[tuple[str, str]]:
    """(#EXTINF line, URL) pairs of an M3U8."""
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    pairs = list(zip(lines[1::2], lines[2::2], strict=True))
    assert all(info.startswith("#EXTINF:") and url.startswith("http") for info, url in pairs), text
    return pairs


def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    """A GET with nothing but the URL: no credentials, no boto3."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read(), dict(refused.headers)


def largest_album(paths: dict[str, Source]) -> str:
    return Counter(name.rsplit("/", 1)[0] for name in paths).most_common(1)[0][0]


def test_an_album_plays_from_the_links_alone(uploaded, locker, env, proxy: FaultProxy, tmp_path) -> None:
    album = largest_album(uploaded)
    expected = sorted((name, source) for name, source in uploaded.items() if name.startswith(album + "/"))
    output = tmp_path / "album.m3u8"
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        proxy.reset_counts()
        started = time.monotonic()
        result = lockerfs("share", "-o", str(output), str(mnt / album), env=env)
        seconds = time.monotonic() - started
        sent = proxy.count()
    assert sent == 0, "presigning must not touch the network"
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert result.stdout.startswith(f"{len(expected)} tracks in {output}; the links work until ")
    assert result.stdout.rstrip().endswith("(7d)")
    pairs = read_playlist(output.read_text(encoding="utf-8"))
    assert len(pairs) == len(expected) > 1
    for (info, url), (name, source) in zip(pairs, expected, strict=True):
        title = source.tags.get("title") or source.path.stem
        assert info.endswith(f" - {title}") or info.endswith(f",{title}"), (info, name)
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=604800" in url
        status, body, headers = fetch(url)
        assert status == 200, body[:300]
        assert body == source.path.read_bytes(), f"{name}: other bytes than its source"
        assert headers["Content-Type"] == AUDIO_TYPES[name.rsplit(".", 1)[1]]
        assert headers["Content-Disposition"].endswith("filename*=UTF-8''" + quote(Path(name).name, safe=""))
    print(f"\n[share] `lockerfs share` of an album: {seconds:.2f} s, 0 requests; {len(pairs)} links fetched byte-exact")


def test_the_whole_locker_is_shared_with_the_server_away(uploaded, locker, env, proxy: FaultProxy,
                                                         tmp_path) -> None:
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        proxy.set_down(True)
        try:
            result = lockerfs("share", "-o", "-", str(mnt), env=env)
        finally:
            proxy.set_down(False)
    pairs = read_playlist(result.stdout)
    assert len(pairs) == len(uploaded)
    assert f"{len(uploaded)} tracks in standard output" in result.stderr
    status, body, _ = fetch(pairs[0][1])
    assert status == 200 and len(body) > 0


def test_a_link_is_refused_after_it_expires(uploaded, locker, env, tmp_path) -> None:
    one = sorted(uploaded)[0]
    output = tmp_path / "short.m3u8"
    lifetime = 4
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        signed = time.monotonic()
        lockerfs("share", "--expires", f"{lifetime}s", "-o", str(output), str(mnt / one), env=env)
        (_, url), = read_playlist(output.read_text(encoding="utf-8"))
        status, body, _ = fetch(url)
        fetched = time.monotonic() - signed
    assert fetched < lifetime, "too slow to try the link while it lives"
    assert status == 200 and body == uploaded[one].path.read_bytes()
    # the link's life starts at its X-Amz-Date (whole seconds, when share signed it, which a
    # loaded machine may make a few seconds after `signed`): past that and one more second
    stamp = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Date"][0]
    born = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    time.sleep(max(0.0, born + lifetime + 1.5 - time.time()))
    status, body, _ = fetch(url)
    assert status in (400, 403), (status, body[:300])
    print(f"\n[share] a {lifetime} s link: 200 after {fetched:.1f} s, {status} after its end: {body[:160]!r}")


def test_longer_than_seven_days_is_refused_and_nothing_is_written(uploaded, locker, env, tmp_path) -> None:
    output = tmp_path / "never.m3u8"
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        refused = lockerfs("share", "--expires", "8d", "-o", str(output), str(mnt), env=env, check=False)
    assert refused.returncode == 2
    assert refused.stderr == ("lockerfs: links cannot live longer than 7 days, the most a presigned S3 (SigV4) URL "
                              "allows (8 days asked)\n")
    assert not output.exists()


@pytest.mark.parametrize("where", ["outside", "missing"])
def test_paths_that_are_not_in_a_mounted_locker_get_one_sentence(where, uploaded, locker, env, tmp_path) -> None:
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        path = tmp_path if where == "outside" else mnt / "No Such Artist"
        refused = lockerfs("share", "-o", str(tmp_path / "x.m3u8"), str(path), env=env, check=False)
    assert refused.returncode == 2
    message = f"{tmp_path} is not inside a mounted locker" if where == "outside" else f"no such file or folder: {path}"
    assert refused.stderr == f"lockerfs: {message}\n"
    assert not (tmp_path / "x.m3u8").exists()
