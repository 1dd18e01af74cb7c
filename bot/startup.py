"""Starting a chat front end when its platform may be down, or may refuse the token.

A front end's `start()` raises `TokenRefused` when the platform refuses the token (HTTP 401: only a new token
helps) and `PlatformUnavailable` when it cannot be reached, times out or answers with an error; either way it
has cleaned up and may be started again. `keep_starting` retries with capped exponential backoff, one log
line per attempt, until the front end is up or its token is refused.

The backoff starts at `BOT_START_RETRY_S` seconds (default 1) and doubles up to `BOT_START_RETRY_MAX_S`
(default 60).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from engine.errors import UserError

log = logging.getLogger("bot")

RETRY_VAR = "BOT_START_RETRY_S"
RETRY_MAX_VAR = "BOT_START_RETRY_MAX_S"


class TokenRefused(Exception):
    """The platform refused the bot token (HTTP 401): retrying cannot help."""


class PlatformUnavailable(Exception):
    """The platform could not be reached, timed out or answered with an error: worth another try later."""


class Startable(Protocol):
    async def start(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: first_s, twice that, ... up to max_s."""

    first_s: float = 1.0
    max_s: float = 60.0

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(self.max_s, delay * 2)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Backoff:
        """The backoff set by BOT_START_RETRY_S / BOT_START_RETRY_MAX_S; UserError naming a bad one."""
        environ = os.environ if env is None else env
        first = _seconds(environ, RETRY_VAR, cls.first_s)
        return cls(first, max(first, _seconds(environ, RETRY_MAX_VAR, cls.max_s)))


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name}: {text!r} is not a number of seconds above 0.", "bad_env")
    return value


async def keep_starting(front_end: Startable, name: str, token_var: str, backoff: Backoff) -> bool:
    """Start `front_end` (the `name` one), trying again after each failure until it is up (True), or until
    the platform refuses its token (False, after one error line naming `token_var`)."""
    delays = backoff.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            await front_end.start()
        except TokenRefused as exc:
            log.error("%s: %s; the %s bot stays off until the token is replaced and the bot restarted",
                      token_var, exc, name.capitalize())
            return False
        except PlatformUnavailable as exc:
            delay = next(delays)
            log.warning("%s: not started (attempt %d): %s; retrying in %.1f s", name, attempt, exc, delay)
        except Exception as exc:   # not a platform answer: a bug or a broken install, so show where
            delay = next(delays)
            log.error("%s: not started (attempt %d): %s: %s; retrying in %.1f s", name, attempt,
                      type(exc).__name__, exc, delay, exc_info=True)
        else:
            if attempt > 1:
                log.info("%s: started after %d attempts", name, attempt)
            return True
        await asyncio.sleep(delay)


__all__ = ["Backoff", "PlatformUnavailable", "TokenRefused", "keep_starting"]
