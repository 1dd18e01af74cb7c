"""A store that rides out its own faults: Redis restarting, killed or not answering, a full disk, the SQLite
file deleted or corrupted under a running bot.

`ResilientStore` wraps a backend (`JobService` and `Worker` always use one). When a call meets a store fault it
is tried again with capped exponential backoff (0.1 s, doubling, up to 2 s a try), and the outage is logged
once when it starts ("store unreachable: ...; retrying") and once when it ends ("store reachable again after
N s"), however many callers wait meanwhile. How long a caller waits is its *patience*, a context variable:

- background work (the worker, the bot's job watcher and followers) runs under `background()` /
  `store_patience(None)` and waits as long as it takes: its users see a delay, not an error;
- everything else (a chat command, a submission) waits `DEFAULT_WAIT_S` at most, then gets `StoreFault`, a
  `UserError` whose key (`store_unavailable`, `disk_full`, `store_broken`) the front ends translate.

`recoveries` counts the outages survived: a follower of the store re-reads what it follows after each one,
since change notifications were missed meanwhile and a Redis that lost its last writes has an older change
counter. A SQLite file deleted or replaced while open is noticed within a second (`orphaned`): the jobs under
way go on in the open database, new submissions are refused, and `rescue=True` (the bot's store) saves what
the database holds back to the file's place when the store closes. A SQLite file whose header was overwritten
(noticed within a second), or that answered "malformed" or "not a database", stays broken, whatever a page
still cached would say, until a fresh look (every few seconds: its header, then `quick_check`) finds it
restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from engine.errors import UserError, first_line
from engine.jobs import Job, JobState
from engine.queue.store import Hold, Limits, Store, WorkerInfo

log = logging.getLogger("engine.queue.store")

DEFAULT_WAIT_S = 2.0     # how long a call outside background work waits for a faulty store
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0
CHECK_EVERY_S = 1.0      # how often a SQLite store's file is looked at (deleted or replaced)
BROKEN_CHECK_S = 5.0     # how often a store that met corruption is looked at afresh (restored?)
RESTART_CHECK_S = 1.0    # how often a follower asks a Redis store whether it is another server process now

UNAVAILABLE, FULL, BROKEN = "unavailable", "full", "broken"

_KEYS = {UNAVAILABLE: "store_unavailable", FULL: "disk_full", BROKEN: "store_broken"}   # texts: templates
_SQLITE_BROKEN = ("malformed", "not a database", "disk i/o error", "unable to open", "readonly database",
                  "no such table")

_patience: contextvars.ContextVar[float | None] = contextvars.ContextVar("store_patience", default=DEFAULT_WAIT_S)


class StoreFault(UserError):
    """The store cannot do this now: `kind` is "unavailable" (unreachable, restarting, not answering), "full"
    (no space left where it writes) or "broken" (its file deleted, replaced or corrupted). str() is for
    operators; users get the text of `key`."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"the job store is {'unreachable' if kind == UNAVAILABLE else kind}: {detail}",
                         _KEYS[kind])
        self.kind, self.detail = kind, detail


@contextlib.contextmanager
def store_patience(seconds: float | None) -> Iterator[None]:
    """Store calls in this block (and in tasks started from it) wait at most `seconds` for a faulty store;
    None: until it works again. 0: only if it works now (an outage already seen fails at once)."""
    token = _patience.set(seconds)
    try:
        yield
    finally:
        _patience.reset(token)


def background() -> contextvars.Context:
    """A context for `asyncio.create_task(..., context=background())`: background work that waits for the
    store however long it is down."""
    context = contextvars.copy_context()
    context.run(_patience.set, None)
    return context


