"""The recorded read traces (tests/data/traces) load, hang together and cover what
tests of the scan/play decision need: every scanner opened every audio file of
the library, and every kind of file is there."""

from __future__ import annotations

import pytest

from tests.support.traces import available, file_kind, load

SCANNERS = ("mutagen", "ffprobe", "mpd", "taglib")
READERS = (*SCANNERS, "ffmpeg", "cp", "player")
# Each shape the issue names: art from none to 1.5 MB (JPEG, PNG), MP3 with and
# without a Xing frame, moov first and last, Ogg and Opus, FLAC 16-bit and 24/96.
KINDS = {"mp3-xing-art-jpeg", "mp3-noxing-art-jpeg", "mp3-xing-art-png", "mp3-noxing-art-png", "mp3-xing-noart",
         "flac-art-jpeg", "flac-art-png", "flac-noart", "flac-hires-art-jpeg", "m4a-moovend-art-jpeg",
         "m4a-moovfront-art-png", "ogg-art-jpeg", "opus-art-jpeg"}


def test_every_reader_has_a_trace() -> None:
    assert set(READERS) <= set(available())


@pytest.mark.parametrize("reader", READERS)
def test_trace_is_consistent(reader: str) -> None:
    trace = load(reader)
    assert trace.blksize > 0 and trace.handles
    for handle in trace.handles:
        assert handle.closed_ms is None or handle.closed_ms >= handle.opened_ms
        for read in handle.reads:
            assert read.offset >= 0 and read.size > 0
            assert read.t_ms >= handle.opened_ms
    ordered = [read for _handle, read in trace.reads_in_order()]
    assert len(ordered) == sum(len(h.reads) for h in trace.handles)
    assert [r.t_ms for r in ordered] == sorted(r.t_ms for r in ordered)


@pytest.mark.parametrize("reader", SCANNERS)
def test_scanners_open_every_audio_file(reader: str) -> None:
    trace = load(reader)
    audio = {f.path for f in trace.files if f.format}
    assert audio <= {h.file.path for h in trace.handles}


def test_library_has_every_kind_with_tag_regions() -> None:
    trace = load("mutagen")
    kinds = {f.kind for f in trace.files}
    assert KINDS <= kinds, KINDS - kinds
    for traced in trace.files:
        assert traced.kind == file_kind({"format": traced.format, **traced.details})
        if traced.format:
            assert 0 < traced.head_size + traced.tail_size < traced.size
    art = [f.details["art_bytes"] for f in trace.files if f.details.get("art_bytes")]
    assert min(art) < 100_000 and max(art) > 1_000_000
