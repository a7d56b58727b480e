#!/usr/bin/env bash
# Set up everything lockerfs needs on a fresh Debian machine: system packages
# (when missing), a virtual environment in .venv with lockerfs and its test
# extras, and the mount(8) helper for `mount -t fuse.lockerfs` and fstab.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
pkg-config --exists fuse3 2>/dev/null || need_apt+=(libfuse3-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)   # M4A test files, and the benchmark's real player
# tests of a changed network: a host name whose address the test controls, and `ip addr`
dpkg -s libnss-wrapper >/dev/null 2>&1 || need_apt+=(libnss-wrapper)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v mpd >/dev/null || need_apt+=(mpd)         # a real media player's library update (tests, bench)
command -v mpc >/dev/null || need_apt+=(mpc)         # its client: `mpc update --wait`, `mpc stats`
command -v mpcenc >/dev/null || need_apt+=(musepack-tools)   # Musepack SV8 test files
command -v getfattr >/dev/null || need_apt+=(attr)   # getfattr: what a file of the mount says about itself
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import lockerfs, pyfuse3, pytest_timeout, soundfile" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install -q --upgrade pip > .venv/install.log 2>&1
    .venv/bin/pip install -q -e '.[test]' >> .venv/install.log 2>&1 || { cat .venv/install.log >&2; exit 1; }
    touch .venv/.installed
fi

# mount(8) looks for /sbin/mount.fuse.lockerfs; link ours there when we may.
if [ "$(id -u)" -eq 0 ] && [ -d /usr/sbin ]; then
    ln -sf "$PWD/.venv/bin/mount.fuse.lockerfs" /usr/sbin/mount.fuse.lockerfs
fi