def fault_of(exc: BaseException) -> tuple[str, str] | None:
    """(kind, detail) when `exc` says the store is faulty rather than the call wrong; None otherwise."""
    if isinstance(exc, StoreFault):
        return exc.kind, exc.detail
    detail = f"{type(exc).__name__}: {first_line(exc)}"
    with contextlib.suppress(ImportError):
        import redis.exceptions as rx

        if isinstance(exc, (rx.ConnectionError, rx.TimeoutError)):   # BusyLoadingError (LOADING) is one
            return UNAVAILABLE, detail
        if isinstance(exc, rx.ResponseError) and str(exc).startswith(("MISCONF", "OOM")):
            return FULL, detail   # Redis cannot persist (its disk is full) or is out of memory
    if isinstance(exc, sqlite3.DatabaseError):
        text = str(exc).lower()
        if "database or disk is full" in text:
            return FULL, detail
        if any(s in text for s in _SQLITE_BROKEN):
            return BROKEN, detail
        return None
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return UNAVAILABLE, detail
    return None


def _delays() -> Iterator[float]:
    delay = RETRY_FIRST_S
    while True:
        yield delay
        delay = min(RETRY_MAX_S, delay * 2)


def resilient(store: Store, rescue: bool = False) -> ResilientStore:
    """`store` as a ResilientStore (itself if it is one)."""
    if isinstance(store, ResilientStore):
        store.rescue = store.rescue or rescue
        return store
    return ResilientStore(store, rescue=rescue)


