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

INTEGRATION_DIR = Path(__file__).parent / "integration"
NEEDS_A_SERVER = frozenset({"s3_server"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        in_folder = Path(str(item.fspath)).is_relative_to(INTEGRATION_DIR)
        if in_folder or NEEDS_A_SERVER & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3 server (`rclone serve s3` on 127.0.0.1) for the session; tests use their own buckets."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
