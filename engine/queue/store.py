"""What every job store is, and the rules both backends share.

`Store` is the protocol front ends (through the service) and workers use. The backends (`sqlite_store`,
`redis_store`) only store: the limits a submission must pass, the order the queue is served in and what
happens to a job whose worker died are decided here, once, so the two can never disagree. Refusals are raised
by key (`UserError.key`); the texts users see live in `templates/messages/`.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from engine.errors import UserError
from engine.jobs import Job, JobState

LEASE_TTL_S = 10.0          # a worker that has not heart-beaten for this long is presumed dead
MAX_ATTEMPTS = 2            # a job whose worker died is retried once, then failed
STEP_SAMPLES = 8            # measured step times kept per shape for ETAs
HOUR_S = 3600.0             # the window of `Limits.jobs_per_hour`


@dataclass(frozen=True)
class Limits:
    per_user: int = 2
    max_length: int = 50
    jobs_per_hour: int = 0


@dataclass
class WorkerInfo:
    owner: str
    state: str              # "loading" | "ready" | "busy"
    heartbeat_at: float
    pid: int = 0

    @property
    def alive(self) -> bool:
        return time.time() - self.heartbeat_at < LEASE_TTL_S


@dataclass(frozen=True)
class Hold:
    """A named lease of a bot replica (a job it follows, a Discord shard, the Telegram poller). A hold that
    expired stays listed (`live` False) until another replica takes it or its owner releases it, so what a
    dead replica held can be found and taken over."""
    owner: str
    expires_at: float
    live: bool


# ---- the rules ----

def limit_refusal(limits: Limits, *, queued_total: int, user_active: int, hour_count: int,
                  hour_oldest_at: float | None) -> str | None:
    """Which limit a submission breaks ("queue_full", "user_limit", "rate_limited"), checked in this order, or
    None. The Redis backend runs the same checks inside its submit script (they must be atomic there) and
    returns the same keys."""
    if limits.max_length and queued_total >= limits.max_length:
        return "queue_full"
    if limits.per_user and user_active >= limits.per_user:
        return "user_limit"
    if limits.jobs_per_hour and hour_count >= limits.jobs_per_hour and hour_oldest_at is not None:
        return "rate_limited"
    return None


def refusal_error(key: str, limits: Limits, hour_oldest_at: float | None = None,
                  now: float | None = None) -> UserError:
    """The UserError for a limit key from `limit_refusal` (or a backend's script)."""
    if key == "queue_full":
        return UserError("The queue is full right now; please try again in a few minutes.",
                         "queue_full", limit=limits.max_length)
    if key == "user_limit":
        return UserError(f"You already have {limits.per_user} jobs waiting or rendering; "
                         "wait for one to finish or cancel it.", "user_limit", limit=limits.per_user)
    now = time.time() if now is None else now
    wait_min = max(1, round(((hour_oldest_at or now) + HOUR_S - now) / 60))
    return UserError(f"You have reached {limits.jobs_per_hour} videos per hour; "
                     f"try again in about {wait_min} minutes.",
                     "rate_limited", limit=limits.jobs_per_hour, minutes=wait_min)


def fair_order(queued: Iterable[Job], last_served: dict[str, float]) -> list[Job]:
    """Round-robin across users, first-in-first-out per user.

    Users are ranked by when they were last served (never served first), then by their oldest waiting
    job; the queue takes each user's first job in that rank, then each user's second job, and so on.
    """
    per_user: dict[str, list[Job]] = {}
    for job in sorted(queued, key=lambda j: (j.created_at, j.id)):
        per_user.setdefault(job.user, []).append(job)
    users = sorted(per_user, key=lambda u: (last_served.get(u, 0.0), per_user[u][0].created_at))
    rank = {u: i for i, u in enumerate(users)}
    order = [(k, rank[u], job) for u, jobs in per_user.items() for k, job in enumerate(jobs)]
    return [job for _, _, job in sorted(order, key=lambda t: (t[0], t[1]))]


STOPPED_TWICE = "The renderer stopped twice while making this video, so it was not retried again."


def recovery_fields(job: Job, now: float | None = None) -> dict[str, Any]:
    """What happens to a running job whose worker died: cancelled if its owner asked, failed after
    MAX_ATTEMPTS, else back in the queue (keeping its place) and marked as retried."""
    now = time.time() if now is None else now
    if job.cancel_requested:
        return {"state": JobState.CANCELLED, "finished_at": now}
    if job.attempts >= MAX_ATTEMPTS:
        return {"state": JobState.FAILED, "finished_at": now, "error": STOPPED_TWICE}
    return {"state": JobState.QUEUED, "worker": "", "step": 0, "preview_step": 0, "retried": True}


def shape_key(preset: str, width: int, height: int, frames: int) -> str:
    """The key step-time measurements are kept under: one per preset and output shape."""
    return f"{preset}:{width}x{height}x{frames}"


# ---- the protocol ----

class Store(Protocol):
    """What front ends (through the service) and workers need from a job store."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # jobs
    async def submit(self, job: Job, limits: Limits) -> Job: ...
    async def record(self, job: Job) -> Job: ...   # keep a job that never enters the queue (a refusal)
    async def get(self, job_id: str) -> Job | None: ...
    async def update(self, job_id: str, **fields: Any) -> Job: ...
    async def claim(self, worker: str, presets: Collection[str] | None = None) -> Job | None: ...   # of these only
    async def finish(self, job_id: str, state: JobState, **fields: Any) -> Job: ...
    async def cancel(self, job_id: str) -> Job: ...
    async def queued(self) -> list[Job]: ...
    async def running(self) -> list[Job]: ...
    async def jobs(self, user: str | None = None, states: Iterable[JobState] | None = None,
                   limit: int = 1000) -> list[Job]: ...
    async def changes_since(self, seq: int) -> tuple[list[Job], int]: ...
    async def wait_for_change(self, timeout: float) -> bool: ...   # another process wrote (or timeout)
    async def recover(self, dead_worker: str | None = None) -> list[Job]: ...
    async def delete_jobs(self, job_ids: Iterable[str]) -> None: ...

    # the latest preview of a rendering job (a small GIF): stored, then announced by the job's preview_step
    async def put_preview(self, job_id: str, step: int, data: bytes) -> None: ...
    async def get_preview(self, job_id: str) -> tuple[int, bytes] | None: ...
    async def drop_preview(self, job_id: str) -> None: ...

    # chat messages -> jobs (a result or status message, keyed by the front end)
    async def link_message(self, key: str, job_id: str) -> None: ...
    async def message_job(self, key: str) -> str | None: ...

    # workers
    async def acquire_lease(self, owner: str, pid: int, exclusive: bool) -> bool: ...
    async def heartbeat(self, owner: str, state: str) -> None: ...
    async def release_lease(self, owner: str) -> None: ...
    async def workers(self) -> list[WorkerInfo]: ...

    # settings and measurements
    async def get_meta(self, key: str, default: Any = None) -> Any: ...
    async def set_meta(self, key: str, value: Any) -> None: ...
    async def record_step_time(self, key: str, step_s: float, overhead_s: float) -> None: ...
    async def step_times(self) -> dict[str, tuple[float, float]]: ...
    async def last_served(self) -> dict[str, float]: ...
    async def hour_usage(self, user: str) -> tuple[int, float | None]: ...   # submissions in the last hour, oldest

    # bot replicas on one store (bot/replicas.py): holds, short-lived notes, shared pacing
    async def hold(self, names: Collection[str], owner: str, ttl_s: float) -> list[str]: ...   # those now held
    async def release(self, names: Collection[str], owner: str) -> None: ...
    async def holders(self, prefix: str) -> dict[str, Hold]: ...   # every hold whose name starts so, live or not
    async def put_note(self, key: str, value: str, ttl_s: float, only_new: bool = False) -> bool: ...
    async def take_note(self, key: str) -> str | None: ...   # read and delete at once
    async def next_turn(self, key: str, interval_s: float) -> float: ...   # seconds to wait for the next turn
    async def push_turn(self, key: str, delay_s: float) -> None: ...   # no turn before `delay_s` from now
