"""The GPU worker: a process of its own that claims one job at a time, renders it and stores the result.

The model is loaded once and kept warm. The render runs in a thread; the event loop beside it keeps the
lease alive (heartbeats), writes progress a few times a second, and turns a cancel in the store into a
stop at the next step boundary.

The worker waits out a store outage (`engine.queue.resilient`, logged once per outage) instead of exiting:
the render in hand goes on, its progress and result are written when the store is back, and a preview that
cannot be stored meanwhile is skipped. A job whose record is gone when the store comes back (deleted, or lost
by a Redis killed before it wrote its last second) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ModelError, UserError
from engine.families import family_of_model, served_key
from engine.jobs import Job, JobState
from engine.queue.backends import is_redis_url, open_store
from engine.queue.parent import pid_alive
from engine.queue.resilient import StoreFault, store_patience
from engine.queue.resilient import resilient as resilient_store
from engine.queue.store import Store, shape_key
from engine.safety import SAFETY_REASONS, Gate, Verdict, placement, verdict_fields

log = logging.getLogger("engine.queue.worker")

HEARTBEAT_S = 2.0
PROGRESS_WRITE_S = 0.25     # at most four progress writes a second
IDLE_POLL_S = 0.1
RECOVER_EVERY_S = 5.0


class WorkerBusy(UserError):
    """Another live worker holds the store's lease."""


@dataclass
class _Progress:
    step: int = 0
    total: int = 0
    written_step: int = 0
    step_at: float = 0.0        # wall-clock time of the latest step, so front ends can measure latency
    fell_back: str = ""
    notify: Callable[[], object] | None = None   # wakes the progress pump from the render thread
    lost: bool = False          # another worker took the job over (our lease had lapsed)
    finished: bool = False      # the render is over: the pump stops


