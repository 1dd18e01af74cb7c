"""A real, throwaway redis-server for tests and benchmarks: loopback only, a free port, no persistence unless
asked (`RedisServer(binary, appendonly=True)`: the append-only file, fsynced every second, as in
docker-compose.yml). Fault tests stop it (`terminate`: SIGTERM, `kill`: SIGKILL), start it again on the same
port with the same data folder (`restart`), freeze it (`pause` / `resume`: SIGSTOP / SIGCONT, a server that
accepts connections and never answers), and cut the tail off its append-only file (`aof_size`,
`truncate_aof`: the writes a machine crash loses when they were not yet fsynced).

Debian/Ubuntu package: `redis-server`. Without the binary, tests skip with the reason; under CI (the `CI`
environment variable set) they fail instead, so a missing package never passes silently.
"""

from __future__ import annotations

import os
import shutil
import signal
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

    def __init__(self, binary: str, appendonly: bool = False):
        self.binary = binary
        self.appendonly = appendonly
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def dir(self) -> Path:
        assert self._dir is not None, "start() first"
        return Path(self._dir.name)

    def start(self, attempts: int = 3) -> RedisServer:
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        for _ in range(attempts):  # the free port may be taken before redis-server binds it
            self.port = free_port()
            if self._launch():
                return self
            self._kill()
        tail = self._log_tail()
        self.stop()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1; log:\n{tail}")

    def _launch(self) -> bool:
        persistence = (["--appendonly", "yes", "--appendfsync", "everysec"] if self.appendonly
                       else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.dir), "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            if _ping(self.port):
                return True
            time.sleep(0.02)
        return False

    def _log_tail(self) -> str:
        log = self.dir / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def terminate(self) -> None:
        """SIGTERM: Redis writes out its append-only file and exits."""
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no goodbye."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port with the same data folder (it loads the append-only file)."""
        assert self.proc is None, "stop it first"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._launch():   # the port may still be held for a moment
            self._kill()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start again; log:\n{self._log_tail()}")
            time.sleep(0.1)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def _aof(self) -> Path:
        """The append-only file the writes go to (Redis 7: appendonlydir/*.incr.aof)."""
        found = sorted((self.dir / "appendonlydir").glob("*.incr.aof"))
        assert found, "no append-only file: start with appendonly=True"
        return found[-1]

    def aof_size(self) -> int:
        return self._aof().stat().st_size

    def truncate_aof(self, size: int) -> None:
        """Cut the append-only file back to `size` bytes (with the server stopped)."""
        assert self.proc is None, "stop it first"
        with open(self._aof(), "r+b") as f:
            f.truncate(size)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)   # a paused server cannot act on SIGTERM
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
def running_redis(binary: str | None = None, appendonly: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(binary or require_redis_binary(), appendonly=appendonly).start()
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
