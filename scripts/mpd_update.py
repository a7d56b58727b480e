"""A private MPD for one music folder: how scripts/bench and tests time a real
media player's library update.

MPD (Music Player Daemon) is started as our child with --no-daemon and a
config of its own in a work folder: its database, log and state there, a free
port on 127.0.0.1, the null audio output, no automatic updates. It is stopped
by the pid we started, never by name.

MPD runs a full database update at startup whenever its db_file is missing,
even with `auto_update "no"`; so `prepare()` starts it once on an empty folder
to create the database, and `start()` then points it at the music folder,
where `update()` times `mpc update --wait` (everything is new to it: a full
update) and `song_count()` reads `mpc stats`. A second `update()` on the same
folder is the warm update: MPD sees unchanged mtimes and reads no file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def have_mpd() -> bool:
    return bool(shutil.which("mpd") and shutil.which("mpc"))


class PrivateMPD:
    """One MPD process with its own config, database and port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.workdir / "mpd.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mpd.log"

    def _write_config(self, music: Path) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "playlists").mkdir(exist_ok=True)
        quoted = {name: str(path).replace("\\", "\\\\").replace('"', '\\"') for name, path in {
            "music": music, "db": self.workdir / "mpd.db", "log": self.log_path,
            "state": self.workdir / "mpd.state", "playlists": self.workdir / "playlists"}.items()}
        self.config.write_text(
            f'music_directory "{quoted["music"]}"\n'
            f'playlist_directory "{quoted["playlists"]}"\n'
            f'db_file "{quoted["db"]}"\n'
            f'log_file "{quoted["log"]}"\n'
            f'state_file "{quoted["state"]}"\n'
            'bind_to_address "127.0.0.1"\n'
            f'port "{self.port}"\n'
            'auto_update "no"\n'
            'zeroconf_enabled "no"\n'
            'audio_output {\n    type "null"\n    name "null"\n}\n')

    def prepare(self) -> None:
        """Create the database from an empty folder, so the real start runs no update.

        MPD answers on its port before its start-up update has saved the
        database; stopped then, it saves none. So wait for an update of our
        own to end, and for the file to appear, before stopping it.
        """
        empty = self.workdir / "empty"
        empty.mkdir(parents=True, exist_ok=True)
        database = self.workdir / "mpd.db"
        self.start(empty)
        try:
            self.update(START_TIMEOUT_S)
            deadline = time.monotonic() + START_TIMEOUT_S
            while not database.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            self.stop()
        if not database.exists():
            raise RuntimeError(f"MPD wrote no database; see {self.log_path}")

    def start(self, music: Path) -> None:
        self._write_config(music)
        with open(self.log_path.with_suffix(".out"), "ab") as out:
            self.process = subprocess.Popen(["mpd", "--no-daemon", str(self.config)], stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"mpd exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mpd did not listen within {START_TIMEOUT_S:.0f} s: {self.log_tail()}")
            time.sleep(0.05)

    def mpc(self, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run(["mpc", "-h", "127.0.0.1", "-p", str(self.port), *args],
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"mpc {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-200:]}")
        return done.stdout

    def update(self, timeout: float) -> float:
        """Seconds `mpc update --wait` takes (MPD's whole update of its folder)."""
        start = time.perf_counter()
        self.mpc("update", "--wait", timeout=timeout)
        return time.perf_counter() - start

    def song_count(self) -> int:
        found = re.search(r"^Songs:\s*(\d+)", self.mpc("stats"), re.MULTILINE)
        if not found:
            raise RuntimeError("mpc stats printed no song count")
        return int(found.group(1))

    def stop(self) -> None:
        """SIGTERM to the pid we started (MPD saves its state and exits), SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
            try:
                process.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][-200:] if lines else ""


@contextmanager
def private_mpd(workdir: Path, music: Path) -> Iterator[PrivateMPD]:
    """A prepared MPD serving `music` for the block; stopped however the block ends."""
    mpd = PrivateMPD(workdir)
    try:
        mpd.prepare()
        mpd.start(music)
        yield mpd
    finally:
        mpd.stop()
