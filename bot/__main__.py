"""`python -m bot [--config PATH]`: the chat front ends whose tokens are set, plus the GPU worker process.

The worker runs as a child process and is started again if it dies, so a GPU crash never takes the chat
bots down; it ends with this process, even a killed one (`--parent-pid`). With a Redis store and
`[engine] local_worker = false`, workers run elsewhere.

Each front end starts on its own: one whose platform cannot be reached is retried with backoff
(`bot.startup`) while the other and the worker run; one whose token is refused stops, and the process exits
with code 2 when no front end is left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from bot.startup import Backoff, keep_starting
from engine.config import Config, load_config
from engine.errors import UserError
from engine.logs import configure as configure_logging
from engine.logs import setup_logging
from engine.queue.backends import is_redis_url

log = logging.getLogger("bot")

TOKEN_VARS = {"discord": "DISCORD_TOKEN", "telegram": "TELEGRAM_TOKEN"}
EXPIRE_EVERY_S = 3600
METRICS_EVERY_S = 5.0


def read_token(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """A token from NAME, or from the file named by NAME_FILE (for Docker/Kubernetes secrets)."""
    environ = os.environ if env is None else env
    value = environ.get(name, "").strip()
    if value:
        return value
    path = environ.get(f"{name}_FILE", "").strip()
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise UserError(f"{name}_FILE names a file that cannot be read ({exc.strerror}).", "token_file") from None
    return None


class WorkerSupervisor:
    """Keeps one `python -m engine worker` child alive; restarts it with backoff when it exits."""

    def __init__(self, config_path: str | None, store_url: str, restart_delay_s: float = 1.0):
        self.config_path = config_path
        self.store_url = store_url
        self.restart_delay_s = restart_delay_s
        self.proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task | None = None

    def command(self) -> list[str]:
        # --parent-pid: the worker stops (as on SIGTERM) when this process dies, even of SIGKILL, instead of
        # holding the store's lease against the worker of the next bot.
        cmd = [sys.executable, "-m", "engine", "worker", "--store", self.store_url, "--parent-pid", str(os.getpid())]
        if self.config_path:
            cmd += ["--config", self.config_path]
        return cmd

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker-supervisor")

    async def _run(self) -> None:
        delay = self.restart_delay_s
        quick_usage_errors = 0
        while not self._stopping:
            started = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(*self.command())
            log.info("worker process started (pid %d)", self.proc.pid)
            code = await self.proc.wait()
            if self._stopping:
                return
            ran_s = time.monotonic() - started
            log.warning("worker process exited with code %s after %.0f s; restarting", code, ran_s)
            if code == 2 and ran_s < 60:
                # A configuration problem (no GPU, missing model, another worker): retrying fast won't help.
                quick_usage_errors += 1
                delay = min(300.0, self.restart_delay_s * 10 * quick_usage_errors)
            else:
                quick_usage_errors = 0
                delay = self.restart_delay_s if ran_s > 60 else min(60.0, delay * 2)
            await asyncio.sleep(delay)

    async def stop(self, timeout_s: float = 20.0) -> None:
        self._stopping = True
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class FrontEnd(Protocol):
    """What `run` needs of a chat front end."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def take_over(self) -> None:
        """Follow the jobs of another replica that stopped (called after each heartbeat)."""


def wants_local_worker(config: Config) -> bool:
    """A worker beside the bot: always with a SQLite store (one machine, one GPU); with Redis unless
    `[engine] local_worker` is false (workers then run on the GPU machines)."""
    return config.engine.local_worker or not is_redis_url(config.storage.url)


