"""Exceptions caught and dropped on the read path: let go of what their tracebacks hold.

A traceback holds every frame it passed through, and each frame its
locals: the GET's sink (and through it the blocks being delivered), the
last chunk read, the response. urllib3, http.client and our own retry
loops keep an exception in a local of a frame that its own traceback
holds, a reference cycle that only the collector's full pass frees, and a
mount with a large catalog makes that pass rare. Under a network that
fails often, such cycles held 80 MB of blocks after a minute
(tests/integration/test_faults_mount.py's soak). Clearing the frames of
an exception that nobody will look at again frees them at once.
"""

from __future__ import annotations

import traceback


def drop(exc: BaseException) -> None:
    """Clear the locals of the finished frames in `exc`'s traceback and in those of the
    exceptions it was raised from or while handling. Frames still running are left alone."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending += (current.__cause__, current.__context__)
