"""Fixtures shared by unit and integration tests, and the `integration` marker.

`-m "not integration"` runs the fast half (no server, no FUSE: seconds);
`-m integration` the rest. A test is an integration test when it lives in
tests/integration or uses the real S3 server (`s3_server`), wherever it lives:
marking here rather than by `pytestmark` in tests/integration/conftest.py,
which pytest ignores (a conftest is not a test module).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3server import S3Server

TESTS_DIR = Path(__file__).parent
INTEGRATION_DIR = TESTS_DIR / "integration"
NEEDS_A_SERVER = frozenset({"s3_server"})

# The modules that take longest, longest first (from `--durations=0`, summed per module).
# scripts/test.sh runs modules whole on three workers (`--dist loadfile`) in collection
# order (`--no-loadscope-reorder`; by default xdist starts with the modules that hold
# the most tests): so these start at once and the short ones fill in around them,
# instead of a long module starting late and ending the run alone. The rest keep their
# order, after these. A module missing here costs only balance, never a test.
LONGEST_FIRST = [
    "integration/test_faults_upload.py",
    "integration/test_life.py",
    "integration/test_faults_mount.py",
    "unit/test_upload_pipeline.py",
    "integration/test_laptop.py",
    "integration/test_gc.py",
    "integration/test_upload.py",
    "integration/test_hostile.py",
    "integration/test_life_errors.py",
    "integration/test_quick_failures.py",
    "unit/test_tags.py",
    "integration/test_mount.py",
    "integration/test_security.py",
    "integration/test_upload_extras.py",
    "integration/test_share.py",
    "integration/test_extras_mount.py",
    "unit/test_untrusted_catalog.py",
    "integration/test_large.py",
    "integration/test_mpd.py",
]


def _longest_first(item: pytest.Item) -> int:
    module = Path(str(item.fspath)).relative_to(TESTS_DIR).as_posix()
    return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        in_folder = Path(str(item.fspath)).is_relative_to(INTEGRATION_DIR)
        if in_folder or NEEDS_A_SERVER & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    items.sort(key=_longest_first)  # stable: a module's tests keep their order


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3 server (`rclone serve s3` on 127.0.0.1) for the session; tests use their own buckets."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
