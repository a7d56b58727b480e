"""Hostile files and tags, uploaded and mounted for real.

Every readable audio file is uploaded and appears once, under a valid name,
byte-exact; everything else is reported by `lockerfs upload` with its reason.
The corpus is built here (write_track + mutagen), never downloaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
from mutagen.id3 import ID3, TCON

from lockerfs import catalog

from tests.support.bombs import gzip_of_zeros
from tests.support.bounds import EIO_WITHIN
from tests.support.library import catalog_paths, mounted_files, sha256_of
from tests.support.mounting import LOCKERFS, force_unmount, lockerfs, mounted, wait_until

from synth_library import make_png, write_track

NAME_MAX = 255


@dataclass
class Case:
    path: Path
    audio: bool | None  # True: must appear in the mount; False: reported as skipped; None: one or the other
    why: str


def _tags(title, **more):  # type: ignore[no-untyped-def]
    return {"artist": "Hostile", "album": "Corpus", "title": title, **more}


def build_corpus(root: Path) -> list[Case]:
    cases: list[Case] = []
    seed = iter(range(1000, 2000))

    def audio(relative: str, fmt: str, tags: dict, why: str, **kw) -> Path:  # type: ignore[no-untyped-def]
        track = write_track(root / relative, fmt, seconds=0.3, tags=tags, seed=next(seed), **kw)
        cases.append(Case(track.path, True, why))
        return track.path

    def other(relative: str | bytes, data: bytes, why: str, is_audio: bool = False) -> Path:
        path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(relative))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        cases.append(Case(path, is_audio, why))
        return path

    # separators and controls in every tag that makes a name
    audio("sep.flac", "flac", {"artist": "AC/DC", "albumartist": "AC/DC", "album": "Back\\Slash/Album",
                               "title": "Highway / To \\ Hell"}, "'/' and '\\' in tags")
    audio("ctl.flac", "flac", {"artist": "Ctl\x01\x1b[31mArtist", "album": "Al\x7fbum\x85",
                               "title": "Bell\x07Tab\tNew\nLine\r\nEnd"}, "control characters in tags")
    audio("nul.ogg", "ogg", _tags("Nul\x00Byte"), "NUL in a tag")
    audio("dots.flac", "flac", {"artist": "..", "album": ".", "title": "."}, "'.' and '..' tags")
    audio("dots2.mp3", "mp3", {"artist": "...", "album": "..", "title": ".."}, "'..' and '...' tags")
    audio("lead.flac", "flac", {"artist": " . hidden", "album": ".config", "title": "  .profile  "},
          "leading dots and spaces")
    audio("trail.flac", "flac", _tags("Trailing dots...   "), "trailing dots and spaces")
    # NFC and NFD twins: different bytes, names equal after normalization
    audio("nfc.flac", "flac", _tags(unicodedata.normalize("NFC", "Café Noël")), "NFC title")
    audio("nfd.flac", "flac", _tags(unicodedata.normalize("NFD", "Café Noël")), "NFD twin")
    audio("case.flac", "flac", _tags("CAFÉ NOËL"), "case twin")
    audio("emoji.opus", "opus", {"artist": "🎸🔥", "album": "👨‍👩‍👧‍👦 Family 🇫🇷🏴󠁧󠁢󠁳󠁣󠁴󠁿",
                                 "title": "👍🏽" * 40}, "emoji, ZWJ sequences, flags, skin tones")
    audio("rtl.flac", "flac", {"artist": "فرقة", "album": "אלבום", "title": "שלום \u202eevil.exe\u202c"},
          "right-to-left and bidi overrides")
    audio("long.flac", "flac", {"artist": "A" * 300, "album": "ä" * 300, "title": "é" * 150 + "x" * 150},
          "300-byte names")
    audio("long2.mp3", "mp3", {"artist": "Long", "album": "Long", "title": "🎵" * 80}, "320-byte emoji title")
    audio("empty-tags.flac", "flac", {"artist": "", "album": "", "title": ""}, "empty tags")
    audio("no-tags.flac", "flac", {}, "no tags at all")
    audio("v1only.mp3", "mp3", {"artist": "Old", "album": "Rip", "title": "ID3v1", "track": 3},
          "ID3v1 only", variant="id3v1")
    audio("ape.mp3", "mp3", {"artist": "Ape", "album": "Tags", "title": "APEv2", "track": 2},
          "APEv2 + ID3v1", variant="apev2")
    audio("slash-number.mp3", "mp3", _tags("Three of Twelve", track="3/12", disc="1/2"), "track '3/12'")
    audio("vinyl.flac", "flac", _tags("Side A One", track="A1"), "track 'A1'")
    audio("empty-number.ogg", "ogg", _tags("No Number", track=""), "track ''")
    audio("huge-number.flac", "flac", _tags("Huge Number", track="99999999999999999999"), "absurd track number")
    audio("zero-date.flac", "flac", _tags("Year Zero", date="0000"), "date '0000'")
    audio("bad-date.mp3", "mp3", _tags("Bad Date", date="sometime"), "date 'sometime'")
    genre = audio("genre.mp3", "mp3", _tags("Numeric Genre"), "numeric ID3 genre '(17)'")
    tags = ID3(genre)
    tags.add(TCON(encoding=3, text=["(17)"]))
    tags.save(genre)
    audio("genre2.mp3", "mp3", _tags("Bare Numeric Genre", genre="255"), "genre '255'")
    audio("LOUD.FLAC", "flac", _tags("Uppercase Extension"), "uppercase extension")
    audio("Mixed.Mp3", "mp3", _tags("Mixed Extension"), "mixed-case extension")
    audio("liar.mp3", "flac", _tags("FLAC named mp3"), "FLAC content, .mp3 name")
    audio("liar2.ogg", "mp3", _tags("MP3 named ogg"), "MP3 content, .ogg name")
    audio("liar3.wav", "m4a", _tags("M4A named wav"), "M4A content, .wav name")
    audio("noext", "flac", _tags("No Extension"), "no extension")
    cases[-1].audio = None  # type: ignore[assignment]  # upload picks files by extension: skipped, said why
    audio("cover.flac", "flac", _tags("Big Cover"), "5 MB cover art",
          cover=make_png(1300, 1300, seed=3, noise=True))
    # names on disk
    audio(".hidden.flac", "flac", {}, "hidden file, no tags")
    audio("dir with\nnewline/file\twith tab.flac", "flac", {}, "control characters in the path")
    audio("back\\slash.flac", "flac", {}, "backslash in the file name")
    # duplicates: the same bytes under two names, one track
    first = audio("dup/one.flac", "flac", _tags("Duplicate"), "duplicate (first)")
    other("dup/two.flac", first.read_bytes(), "duplicate (second)", is_audio=True)
    other("dup/deeper/three.FLAC", first.read_bytes(), "duplicate (third)", is_audio=True)
    # not audio, or not readable as audio
    other("zero.mp3", b"", "zero-byte file")
    other("notes.mp3", b"these are my notes, not music\n" * 20, "text named .mp3")
    other("image.flac", make_png(32, 32), "PNG named .flac")
    other("random.ogg", os.urandom(70_000), "random bytes named .ogg")
    other("fake-flac.flac", b"fLaC" + os.urandom(1000), "'fLaC' magic then garbage")
    cases[-1].audio = None  # type: ignore[assignment]  # a container with unreadable tags is kept
    other("cover.jpg", b"\xff\xd8\xff\xe0" + os.urandom(500), "a JPEG")
    cases[-1].audio = None  # type: ignore[assignment]  # the cover of the folder's albums
    other("playlist.m3u", b"#EXTM3U\n01.flac\n", "a playlist")
    cases[-1].audio = None  # type: ignore[assignment]  # stored; its one entry names nothing: reported
    truncated = write_track(root / "tmp-trunc.flac", "flac", 1.0, _tags("Truncated"), seed=next(seed)).path
    other("truncated.flac", truncated.read_bytes()[: truncated.stat().st_size // 2], "truncated FLAC",
          is_audio=True)  # the header is intact: uploaded as is, named from what can be read
    truncated.unlink()
    mp3 = write_track(root / "tmp-trunc.mp3", "mp3", 1.0, _tags("Cut MP3"), seed=next(seed)).path
    other("cut.mp3", mp3.read_bytes()[:100], "MP3 cut to 100 bytes")
    mp3.unlink()
    cases[-1].audio = None  # type: ignore[assignment]  # either way is fine, as long as it is said
    return cases


def write_undecodable_name(root: Path) -> Path:
    """An untagged FLAC whose file name is not UTF-8 (Latin-1 bytes, as old rips have)."""
    track = write_track(root / "tmp.flac", "flac", 0.3, {}, seed=4242)
    path = Path(os.fsdecode(os.fsencode(root) + b"/latin1-\xe9\xff.flac"))
    os.rename(track.path, path)
    return path


def valid_component(name: str) -> str | None:
    """Why a mounted name is not valid, or None."""
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if len(raw) > NAME_MAX:
        return f"{len(raw)} bytes"
    if "/" in name or "\0" in name:
        return "separator or NUL"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        return "control character"
    if name in (".", "..") or name.startswith("."):
        return "dot name"
    if name != name.strip():
        return "surrounding whitespace"
    if unicodedata.normalize("NFC", name) != name:
        return "not NFC"
    return None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, build_corpus(root)


def test_hostile_corpus_uploads_and_mounts_under_valid_names(corpus, locker, env, tmp_path) -> None:
    root, cases = corpus
    result = lockerfs("upload", str(root), locker, env=env)
    output = result.stdout + result.stderr
    digest = {case.path: hashlib.sha256(case.path.read_bytes()).hexdigest() for case in cases}
    placed = catalog_paths(locker, env)
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        files = mounted_files(mnt)
        read = {name: sha256_of(path.read_bytes()) for name, path in files.items()}
        dirs = [p.relative_to(mnt).as_posix() for p in mnt.rglob("*") if p.is_dir()]
    extras = {name: sha for name, sha in read.items() if name not in placed}  # covers, playlists
    read = {name: sha for name, sha in read.items() if name in placed}
    cover = hashlib.sha256((root / "cover.jpg").read_bytes()).hexdigest()
    assert extras and all(name.startswith("Playlists/") or (name.endswith("/cover.jpg") and sha == cover)
                          for name, sha in extras.items()), extras
    assert read == placed, "a path does not serve the object the catalog places there"
    shown: dict[str, list[str]] = {}
    for name, sha in read.items():
        shown.setdefault(sha, []).append(name)
    bad_names = {name: why for name in [*files, *dirs] for component in name.split("/")
                 if (why := valid_component(component))}
    skipped_lines = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    print(f"\n[hostile] {len(cases)} files tried: {sum(1 for c in cases if c.audio)} audio, "
          f"{sum(1 for c in cases if c.audio is False)} not audio; {len(files)} files mounted "
          f"({len(shown)} distinct); upload said: {result.stdout.splitlines()[0]}")
    for line in skipped_lines:
        print(f"  skipped {line!r}")
    assert not bad_names, bad_names
    assert all(len(names) == 1 for names in shown.values()), {s: n for s, n in shown.items() if len(n) > 1}
    for case in cases:
        relative = case.path.relative_to(root).as_posix()
        if case.audio:
            assert digest[case.path] in shown, f"{case.why} ({relative!r}) is missing from the mount"
        elif case.audio is False:
            assert digest[case.path] not in shown or case.path.stat().st_size == 0
            assert any(line.startswith(f"{relative}: ") and len(line) > len(relative) + 2
                       for line in skipped_lines), f"{case.why} ({relative!r}) is not reported as skipped"
        else:  # either uploaded or reported, never silently dropped
            assert digest[case.path] in shown or digest[case.path] in extras.values() or any(line.startswith(f"{relative}: ") for line in skipped_lines)
    audio = {digest[c.path] for c in cases if c.audio}
    assert len(shown) >= len(audio)
    assert "Traceback" not in output


def test_hostile_names_survive_every_template(corpus, locker, env, tmp_path) -> None:
    """The same corpus through a template that puts every tag in folder names."""
    root, cases = corpus
    lockerfs("upload", str(root), locker, env=env)
    template = "{genre}/{artist}/{albumartist} - {album}[ ({year})]/[{disc}-][{track:02} ]{title} [{format}]"
    placed = catalog_paths(locker, env, template)
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache"), "--layout", template) as mnt:
        names = [p.relative_to(mnt).as_posix() for p in mnt.rglob("*")]
        read = {name: sha256_of(path.read_bytes()) for name, path in mounted_files(mnt).items()}
    read = {name: sha for name, sha in read.items() if name in placed or not name.endswith(("/cover.jpg", ".m3u8"))}
    bad = {n: why for n in names for c in n.split("/") if (why := valid_component(c))}
    assert not bad, bad
    assert read == placed, "a path does not serve the object the catalog places there"
    assert len(read) == len(set(read.values()))


def test_a_file_name_that_is_not_utf8_is_uploaded_and_named(locker, env, tmp_path) -> None:
    root = tmp_path / "odd"
    root.mkdir()
    path = write_undecodable_name(root)
    result = lockerfs("upload", str(root), locker, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache")) as mnt:
        files = mounted_files(mnt)
        assert [valid_component(c) for name in files for c in name.split("/")] == [None] * 3
        assert [p.read_bytes() for p in files.values()] == [path.read_bytes()]


# --- a catalog written by someone else -----------------------------------------------------

def _journal_key(prefix: str) -> str:
    return f"{prefix}/{catalog.JOURNAL_PREFIX}{catalog.new_id()}.json"


def _hostile_records(real: dict) -> list:  # type: ignore[type-arg]
    def fake(n: int, **info: object) -> dict:  # type: ignore[type-arg]
        digest = hashlib.sha256(f"fake{n}".encode()).hexdigest()
        return {"op": "add", "track": {"sha256": digest, "key": catalog.object_key(digest, "flac"), "size": 5000,
                                       "ext": "flac", "source": "../../etc/passwd", "mtime": 1.7e9,
                                       "info": {"format": "flac", "codec": "flac", **info}}}

    liar = json.loads(json.dumps(real))
    liar["info"].update(artist="../../etc", album="/abs", title="passwd\x00.flac")
    records = [
        fake(1, artist="../../etc", album="..", title="passwd"),
        fake(2, artist="/", album="/abs/olute", title="\x00"),
        fake(3, artist="." * 300, title="\x1b]0;pwned\x07"),
        fake(4, track="x", size="big", head_size=10**15),
        {"op": "add", "track": {**real, "key": "../../../etc/passwd"}},
        {"op": "add", "track": {**real, "size": 10**14}},
        {"op": "add", "track": {**real, "sha256": "../" * 20}},
        {"op": "add"}, None, [1, 2], "junk", {"op": "remove", "sha256": "/etc"},
    ]
    return records


REFRESH_JUDGED_WITHIN = 60.0  # a refresh every second; the bomb costs ~2 s of CPU idle, far more on CI
REAL_ONE = "Hostile/Corpus/01 Real One.flac"  # where the default layout puts _tags("Real One", track=1)


def test_raw_hostile_catalog_in_the_bucket_cannot_escape_or_crash_the_mount(s3_server, bucket, locker, env,
                                                                            tmp_path) -> None:

    lib = tmp_path / "lib"
    real_track = write_track(lib / "real.flac", "flac", 1.0, _tags("Real One", track=1), seed=1)
    lockerfs("upload", str(lib), locker, env=env)
    client = s3_server.client()
    prefix = "music"
    journals = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/catalog/")["Contents"]]
    real = json.loads(client.get_object(Bucket=bucket, Key=journals[0])["Body"].read())["records"][0]["track"]
    document = {"kind": "journal", "version": 1, "id": "x", "records": _hostile_records(real)}
    client.put_object(Bucket=bucket, Key=_journal_key(prefix), Body=json.dumps(document).encode())
    with mounted(locker, tmp_path / "mnt", env, "--cache-dir", str(tmp_path / "cache"), "--refresh", "1") as mnt:
        names = [p.relative_to(mnt).as_posix() for p in mnt.rglob("*")]
        files = mounted_files(mnt)
        bad = {n: why for n in names for c in n.split("/") if (why := valid_component(c))}
        assert not bad, bad
        assert all(Path(os.path.realpath(p)).is_relative_to(mnt) for p in files.values())
        readable = {}
        for name, path in files.items():
            started = time.monotonic()
            try:
                readable[name] = path.read_bytes()
            except OSError as exc:
                assert exc.errno == errno.EIO and time.monotonic() - started < EIO_WITHIN, (name, exc)
        # the fakes are listed and fail to read; the real track reads as itself
        assert len(files) >= 5 and list(readable) == [REAL_ONE], sorted(readable)
        assert readable[REAL_ONE] == real_track.path.read_bytes()
        before = sorted(names)
        # Then garbage in the catalog folder, picked up by a running mount's refresh.
        client.put_object(Bucket=bucket, Key=_journal_key(prefix), Body=b"\x00not json{{{")
        client.put_object(Bucket=bucket, Key=_journal_key(prefix),
                          Body=b'{"kind":"journal","version":1,"records":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}")
        client.put_object(Bucket=bucket, Key=f"{prefix}/{catalog.SNAPSHOT_PREFIX}{catalog.new_id()}.json.gz",
                          Body=gzip_of_zeros(1 << 30))
        # Inflating the bomb up to the cap is seconds of CPU on a loaded machine: wait for the
        # refresh that has judged all three files, not for a fixed time.
        log_path = tmp_path / "cache" / "mount.log"

        def refreshed_past_all_three() -> bool:
            log = log_path.read_text(errors="replace")
            return log.count("skipping a damaged catalog file") >= 3 and "catalog refreshed" in log
        assert wait_until(refreshed_past_all_three, timeout=REFRESH_JUDGED_WITHIN), log_path.read_text()
        assert sorted(p.relative_to(mnt).as_posix() for p in mnt.rglob("*")) == before
        assert (mnt / REAL_ONE).read_bytes() == real_track.path.read_bytes()


def test_a_fresh_mount_skips_undecodable_catalog_files(s3_server, bucket, locker, env, tmp_path) -> None:
    """Two journal files that cannot be decoded: the mount comes up, shows and serves the
    real track, and names each skipped file in its log."""
    lib = tmp_path / "lib"
    real = write_track(lib / "real.flac", "flac", 1.0, _tags("Real One", track=1), seed=1)
    lockerfs("upload", str(lib), locker, env=env)
    client = s3_server.client()
    garbage, nested = _journal_key("music"), _journal_key("music")
    client.put_object(Bucket=bucket, Key=garbage, Body=b"\x00not json{{{")
    client.put_object(Bucket=bucket, Key=nested,
                      Body=b'{"kind":"journal","version":1,"records":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}")
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    result = lockerfs("mount", "--cache-dir", str(cache), locker, str(mnt), env=env, check=False)
    try:
        assert "Traceback" not in result.stderr
        assert result.returncode == 0, result.stderr
        assert sorted(mounted_files(mnt)) == [REAL_ONE]
        assert (mnt / REAL_ONE).read_bytes() == real.path.read_bytes()
    finally:
        subprocess.run([LOCKERFS, "umount", str(mnt)], env=env, capture_output=True)
        force_unmount(mnt)
    skipped = [line for line in (cache / "mount.log").read_text().splitlines() if "skipping a damaged" in line]
    for key in (garbage, nested):  # the log names keys within the locker
        assert sum(key.removeprefix("music/") in line for line in skipped) == 1, (key, skipped)
