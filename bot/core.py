"""Platform-neutral bot flow: check input, submit, follow a job, deliver; buttons, /mine, /settings, reports.

A front end (Discord, Telegram) turns chat events into `JobRequest`s and implements `JobUI` for one status
message; everything else lives here, so both platforms behave the same. Texts are in bot/texts.py, edit pacing
in bot/edits.py, the buttons in bot/buttons.py. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from bot.buttons import MINE_PAGE, Button, MinePage, buttons, page_id
from bot.edits import EditScheduler, RetryLater, with_retries
from bot.texts import StatusState, duration, shorten, t
from engine.config import Config
from engine.errors import UserError
from engine.jobs import (
    Cancelled,
    Cold,
    Done,
    Failed,
    FellBack,
    Flagged,
    Job,
    JobState,
    Preview,
    Queued,
    Started,
    Step,
)
from engine.queue.resilient import background
from engine.queue.service import JobService
from engine.safety import SAFETY_REASONS, Rule, bot_gate, placement
from engine.servers import ServerSettings

if TYPE_CHECKING:
    from bot.replicas import Replica
    from engine.queue.metrics import Metrics

log = logging.getLogger("bot.core")

QUEUE_DETAIL_POSITIONS = 3          # statuses this close to the front follow every move
DEEP_QUEUE_EDIT_INTERVAL_S = 10.0   # further back, at most one edit this often


# ---------------------------------------------------------------- requests and the UI a platform provides

@dataclass
class JobRequest:
    """A user's ask, already pulled out of the chat event by the front end."""
    platform: str
    user_id: str
    user_name: str
    chat_id: str
    locale: str
    image: bytes
    prompt: str
    preset: str = "quick"
    seed: int | None = None
    negative_prompt: str = ""
    camera: str | None = None
    speed: str | None = None
    scope: str | None = None         # server / chat id (its word list, the audit log); None in a Discord DM
    safety_rule: Rule = "withhold"   # where flagged content may go from this chat (engine/safety.py)
    smooth: bool | None = None       # interpolate to 24 fps; None: as the preset says
    loop: bool = False
    settings: ServerSettings = field(default_factory=ServerSettings)   # the server's /settings
    subject: str | None = None       # the template's slots, when the user filled them apart from the prompt
    environment: str | None = None


class JobUI(Protocol):
    """One job's status message on a platform."""
    locale: str
    upload_limit_bytes: int
    min_edit_interval_s: float

    async def edit_status(self, text: str, buttons: list[Button], preview: bytes | None = None,
                          spoiler: bool = False) -> None:
        """Edit the status message, with a new preview (an animated GIF, hidden behind a spoiler when asked)
        when given; raise RetryLater when told to wait."""

    async def hide_preview(self, text: str, buttons: list[Button]) -> None:
        """Take every picture off the status message (a preview was flagged), leaving `text`."""

    async def deliver(self, job: Job, video: Path, caption: str, buttons: list[Button],
                      spoiler: bool = False) -> None:
        """Post the result video as a new message that notifies its owner (behind a spoiler when asked),
        then remove the status; must be safe to retry."""

    async def finish(self, text: str) -> None:
        """Final text for a job that did not produce a video (failed, cancelled, too big)."""


def follow_hold(platform: str, job_id: str) -> str:
    """The name of the hold of the replica that follows a job (bot/replicas.py)."""
    return f"follow:{platform}:{job_id}"


def settle_heap() -> None:
    """Call once the bot is up: collect, then move every object alive now (the imported libraries, about
    100,000 of them) into the permanent generation, so later full collections skip them. Under load, full
    collections paused the event loop for up to 180 ms without it and about 60 ms with it."""
    gc.collect()
    gc.freeze()


@dataclass
class Submitted:
    job: Job
    hints: list[str]


