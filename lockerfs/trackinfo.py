"""What lockerfs knows about one audio file, independent of where it is stored.

Kept apart from tags.py (which fills it from mutagen) and catalog.py (which
stores it) so that layout and the mount can use it without importing either.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """Normalized tags, audio facts and tag-region sizes of one audio file.

    Every tag field is optional: a file with no readable tags still has a
    TrackInfo (all None) and is named from its path by the layout.
    """

    format: str  # container: flac, mp3, ogg, opus, m4a, aac (raw ADTS), wav, aiff; "" if unknown
    codec: str  # flac, mp3, vorbis, opus, aac, alac, pcm; "" if unknown
    artist: str | None = None
    albumartist: str | None = None
    album: str | None = None
    title: str | None = None
    track: int | None = None
    tracktotal: int | None = None
    disc: int | None = None
    disctotal: int | None = None
    date: str | None = None  # as tagged, e.g. "1959", "1959-08-17"
    year: int | None = None  # parsed from date when it holds a plausible year
    genre: str | None = None
    compilation: bool = False
    duration: float | None = None  # seconds
    bitrate: int | None = None  # bits per second
    sample_rate: int | None = None  # Hz
    channels: int | None = None
    # Bytes a tag reader needs from each end of the file. head_size covers
    # everything before the audio frames (ID3v2 tag, FLAC metadata blocks, Ogg
    # header pages, MP4 boxes up to and including a leading moov); tail_size
    # covers what sits after them (ID3v1, APEv2, Lyrics3, a trailing moov).
    head_size: int = 0
    tail_size: int = 0
