"""Child processes for scripts/bench: FUSE mounts and measurements that can be
timed out, torn down and reaped without ever hanging the benchmark.

A process blocked in a FUSE request may not die until the request ends, so a
timeout tears the mount down first (lazy unmount, then the file system's
process is killed), which fails the waiting requests, then kills the child.
Mount state is read from /proc/self/mountinfo, never by touching the mount.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import wanproxy

STEPS_SCRIPT = Path(__file__).resolve().with_name("bench_steps.py")
MOUNT_TIMEOUT_S = 60.0


class StepFailed(Exception):
    """A measure that could not be taken; its message goes into the table."""


def is_mounted(mountpoint: Path) -> bool:
    """From /proc/self/mountinfo: never touches the mount, so never hangs on it."""
    target = str(mountpoint).replace(" ", "\\040")
    with open("/proc/self/mountinfo") as table:
        return any(line.split()[4] == target for line in table)


LIVE_MOUNTS: set[Mount] = set()


class Mount:
    """One system mounted in the foreground as our child, so we own its process."""

    def __init__(self, argv: list[str], env: dict[str, str], mountpoint: Path, log_path: Path) -> None:
        self.argv, self.env = argv, env
        self.mountpoint, self.log_path = mountpoint, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = MOUNT_TIMEOUT_S) -> float:
        """Seconds from starting the process until the kernel lists the mount."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        LIVE_MOUNTS.add(self)
        start = time.perf_counter()
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        while time.perf_counter() - start < timeout:
            if is_mounted(self.mountpoint):
                return time.perf_counter() - start
            if self.process.poll() is not None:
                raise StepFailed(f"mount exited with {self.process.returncode}: {self.log_tail()}")
            time.sleep(0.005)
        raise StepFailed(f"not mounted after {timeout:.0f} s: {self.log_tail()}")

    def check_alive(self) -> None:
        """Refuse to measure a mount that is gone: an empty mount point reads as an
        empty library, which would look like a very fast result."""
        if not self.process or self.process.poll() is not None or not is_mounted(self.mountpoint):
            raise StepFailed("the mount is gone (an earlier timeout or a crash ended it)")

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][-200:] if lines else ""

    def rss_bytes(self) -> int:
        """Resident memory of the mount process and any children it runs."""
        import psutil

        assert self.process
        process = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])

    def stop(self, force: bool = False) -> None:
        """Unmount and end the process; `force` skips the polite path (a hung mount)."""
        if not force and is_mounted(self.mountpoint):
            done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, timeout=30)
            force = done.returncode != 0
        if force and is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True, timeout=30)
        self._end_process(grace=2.0 if force else 15.0)
        LIVE_MOUNTS.discard(self)

    def _end_process(self, grace: float) -> None:
        if not self.process or self.process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                self.process.wait(grace)
                return
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, sig)
        self.process.wait(10)


def stop_all_mounts() -> None:
    for mount in list(LIVE_MOUNTS):
        mount.stop(force=True)


def run_step_process(step: str, arguments: dict[str, Any], timeout: float,
                     mount: Mount | None = None) -> dict[str, Any]:
    """On timeout the mount is torn down first: that fails the FUSE requests the
    child waits in, so the child can then be killed and reaped."""
    child = subprocess.Popen([sys.executable, str(STEPS_SCRIPT), step, json.dumps(arguments)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except BaseException as exc:  # a timeout, or the benchmark interrupted: no child outlives its step
        if mount:
            mount.stop(force=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise StepFailed(f"timeout after {timeout:.0f} s") from None
        raise
    if child.returncode:
        lines = err.decode(errors="replace").strip().splitlines() or [f"exit status {child.returncode}"]
        raise StepFailed(lines[-1][-200:])
    return json.loads(out)


def settle(proxy: wanproxy.WanProxy, quiet_s: float = 0.3, limit_s: float = 15.0) -> None:
    """Wait until nothing crosses the WAN for a moment, so that background
    transfers (read-ahead, cache fills) are charged to the step that caused them."""
    deadline = time.monotonic() + limit_s
    last = proxy.stats()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = proxy.stats()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


def drop_page_cache() -> bool:
    """Drop the page cache so warm reads come from the system's own cache, not the
    kernel's; False where the kernel does not let us (then warm includes it).
    Synced first: a cache file just written is dirty, and dirty pages stay."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("1\n")
        return True
    except OSError:
        return False