class Worker:
    def __init__(self, config: Config, store: Store | None = None, model: str | None = None,
                 exclusive: bool | None = None, worker_id: str | None = None, renderer=None,
                 gate: Gate | None = None):
        self.config = config
        self.store = resilient_store(store or open_store(config.storage.url))
        self.model_spec = model or config.engine.model
        # The presets this worker renders: those of its model's family. It claims only their jobs.
        self.family = family_of_model(self.model_spec)
        self.presets = sorted(name for name, p in config.presets.items() if p.family == self.family)
        # One SQLite file means one machine and one GPU: a second worker there is a mistake.
        self.exclusive = exclusive if exclusive is not None else not is_redis_url(config.storage.url)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.results_dir = Path(config.storage.data_dir) / "results"
        self.state = "loading"
        self.renderer = renderer   # a warm renderer may be handed in (tests); otherwise loaded at start
        self.gate = gate           # the NSFW gate, when its classifier runs here (engine/render/nsfw.py)
        self._stop = asyncio.Event()
        self._cancel = threading.Event()
        self._shutdown = False

    def stop(self) -> None:
        """Stop after the current step (SIGTERM): the job in hand goes back to the queue."""
        self._shutdown = True
        self._cancel.set()
        self._stop.set()
        self.store.give_up()   # a store that is down is no longer waited for

    # ---- lifecycle ----

    async def run(self) -> None:
        with store_patience(None):   # a store outage is waited out, by every task started from here too
            try:
                await self._run()
            except StoreFault:
                if not self._shutdown:
                    raise   # told to stop while the store was down: what it could not write is recovered later

    async def _run(self) -> None:
        await self.store.open()
        try:
            await self._clear_dead_local_leases()
            if not await self.store.acquire_lease(self.id, os.getpid(), self.exclusive):
                raise WorkerBusy("Another worker is already running on this store; stop it first.",
                                 "worker_busy")
            heartbeat = asyncio.create_task(self._heartbeat(), name="worker-heartbeat")
            try:
                if self.exclusive:
                    for job in await self.store.recover():
                        log.info("job %s recovered after a worker stop: now %s", job.id, job.state)
                await self._load_model()
                await self._serve()
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                await self.store.release_lease(self.id)
        finally:
            await self.store.close()

    async def _clear_dead_local_leases(self) -> None:
        """A worker killed on this machine (SIGKILL, OOM killer) leaves a lease behind: its pid tells."""
        host = socket.gethostname()
        for info in await self.store.workers():
            if info.owner.split(":", 1)[0] == host and info.pid and not pid_alive(info.pid):
                log.info("releasing the lease of dead worker %s", info.owner)
                await self.store.release_lease(info.owner)

    async def _load_model(self) -> None:
        if self.gate is None:
            from engine.render.nsfw import worker_gate

            # On the CPU: a few small images per job, and no GPU memory taken from the renders.
            self.gate = await asyncio.to_thread(worker_gate, self.config.safety)
        if self.renderer is not None:
            self.state = "ready"
            await self.store.heartbeat(self.id, self.state)
            return
        from engine.render.model import load_model
        from engine.render.startup import build_renderer

        t0 = time.perf_counter()
        eng = self.config.engine
        low_vram = eng.low_vram if isinstance(eng.low_vram, bool) else None
        parts = await asyncio.to_thread(load_model, self.model_spec, eng.device, low_vram)
        # On CUDA: compiled UNet, fused QKV, decode chunk within the memory budget. The worker serves once the
        # default preset's first bucket is compiled; the other buckets compile between jobs (_serve).
        self.renderer = await asyncio.to_thread(build_renderer, parts, eng, self.config.presets,
                                                self.config.data_dir, serve_early=True)
        self.state = "ready"
        await self.store.heartbeat(self.id, self.state)
        log.info("worker %s ready: model %s loaded in %.1f s", self.id, self.model_spec, time.perf_counter() - t0)

    async def _heartbeat(self) -> None:
        last_recover = 0.0
        while True:
            try:
                await self.store.heartbeat(self.id, self.state)
                # From the start (loading counts): the bot refuses only jobs of a family nobody serves.
                await self.store.set_meta(served_key(self.family), time.time())
                # Several workers (Redis): any live one takes back the jobs of a worker whose lease expired.
                if not self.exclusive and time.monotonic() - last_recover >= RECOVER_EVERY_S:
                    last_recover = time.monotonic()
                    for job in await self.store.recover():
                        log.info("job %s of a stopped worker recovered: now %s", job.id, job.state)
            except StoreFault:
                pass   # stopping while the store is down (give_up): the outage is logged already
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(HEARTBEAT_S)

    async def _serve(self) -> None:
        while not self._stop.is_set():
            job = await self.store.claim(self.id, self.presets)
            if job is None and self._warming():
                await asyncio.to_thread(self.renderer.warm_up.step)   # one bucket: seconds with a warm cache
                continue
            if job is None:
                # Woken by the next write to the store (a submit) rather than the next poll: a job reaches an
                # idle worker in milliseconds. A stop is seen within IDLE_POLL_S.
                await self.store.wait_for_change(IDLE_POLL_S)
                continue
            self.state = "busy"
            try:
                await self.process(job)
            finally:
                self.state = "ready"
                with contextlib.suppress(Exception):   # its preview is of no use once it has an outcome
                    await self.store.drop_preview(job.id)

    def _warming(self) -> bool:
        warm_up = getattr(self.renderer, "warm_up", None)
        return warm_up is not None and not warm_up.done and not self._stop.is_set()

    # ---- one job ----

    async def process(self, job: Job) -> Job | None:
        """Render one claimed job and return it as stored; None if its record is gone (deleted after another
        worker took it over, or lost by the store)."""
        try:
            return await self._process(job)
        except KeyError as exc:
            if exc.args[:1] != (job.id,):
                raise
            log.warning("job %s is gone from the store (deleted, or lost with the store's last writes); "
                        "dropping it", job.id)
            for name in (f"{job.id}.mp4", f"{job.id}.clip.mp4"):
                (self.results_dir / name).unlink(missing_ok=True)
            return None

    async def _process(self, job: Job) -> Job | None:
        from engine.render.memory import free_memory, gpu_peak_bytes, is_oom
        from engine.render.sampler import RenderCancelled

        log.info("job %s started (attempt %d) preset=%s seed=%d", job.id, job.attempts, job.preset, job.seed)
        self._cancel.clear()
        progress = _Progress(total=job.total_steps)
        pump = asyncio.create_task(self._pump(job, progress), name=f"progress-{job.id}")
        t0 = time.perf_counter()
        try:
            if await self._withheld(job, "input", job.image_path):
                return await self._fail(job, SAFETY_REASONS["nsfw_input"], "nsfw_input")
            preset = self.config.presets.get(job.preset)
            if preset is not None and self.renderer.cold(preset, job.width or 1, job.height or 1):
                await self.store.update(job.id, cold=True)   # its status says why it is slower
            result = await asyncio.to_thread(self._render, job, progress, asyncio.get_running_loop())
            if await self._withheld(job, "output", result.frames):   # nothing of it is kept
                return await self._fail(job, SAFETY_REASONS["nsfw_output"], "nsfw_output")
            base = await self._extended_clip(job)
            clip, out = await asyncio.to_thread(self._write_result, job, result, base)
        except RenderCancelled:
            if progress.lost:
                log.warning("job %s was taken over by another worker; dropping this render", job.id)
                return await self.store.get(job.id)
            if self._shutdown:
                log.info("job %s returned to the queue: worker stopping", job.id)
                return await self.store.update(job.id, state=JobState.QUEUED, worker="", step=0,
                                               attempts=max(0, job.attempts - 1))
            log.info("job %s cancelled at step %d", job.id, progress.step)
            return await self.store.finish(job.id, JobState.CANCELLED, step=progress.step)
        except UserError as exc:
            return await self._fail(job, str(exc))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return await self._fail(job, "The server ran out of disk space while saving your video; "
                                             "please try again later.", "result_disk_full")
            log.exception("job %s failed", job.id)
            return await self._fail(job, "The server could not save your video; please try again.")
        except Exception as exc:
            if is_oom(exc):
                return await self._fail(job, "The GPU ran out of memory even with the light preset; "
                                             "try a smaller image or try again later.")
            log.exception("job %s failed", job.id)
            return await self._fail(job, "The renderer hit an unexpected error; please try again.")
        finally:
            # A flag as well as cancel(): in Python 3.11 wait_for() can swallow a cancellation, and a pump
            # that missed it would keep this job from ever finishing.
            progress.finished = True
            if progress.notify:
                progress.notify()
            pump.cancel()
            await asyncio.wait({pump}, timeout=5)
            free_memory()
        seconds = time.perf_counter() - t0
        steps_s = result.step_seconds[1:] or result.step_seconds  # the first step carries warm-up
        step_s = sorted(steps_s)[len(steps_s) // 2] if steps_s else 0.0
        key = shape_key(result.preset.name, result.width, result.height, result.preset.frames)
        await self.store.record_step_time(key, step_s, max(0.0, seconds - step_s * result.steps))
        done = await self.store.finish(
            job.id, JobState.DONE, result_path=str(out), clip_path=str(clip), step=result.steps,
            total_steps=result.steps,
            fell_back=result.preset.name if result.fell_back else "",
            width=result.width, height=result.height, frames=result.preset.frames,
            gpu_peak_bytes=gpu_peak_bytes(), render_s=round(seconds, 3))
        log.info("job %s done in %.2f s%s", job.id, seconds, " (fell back)" if result.fell_back else "")
        if done.expired:   # deleted while its last step or its MP4 was being made: keep nothing of it
            out.unlink(missing_ok=True)
            clip.unlink(missing_ok=True)
        return done

    async def _extended_clip(self, job: Job) -> Path | None:
        """The plain clip an extension continues (its frames come first in the joined clip)."""
        if not job.extends:
            return None
        parent = await self.store.get(job.extends)
        if parent is None or parent.expired or not parent.clip_path or not Path(parent.clip_path).exists():
            raise UserError("The clip this extends has expired; please start again from the image.", "expired")
        return Path(parent.clip_path)

    async def _fail(self, job: Job, reason: str, key: str = "") -> Job:
        log.info("job %s failed: %s", job.id, reason)
        return await self.store.finish(job.id, JobState.FAILED, error=reason, error_key=key)

    async def _withheld(self, job: Job, stage, content) -> bool:
        """The gate's verdict on the input image (a path) or the result's frames, kept on the job; True when
        flagged content may not go where this job goes."""
        if self.gate is None or not self.gate.checks(stage):
            return False
        check = self.gate.check_image if isinstance(content, str) else self.gate.check_frames
        verdict = await asyncio.to_thread(check, stage, content)
        if verdict is None:
            return False
        await self._judged(job.id, verdict)
        return placement(verdict.flagged, job.safety_rule) == "withhold"

    async def _judged(self, job_id: str, verdict: Verdict) -> None:
        latest = await self.store.get(job_id)
        if latest is not None:
            await self.store.update(job_id, **verdict_fields(latest, verdict))

    def _render(self, job: Job, progress: _Progress, loop: asyncio.AbstractEventLoop):
        from PIL import Image

        presets = self.config.presets
        eng = self.config.engine

        def on_step(step: int, total: int, elapsed: float) -> None:
            progress.step, progress.total, progress.step_at = step, total, time.time()
            if progress.notify:
                progress.notify()

        def on_fallback(preset) -> None:
            progress.fell_back = preset.name
            progress.step, progress.total = 0, preset.steps

        def step_hook(step: int) -> None:
            if eng.simulate_oom_at_step and step == eng.simulate_oom_at_step and not progress.fell_back:
                from engine.render.memory import simulated_oom
                raise simulated_oom()
            if eng.step_delay_s:
                time.sleep(eng.step_delay_s)

        with Image.open(job.image_path) as im:
            image = im.convert("RGB")
        previews = self._previews(job, loop)
        try:
            return self.renderer.render(
                image, job.prompt, job.negative_prompt or eng.negative_prompt, presets[job.preset], job.seed,
                presets, on_step=on_step, should_cancel=self._cancel.is_set, step_hook=step_hook,
                on_fallback=on_fallback, previews=previews)
        finally:
            if previews is not None:
                previews.close()   # the last preview is stored (or refused) before the job's outcome

    def _previews(self, job: Job, loop: asyncio.AbstractEventLoop):
        """Every `[preview] every_s` seconds a GIF of the clip as it forms, stored beside the job: through
        the store, so a bot on another machine shows it too."""
        every_s = self.config.preview.every_s
        if every_s <= 0:
            return None
        from engine.media.preview import preview_gif
        from engine.render.preview import PreviewTimer

        preset = self.config.presets[job.preset]
        gate = self.gate if self.gate is not None and self.gate.checks("preview") else None
        blocked = False

        async def now_or_never(call) -> bool:
            """A preview's store write, only while the store works: the render never waits for it."""
            with store_patience(0):
                try:
                    await call
                except (StoreFault, KeyError):
                    return False
            return True

        def deliver(step: int, frames) -> None:
            nonlocal blocked
            if blocked:
                return
            if gate is not None and (verdict := gate.check("preview", [frames[-1]])) and verdict.flagged:
                # Kept on the job before the preview is stored: the bot then shows it behind a spoiler, or
                # (withheld) removes the previews shown so far. Unkept, no preview goes out at all.
                kept = asyncio.run_coroutine_threadsafe(now_or_never(self._judged(job.id, verdict)), loop)
                if not kept.result(30) or placement(True, job.safety_rule) == "withhold":
                    blocked = True
                    return
            data = preview_gif(frames, preset.preview_fps(len(frames)))
            stored = now_or_never(self.store.put_preview(job.id, step, data))
            asyncio.run_coroutine_threadsafe(stored, loop).result(30)

        return PreviewTimer(every_s, deliver)

    def _write_result(self, job: Job, result, base: Path | None) -> tuple[Path, Path]:
        """(the plain clip, the delivered clip): an extension joined after the clip it continues, then
        smoothed and looped as the job asks; one file when neither applies."""
        from engine.media.clip import clip_edits, finish, join
        from engine.media.video import read_mp4_frames
        from engine.queue.service import write_clip

        frames = result.frames if base is None else join(read_mp4_frames(base), result.frames)
        smooth_it, loop_it = clip_edits(job, self.config.presets[job.preset])
        if not (smooth_it or loop_it):
            out = write_clip(frames, self.results_dir / f"{job.id}.mp4", result.fps)
            return out, out
        clip = write_clip(frames, self.results_dir / f"{job.id}.clip.mp4", result.fps)
        edited, fps = finish(frames, result.fps, smooth_it=smooth_it, loop_it=loop_it)
        return clip, write_clip(edited, self.results_dir / f"{job.id}.mp4", fps)

    async def _pump(self, job: Job, progress: _Progress) -> None:
        """Write progress as soon as a step lands (at most every PROGRESS_WRITE_S) and read cancel requests,
        while the render thread runs."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        progress.notify = lambda: loop.call_soon_threadsafe(wake.set)
        fell_back_written = ""
        last_write = 0.0
        while not progress.finished:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), PROGRESS_WRITE_S)
            wake.clear()
            if progress.finished:
                return
            gap = last_write + PROGRESS_WRITE_S - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            try:
                fields: dict[str, Any] = {}
                if progress.fell_back != fell_back_written:
                    preset = self.config.presets[progress.fell_back]
                    # The new shape, so ETAs and the status text follow the fall-back.
                    latest = await self.store.get(job.id)
                    if latest is None:   # deleted (/forget): stop the render, as for `current` below
                        self._cancel.set()
                        continue
                    w, h = preset.size_for(latest.width or 1, latest.height or 1)
                    fields.update(fell_back=progress.fell_back, total_steps=preset.steps, width=w, height=h,
                                  frames=preset.frames, step=0)
                    fell_back_written = progress.fell_back
                    progress.written_step = 0
                if progress.step != progress.written_step:
                    fields.update(step=progress.step, total_steps=progress.total,
                                  step_at=progress.step_at)
                    progress.written_step = progress.step
                try:
                    current = await self.store.update(job.id, **fields) if fields else await self.store.get(job.id)
                except KeyError:   # gone: deleted, or lost by the store
                    current = None
                last_write = time.monotonic()
                if current is not None and current.worker not in ("", self.id):
                    progress.lost = True
                if current is None or current.cancel_requested or progress.lost:
                    self._cancel.set()
            except StoreFault:
                pass
            except Exception:
                log.exception("progress write failed for job %s", job.id)


async def run_worker(config: Config, store_url: str | None = None, model: str | None = None) -> None:
    """Run until SIGTERM/SIGINT. Raises WorkerBusy or ModelError for the CLI to report in one line."""
    import signal

    if store_url:
        config.storage.url = store_url
    worker = Worker(config, model=model)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, worker.stop)
    await worker.run()


__all__ = ["Worker", "WorkerBusy", "run_worker", "ModelError"]
