"""A real, throwaway redis-server for tests and benchmarks: loopback only, a free port, no persistence.

Debian/Ubuntu package: `redis-server`. Without the binary, tests skip with the reason; under CI (the `CI`
environment variable set) they fail instead, so a missing package never passes silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process in a temporary folder; `url` points at database 0."""

    def __init__(self, binary: str):
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 3) -> RedisServer:
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        for _ in range(attempts):  # the free port may be taken before redis-server binds it
            self.port = free_port()
            log = Path(self._dir.name) / "redis.log"
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self._dir.name, "--daemonize", "no", "--logfile", str(log)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _ping(self.port):
                    return self
                time.sleep(0.02)
            self._kill()
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1; log:\n{tail}")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def flush(self) -> None:
        """Empty every database, so each test starts from a blank store."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            if not s.recv(16).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL failed")


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def require_redis_binary() -> str:
    """The redis-server path; skips the test without it, or fails it under CI."""
    binary = redis_binary()
    if binary is None:
        reason = "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must install it", pytrace=False)
        pytest.skip(reason)
    return binary


@contextmanager
def running_redis(binary: str | None = None) -> Iterator[RedisServer]:
    server = RedisServer(binary or require_redis_binary()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of a real, empty Redis database."""
    redis_server.flush()
    return redis_server.url