class BotCore:
    """What both front ends share: checks, submit, follow, buttons, queue, admin."""

    def __init__(self, config: Config, service: JobService):
        self.config = config
        self.service = service
        self._followers: dict[str, asyncio.Task] = {}
        self.metrics: Metrics | None = None   # when enabled
        # Among several bot replicas, each job is followed by the one that holds `follow:<platform>:<job>`
        # (bot/replicas.py); None: this process follows every job it is given.
        self.replica: Replica | None = None
        # Image decoding in threads competes with the event loop for the GIL: a burst of uploads is worked
        # through one at a time instead of stalling every chat at once.
        self._image_work = asyncio.Semaphore(1)
        self._admission = asyncio.Semaphore(4)
        self._warm_up()
        self.gate = bot_gate(config.safety)   # nudenet, when configured: checks uploads, previews, results
        # Smooth and Loop re-encode here, on the bot's CPU: one at a time per user, two at a time in all.
        self._edit_locks: dict[str, asyncio.Lock] = {}
        self._edit_slots = asyncio.Semaphore(2)

    @staticmethod
    def _warm_up() -> None:
        """Import what the first jobs need now: an import inside the event loop (or one that the loop waits
        for on the import lock while a thread imports) stalls every chat for a second or more."""
        import engine.media.detail  # noqa: F401
        import engine.media.validate  # noqa: F401
        import engine.media.video  # noqa: F401
        from engine.prompts import load_templates

        load_templates()
        with contextlib.suppress(ImportError):
            import sniffio  # noqa: F401  (httpx/httpcore import it lazily on first close)

    # ---- input ----

    def check_attachment(self, content_type: str | None, size: int | None, filename: str | None,
                         download_limit: int | None = None) -> None:
        from engine.media.validate import check_upload

        limit = self.config.limits.max_image_bytes
        if download_limit:
            limit = min(limit, download_limit)
        check_upload(content_type, size, filename, limit)

    def check_prompt(self, text: str, scope: str | None = None) -> str:
        from engine.media.validate import check_prompt, prompt_limits_from_config

        return check_prompt(text, **prompt_limits_from_config(self.config, scope))

    async def submit(self, req: JobRequest, status_ref: str = "") -> Submitted:
        """Validate, build the prompt, choose the preset, queue. Raises UserError with a reason to show."""
        # A burst of uploads is admitted a few at a time: hundreds of submissions interleaving at once fill
        # the event loop's ready queue, and every chat then waits for a whole round of them.
        async with self._admission:
            return await self._submit(req, status_ref)

    async def _submit(self, req: JobRequest, status_ref: str) -> Submitted:
        from engine.media.validate import load_image
        from engine.prompts import PromptSpec, build_prompt, check_choice, load_templates, prompt_hints

        # Each part the user wrote fills its template slot; together they are checked as one prompt (length,
        # word list, and that there is one at all).
        slots = {name: self.check_prompt(value, req.scope)
                 for name, value in (("subject", req.subject), ("action", req.prompt),
                                     ("environment", req.environment)) if value and value.strip()}
        text = self.check_prompt(" ".join(slots.values()), req.scope)
        action = slots.pop("action", "")
        lim = self.config.limits
        async with self._image_work:
            image = await asyncio.to_thread(load_image, req.image, max_bytes=lim.max_image_bytes,
                                            max_pixels=lim.max_image_pixels, min_side=lim.min_image_side)
        camera = check_choice("camera", req.camera) if req.camera else None
        speed = check_choice("speed", req.speed) if req.speed else None
        templates = load_templates()
        built = build_prompt(PromptSpec(action, camera=camera, speed=speed, **slots), templates)
        hints = [self._hint_text(h, req.locale) for h in prompt_hints(text, templates.glossary)]
        settings = req.settings
        preset_name = settings.preset if req.preset == "quick" and settings.preset else req.preset
        async with self._image_work:
            preset, advice = await asyncio.to_thread(self._choose_preset, preset_name, built, image)
            verdict = await asyncio.to_thread(self.gate.check_image, "input", image)
        job = await self.service.submit(
            user=f"{req.platform}:{req.user_id}", image=image, prompt_raw=text, prompt=built, preset=preset,
            seed=req.seed, negative_prompt=req.negative_prompt, platform=req.platform, chat=req.chat_id,
            user_name=req.user_name, locale=req.locale, status_ref=status_ref, server=req.scope or "",
            safety_rule=settings.rule(req.safety_rule), verdict=verdict,
            jobs_per_hour=settings.jobs_per_hour,
            # The tips are kept with the job, so a restarted bot still shows them under the status.
            options={"camera": camera, "speed": speed, "suggest_hq": advice, "scope": req.scope, "hints": hints,
                     "smooth": settings.smooth if req.smooth is None else req.smooth, "loop": req.loop, **slots},
        )
        return Submitted(job, hints)

    def _choose_preset(self, name: str, built_prompt: str, image) -> tuple[str, bool]:
        """The preset to run and whether the result should suggest HQ (`auto` applies that advice)."""
        from engine.media.detail import image_detail
        from engine.prompts import resolve_auto_preset, step_advice

        advice = step_advice(built_prompt, image_detail(image).score)
        if name == "auto":
            return resolve_auto_preset(advice), False
        self.config.preset(name)
        return name, advice.suggest_hq and name != "hq"

    @staticmethod
    def _hint_text(hint, locale: str | None) -> str:
        text = t(locale, f"hints.{hint.key}", **hint.params)
        return hint.message if text == f"hints.{hint.key}" else text

    # ---- following a job ----

    def follow(self, job: Job, ui: JobUI, hints: list[str] | None = None) -> asyncio.Task:
        """Follow a job in the background until its user has the outcome. One follower per job."""
        existing = self._followers.get(job.id)
        if existing and not existing.done():
            return existing
        if hints is None:
            hints = list(job.options.get("hints") or [])
        # In the background: a store outage is waited out (its user sees a delay, not an error).
        task = asyncio.create_task(self._follow(job, ui, hints), name=f"follow-{job.id}", context=background())
        self._followers[job.id] = task
        job_id = job.id
        task.add_done_callback(lambda _t: self._followers.pop(job_id, None))
        return task

    async def _follow(self, job: Job, ui: JobUI, hints: list[str]) -> None:
        hold = follow_hold(job.platform, job.id)
        if self.replica is not None:
            task = asyncio.current_task()
            assert task is not None
            if not await self.replica.take(hold, on_lost=task.cancel):
                return   # another replica follows it
        told = False
        try:
            told = await self._follow_held(job, ui, hints)
        finally:
            if self.replica is not None and told:
                await self.replica.drop(hold)

    async def _follow_held(self, job: Job, ui: JobUI, hints: list[str]) -> bool:
        """Keep the status up to date until the job ends, then tell its user; True once they were told (or the
        job is gone)."""
        locale = ui.locale
        state = StatusState(hints=hints)
        cancel = buttons(locale, job.id, "cancel")

        def on_edit() -> None:
            if self.metrics:
                self.metrics.edits.labels(job.platform).inc()

        shown_preview = 0
        # The NSFW gate (engine/safety.py): once anything of the job is flagged, its pictures go where its rule
        # says: shown ("allow"), behind a spoiler, or nowhere ("withhold": the previews stop and come off).
        seen_flag = job.verdict == "flagged"
        mode = placement(seen_flag, job.safety_rule)
        hide = False

        def on_flag() -> None:
            nonlocal seen_flag, mode, hide
            if not seen_flag:
                seen_flag, mode = True, placement(True, job.safety_rule)
                hide = mode == "withhold"

        async def send(payload: tuple[str, int, str]) -> None:
            nonlocal shown_preview, hide
            text, preview_step, _ = payload
            preview = (await self.service.preview(job.id)
                       if preview_step > shown_preview and mode != "withhold" else None)
            if preview is not None and not seen_flag and self.gate.checks("preview"):
                verdict = await asyncio.to_thread(self.gate.check_image, "preview", preview)
                if verdict is not None and verdict.flagged:
                    await self.service.judge(job.id, verdict)
                    on_flag()
            try:
                if hide:
                    await ui.hide_preview(text, cancel)
                    hide = False
                else:
                    await ui.edit_status(text, cancel, preview if mode != "withhold" else None,
                                         spoiler=mode == "spoiler")
            except RetryLater:
                # A preview refused by flood control is skipped, not queued: the retried edit is text only,
                # and the next preview is newer anyway.
                shown_preview = max(shown_preview, preview_step)
                raise
            shown_preview = max(shown_preview, preview_step)

        edits = EditScheduler(send, ui.min_edit_interval_s, on_edit)
        try:
            async for event in self.service.events(job.id, seen=job):
                if isinstance(event, Queued):
                    state.phase, state.position, state.eta_s = "queued", event.position, event.eta_s
                    state.moved_back = event.moved > 0 or (state.moved_back and event.moved == 0)
                    state.retry = state.retry or event.retry
                    state.paused = event.paused
                elif isinstance(event, Started):
                    state.phase = "warming" if event.warming_up else "starting"
                    state.retry = False
                elif isinstance(event, Step):
                    state.phase, state.step, state.total = "rendering", event.step, event.total
                    state.eta_s, state.elapsed_s = event.eta_s, event.elapsed_s
                elif isinstance(event, Preview):
                    state.preview_step = event.step
                elif isinstance(event, Flagged):   # the worker's classifier flagged the job
                    on_flag()
                elif isinstance(event, FellBack):
                    state.fell_back = event.preset
                elif isinstance(event, Cold):
                    state.cold = True
                if isinstance(event, (Done, Failed, Cancelled)) and self.metrics:
                    self.metrics.observe_job(event.job)
                if isinstance(event, Done):
                    await edits.close()
                    await self._deliver(event.job, ui)
                    return True
                elif isinstance(event, Cancelled):
                    await edits.close()
                    await with_retries(partial(ui.finish, t(locale, "status.cancelled")))
                    await self.service.mark_delivered(job.id)
                    return True
                elif isinstance(event, Failed):
                    await edits.close()
                    await self._fail(event.job, ui, event.reason)
                    return True
                # Deep in a long queue, every start elsewhere moves a job up one place: edit those statuses
                # rarely, so a busy queue does not spend the platform's rate limit on position changes.
                deep = state.phase == "queued" and state.position > QUEUE_DETAIL_POSITIONS
                edits.min_interval_s = max(ui.min_edit_interval_s, DEEP_QUEUE_EDIT_INTERVAL_S if deep else 0)
                edits.update((state.render(locale), state.preview_step, mode))
        except UserError as exc:   # the job vanished (forgotten, expired)
            log.info("stopped following job %s: %s", job.id, exc)
            return True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following job %s failed", job.id)
        finally:
            await edits.close()
            if self.metrics and edits.retries:
                self.metrics.retries.labels(job.platform).inc(edits.retries)
        return False

    async def _fail(self, job: Job, ui: JobUI, reason: str) -> None:
        """Say why a job failed, in one sentence; a refusal by the NSFW gate also takes the pictures off."""
        text = t(ui.locale, "status.failed", reason=self.failure_reason(job, ui.locale) or reason)
        if job.error_key in SAFETY_REASONS:
            await with_retries(partial(ui.hide_preview, text, []))
        else:
            await with_retries(partial(ui.finish, text))
        await self.service.mark_delivered(job.id)

    @staticmethod
    def failure_reason(job: Job, locale: str | None) -> str:
        """A failure's reason in the user's language when it has a text key, else the engine's sentence."""
        text = t(locale, f"errors.{job.error_key}") if job.error_key else ""
        return job.error if not text or text == f"errors.{job.error_key}" else text

    async def _deliver(self, job: Job, ui: JobUI) -> None:
        from engine.media.video import fit_to_size

        locale = ui.locale
        if await self._withheld(job):
            await self._fail(await self.service.require(job.id), ui, "")
            return
        job = await self.service.require(job.id)   # with the verdict on its result
        try:
            video = await asyncio.to_thread(fit_to_size, Path(job.result_path), ui.upload_limit_bytes)
        except UserError:
            await with_retries(lambda: ui.finish(t(locale, "status.too_big")))
            await self.service.mark_delivered(job.id)
            return
        caption = self.caption(job, locale)
        actions = self.result_buttons(job, locale)
        spoiler = placement(job.verdict == "flagged", job.safety_rule) == "spoiler"
        t0 = time.perf_counter()
        await with_retries(lambda: ui.deliver(job, video, caption, actions, spoiler=spoiler))
        log.info("job %s delivered in %.3f s", job.id, time.perf_counter() - t0)
        await self.service.mark_delivered(job.id)

    async def _withheld(self, job: Job) -> bool:
        """Check the result here (nudenet) before it is posted; True when it was flagged and may not go where
        the job goes (it is then failed and its video deleted)."""
        verdict = None
        if self.gate.checks("output") and job.result_path:
            verdict = await asyncio.to_thread(self.gate.check_video, "output", job.result_path)
            if verdict is not None:
                job = await self.service.judge(job.id, verdict)
        # A flagged preview (a blurry estimate, where false positives are likelier) stops the previews; the
        # result is judged by its own check, and by the input's.
        flagged = job.flagged_at == "input" or (verdict.flagged if verdict else job.verdict == "flagged")
        if placement(flagged, job.safety_rule) != "withhold":
            return False
        await self.service.withhold(job.id)
        return True

    def caption(self, job: Job, locale: str | None, mention: str = "") -> str:
        preset = job.fell_back or job.preset
        lines = [t(locale, "result.caption", mention=mention, prompt=shorten(job.prompt_raw, 300), preset=preset,
                   steps=job.total_steps, seed=job.seed,
                   seconds=f"{(job.finished_at or time.time()) - (job.started_at or job.created_at):.1f}").strip()]
        if job.fell_back:
            lines.append(t(locale, "result.fell_back_note"))
        elif job.options.get("suggest_hq") and job.preset != "hq":
            lines.append(t(locale, "result.suggest_hq"))
        return "\n".join(lines)

    def result_buttons(self, job: Job, locale: str | None, expanded: bool = False) -> list[Button]:
        """A result's buttons: HQ, Re-roll and Extend first, then More, which opens Smooth, Loop, Delete, Info
        (only those that would change something)."""
        from engine.media.clip import clip_edits

        preset = self.config.presets.get(job.preset)
        smooth, loop = clip_edits(job, preset) if preset else (False, False)
        first = [a for a, show in (("hq", job.preset != "hq" and not job.fell_back), ("reroll", True),
                                   ("extend", job.extension < self.config.queue.max_extends)) if show]
        more = [a for a, show in (("smooth", not smooth), ("loop", not loop), ("report", True), ("delete", True),
                                  ("info", True)) if show]
        if expanded:
            return buttons(locale, job.id, *first) + buttons(locale, job.id, *more, row=1)
        return buttons(locale, job.id, *first, "more")

    def info_text(self, job: Job, locale: str | None) -> str:
        preset = self.config.presets.get(job.fell_back or job.preset)
        text = t(locale, "result.info", prompt=job.prompt, preset=job.fell_back or job.preset,
                 steps=job.total_steps, scheduler=preset.scheduler if preset else "?",
                 guidance=preset.guidance if preset else "?", seed=job.seed, width=job.width,
                 height=job.height, frames=job.frames, fps=preset.fps if preset else "?",
                 seconds=f"{(job.finished_at or 0) - (job.started_at or 0):.1f}")
        from engine.media.clip import clip_edits

        edits = [t(locale, f"result.edit_{name}") for name, on in zip(
            ("smooth", "loop"), clip_edits(job, preset) if preset else (False, False), strict=True) if on]
        if edits:
            text += "\n" + " · ".join(edits)
        if job.extends:
            text += "\n" + t(locale, "result.info_extension", number=job.extension, parent=job.extends)
        return text

    async def resume_following(self, platform: str, make_ui: Callable[[Job], JobUI | None]) -> list[asyncio.Task]:
        """After a restart: follow every job of this platform whose user has not heard the outcome yet.
        Returns the followers' tasks."""
        tasks = []
        for job in await self.service.undelivered(platform):
            ui = make_ui(job)
            if ui is not None:
                tasks.append(self.follow(job, ui))
        return tasks

    async def take_over(self, platform: str, make_ui: Callable[[Job], JobUI | None]) -> list[asyncio.Task]:
        """Follow the jobs of this platform whose follower stopped renewing its hold (its replica died or
        stopped). Run after each heartbeat of this replica."""
        if self.replica is None:
            return []
        prefix = follow_hold(platform, "")
        names = [n for n in await self.replica.orphans(prefix) if not self.replica.holds(n)]
        tasks = []
        for name in await self.replica.take_many(names) if names else []:
            job = await self.service.get(name[len(prefix):])
            ui = make_ui(job) if job is not None and not job.delivered and not job.expired else None
            if job is None or ui is None:
                await self.replica.drop(name)   # nothing left to tell anyone
                continue
            log.info("job %s: following it in place of a replica that stopped", job.id)
            tasks.append(self.follow(job, ui))
        return tasks

    async def close(self) -> None:
        tasks = list(self._followers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---- buttons and commands ----

    def is_admin(self, platform: str, user_id: str | int) -> bool:
        admins = self.config.discord.admins if platform == "discord" else self.config.telegram.admins
        return str(user_id) in {str(a) for a in admins}

    async def on_button(self, action: str, job_id: str, platform: str, user_id: str, locale: str | None,
                        safety_rule: Rule | None = None) -> tuple[str, Job | None]:
        """Run a button's action. Returns (reply text or "", new job for hq/reroll). A new render from the
        same image is checked again, under the rule of the chat where the button was pressed."""
        user = f"{platform}:{user_id}"
        admin = self.is_admin(platform, user_id)
        if action == "cancel":
            job = await self.service.cancel(job_id, by_user=user, is_admin=admin)
            return t(locale, "status.cancelled") if job.state in (JobState.CANCELLED, JobState.RUNNING) else "", None
        if action == "delete":
            await self.service.delete(job_id, by_user=user, is_admin=admin)
            return t(locale, "result.deleted"), None
        if action == "info":
            return self.info_text(await self.service.require(job_id), locale), None
        if action in ("hq", "reroll", "extend"):
            src = await self.service.require(job_id)
            settings = await self.service.server_settings(platform, src.server or None)
            rule = settings.rule(safety_rule or cast(Rule, src.safety_rule))
            if action == "extend":
                return "", await self._extend(src, user, locale, rule)
            verdict = None
            if src.image_path and Path(src.image_path).exists():
                async with self._image_work:
                    verdict = await asyncio.to_thread(self.gate.check_image, "input", src.image_path)
            new = await self.service.resubmit(
                src, user=user, preset="hq" if action == "hq" else src.preset, new_seed=action == "reroll",
                locale=locale or src.locale, user_name="", options={"suggest_hq": False},
                safety_rule=rule, verdict=verdict)
            return "", new
        if action in ("smooth", "loop"):
            return "", await self._edit_clip(await self.service.require(job_id), action, user, locale)
        raise UserError("Unknown button.", "unknown_button")

    async def more_buttons(self, job_id: str, locale: str | None) -> list[Button]:
        """The whole set of a result's buttons, for its More button."""
        return self.result_buttons(await self.service.require(job_id), locale, expanded=True)

    async def report(self, job_id: str, platform: str) -> tuple[Job, ServerSettings]:
        """Count a report; returns the job and its server's settings (where reports go)."""
        job = await self.service.report(job_id)
        return job, await self.service.server_settings(platform, job.server or None)

    def moderation_text(self, job: Job, settings: ServerSettings, reporter: str, link: str) -> str:
        """What the moderators are sent about a reported clip, in the server's language."""
        locale = settings.language or "en"
        if job.verdict:
            verdict = t(locale, "report.verdict", verdict=job.verdict, score=f"{job.nsfw_score:.3f}",
                        stage=job.flagged_at or "-")
        else:
            verdict = t(locale, "report.unchecked")
        return t(locale, "report.moderation", reporter=reporter, link=link or t(locale, "report.no_link"),
                 prompt=shorten(job.prompt_raw, 300), owner=job.user_name or job.user, user=job.user, job=job.id,
                 verdict=verdict, reports=job.reports)

    async def remove(self, job_id: str, platform: str, moderator: str) -> Job:
        """A moderator's Remove on a report: the clip's files and its message go; the audit log says who."""
        return await self.service.remove(job_id, f"{platform}:{moderator}")

    async def _extend(self, src: Job, user: str, locale: str | None, safety_rule: Rule) -> Job:
        limit = self.config.queue.max_extends
        if src.extension >= limit:
            raise UserError(f"This clip has been extended {limit} times, the most one clip can be.", "max_extends",
                            limit=limit)
        async with self._image_work:
            frame = await asyncio.to_thread(self.service.last_frame, src)
            verdict = await asyncio.to_thread(self.gate.check_image, "input", frame)
        return await self.service.extend(src, frame, user=user, locale=locale or src.locale,
                                         safety_rule=safety_rule, verdict=verdict)

    async def _edit_clip(self, src: Job, action: str, user: str, locale: str | None) -> Job:
        from engine.media.clip import clip_edits

        lock = self._edit_locks.setdefault(user, asyncio.Lock())
        if lock.locked():
            raise UserError("Your last Smooth or Loop is still being made; one moment.", "edit_busy")
        smooth, loop = clip_edits(src, self.config.preset(src.preset))
        async with lock, self._edit_slots:
            return await self.service.edit_clip(src, user=user, locale=locale or src.locale,
                                                smooth=smooth or action == "smooth", loop=loop or action == "loop")

    async def cancel_latest(self, platform: str, user_id: str) -> Job | None:
        user = f"{platform}:{user_id}"
        active = [j for j, _, _ in await self.service.user_jobs(user)]
        if not active:
            return None
        latest = max(active, key=lambda j: j.created_at)
        return await self.service.cancel(latest.id, by_user=user)

    async def queue_text(self, platform: str, user_id: str, locale: str | None, server: str | None = None) -> str:
        """The user's jobs, then how much of their limits is used (the server's hourly limit, if it set one)."""
        user = f"{platform}:{user_id}"
        jobs = await self.service.user_jobs(user)
        settings = await self.service.server_settings(platform, server)
        lines = [] if jobs else [t(locale, "queue.empty")]
        for job, position, eta in jobs:
            prompt = shorten(job.prompt_raw, 60)
            if position is not None:
                lines.append(t(locale, "queue.line_queued", prompt=prompt, position=position, eta=duration(eta)))
            else:
                lines.append(t(locale, "queue.line_running", prompt=prompt, step=job.step,
                               total=job.total_steps, eta=duration(eta)))
        q = await self.service.quota(user, settings.jobs_per_hour)
        lines.append(t(locale, "queue.quota", active=q["active"], per_user=q["per_user"] or "∞", hour=q["hour"],
                       per_hour=q["per_hour"] or "∞"))
        if q["frees_in_s"] is not None and q["per_hour"] and q["hour"] >= q["per_hour"]:
            lines.append(t(locale, "queue.frees", eta=duration(q["frees_in_s"])))
        return "\n".join(lines)

    # ---- /mine ----

    async def mine(self, platform: str, user_id: str, locale: str | None, page: int = 0, around: str = ""
                   ) -> MinePage:
        """A page of the user's clips: `page`, or the one that lists the clip `around`."""
        clips = await self.service.clips(f"{platform}:{user_id}")
        page = next((i // MINE_PAGE for i, j in enumerate(clips) if j.id == around), page)
        pages = max(1, -(-len(clips) // MINE_PAGE))
        page = min(max(0, page), pages - 1)
        shown = clips[page * MINE_PAGE:(page + 1) * MINE_PAGE]
        if not clips:
            return MinePage(t(locale, "mine.empty"), [], [], 0, 1)
        lines = [t(locale, "mine.title", count=len(clips), page=page + 1, pages=pages)]
        keys: list[Button] = []
        for n, job in enumerate(shown, page * MINE_PAGE + 1):
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(job.created_at))
            line = t(locale, "mine.line", n=n, prompt=shorten(job.prompt_raw, 60), preset=job.fell_back or job.preset,
                     when=when)
            lines.append(line + (" · " + t(locale, "mine.expired") if job.expired else ""))
            # One row of Post buttons, one of Delete buttons, one to turn pages: Discord allows five rows.
            if not job.expired:
                keys.append(Button("post", job.id, t(locale, "buttons.post", n=n), 0))
            keys.append(Button("drop", job.id, t(locale, "buttons.drop", n=n), 1))
        turns = [(page - 1, "◀"), (page + 1, "▶")]
        keys += [Button("page", page_id(user_id, p), label, 2) for p, label in turns if 0 <= p < pages]
        return MinePage("\n".join(lines), shown, keys, page, pages)

    async def repost(self, job_id: str, platform: str, user_id: str, safety_rule: Rule, upload_limit: int
                     ) -> tuple[Job, Path, bool]:
        """A clip from /mine, posted again where the button was pressed: (job, video fitted to the upload
        limit, behind a spoiler). Checked against that chat's rule, not the one it was first posted under."""
        from engine.media.video import fit_to_size

        job = await self.service.require(job_id)
        if job.user != f"{platform}:{user_id}":
            raise UserError("Only the person who made this clip can post it again.", "not_owner")
        settings = await self.service.server_settings(platform, job.server or None)
        rule = settings.rule(safety_rule)
        mode = placement(job.verdict == "flagged", rule)
        if mode == "withhold":
            raise UserError(SAFETY_REASONS["nsfw_output"], "nsfw_repost")
        if not job.result_path or not Path(job.result_path).exists():
            raise UserError("This video has expired; please send the image again.", "expired")
        video = await asyncio.to_thread(fit_to_size, Path(job.result_path), upload_limit)
        return job, video, mode == "spoiler"

    # ---- per-server settings ----

    def settings_text(self, settings: ServerSettings, locale: str | None,
                      channel_name: Callable[[str], str] = str) -> str:
        """What /settings shows: each setting, and where it is the bot's default."""
        default = t(locale, "settings.default")
        values = {
            "channels": ", ".join(channel_name(c) for c in settings.channels) or t(locale, "settings.everywhere"),
            "preset": settings.preset or f"quick ({default})",
            "smooth": t(locale, "settings.on" if settings.smooth else "settings.off") if settings.smooth is not None
            else default,
            "safety": t(locale, f"settings.safety_{settings.safety}"),
            "telegram_safety": settings.telegram_safety or f"{self.config.safety.telegram} ({default})",
            "language": t(locale, f"settings.lang_{settings.language}") if settings.language
            else t(locale, "settings.own"),
            "jobs_per_hour": str(self.service.hourly_limit(settings.jobs_per_hour) or "∞")
            + ("" if settings.jobs_per_hour else f" ({default})"),
            "moderation_channel": channel_name(settings.moderation_channel) if settings.moderation_channel
            else t(locale, "settings.admins_by_dm"),
        }
        return "\n".join([t(locale, "settings.title")] + [
            f"• {t(locale, f'settings.key_{key}')} ({key}): {values[key]}" for key in values])

    async def change_settings(self, platform: str, server: str, changes: list[tuple[str, str]], locale: str | None,
                              moderator: bool, channel_name: Callable[[str], str] = str) -> str:
        """Apply /settings changes for a server's moderator (all or none), save them, and show the result."""
        settings = await self.service.server_settings(platform, server)
        if changes and not moderator:
            raise UserError("Only this server's moderators and the bot's admins can change its settings.",
                            "not_moderator")
        from engine.servers import change

        for key, value in changes:
            settings = change(settings, key, value, presets=sorted(self.config.presets),
                              max_jobs_per_hour=self.config.queue.jobs_per_hour)
        if changes:
            await self.service.save_server_settings(platform, server, settings)
            log.info("settings of %s:%s changed: %s", platform, server, ", ".join(k for k, _ in changes))
        text = self.settings_text(settings, locale, channel_name)
        return f"{t(locale, 'settings.saved')}\n{text}" if changes else text

    async def admin(self, platform: str, user_id: str, locale: str | None, command: str, arg: str = "") -> str:
        """/stats /pause /resume /ban /unban for configured admins only."""
        if not self.is_admin(platform, user_id):
            return t(locale, "admin.not_admin")
        if command == "stats":
            s = await self.service.stats()
            workers = ", ".join(w["state"] for w in s["workers"]) or "none"
            today = ", ".join(f"{k} {v}" for k, v in sorted(s["today"].items())) or "0"
            return t(locale, "admin.stats", queued=s["queued"], running=s["running"], workers=workers, today=today,
                     paused=" (paused)" if s["paused"] else "")
        if command == "pause":
            await self.service.pause()
            return t(locale, "admin.paused")
        if command == "resume":
            await self.service.resume()
            return t(locale, "admin.resumed")
        target = arg.strip().lstrip("@").strip("<>!@")
        if not target:
            raise UserError("Name the user id, e.g. /ban 1234.", "usage")
        if command == "ban":
            await self.service.ban(f"{platform}:{target}")
            return t(locale, "admin.banned", user=target)
        if command == "unban":
            await self.service.unban(f"{platform}:{target}")
            return t(locale, "admin.unbanned", user=target)
        raise UserError("Unknown admin command.", "usage")

    def privacy_text(self, locale: str | None) -> str:
        return t(locale, "privacy.text", days=f"{self.config.storage.retention_days:g}")

    async def forget(self, platform: str, user_id: str, locale: str | None) -> str:
        count = await self.service.forget(f"{platform}:{user_id}")
        return t(locale, "admin.forgot", count=count)
