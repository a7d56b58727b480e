"""lockerfs: a music locker in an S3-compatible bucket, mounted as Artist/Album/Track folders."""

__version__ = "0.1.0"
