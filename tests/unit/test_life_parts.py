"""The small parts of gc, share and quick failures: durations, playlist lines, the mount's description,
which objects records name, and a store's first contact with an endpoint nobody listens on."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockerfs import catalog, config, mountregistry, share, writeorder
from lockerfs.asset import Asset, asset_id_for_file, stored_object
from lockerfs.playlist import Playlist, PlaylistEntry
from lockerfs.store import PRESIGN_MAX_SECONDS, RetryPolicy, S3Store, Unreachable
from tests.unit.test_catalog import make_track


# --- durations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("0", 0), ("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
    ("1d12h", 129600), (" 1.5h ", 5400), ("7D", 604800),
])
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "x", "7y", "inf", "nan", "1h-", "h", "1 h", "1e3", "7 days"])
def test_bad_durations_say_what_would_do(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        config.parse_duration(text)
    assert str(caught.value) == f"not a duration: {text!r} (try 90s, 15m, 12h or 7d)"


@pytest.mark.parametrize("seconds, text", [(604800, "7d"), (1209600, "14d"), (3600, "1h"), (5400, "90m"),
                                           (90, "90s"), (0, "0s"), (1.5, "1.5s")])
def test_durations_print_as_they_are_typed(seconds: float, text: str) -> None:
    assert config.format_duration(seconds) == text
    assert config.parse_duration(text) == seconds


# --- share's playlist lines ---------------------------------------------------------------------

def test_extinf_has_duration_artist_and_title() -> None:
    assert share.extinf(make_track(1, duration=201.5), "01 Title 1.flac") == "#EXTINF:202,Artist 1 - Title 1"
    untitled = make_track(2, title=None, artist=None, duration=None)
    assert share.extinf(untitled, "Track 2.flac") == "#EXTINF:-1,Track 2"


def test_a_title_from_the_catalog_cannot_add_a_line() -> None:
    hostile = make_track(3, title="x\nhttp://evil.example/\r\n#EXTINF:1,y\u2028z")
    line = share.extinf(hostile, "x.flac")
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert line.startswith("#EXTINF:202,Artist 3 - x http://evil.example/")


def test_disposition_names_the_file_in_ascii_and_utf8() -> None:
    assert share.disposition('01 "Café" \\ Noir.flac') == (
        "inline; filename=\"01 _Caf__ _ Noir.flac\"; filename*=UTF-8''01%20%22Caf%C3%A9%22%20%5C%20Noir.flac")


@pytest.mark.parametrize("seconds", [PRESIGN_MAX_SECONDS + 1, 8 * 86400])
def test_links_longer_than_seven_days_are_refused(seconds: float) -> None:
    with pytest.raises(share.ShareError, match="cannot live longer than 7 days"):
        share.check_expiry(seconds)


def test_links_of_at_least_a_second() -> None:
    assert share.check_expiry(PRESIGN_MAX_SECONDS) == PRESIGN_MAX_SECONDS
    with pytest.raises(share.ShareError, match="at least one second"):
        share.check_expiry(0)


def test_the_playlist_is_written_whole_and_private(tmp_path: Path) -> None:
    target = tmp_path / "album.m3u8"
    share.write_playlist(target, "#EXTM3U\n")
    assert target.read_text() == "#EXTM3U\n" and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["album.m3u8"]
    with pytest.raises(share.ShareError, match="cannot write the playlist"):
        share.write_playlist(tmp_path / "missing" / "x.m3u8", "#EXTM3U\n")


def test_the_default_playlist_is_named_after_the_first_path(tmp_path: Path) -> None:
    folder = tmp_path / "Kind of Blue (1959)"
    folder.mkdir()
    assert share.default_output([folder]) == Path("Kind of Blue (1959).m3u8")


# --- the mount's description ----------------------------------------------------------------------

@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    (tmp_path / "lockerfs" / "mounts").mkdir(parents=True)
    return tmp_path


def test_a_mount_description_reads_back(state_dir: Path) -> None:
    description = mountregistry.MountDescription("/home/me/Locker", "s3://b/music", "http://127.0.0.1:9000",
                                                 "us-east-1", "/cache/catalog.json.gz", "{artist}/{title}",
                                                 "windows", 1234)
    path = mountregistry.write_description(description)
    assert path.parent == state_dir / "lockerfs" / "mounts"
    assert mountregistry.read_description("/home/me/Locker") == description
    assert mountregistry.read_description("/home/me/Other") is None


def test_a_description_with_more_fields_still_reads_and_a_broken_one_does_not(state_dir: Path) -> None:
    path = mountregistry.description_path("/m")
    fields = {"mountpoint": "/m", "locker": "s3://b", "endpoint": "http://e", "region": None,
              "catalog_copy": "/c", "template": "t", "names": "default", "pid": 1}
    path.write_text(json.dumps({**fields, "control_socket": "/run/x"}))
    assert mountregistry.read_description("/m") == mountregistry.MountDescription(**fields)
    path.write_text(json.dumps({"mountpoint": "/m"}))
    assert mountregistry.read_description("/m") is None
    path.write_text("{")
    assert mountregistry.read_description("/m") is None


# --- which objects records name ---------------------------------------------------------------------

def test_objects_named_by_tracks_assets_and_playlist_files() -> None:
    track = make_track(1)
    cover = Asset(asset_id_for_file("a/cover.jpg"), "cover", stored_object("a" * 64, 10, "jpg"), (track.sha256,),
                  "cover.jpg", "a/cover.jpg")
    with_file = Playlist("Mix", "Mix.m3u", (PlaylistEntry(sha256=track.sha256),),
                         object=stored_object("b" * 64, 5, "m3u"))
    without_file = Playlist("Other", "Other.m3u", (PlaylistEntry(sha256=track.sha256),))
    records = [catalog.add_record(track), catalog.add_record(track), catalog.asset_record(cover),
               catalog.playlist_record(with_file), catalog.playlist_record(without_file),
               catalog.remove_record(make_track(2).sha256, track=make_track(2))]
    assert writeorder.objects_named(records) == [track.key, cover.object.key, with_file.object.key]  # type: ignore


# --- first contact -----------------------------------------------------------------------------------

@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # never listened on: connecting is refused
        yield sock.getsockname()[1]


def counting_store(endpoint: str, monkeypatch: pytest.MonkeyPatch, attempts: int) -> tuple[S3Store, list[int]]:
    """A store with credentials (none are checked: nothing answers) that counts its attempts."""
    for name, value in (("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    store = S3Store("s3://bucket/music", endpoint, RetryPolicy(max_attempts=attempts, connect_timeout=2, read_timeout=2))
    tries: list[int] = []
    store._client.meta.events.register("before-send.s3", lambda **kwargs: tries.append(1))
    return store, tries


def test_before_any_answer_a_refused_connection_is_not_retried(closed_port: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store, tries = counting_store(f"http://127.0.0.1:{closed_port}", monkeypatch, attempts=10)
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        store.get("locker.json")
    seconds = time.monotonic() - started
    assert len(tries) == 1
    assert str(caught.value) == (f"cannot connect to the S3 endpoint http://127.0.0.1:{closed_port} "
                                 "(connection refused: nothing listens there)")
    print(f"\n[first contact] refused, reported after {seconds * 1000:.0f} ms and 1 attempt")


def test_once_the_endpoint_answered_connections_are_retried_as_before(closed_port: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store, tries = counting_store(f"http://127.0.0.1:{closed_port}", monkeypatch, attempts=2)
    store.first_contact.answered = True  # as after any reply: a run under way
    with pytest.raises(Unreachable):
        store.get("locker.json")
    assert len(tries) == 2


def test_a_name_that_does_not_resolve_says_so_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    store, tries = counting_store("http://no-such-host.invalid", monkeypatch, attempts=10)
    with pytest.raises(Unreachable, match=r"^cannot connect to the S3 endpoint http://no-such-host.invalid "
                                          r"\(its name does not resolve\)$"):
        store.get("locker.json")
    assert len(tries) == 1


# --- presigning ----------------------------------------------------------------------------------------

def test_presigned_links_are_sigv4_name_their_type_and_need_no_network(closed_port: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store, tries = counting_store(f"http://127.0.0.1:{closed_port}", monkeypatch, attempts=1)
    url = store.presign_get("objects/sha256/ab/abc.flac", 3600, "audio/flac", share.disposition("01 A.flac"))
    assert url.startswith(f"http://127.0.0.1:{closed_port}/bucket/music/objects/sha256/ab/abc.flac?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=3600" in url
    assert "response-content-type=audio%2Fflac" in url
    assert tries == [] and not store.signs_with_temporary_credentials()
    with pytest.raises(ValueError, match="1 s to 604800 s"):
        store.presign_get("objects/x", PRESIGN_MAX_SECONDS + 1)


def test_links_signed_with_a_session_token_are_flagged(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    store, _ = counting_store(f"http://127.0.0.1:{closed_port}", monkeypatch, attempts=1)
    assert store.signs_with_temporary_credentials()
    assert "X-Amz-Security-Token=token" in store.presign_get("objects/x", 60)
