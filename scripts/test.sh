#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit and integration:
# a real S3-compatible server on 127.0.0.1 and real FUSE mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Modules run whole, longest first (tests/conftest.py orders them), on three workers.
exec .venv/bin/python -m pytest -ra -n 3 --dist loadfile --no-loadscope-reorder "$@"
