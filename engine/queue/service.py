"""The one door front ends use: submit, follow, cancel and manage jobs. Knows nothing about chat platforms.

A single watcher task per process polls the store's change counter and fans events out to every
subscriber, so following 500 jobs costs one indexed query per poll, not 500.

The store is a `ResilientStore`: the watcher waits out an outage of the store, then brings every followed job
up to date from its record; a job whose record did not survive the outage (a Redis killed before it wrote its
last second) ends for its followers as failed, with the `lost` reason. Submissions during an outage, or while
the data folder is full, are refused with a reason users can read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import UserError
from engine.families import FAMILIES, SERVED_FOR_S, served_key
from engine.jobs import (
    Cancelled,
    Cold,
    Done,
    Event,
    Failed,
    FellBack,
    Flagged,
    Job,
    JobState,
    Preview,
    Queued,
    Started,
    Step,
    new_job_id,
)
from engine.presets import Preset
from engine.queue.backends import open_store
from engine.queue.eta import EtaModel
from engine.queue.resilient import StoreFault, background, resilient
from engine.queue.store import Limits, Store
from engine.safety import SAFETY_REASONS, Verdict, placement, verdict_fields
from engine.servers import ServerSettings

log = logging.getLogger("engine.queue.service")

FINAL_EVENTS = (Done, Failed, Cancelled)
LOST = "The job queue restarted and lost this job; please send it again."
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FOLLOWERS_PER_TURN = 50   # followers brought up to date per event-loop turn by the watcher
WAKE_CHECK_S = 0.02       # how often the watcher, waiting on the store, looks at this process's own wake-up


@dataclass
class _Follower:
    """What one subscriber has been told so far, so only changes become events."""
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    state: JobState | None = None
    step: int = -1
    position: int = 0
    eta_s: float = -1.0
    fell_back: str = ""
    cold: bool = False
    paused: bool = False
    preview_step: int = 0
    flagged_at: str = ""
    job: Job | None = None    # the job as last seen


def require_clip(job: Job) -> str:
    """The path of a job's plain clip (what Extend, Smooth and Loop start from), or the expired refusal."""
    if job.expired or not job.clip_path or not Path(job.clip_path).exists():
        raise UserError("This video has expired; please send the image again.", "expired")
    return job.clip_path


def private_file(path: Path, data: bytes | None = None) -> None:
    """Files in the data folder hold people's photos: readable by the bot's user only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if data is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    os.chmod(path, 0o600)


def write_clip(frames, path: Path, fps: int) -> Path:
    """An MP4 in the results folder, readable by the bot's user only."""
    from engine.media.video import write_mp4

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = Path(write_mp4(frames, path, fps=fps))
    private_file(out)
    return out


