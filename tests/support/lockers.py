"""A locker for a test without an upload per test: a server-side copy of one made earlier.

Many tests need "the small library in a locker of my own" and change that
locker (rm, tag, pin), so they cannot share one. `lockerfs upload` of the
library costs a Python start, its tag-reading processes and the hashing, in
every such test. A locker is only objects under a prefix: copying each object
server-side (CopyObject, metadata and Content-Type included) into a fresh
bucket gives byte for byte the locker that upload would have written, for a
few dozen requests from this process.

What a copy lacks is the local side of an upload: the upload state in the
test's XDG_STATE_HOME. A test that depends on it (a rerun that finds files
unchanged) runs `lockerfs upload` itself.
"""

from __future__ import annotations

from tests.support.s3server import S3Server


def split_locker(locker: str) -> tuple[str, str]:
    """s3://BUCKET/PREFIX -> (BUCKET, PREFIX)."""
    bucket, _, prefix = locker.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def copy_locker(server: S3Server, source: str, target: str) -> int:
    """Copy every object of the `source` locker into the `target` one; returns how many."""
    client = server.client()
    from_bucket, from_prefix = split_locker(source)
    to_bucket, to_prefix = split_locker(target)
    copied = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=from_bucket, Prefix=f"{from_prefix}/"):
        for item in page.get("Contents", []):
            key = f"{to_prefix}/{item['Key'].removeprefix(from_prefix + '/')}"
            client.copy_object(Bucket=to_bucket, Key=key, CopySource={"Bucket": from_bucket, "Key": item["Key"]})
            copied += 1
    assert copied, f"{source} holds nothing to copy"
    return copied
