"""`/readyz` for `python -m bot`: ready when the job store answers a cheap read and every front end that is
wanted has connected.

The check is called from the metrics server's thread and runs in the bot's event loop (so a loop that is stuck
is not ready either). A front end whose platform is still being retried (`bot.startup`) is a reason; one whose
token was refused is off for good and logged, not a reason. Workers are not asked: their states are a metric
(`animabot_workers`), and a bot replica without a worker still takes jobs into the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

from engine.errors import first_line
from engine.queue.resilient import store_patience

STORE_TIMEOUT_S = 2.0   # the store read; a paused Redis would otherwise hold the probe for its socket timeout
STORE_PATIENCE_S = 0.5  # how long the resilient store retries a fault for the probe


class Readiness:
    """`ready() -> (bool, reason)` for `engine.queue.metrics.start_metrics_server`.

    `live` and `starting` are the bot's own collections of front-end names (read, never changed here): those
    connected, and those still starting; `stop` is set when the bot shuts down."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop, live: Collection[str],
                 starting: Collection[str], stop: asyncio.Event | None = None,
                 timeout_s: float = STORE_TIMEOUT_S):
        self.store = store
        self.loop = loop
        self.live = live
        self.starting = starting
        self.stop = stop
        self.timeout_s = timeout_s

    def __call__(self) -> tuple[bool, str]:
        if self.loop.is_closed():
            return False, "shutting down"
        future = asyncio.run_coroutine_threadsafe(self.check(), self.loop)
        try:
            return future.result(self.timeout_s + 1.0)
        except TimeoutError:
            future.cancel()
            return False, "the bot's event loop is not answering"

    async def check(self) -> tuple[bool, str]:
        if self.stop is not None and self.stop.is_set():
            return False, "shutting down"
        reasons = []
        store_problem = await self._store_problem()
        if store_problem:
            reasons.append(store_problem)
        waiting = sorted(self.starting)
        if waiting:
            reasons.append(f"not connected yet: {', '.join(waiting)}")
        elif not self.live:
            reasons.append("no front end is connected")
        return not reasons, "; ".join(reasons)

    async def _store_problem(self) -> str:
        try:
            with store_patience(STORE_PATIENCE_S):
                await asyncio.wait_for(self.store.get_meta("seq"), self.timeout_s)
        except TimeoutError:
            return f"store not answering within {self.timeout_s:g} s"
        except Exception as exc:
            return f"store unreachable: {first_line(exc)}"
        orphaned = getattr(self.store, "orphaned", "")
        if orphaned:   # a SQLite file deleted or replaced under the bot: new jobs are refused
            return f"store file {orphaned}"
        return ""