def _assign(job: Job, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        setattr(job, name, value)


def _message_key(platform: str, chat: str | int, message_id: str | int) -> str:
    return f"{platform}:{chat}:{message_id}"


class JobService:
    def __init__(self, config: Config, store: Store | None = None, poll_interval_s: float = 0.1):
        self.config = config
        # rescue: a SQLite file deleted under the running bot is saved back from the open database on close.
        self.store = resilient(store or open_store(config.storage.url), rescue=True)
        self.poll_interval_s = poll_interval_s
        self.data_dir = Path(config.storage.data_dir)
        self._followers: dict[str, list[_Follower]] = {}
        self._seq = 0
        self._watcher: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._full_since: float | None = None   # when saving an upload last failed for want of space

    # ---- lifecycle ----

    async def __aenter__(self) -> JobService:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.store.open()
        self._seq = await self.store.get_meta("seq", 0) or 0  # follow changes from now on
        self._watcher = asyncio.create_task(self._watch(), name="job-watcher", context=background())

    async def close(self) -> None:
        if self._watcher:
            # A flag, not only cancel(): wait_for() in Python 3.11 can swallow a cancellation.
            self._closing = True
            self._wake.set()
            self.store.give_up()   # a store that is down is no longer waited for
            try:
                await asyncio.wait_for(self._watcher, 5)
            except (TimeoutError, asyncio.CancelledError):
                pass
            self._watcher = None
        await self.store.close()

    # ---- submitting ----

    async def served_families(self) -> set[str]:
        """Model families some worker has served (running, loading or restarting) in the last few minutes."""
        now = time.time()
        seen = {family: await self.store.get_meta(served_key(family), 0.0) for family in FAMILIES}
        return {family for family, at in seen.items() if at and now - float(at) <= SERVED_FOR_S}

    async def _check_served(self, preset: Preset) -> None:
        """Refuse a preset whose model family no worker serves, while workers of another family do (with no
        worker seen at all, the job waits in the queue for one, as after a full restart)."""
        served = await self.served_families()
        if served and preset.family not in served:
            others = sorted(name for name, p in self.config.presets.items() if p.family in served)
            raise UserError(f"No GPU here runs the '{preset.name}' preset right now (it needs an {preset.family} "
                            f"model); try {', '.join(others)}.", "preset_unserved", preset=preset.name,
                            family=preset.family, others=", ".join(others))

    def limits(self) -> Limits:
        q = self.config.queue
        return Limits(per_user=q.per_user, max_length=q.max_length, jobs_per_hour=q.jobs_per_hour)

    async def submit(self, *, user: str, image: Any, prompt_raw: str, prompt: str | None = None,
                     preset: str = "quick", seed: int | None = None, negative_prompt: str = "",
                     platform: str = "cli", chat: str = "", user_name: str = "", locale: str = "en",
                     status_ref: str = "", options: dict[str, Any] | None = None, parent: str = "",
                     server: str = "", safety_rule: str = "allow", verdict: Verdict | None = None,
                     extends: str = "", extension: int = 0, jobs_per_hour: int | None = None) -> Job:
        """Queue a job. `image` is a validated RGB PIL image, or a path of one already in the data folder.
        `verdict` is the NSFW gate's on the image, where the front end checked it; `safety_rule` says where
        flagged content of this job may go.

        Raises UserError with the reason when the queue, the user's limits, a ban or the NSFW gate refuse it;
        a refused upload is kept as a failed job (the audit log), without its image.
        """
        if user in await self.store.get_meta("bans", {}):
            raise UserError("You are not allowed to use this bot here.", "banned")
        spec = self.config.preset(preset)
        await self._check_served(spec)
        job = Job(
            id=new_job_id(), user=user, prompt_raw=prompt_raw, prompt=prompt if prompt is not None else prompt_raw,
            preset=spec.name, seed=secrets.randbelow(2**31) if seed is None else int(seed), image_path="",
            platform=platform, chat=str(chat), user_name=user_name, locale=locale, negative_prompt=negative_prompt,
            status_ref=status_ref, options=dict(options or {}), parent=parent, server=server,
            safety_rule=safety_rule, total_steps=spec.steps, frames=spec.frames, extends=extends,
            extension=extension,
        )
        if verdict is not None:
            _assign(job, verdict_fields(job, verdict))
            if placement(verdict.flagged, safety_rule) == "withhold":
                await self._record_refusal(job, "nsfw_input")
        image_path = self.data_dir / "images" / f"{job.id}.png"
        try:
            width, height = await asyncio.to_thread(self._save_image, image, image_path)
        except OSError as exc:
            image_path.unlink(missing_ok=True)
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            if self._full_since is None:
                self._full_since = time.monotonic()
                log.warning("data folder %s is full (%s): new jobs are refused until there is space",
                            self.data_dir, exc.strerror)
            raise UserError("The server is out of disk space, so it cannot take new videos right now; "
                            "please try again later.", "disk_full") from None
        if self._full_since is not None:
            log.warning("data folder has space again after %.1f s: taking new jobs",
                        time.monotonic() - self._full_since)
            self._full_since = None
        job.image_path, (job.width, job.height) = str(image_path), spec.size_for(width, height)
        limits = dataclasses.replace(self.limits(), jobs_per_hour=self.hourly_limit(jobs_per_hour))
        try:
            job = await self.store.submit(job, limits)
        except BaseException:
            image_path.unlink(missing_ok=True)
            raise
        log.info("job %s queued user=%s preset=%s %dx%dx%d", job.id, user, job.preset, job.width, job.height,
                 job.frames)
        self._wake.set()
        return job

    async def _record_refusal(self, job: Job, key: str) -> None:
        job.state, job.finished_at, job.delivered = JobState.FAILED, time.time(), True
        job.error, job.error_key = SAFETY_REASONS[key], key
        await self.store.record(job)
        log.info("job %s refused: %s (score %.3f)", job.id, key, job.nsfw_score)
        raise UserError(job.error, key)

    async def judge(self, job_id: str, verdict: Verdict) -> Job:
        """Keep a verdict of the NSFW gate on the job (its score, flag and stage)."""
        job = await self.require(job_id)
        return await self.store.update(job_id, **verdict_fields(job, verdict))

    async def withhold(self, job_id: str) -> Job:
        """A flagged result that may not be posted where it was asked for: the job ends failed, its video
        is deleted."""
        job = await self.require(job_id)
        self._remove_files(job)
        log.info("job %s withheld (score %.3f)", job_id, job.nsfw_score)
        return await self.store.update(job_id, state=JobState.FAILED, result_path="", clip_path="",
                                       image_path="", error_key="nsfw_output", error=SAFETY_REASONS["nsfw_output"])

    @staticmethod
    def _save_image(image: Any, path: Path) -> tuple[int, int]:
        from PIL import Image

        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                size = im.size
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(image, path)
            private_file(path)
            return size
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", compress_level=1)
        return image.size

    async def resubmit(self, source: Job | str, *, user: str, preset: str | None = None, new_seed: bool = False,
                       **fields: Any) -> Job:
        """HQ render or re-roll of an earlier job: same image and prompt, same seed unless new_seed."""
        src = await self.require(source) if isinstance(source, str) else source
        if src.expired or not Path(src.image_path).exists():
            raise UserError("This video has expired; please send the image again.", "expired")
        options = {**src.options, **fields.pop("options", {})}
        args: dict[str, Any] = dict(
            user=user, image=src.image_path, prompt_raw=src.prompt_raw, prompt=src.prompt,
            preset=preset or src.preset, seed=None if new_seed else src.seed, negative_prompt=src.negative_prompt,
            platform=src.platform, chat=src.chat, locale=src.locale, options=options, parent=src.id,
            server=src.server, safety_rule=src.safety_rule, extends=src.extends, extension=src.extension,
        )
        args.update(fields)
        return await self.submit(**args)

    # ---- clip edits: Extend (a queued job), Smooth and Loop (done here, at once) ----

    @staticmethod
    def last_frame(job: Job) -> Any:
        """The last frame of a job's plain clip, as an image: where its extension starts."""
        from PIL import Image

        from engine.media.video import read_mp4_frames

        return Image.fromarray(read_mp4_frames(require_clip(job))[-1])

    async def extend(self, src: Job, frame: Any, *, user: str, locale: str, safety_rule: str,
                     verdict: Verdict | None = None) -> Job:
        """Queue the next extension of a clip: a render from its last frame with the same prompt and seed,
        delivered joined after it."""
        return await self.submit(
            user=user, image=frame, prompt_raw=src.prompt_raw, prompt=src.prompt, preset=src.preset, seed=src.seed,
            negative_prompt=src.negative_prompt, platform=src.platform, chat=src.chat, locale=locale,
            options={**src.options, "suggest_hq": False}, parent=src.id, server=src.server,
            safety_rule=safety_rule, verdict=verdict, extends=src.id, extension=src.extension + 1)

    async def edit_clip(self, src: Job, *, user: str, locale: str, smooth: bool, loop: bool) -> Job:
        """A new finished job: `src`'s plain clip smoothed and/or looped, with copies of its files (so either
        can be deleted alone)."""
        from engine.media.clip import finish
        from engine.media.video import read_mp4_frames

        require_clip(src)
        fps = self.config.preset(src.fell_back or src.preset).fps
        job_id = new_job_id()
        results, images = self.data_dir / "results", self.data_dir / "images"

        def make() -> tuple[Path, Path, Path]:
            frames, out_fps = finish(read_mp4_frames(src.clip_path), fps, smooth_it=smooth, loop_it=loop)
            out = write_clip(frames, results / f"{job_id}.mp4", out_fps)
            clip, image = results / f"{job_id}.clip.mp4", images / f"{job_id}.png"
            for source, copy in ((src.clip_path, clip), (src.image_path, image)):
                if source and Path(source).exists():
                    shutil.copyfile(source, copy)
                    private_file(copy)
            return out, clip, image

        out, clip, image = await asyncio.to_thread(make)
        now = time.time()
        job = dataclasses.replace(
            src, id=job_id, user=user, locale=locale, parent=src.id, state=JobState.DONE, created_at=now,
            started_at=now, finished_at=now, result_path=str(out), clip_path=str(clip),
            image_path=str(image) if image.exists() else "", options={**src.options, "smooth": smooth,
                                                                       "loop": loop, "suggest_hq": False},
            status_ref="", delivered=False, expired=False, cancel_requested=False, error="", error_key="",
            worker="", attempts=0, retried=False, preview_step=0, render_s=0.0, gpu_peak_bytes=0)
        job = await self.store.record(job)
        log.info("job %s: %s of %s made", job.id, "+".join(n for n, on in (("smooth", smooth), ("loop", loop))
                                                          if on), src.id)
        self._wake.set()
        return job

    # ---- reading ----

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)

    async def require(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None or job.expired:
            raise UserError("This job has expired or no longer exists.", "expired")
        return job

    async def job_for_message(self, platform: str, chat: str | int, message_id: str | int) -> Job | None:
        """The job whose status or result message this is (as linked by `link_message`), if it still exists."""
        job_id = await self.store.message_job(_message_key(platform, chat, message_id))
        return await self.store.get(job_id) if job_id else None

    async def preview(self, job_id: str) -> bytes | None:
        """The latest preview (an animated GIF) of a rendering job, if one was made."""
        stored = await self.store.get_preview(job_id)
        return stored[1] if stored else None

    async def setting(self, key: str, default: Any = None) -> Any:
        """A small value a front end keeps across restarts (e.g. the digest of its last command sync)."""
        return await self.store.get_meta(f"setting:{key}", default)

    async def server_settings(self, platform: str, server: str | None) -> ServerSettings:
        """A server's or group's /settings (the defaults where it set nothing, or in a direct message)."""
        if not server:
            return ServerSettings()
        return ServerSettings(**await self.store.get_meta(f"server:{platform}:{server}", {}))

    async def save_server_settings(self, platform: str, server: str, settings: ServerSettings) -> None:
        await self.store.set_meta(f"server:{platform}:{server}", settings.model_dump())

    def hourly_limit(self, server_limit: int | None) -> int:
        """Jobs a user may start an hour (0: no limit): a server's own limit, within the bot's."""
        bot = self.config.queue.jobs_per_hour
        if not server_limit:
            return bot
        return min(bot, server_limit) if bot else server_limit

    async def quota(self, user: str, jobs_per_hour: int | None = None) -> dict[str, Any]:
        """A user's use of the limits: jobs waiting or rendering, jobs this hour, and when the next frees up."""
        q = self.config.queue
        per_hour = self.hourly_limit(jobs_per_hour)
        active = len(await self.store.jobs(user=user, states=[JobState.QUEUED, JobState.RUNNING]))
        count, oldest = await self.store.hour_usage(user)
        return {"active": active, "per_user": q.per_user, "hour": count, "per_hour": per_hour,
                "frees_in_s": max(0.0, oldest + 3600 - time.time()) if oldest is not None else None}

    async def sample_metrics(self, metrics: Any) -> None:
        """Refresh the store-read gauges of an `engine.queue.metrics.Metrics`."""
        await metrics.sample_store(self.store)

    async def eta_model(self) -> EtaModel:
        q = self.config.queue
        return EtaModel(await self.store.step_times(), dict(q.default_step_s), q.default_overhead_s)

    async def alive_workers(self) -> int:
        return sum(1 for w in await self.store.workers() if w.alive)

    async def queue_snapshot(self) -> tuple[list[Job], dict[str, float]]:
        """Queued jobs in fair order and each one's ETA (seconds until done)."""
        queued, running = await self.store.queued(), await self.store.running()
        model = await self.eta_model()
        return queued, model.queue_etas(queued, running, max(1, await self.alive_workers()))

    async def position(self, job_id: str) -> int | None:
        queued = await self.store.queued()
        for i, job in enumerate(queued, 1):
            if job.id == job_id:
                return i
        return None

    async def user_jobs(self, user: str) -> list[tuple[Job, int | None, float | None]]:
        """A user's waiting and running jobs with position (None when rendering) and ETA."""
        queued, etas = await self.queue_snapshot()
        positions = {j.id: i for i, j in enumerate(queued, 1)}
        model = await self.eta_model()
        out = []
        for job in await self.store.jobs(user=user, states=[JobState.QUEUED, JobState.RUNNING]):
            eta = etas.get(job.id) if job.state == JobState.QUEUED else model.remaining_s(job)
            out.append((job, positions.get(job.id), eta))
        return out

    async def stats(self) -> dict[str, Any]:
        since = time.time() - 86400
        today: dict[str, int] = {}
        for job in await self.store.jobs(limit=100000):
            if job.created_at >= since:
                today[str(job.state)] = today.get(str(job.state), 0) + 1
        workers = await self.store.workers()
        return {
            "queued": len(await self.store.queued()),
            "running": len(await self.store.running()),
            "paused": bool(await self.store.get_meta("paused", False)),
            "workers": [{"owner": w.owner, "state": w.state if w.alive else "gone"} for w in workers],
            "today": today,
            "banned": len(await self.store.get_meta("bans", {})),
        }

    async def worker_state(self) -> str:
        """"ready", "busy", "loading" (GPU warming up) or "none" (no live worker)."""
        states = [w.state for w in await self.store.workers() if w.alive]
        for s in ("ready", "busy", "loading"):
            if s in states:
                return s
        return "none"

    # ---- changing ----

    async def cancel(self, job_id: str, by_user: str, is_admin: bool = False) -> Job:
        job = await self.require(job_id)
        if job.user != by_user and not is_admin:
            raise UserError("Only the person who asked for this video (or an admin) can cancel it.", "not_owner")
        if job.state.final:
            return job
        job = await self.store.cancel(job_id)
        log.info("job %s cancel requested by %s (was %s)", job_id, by_user, job.state)
        self._wake.set()
        return job

    async def set_status_ref(self, job_id: str, ref: str) -> Job:
        return await self.store.update(job_id, status_ref=ref)

    async def link_message(self, job_id: str, platform: str, chat: str | int, message_id: str | int) -> None:
        """Remember that this chat message (a status or a result) belongs to the job, for `job_for_message`."""
        await self.store.link_message(_message_key(platform, chat, message_id), job_id)

    async def save_setting(self, key: str, value: Any) -> None:
        await self.store.set_meta(f"setting:{key}", value)

    async def mark_delivered(self, job_id: str, **fields: Any) -> Job | None:
        """Note that the job's user has the outcome; None when its record is gone (deleted, or lost)."""
        try:
            return await self.store.update(job_id, delivered=True, **fields)
        except KeyError:
            return None

    async def undelivered(self, platform: str) -> list[Job]:
        """Jobs of a platform whose user has not yet been told the outcome: followed again after a restart."""
        return [j for j in await self.store.jobs(limit=100000)
                if j.platform == platform and not j.delivered and not j.expired]

    async def delete(self, job_id: str, by_user: str, is_admin: bool = False) -> Job:
        """Delete a finished job's files (the Delete button); the record stays, marked expired."""
        job = await self.require(job_id)
        if job.user != by_user and not is_admin:
            raise UserError("Only the person who asked for this video (or an admin) can delete it.", "not_owner")
        if not job.state.final:
            await self.cancel(job_id, by_user, is_admin)
        return await self._drop_files(job)

    async def clips(self, user: str) -> list[Job]:
        """A user's finished clips, newest first (expired ones too: /mine says so)."""
        jobs = await self.store.jobs(user=user, states=[JobState.DONE], limit=100_000)
        return sorted((j for j in jobs if not j.removed_by), key=lambda j: j.created_at, reverse=True)

    async def report(self, job_id: str) -> Job:
        job = await self.require(job_id)
        return await self.store.update(job_id, reports=job.reports + 1)

    async def remove(self, job_id: str, by: str) -> Job:
        """A moderator removes a reported clip: its files go, and the record (the audit log) says who."""
        job = await self.require(job_id)
        log.info("job %s removed by %s", job_id, by)
        return await self._drop_files(job, removed_by=by)

    async def _drop_files(self, job: Job, **fields: Any) -> Job:
        """A job's files go; its record stays, marked expired (its buttons say so)."""
        self._remove_files(job)
        return await self.store.update(job.id, expired=True, delivered=True, **fields)

    async def pause(self) -> None:
        await self.store.set_meta("paused", True)

    async def resume(self) -> None:
        await self.store.set_meta("paused", False)
        self._wake.set()

    async def paused(self) -> bool:
        return bool(await self.store.get_meta("paused", False))

    async def ban(self, user: str, reason: str = "") -> None:
        bans = await self.store.get_meta("bans", {})
        bans[user] = {"at": time.time(), "reason": reason}
        await self.store.set_meta("bans", bans)
        for job in await self.store.jobs(user=user, states=[JobState.QUEUED]):
            await self.store.cancel(job.id)

    async def unban(self, user: str) -> None:
        bans = await self.store.get_meta("bans", {})
        bans.pop(user, None)
        await self.store.set_meta("bans", bans)

    async def forget(self, user: str) -> int:
        """Delete every job, image and result of a user. Running jobs are cancelled first."""
        jobs = await self.store.jobs(user=user, limit=100000)
        for job in jobs:
            if not job.state.final:
                await self.store.cancel(job.id)
            self._remove_files(job)
        await self.store.delete_jobs(j.id for j in jobs)
        log.info("forgot %d jobs of %s", len(jobs), user)
        return len(jobs)

    async def expire_old(self, now: float | None = None) -> int:
        """Delete finished jobs past the retention time, their records (the audit log) with their images and
        results; their buttons then say they expired."""
        cutoff = (now or time.time()) - self.config.storage.retention_days * 86400
        old = [job for job in await self.store.jobs(states=[JobState.DONE, JobState.FAILED, JobState.CANCELLED],
                                                    limit=100000)
               if (job.finished_at or job.created_at) < cutoff]
        for job in old:
            self._remove_files(job)
        await self.store.delete_jobs(j.id for j in old)
        return len(old)

    async def audit(self, server: str | None = None, user: str | None = None, since: float | None = None
                    ) -> list[Job]:
        """The jobs kept (every job for `retention_days`), oldest first: `user` is "<platform>:<id>" or a
        bare id on any platform."""
        jobs = await self.store.jobs(user=user if user and ":" in user else None, limit=1_000_000)
        return sorted((j for j in jobs
                       if (server is None or j.server == server)
                       and (user is None or ":" in user or j.user.split(":", 1)[-1] == user)
                       and (since is None or j.created_at >= since)), key=lambda j: j.created_at)

    @staticmethod
    def _remove_files(job: Job) -> None:
        for p in {job.image_path, job.result_path, job.clip_path}:
            if p:
                Path(p).unlink(missing_ok=True)

    # ---- following ----

    async def events(self, job_id: str, seen: Job | None = None) -> AsyncIterator[Event]:
        """Events of one job, starting with its current state, ending after its final event. `seen`: the job as
        the caller last saw it (just submitted); if its record is gone by now, the store lost it (`lost`)."""
        follower = _Follower(job=seen)
        self._followers.setdefault(job_id, []).append(follower)
        try:
            job = await self.store.get(job_id)
            if job is None and seen is None:
                raise UserError("This job has expired or no longer exists.", "expired")
            if job is None:
                self._lose(job_id, [follower])
            else:
                await self._emit_for(job, [follower])
            while True:
                event = await follower.queue.get()
                yield event
                if isinstance(event, FINAL_EVENTS):
                    return
        finally:
            followers = self._followers.get(job_id, [])
            if follower in followers:
                followers.remove(follower)
            if not followers:
                self._followers.pop(job_id, None)

    async def _watch(self) -> None:
        """Runs in a `background()` context: a store outage is waited out inside the store's calls (and
        logged there, once)."""
        recoveries = self.store.recoveries
        while not self._closing:
            try:
                await self.store.notice_restart()
                await self._poll_once()
                if self.store.recoveries != recoveries:
                    recoveries = self.store.recoveries
                    await self._resync()
            except asyncio.CancelledError:
                raise
            except StoreFault:
                pass   # an orphaned or broken store refusing: already logged, nothing to tell
            except Exception:  # the watcher must outlive a passing store error
                log.exception("job watcher poll failed")
            self._wake.clear()
            await self._wait_for_change()

    async def _resync(self) -> None:
        """After a store outage: notifications were missed, and the change counter may have gone back (a
        Redis that lost its last writes numbers the next ones again). Follow the counter from where the store
        is now, bring every followed job up to date from its record, and end a job whose record is gone."""
        self._seq = await self.store.get_meta("seq", 0) or 0
        for job_id, followers in list(self._followers.items()):
            job = await self.store.get(job_id)
            if job is not None:
                await self._emit_for(job, followers)
            else:
                self._lose(job_id, followers)

    def _lose(self, job_id: str, followers: list[_Follower]) -> None:
        """A followed job whose record is gone: the store lost it. Its followers hear it failed (`lost`), and
        its files, which nothing refers to any more, go."""
        waiting = [f for f in followers if f.state is None or not f.state.final]   # not yet told an outcome
        seen = next((f.job for f in waiting if f.job is not None), None)
        if seen is None:
            return
        log.warning("job %s is gone from the store (lost with its last writes); telling its user", job_id)
        lost = dataclasses.replace(seen, state=JobState.FAILED, error=LOST, error_key="lost",
                                   finished_at=time.time())
        self._remove_files(lost)
        for f in waiting:
            f.state = JobState.FAILED
            f.queue.put_nowait(Failed(LOST, lost))

    async def _wait_for_change(self) -> None:
        """Until this process changed something (`_wake`), another one wrote to the store, or the poll interval
        is over: a worker's progress reaches the followers in milliseconds, not at the next poll."""
        deadline = time.monotonic() + self.poll_interval_s
        while not (self._wake.is_set() or self._closing):
            left = deadline - time.monotonic()
            if left <= 0 or await self.store.wait_for_change(min(WAKE_CHECK_S, left)):
                return

    async def _poll_once(self) -> None:
        jobs, seq = await self.store.changes_since(self._seq)
        if not jobs and seq == self._seq:
            return
        self._seq = seq
        if not self._followers:
            return
        changed = {j.id: j for j in jobs}
        # Any change may move queued jobs: refresh every followed queued job's position too.
        queued, etas = await self.queue_snapshot()
        paused = await self.paused()   # read once here, not once per follower
        positions = {j.id: i for i, j in enumerate(queued, 1)}
        by_id = {j.id: j for j in queued}
        for n, (job_id, followers) in enumerate(list(self._followers.items()), 1):
            job = changed.get(job_id) or by_id.get(job_id)
            if job is not None:
                await self._emit_for(job, followers, positions, etas, paused)
            if n % FOLLOWERS_PER_TURN == 0:
                await asyncio.sleep(0)   # with hundreds of jobs followed, let the chats be served in between

    async def _emit_for(self, job: Job, followers: list[_Follower], positions: dict[str, int] | None = None,
                        etas: dict[str, float] | None = None, paused: bool | None = None) -> None:
        if job.state == JobState.QUEUED and positions is None:
            queued, etas = await self.queue_snapshot()
            positions = {j.id: i for i, j in enumerate(queued, 1)}
        if job.state == JobState.QUEUED and paused is None:
            paused = await self.paused()
        # One ETA model per change, shared by every follower of a running job.
        model = await self.eta_model() if job.state == JobState.RUNNING else None
        for f in followers:
            f.job = job
            for event in await self._diff(job, f, positions or {}, etas or {}, model, bool(paused)):
                f.queue.put_nowait(event)

    async def _diff(self, job: Job, f: _Follower, positions: dict[str, int], etas: dict[str, float],
                    model: EtaModel | None, paused: bool = False) -> list[Event]:
        events: list[Event] = []
        if job.state == JobState.QUEUED:
            pos, eta = positions.get(job.id, 0), etas.get(job.id, 0.0)
            retry = job.retried and f.state == JobState.RUNNING
            if (f.state != JobState.QUEUED or pos != f.position or paused != f.paused
                    or abs(eta - f.eta_s) > max(3.0, 0.1 * f.eta_s)):
                moved = pos - f.position if f.state == JobState.QUEUED and f.position else 0
                events.append(Queued(pos, eta, moved, retry, paused))
                f.position, f.eta_s, f.paused = pos, eta, paused
            if retry:
                f.step = -1
        elif job.state == JobState.RUNNING:
            if f.state != JobState.RUNNING:
                events.append(Started(warming_up=await self.worker_state() == "loading"))
            if job.fell_back and job.fell_back != f.fell_back:
                events.append(FellBack(job.fell_back))
                f.fell_back = job.fell_back
            if job.cold and not f.cold:
                events.append(Cold())
                f.cold = True
            if job.step != f.step and job.step > 0 and model is not None:
                events.append(Step(job.step, job.total_steps, model.remaining_s(job), job.elapsed_s,
                                   job.step_at))
            f.step = job.step
            if job.flagged_at and job.flagged_at != f.flagged_at:   # before the preview it may concern
                events.append(Flagged(job.flagged_at))
                f.flagged_at = job.flagged_at
            if job.preview_step and job.preview_step != f.preview_step:
                events.append(Preview(job.preview_step))
                f.preview_step = job.preview_step
        elif f.state != job.state:
            if job.fell_back and job.fell_back != f.fell_back and job.state == JobState.DONE:
                events.append(FellBack(job.fell_back))
            if job.state == JobState.FAILED:
                events.append(Failed(job.error or "The render failed.", job))
            else:
                events.append(Done(job) if job.state == JobState.DONE else Cancelled(job))
        f.state = job.state
        return events
