"""Editing one message often without being rate-limited: `EditScheduler` (one edit in flight, coalesced to
the latest state, a minimum interval apart), `RetryLater` (a platform's "wait", from HTTP 429 or flood control)
and `with_retries` for the calls that must get through (the result upload)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.errors import UserError

log = logging.getLogger("bot.edits")


class RetryLater(Exception):
    """Raised by a platform's send function when it was told to wait (HTTP 429 / flood control)."""

    def __init__(self, seconds: float):
        super().__init__(f"retry after {seconds:.2f}s")
        self.seconds = seconds


# close() lets an edit already sent finish for this long: a late edit could otherwise land after the result,
# on the message the result took the place of (Discord fills a never-edited deferred response with the first
# followup).
IN_FLIGHT_S = 15.0


class EditScheduler:
    """Edits of one message: at most one in flight, coalesced to the latest state, a minimum interval apart,
    and waiting out retry-after. `update` never blocks the caller."""

    def __init__(self, send: Callable[[Any], Awaitable[None]], min_interval_s: float,
                 on_edit: Callable[[], None] | None = None, max_failures: int = 5):
        self._send = send
        self.min_interval_s = min_interval_s
        self._pending: Any = None
        self._has_pending = False
        self._last_sent_at = 0.0
        self._last_sent: Any = None
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_edit = on_edit
        self._max_failures = max_failures
        self._sending = False
        self.edits = 0
        self.retries = 0

    def update(self, payload: Any) -> None:
        if payload == self._last_sent and not self._has_pending:
            return
        self._pending, self._has_pending = payload, True
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="status-edits")

    async def _run(self) -> None:
        failures = 0
        while self._has_pending:
            wait = self._last_sent_at + self.min_interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            payload, self._has_pending = self._pending, False
            if payload == self._last_sent:
                continue
            try:
                self._sending = True
                try:
                    await self._send(payload)
                finally:
                    self._sending = False
                failures = 0
                self.edits += 1
                self._last_sent = payload
                if self._on_edit:
                    self._on_edit()
            except RetryLater as exc:
                self.retries += 1
                if not self._has_pending:   # keep the newest payload
                    self._pending, self._has_pending = payload, True
                await asyncio.sleep(exc.seconds)
            except Exception as exc:  # a progress edit is worth retrying a few times, never worth a crash
                failures += 1
                self.retries += 1
                log.warning("status edit failed (%s): %s", type(exc).__name__, exc)
                if failures < self._max_failures and not self._has_pending:
                    self._pending, self._has_pending = payload, True
                await asyncio.sleep(min(8.0, 0.5 * 2 ** failures))
            self._last_sent_at = time.monotonic()
        self._idle.set()

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until the latest state has been sent (or given up on)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def close(self) -> None:
        """Stop: nothing more is sent; an edit already on its way gets up to IN_FLIGHT_S to finish."""
        self._has_pending = False
        if self._task and not self._task.done():
            if self._sending:
                await asyncio.wait({self._task}, timeout=IN_FLIGHT_S)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def with_retries(fn: Callable[[], Awaitable[Any]], attempts: int = 5, base_delay_s: float = 0.5,
                       retry_on: tuple[type[BaseException], ...] = (Exception,)) -> Any:
    """Run an important call (the result upload) with backoff; a RetryLater waits exactly as told."""
    for attempt in range(attempts):
        try:
            return await fn()
        except RetryLater as exc:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(exc.seconds)
        except retry_on as exc:
            if attempt == attempts - 1 or isinstance(exc, UserError):
                raise
            delay = base_delay_s * 2 ** attempt * (1 + random.random() / 4)
            log.warning("retrying after %s: %s (in %.1fs)", type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