class ResilientStore:
    """The `Store` protocol over `inner`, waiting out store faults as the module docstring says. Attributes it
    does not have (a backend's own: `redis`, `db`, `prefix`...) are the backend's."""

    def __init__(self, inner: Store, rescue: bool = False):
        self.inner = inner
        self.rescue = rescue      # save an orphaned SQLite database back to its path on close (the bot's store)
        self.recoveries = 0       # outages survived
        self.orphaned = ""        # why the SQLite file at the path is not the one open, once it is not
        self._fault: tuple[str, str] | None = None
        self._since = 0.0
        self._checked_at = 0.0
        self._broken_checked_at = 0.0
        self._giving_up = asyncio.Event()
        self._server: str | None = None   # the backend's server process, as last seen (notice_restart)
        self._server_checked_at = 0.0
        self._recoveries_seen = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def fault(self) -> tuple[str, str] | None:
        """The outage now going on, as (kind, detail), if any."""
        return self._fault

    async def notice_restart(self) -> None:
        """For a follower of the store, called often: at most every RESTART_CHECK_S, ask a backend that can
        tell (Redis: its run id) whether it is another server process now. A restart quicker than the one retry
        on a new connection is not seen as an outage, and its data may be older (a Redis killed before it
        wrote its last second): it then counts as an outage survived (`recoveries`), in one log line."""
        if getattr(self.inner, "server_id", None) is None or \
                time.monotonic() - self._server_checked_at < RESTART_CHECK_S:
            return
        self._server_checked_at = time.monotonic()
        server = await self._call("server_id")
        if self._server is not None and server != self._server and self.recoveries == self._recoveries_seen:
            log.warning("store restarted (another server process answers now); re-reading what is followed")
            self.recoveries += 1
        self._server, self._recoveries_seen = server, self.recoveries

    def give_up(self) -> None:
        """Stop waiting: calls waiting for a faulty store now raise StoreFault, and so do later ones that meet
        a fault (a worker told to stop while the store is down)."""
        self._giving_up.set()

    # ---- the retry loop ----

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        patience = _patience.get()
        deadline = None if patience is None else time.monotonic() + patience
        if patience == 0 and self._fault is not None:
            raise StoreFault(*self._fault)
        delays = _delays()
        while True:
            tried_at = time.monotonic()
            try:
                self._check_file()
                await self._still_broken()
                result = await getattr(self.inner, name)(*args, **kwargs)
            except Exception as exc:
                fault = fault_of(exc)
                if fault is None:
                    raise
                self._begin(fault)
                delay = next(delays)
                if deadline is not None and time.monotonic() + delay > deadline or not await self._pause(delay):
                    raise StoreFault(*fault) from None
                continue
            if self._fault is not None and tried_at >= self._since:   # not a call that began before the fault
                self._end()
            return result

    async def _pause(self, seconds: float) -> bool:
        """Sleep before the next try; False when told to give up meanwhile. (asyncio.wait, not wait_for: in
        Python 3.11 wait_for can swallow the cancellation of the task that waits.)"""
        if not self._giving_up.is_set():
            waiter = asyncio.ensure_future(self._giving_up.wait())
            try:
                await asyncio.wait({waiter}, timeout=seconds)
            finally:
                waiter.cancel()
        return not self._giving_up.is_set()

    def _begin(self, fault: tuple[str, str]) -> None:
        if self._fault is not None:
            return
        self._fault, self._since = fault, time.monotonic()
        kind, detail = fault
        if kind == UNAVAILABLE:
            log.warning("store unreachable: %s; retrying", detail)
        elif kind == FULL:
            log.warning("store cannot write, no space left: %s; new jobs are refused, retrying until there is "
                        "space", detail)
        else:
            log.error("store broken: %s; new jobs are refused, retrying until it is restored from a backup",
                      detail)

    def _end(self) -> None:
        assert self._fault is not None
        kind, _ = self._fault
        self._fault = None
        self.recoveries += 1
        log.warning("store %s again after %.1f s", "reachable" if kind == UNAVAILABLE else "working",
                    time.monotonic() - self._since)

    def _check_file(self, now: bool = False) -> None:
        """A SQLite store's file, at most once a second (`now`: at once): deleted or replaced, it leaves this
        store orphaned (logged once); overwritten, it is a fault like the others."""
        problem = getattr(self.inner, "file_problem", None)
        if problem is None or not now and time.monotonic() - self._checked_at < CHECK_EVERY_S:
            return
        self._checked_at = time.monotonic()
        found = problem()
        if found is None:
            return
        kind, detail = found
        if kind == BROKEN:
            raise StoreFault(BROKEN, detail)
        if not self.orphaned:
            self.orphaned = detail
            log.error("store file %s: the jobs under way go on, new jobs are refused%s", detail,
                      "; what it held is saved back when the bot stops, so restart it" if self.rescue
                      else "")

    async def _still_broken(self) -> None:
        """A store that met corruption stays broken, whatever a call on a cached page would say, until a fresh
        look (every BROKEN_CHECK_S) finds it sound again: restored from a backup."""
        if self._fault is None or self._fault[0] != BROKEN:
            return
        check = getattr(self.inner, "integrity_problem", None)
        if check is None:
            return
        if time.monotonic() - self._broken_checked_at < BROKEN_CHECK_S:
            raise StoreFault(*self._fault)
        self._broken_checked_at = time.monotonic()
        self._check_file(now=True)   # its header first
        if (problem := await check()) is not None:
            raise StoreFault(BROKEN, problem)

    def _refuse_if_orphaned(self) -> None:
        """Before a submission: the file looked at now, so no job goes into a database that is not the file;
        and no job into one that met corruption."""
        try:
            self._check_file(now=True)
        except StoreFault as fault:
            self._begin((fault.kind, fault.detail))
            raise
        if self.orphaned:
            raise StoreFault(BROKEN, self.orphaned)
        if self._fault is not None and self._fault[0] == BROKEN:
            raise StoreFault(*self._fault)

    # ---- connection ----

    async def open(self) -> None:
        await self._call("open")

    async def close(self) -> None:
        save = getattr(self.inner, "save_and_close", None)
        if self.orphaned and self.rescue and save is not None:
            try:
                where = await save()
                log.warning("store: what the deleted or replaced database held is saved in %s", where)
            except Exception as exc:
                log.error("store: could not save the orphaned database: %s: %s", type(exc).__name__,
                          first_line(exc))
                await self.inner.close()
            return
        await self.inner.close()

    # ---- jobs ----

    async def submit(self, job: Job, limits: Limits) -> Job:
        self._refuse_if_orphaned()
        return await self._call("submit", job, limits)

    async def record(self, job: Job) -> Job:
        return await self._call("record", job)

    async def get(self, job_id: str) -> Job | None:
        return await self._call("get", job_id)

    async def update(self, job_id: str, **fields: Any) -> Job:
        return await self._call("update", job_id, **fields)

    async def claim(self, worker: str, presets: Collection[str] | None = None) -> Job | None:
        if presets is None:
            return await self._call("claim", worker)
        return await self._call("claim", worker, list(presets))

    async def finish(self, job_id: str, state: JobState, **fields: Any) -> Job:
        return await self._call("finish", job_id, state, **fields)

    async def cancel(self, job_id: str) -> Job:
        return await self._call("cancel", job_id)

    async def queued(self) -> list[Job]:
        return await self._call("queued")

    async def running(self) -> list[Job]:
        return await self._call("running")

    async def jobs(self, user: str | None = None, states: Iterable[JobState] | None = None,
                   limit: int = 1000) -> list[Job]:
        return await self._call("jobs", user=user, states=list(states) if states is not None else None,
                                limit=limit)

    async def changes_since(self, seq: int) -> tuple[list[Job], int]:
        return await self._call("changes_since", seq)

    async def wait_for_change(self, timeout: float) -> bool:
        """As the backend's; while the store is faulty, waits `timeout` and says nothing changed (the next
        call the waiter makes meets the fault and waits it out)."""
        if self._fault is None:
            try:
                self._check_file()
                return await self.inner.wait_for_change(timeout)
            except Exception as exc:
                fault = fault_of(exc)
                if fault is None:
                    raise
                self._begin(fault)
        await self._pause(timeout)
        return False

    async def recover(self, dead_worker: str | None = None) -> list[Job]:
        return await self._call("recover", dead_worker)

    async def delete_jobs(self, job_ids: Iterable[str]) -> None:
        await self._call("delete_jobs", list(job_ids))

    # ---- previews ----

    async def put_preview(self, job_id: str, step: int, data: bytes) -> None:
        await self._call("put_preview", job_id, step, data)

    async def get_preview(self, job_id: str) -> tuple[int, bytes] | None:
        return await self._call("get_preview", job_id)

    async def drop_preview(self, job_id: str) -> None:
        await self._call("drop_preview", job_id)

    # ---- chat messages -> jobs ----

    async def link_message(self, key: str, job_id: str) -> None:
        await self._call("link_message", key, job_id)

    async def message_job(self, key: str) -> str | None:
        return await self._call("message_job", key)

    # ---- workers ----

    async def acquire_lease(self, owner: str, pid: int, exclusive: bool) -> bool:
        return await self._call("acquire_lease", owner, pid, exclusive)

    async def heartbeat(self, owner: str, state: str) -> None:
        await self._call("heartbeat", owner, state)

    async def release_lease(self, owner: str) -> None:
        await self._call("release_lease", owner)

    async def workers(self) -> list[WorkerInfo]:
        return await self._call("workers")

    # ---- settings and measurements ----

    async def get_meta(self, key: str, default: Any = None) -> Any:
        return await self._call("get_meta", key, default)

    async def set_meta(self, key: str, value: Any) -> None:
        await self._call("set_meta", key, value)

    async def record_step_time(self, key: str, step_s: float, overhead_s: float) -> None:
        await self._call("record_step_time", key, step_s, overhead_s)

    async def step_times(self) -> dict[str, tuple[float, float]]:
        return await self._call("step_times")

    async def last_served(self) -> dict[str, float]:
        return await self._call("last_served")

    async def hour_usage(self, user: str) -> tuple[int, float | None]:
        return await self._call("hour_usage", user)

    # ---- bot replicas ----

    async def hold(self, names: Collection[str], owner: str, ttl_s: float) -> list[str]:
        return await self._call("hold", list(names), owner, ttl_s)

    async def release(self, names: Collection[str], owner: str) -> None:
        await self._call("release", list(names), owner)

    async def holders(self, prefix: str) -> dict[str, Hold]:
        return await self._call("holders", prefix)

    async def put_note(self, key: str, value: str, ttl_s: float, only_new: bool = False) -> bool:
        return await self._call("put_note", key, value, ttl_s, only_new)

    async def take_note(self, key: str) -> str | None:
        return await self._call("take_note", key)

    async def next_turn(self, key: str, interval_s: float) -> float:
        return await self._call("next_turn", key, interval_s)

    async def push_turn(self, key: str, delay_s: float) -> None:
        await self._call("push_turn", key, delay_s)


__all__ = ["DEFAULT_WAIT_S", "ResilientStore", "StoreFault", "background", "fault_of", "resilient",
           "store_patience"]
