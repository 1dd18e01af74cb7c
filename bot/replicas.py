"""This bot process among the others on one job store: what it holds, and taking over what a dead one held.

Several `python -m bot` replicas may share a Redis store. Whatever only one of them may do at a time is a named
*hold* in the store (`Store.hold`), renewed by a heartbeat here every quarter of `[replicas] lease_s` for
three quarters of it (so three heartbeats in a row may be missed):

    follow:<platform>:<job>   following a job's status message and delivering its result
    discord:shard:<n>         a Discord gateway shard (bot/discord/app.py)
    discord:member:<id>       a replica that runs Discord (how many share the shards)
    telegram:poller           the one replica that polls Telegram for updates

A replica that dies stops renewing; once a hold has expired, another replica takes it on its next heartbeat
(`orphans`, then `take`), so a dead replica's statuses, shards and polling move within one lease: at most
three quarters of it for the hold to expire, a quarter for the next heartbeat. A
replica that stops cleanly lets its holds expire at once instead, so the others take over at their next
heartbeat. A hold lost to another replica (this one stalled past its lease) calls its `on_lost`: the work
stops here rather than being done twice.

After a store outage a replica takes nothing over for two heartbeats and the store's retry backoff: none could
renew meanwhile, and the live ones keep what they hold.

A replica started on the machine where an earlier one died (the same host name, and its process gone) frees
that one's holds at once: a restarted bot carries on without waiting out the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from engine.queue.parent import pid_alive
from engine.queue.resilient import RETRY_MAX_S, background

log = logging.getLogger("bot.replicas")

OnLost = Callable[[], Any]
Check = Callable[[], Awaitable[None]]


class Replica:
    """The holds of this process, renewed by a heartbeat, and the checks run after each beat (takeovers).

    :param store: the job store (the bot's resilient store: an outage is waited out, holds renewed after it).
    :param lease_s: how long a dead replica's work waits at most to be taken over: a hold lasts three quarters
        of it unrenewed, and the heartbeat comes every quarter.
    """

    def __init__(self, store: Any, lease_s: float = 10.0):
        self.store = store
        self.lease_s = lease_s
        self.host = socket.gethostname()
        self.id = f"{self.host}/{os.getpid()}/{secrets.token_hex(3)}"
        self._held: dict[str, OnLost | None] = {}
        self._checks: list[Check] = []
        self._task: asyncio.Task | None = None

    @property
    def beat_s(self) -> float:
        return self.lease_s / 4

    @property
    def hold_s(self) -> float:
        return self.lease_s * 3 / 4

    # ---- lifecycle ----

    async def start(self) -> None:
        await self._free_predecessors()
        self._task = asyncio.create_task(self._beat(), name="replica-heartbeat", context=background())

    async def stop(self) -> None:
        """Stop the heartbeat (and so every takeover), keeping the holds until `close`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def close(self) -> None:
        """Stop the heartbeat and let every hold expire now, so the other replicas take them at once."""
        await self.stop()
        names, self._held = list(self._held), {}
        if names:
            with contextlib.suppress(Exception):
                await self.store.hold(names, self.id, 0.0)

    # ---- holds ----

    async def take(self, name: str, on_lost: OnLost | None = None) -> bool:
        """Take (or keep) a hold; False when another live replica has it."""
        return bool(await self.take_many([name], on_lost))

    async def take_many(self, names: Collection[str], on_lost: OnLost | None = None) -> list[str]:
        got = await self.store.hold(list(names), self.id, self.hold_s)
        for name in got:
            self._held[name] = on_lost
        return got

    def holds(self, name: str) -> bool:
        return name in self._held

    async def drop(self, name: str) -> None:
        """Give a hold up: its work is done."""
        if self._held.pop(name, 0) != 0:
            await self.store.release([name], self.id)

    async def hand_over(self, name: str) -> None:
        """Give a hold up for another replica to take (it expires now: listed as an orphan)."""
        if self._held.pop(name, 0) != 0:
            await self.store.hold([name], self.id, 0.0)

    async def orphans(self, prefix: str) -> list[str]:
        """Holds under `prefix` whose owner stopped renewing them: work to take over."""
        return sorted(n for n, h in (await self.store.holders(prefix)).items() if not h.live)

    async def live_owners(self, prefix: str) -> dict[str, str]:
        """Name -> owner of the live holds under `prefix`."""
        return {n: h.owner for n, h in (await self.store.holders(prefix)).items() if h.live}

    # ---- heartbeat ----

    def every_beat(self, check: Check) -> None:
        """Run `check` after each heartbeat (a takeover scan, the shard balance)."""
        self._checks.append(check)

    async def renew(self) -> None:
        names = list(self._held)
        kept = set(await self.store.hold(names, self.id, self.hold_s)) if names else set()
        for name in names:
            if name not in kept and name in self._held:
                on_lost = self._held.pop(name)
                log.warning("%s was taken over by another replica (this one missed its lease)", name)
                if on_lost is not None:
                    on_lost()

    async def _beat(self) -> None:
        quiet_until = 0.0
        while True:
            await asyncio.sleep(self.beat_s)
            started = time.monotonic()
            try:
                await self.renew()
            except Exception:
                log.exception("renewing this replica's holds failed")
            if time.monotonic() - started > self.beat_s:
                # The store was away (an outage is waited out): no replica could renew meanwhile, so every
                # hold may have lapsed. Take nothing over until the others have had a heartbeat to renew theirs.
                # (Their calls come back later than this one by up to the store's retry backoff.)
                quiet_until = time.monotonic() + 2 * self.beat_s + RETRY_MAX_S
            if time.monotonic() < quiet_until:
                continue
            for check in list(self._checks):
                try:
                    await check()
                except Exception:
                    log.exception("replica check failed")

    async def _free_predecessors(self) -> None:
        """Free the holds of earlier bot processes of this machine that are gone (killed, crashed)."""
        gone: dict[str, list[str]] = {}
        for name, hold in (await self.store.holders("")).items():
            host, _, rest = hold.owner.partition("/")
            pid = rest.partition("/")[0]
            if host == self.host and hold.owner != self.id and pid.isdigit() and (
                    int(pid) == os.getpid() or not pid_alive(int(pid))):
                gone.setdefault(hold.owner, []).append(name)
        for owner, names in gone.items():
            await self.store.hold(names, owner, 0.0)   # expired: taken over like any dead replica's
            log.info("took over from %s, an earlier bot process on this machine (%d holds)", owner, len(names))
