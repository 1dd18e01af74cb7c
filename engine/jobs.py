"""Plain records shared by the store, the worker and the front ends: the job and the events about it."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Job:
    id: str
    user: str                       # "<platform>:<user id>", unique across platforms
    prompt_raw: str
    prompt: str                     # the built prompt the model sees
    preset: str
    seed: int
    image_path: str
    platform: str = "cli"
    chat: str = ""
    user_name: str = ""
    locale: str = "en"
    negative_prompt: str = ""
    status_ref: str = ""            # front end's reference to its status message (JSON text)
    # What the user asked for, written once at submit: camera, speed, subject, environment, hints, scope...
    options: dict[str, Any] = field(default_factory=dict)
    parent: str = ""                # the job this one re-renders (HQ, re-roll)
    state: JobState = JobState.QUEUED
    step: int = 0
    total_steps: int = 0
    width: int = 0
    height: int = 0
    frames: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str = ""
    result_path: str = ""
    fell_back: str = ""             # name of the preset used after an out-of-memory fall-back
    cold: bool = False              # rendered before its shape was compiled after a worker start: slower
    cancel_requested: bool = False
    worker: str = ""
    delivered: bool = False         # the front end has posted the final message
    expired: bool = False           # its files are gone (retention, Delete, /forget): its buttons say so
    retried: bool = False           # put back in the queue once after its worker died
    step_at: float = 0.0            # wall-clock time the worker finished the last step (progress timing)
    gpu_peak_bytes: int = 0         # measured by the worker that rendered it
    render_s: float = 0.0
    preview_step: int = 0           # the step of the latest preview in the store (0: none yet)
    server: str = ""                # the Discord server or Telegram group ("" in a direct message)
    # The plain clip (the render at its preset's fps, joined after the clip it extends): what Extend continues
    # and what Smooth and Loop re-encode. result_path is the delivered clip, the same file when unedited.
    clip_path: str = ""
    extends: str = ""               # the job whose clip this one continues (Extend)
    extension: int = 0              # its number in the chain: 1 for the first extension
    # The NSFW gate (engine/safety.py): where flagged content of this job may go, the highest score seen
    # (-1: never checked), "passed" / "flagged" ("" unchecked) and the first stage that flagged it.
    safety_rule: str = "allow"
    nsfw_score: float = -1.0
    verdict: str = ""
    flagged_at: str = ""
    error_key: str = ""             # a failure's reason as a text key the front end translates
    reports: int = 0                # times someone pressed Report on it
    removed_by: str = ""            # the moderator who removed it after a report ("<platform>:<id>")
    seq: int = 0                    # store-wide change counter of the last update

    # Who writes what: the front end and the service write the request and the delivery fields, the worker
    # only what it measures (state, step, step_at, total_steps, sizes, result_path, fell_back, cold, gpu_peak_bytes,
    # render_s, error). Every write names its fields, so a flag set meanwhile (Delete pressed during a
    # render) survives the worker's last write. preview_step is the worker's too; the NSFW verdict fields are
    # written by whichever process runs the classifier (the bot for nudenet, the worker for a hub model).

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = str(self.state)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        d = dict(d)
        d["state"] = JobState(d["state"])
        options = d.get("options") or {}
        lifted = {k: options[k] for k in _LIFECYCLE_FIELDS if k in options}
        if lifted:   # a job stored when these flags were kept in options
            d = {**lifted, **d, "options": {k: v for k, v in options.items() if k not in lifted}}
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at


_LIFECYCLE_FIELDS = ("parent", "expired", "retried", "step_at", "gpu_peak_bytes", "render_s")


# ---- events a front end receives from JobService.events(job_id) ----

@dataclass(frozen=True)
class Queued:
    position: int             # 1 = next to start
    eta_s: float              # until this job is done
    moved: int = 0            # >0: moved back this many places (another user's job went ahead), <0: moved up
    retry: bool = False       # re-queued after its worker died
    paused: bool = False      # an admin has paused the queue


@dataclass(frozen=True)
class Started:
    warming_up: bool = False  # the worker is still loading the model


@dataclass(frozen=True)
class Step:
    step: int
    total: int
    eta_s: float
    elapsed_s: float
    at: float = 0.0           # wall-clock time the worker finished this step


@dataclass(frozen=True)
class Preview:
    step: int                 # a new preview of the forming clip is in the store (JobService.preview)


@dataclass(frozen=True)
class Flagged:
    stage: str                # the NSFW gate flagged the job's "input", a "preview" or its "output"


@dataclass(frozen=True)
class FellBack:
    preset: str


@dataclass(frozen=True)
class Cold:
    """The worker renders this job before its size is compiled (it is still warming up after a start)."""


@dataclass(frozen=True)
class Done:
    job: Job


@dataclass(frozen=True)
class Failed:
    reason: str
    job: Job


@dataclass(frozen=True)
class Cancelled:
    job: Job


Event = Queued | Started | Step | Preview | Flagged | FellBack | Cold | Done | Failed | Cancelled
