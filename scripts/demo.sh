#!/usr/bin/env bash
# Set everything up, then run lockerfs on its built-in default: a local
# S3-compatible server on 127.0.0.1, a small synthesized library uploaded to
# it, mounted and listed, then unmounted and stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
