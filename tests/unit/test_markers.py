"""`-m integration` and `-m "not integration"` split the suite (tests/conftest.py marks at collection)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def collected(*args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                            cwd=TESTS.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 5), result.stdout + result.stderr  # 5: nothing selected
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_integration_marker_selects_server_and_fuse_tests_only() -> None:
    paths = ["tests/integration/test_upload.py", "tests/unit/test_layout.py", "tests/unit/test_faultproxy.py"]
    selected = collected("-m", "integration", *paths)
    fast = collected("-m", "not integration", *paths)
    assert any(node.startswith("tests/integration/test_upload.py::") for node in selected)
    assert not any(node.startswith("tests/integration/") for node in fast)
    assert not any(node.startswith("tests/unit/test_layout.py::") for node in selected)
    # test_faultproxy.py lives in unit/ but most of it talks to the real S3 server
    assert "tests/unit/test_faultproxy.py::test_counts_puts_gets_heads_and_lists" in selected
    assert "tests/unit/test_faultproxy.py::test_chunked_both_ways_keeps_the_connection" in fast
    assert set(selected).isdisjoint(fast)