async def run(config: Config, config_path: str | None, tokens: dict[str, str],
              backoff: Backoff | None = None) -> int:
    """Serve until SIGTERM/SIGINT (0), or until every front end's token was refused (2)."""
    from bot.core import BotCore, settle_heap
    from bot.replicas import Replica
    from engine.queue.service import JobService

    service = JobService(config)
    await service.start()
    core = BotCore(config, service)
    # Other bot processes may share the store: what only one may do is held in it (bot/replicas.py).
    replica = core.replica = Replica(service.store, config.replicas.lease_s)
    await replica.start()
    if config.metrics.port:
        from engine.queue.metrics import Metrics

        core.metrics = Metrics()
    supervisor = None
    if wants_local_worker(config):
        supervisor = WorkerSupervisor(config_path, config.storage.url)
        supervisor.start()
    front_ends: dict[str, FrontEnd] = {}
    starting: dict[str, asyncio.Task[bool]] = {}
    live: list[str] = []
    code = 0
    stop = asyncio.Event()
    stopped = asyncio.create_task(stop.wait(), name="stop-signal")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    health = None
    try:
        if core.metrics:   # /metrics, /healthz and /readyz on [metrics] port
            from bot.health import Readiness
            from engine.queue.metrics import start_metrics_server

            health = start_metrics_server(config.metrics.port, core.metrics.registry,
                                          ready=Readiness(service.store, loop, live, starting, stop))
        if "discord" in tokens:
            from bot.discord.app import DiscordFrontEnd

            front_ends["discord"] = DiscordFrontEnd(core, config, tokens["discord"], replica)
        if "telegram" in tokens:
            from bot.telegram.app import TelegramFrontEnd

            front_ends["telegram"] = TelegramFrontEnd(core, config, tokens["telegram"], replica=replica)
        # Side by side: a platform that is down (retried with backoff) keeps neither the other nor the worker
        # waiting.
        for name, fe in front_ends.items():
            starting[name] = asyncio.create_task(keep_starting(fe, name, TOKEN_VARS[name], backoff or Backoff()),
                                                 name=f"start-{name}")
        last_expiry = 0.0
        while not stop.is_set():
            for name, task in list(starting.items()):
                if task.done():
                    del starting[name]
                    if task.result():
                        live.append(name)
                        replica.every_beat(front_ends[name].take_over)
                        settle_heap()
                        log.info("bot running: %s", ", ".join(live))
            if not live and not starting:   # every token refused: nothing left to serve
                code = 2
                break
            with contextlib.suppress(Exception):
                if time.monotonic() - last_expiry >= EXPIRE_EVERY_S:
                    last_expiry = time.monotonic()
                    expired = await service.expire_old()
                    if expired:
                        log.info("expired %d old jobs", expired)
                if core.metrics:
                    await service.sample_metrics(core.metrics)
            await asyncio.wait({stopped, *starting.values()}, timeout=METRICS_EVERY_S,
                               return_when=asyncio.FIRST_COMPLETED)
    finally:
        log.info("shutting down")
        stopped.cancel()
        for task in starting.values():   # a start in progress cleans up after itself when cancelled
            task.cancel()
        await asyncio.gather(stopped, *starting.values(), return_exceptions=True)
        await replica.stop()   # no takeover from here on
        await core.close()   # followers first, so none edits through a closed client
        for fe in front_ends.values():
            with contextlib.suppress(Exception):
                await fe.close()
        await replica.close()   # what it held goes to the other replicas at once
        if supervisor:
            await supervisor.stop()
        await service.close()
        if health:
            await asyncio.to_thread(health.stop)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Discord and Telegram video bots.")
    parser.add_argument("--config", default=None, help="config file (default ./config.toml)")
    args = parser.parse_args(argv)
    setup_logging()   # text until the config says otherwise; tokens redacted from the first line on
    try:
        config = load_config(args.config)
        configure_logging(config.logging)
        tokens = {name: tok for name, var in TOKEN_VARS.items() if (tok := read_token(var))}
        if not tokens:
            raise UserError("No chat token set: set DISCORD_TOKEN and/or TELEGRAM_TOKEN "
                            "(or DISCORD_TOKEN_FILE / TELEGRAM_TOKEN_FILE).", "no_token")
        backoff = Backoff.from_env()
        return asyncio.run(run(config, args.config, tokens, backoff))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
