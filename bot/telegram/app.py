"""Telegram front end on python-telegram-bot 22: chat events -> `JobRequest`s, one status message per job.

Everything platform-neutral (checks, queue, status texts, per-message edit throttling, delivery order) lives in
`bot.core`; the `bot.telegram` modules only speak the Bot API. This module holds `TelegramFrontEnd`, which
owns the PTB `Application` and its lifecycle (start, handler registration, errors, token redaction, resuming
jobs after a restart, close) and what all jobs of the front end share (per-chat pacers, follower tasks). The
handlers themselves live in `commands` (messages and commands) and `components` (buttons), the status
messages in `status`, and the Bot API helpers in `api`.

State that must survive a restart lives in the job store (`status_ref`) and in the buttons' callback data;
the only in-memory state is short-lived (pending image asks, albums already handled, per-chat pacers).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import logging
import time
import weakref
from pathlib import Path

from telegram.error import Conflict, InvalidToken, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.core import BotCore
from bot.startup import PlatformUnavailable, TokenRefused
from bot.telegram.api import PLATFORM, PTB_LOGGERS, BoundedHTTPXRequest, PollRequest, RedactToken
from bot.telegram.commands import ADMIN_COMMANDS, CAPTION_COMMAND, MEDIA, Commands, command_texts
from bot.telegram.components import Buttons
from bot.telegram.status import ChatPacer, StatusMessage
from engine.config import Config
from engine.jobs import Job

log = logging.getLogger("bot.telegram")

UPLOAD_TIMEOUT_S = 120.0


class TelegramFrontEnd:
    def __init__(self, core: BotCore, config: Config, token: str, *, poll_timeout: float = 10.0,
                 upload_timeout_s: float = UPLOAD_TIMEOUT_S):
        self.core = core
        self.config = config
        self._token = token
        self._redact_filter = RedactToken(token)
        self.poll_timeout = poll_timeout
        self.upload_timeout_s = upload_timeout_s
        self.app: Application | None = None
        self.commands = Commands(self)
        self.buttons = Buttons(self)
        self._pacers: weakref.WeakValueDictionary[int, ChatPacer] = weakref.WeakValueDictionary()
        self._followers: set[asyncio.Task] = set()
        self._poll_trouble_since: float | None = None   # when getUpdates last started failing

    def __repr__(self) -> str:   # never show the token
        return f"<TelegramFrontEnd running={self.app is not None}>"

    @property
    def bot(self):
        assert self.app is not None, "start() first"
        return self.app.bot

    # ---- lifecycle

    async def start(self) -> None:
        """Poll once Telegram has accepted the token; TokenRefused or PlatformUnavailable (`bot.startup`),
        with everything closed, when it cannot be done now."""
        # httpx logs request URLs at INFO, and Bot API URLs contain the token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        for name in PTB_LOGGERS:
            logging.getLogger(name).addFilter(self._redact_filter)
        tg = self.config.telegram
        builder = (ApplicationBuilder().token(self._token).concurrent_updates(True)
                   .request(BoundedHTTPXRequest()).get_updates_request(PollRequest(self._poll_answered)))
        if tg.api_base_url:
            builder = builder.base_url(tg.api_base_url)
        if tg.file_base_url:
            builder = builder.base_file_url(tg.file_base_url)
        app = builder.build()
        self._add_handlers(app)
        try:
            await app.initialize()
            self.app = app
            await self._set_commands()
            await app.start()
            await self._resume()
            assert app.updater is not None   # the builder makes one unless told `.updater(None)`
            await app.updater.start_polling(poll_interval=0, timeout=dtm.timedelta(seconds=self.poll_timeout),
                                            allowed_updates=["message", "callback_query"],
                                            error_callback=self._polling_failed)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self._shut(app)
            if isinstance(exc, InvalidToken):   # 401, or 404 for a malformed token
                # PTB's text quotes the token; the answer's own text is the cause's.
                answer = exc.__cause__ if isinstance(exc.__cause__, InvalidToken) else exc
                raise TokenRefused(f"Telegram refused the token ({self.redact(answer.message)})") from None
            if isinstance(exc, TelegramError):   # NetworkError, TimedOut, RetryAfter, an error answer
                raise PlatformUnavailable(f"{type(exc).__name__}: {self.redact(exc.message)}") from None
            raise
        log.info("Telegram bot @%s is polling", app.bot.username)

    async def close(self) -> None:
        """Stop polling, let running handlers finish, stop following this front end's jobs (they are
        followed again on the next start), then release the HTTP client."""
        if self.app is not None:
            await self._shut(self.app)

    async def _shut(self, app: Application) -> None:
        with contextlib.suppress(Exception):
            if app.updater and app.updater.running:
                await app.updater.stop()
        with contextlib.suppress(Exception):
            if app.running:
                await app.stop()
        tasks = list(self._followers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.app = None
        await app.shutdown()   # the redaction filters stay: work still winding down may log
        # After a failed initialize() the application never counted as initialized, but its bot's HTTP
        # clients are open.
        await app.bot.shutdown()

    def _add_handlers(self, app: Application) -> None:
        message = filters.UpdateType.MESSAGE
        commands = self.commands
        app.add_handler(CallbackQueryHandler(self.buttons.on_button, pattern=r"^anim:"))
        app.add_handler(MessageHandler(message & MEDIA & filters.CaptionRegex(CAPTION_COMMAND),
                                       commands.on_captioned))
        app.add_handler(CommandHandler(["animate", "hq"], commands.on_animate, filters=message))
        simple = {"cancel": commands.on_cancel, "queue": commands.on_queue, "help": commands.on_help,
                  "start": commands.on_help, "forget": commands.on_forget, "privacy": commands.on_privacy,
                  "info": commands.on_info, "extend": commands.on_extend, "settings": commands.on_settings,
                  "mine": commands.on_mine}
        for name, callback in simple.items():
            app.add_handler(CommandHandler(name, callback, filters=message))
        app.add_handler(CommandHandler(list(ADMIN_COMMANDS), commands.on_admin, filters=message))
        app.add_handler(MessageHandler(message & MEDIA, commands.on_image))
        app.add_error_handler(self._on_error)

    async def _set_commands(self) -> None:
        try:
            await self.bot.set_my_commands(command_texts("en"))
            await self.bot.set_my_commands(command_texts("zh"), language_code="zh")
        except TelegramError as exc:   # a missing menu must not keep the bot from starting
            log.warning("could not register the command menu: %s", exc.message)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        exc = context.error
        log.error("Telegram handler failed: %s: %s", type(exc).__name__, self.redact(str(exc)))

    def _polling_failed(self, exc: TelegramError) -> None:
        """getUpdates failed. PTB's polling loop tries again after 1 s, then 1.5 times longer each time up to
        30 s; this says what is wrong once, when the trouble starts (PTB would log a traceback per try)."""
        if self._poll_trouble_since is not None:
            return
        self._poll_trouble_since = time.monotonic()
        if isinstance(exc, Conflict) and "webhook" in exc.message.lower():
            log.error("telegram: a webhook is set for this bot token, so it cannot poll for updates (409 "
                      "Conflict); retrying with backoff until the webhook is removed")
        elif isinstance(exc, Conflict):
            log.error("telegram: another instance of this bot is running with the same TELEGRAM_TOKEN (409 "
                      "Conflict: only one may poll for updates); backing off, and polling again once it stops")
        else:
            log.warning("telegram: polling for updates failed: %s: %s; retrying with backoff",
                        type(exc).__name__, self.redact(exc.message))

    def _poll_answered(self, status: int) -> None:
        """Every getUpdates answer's HTTP status: the first good one after trouble ends it, in one line."""
        if status == 200 and self._poll_trouble_since is not None:
            log.warning("telegram: polling for updates again after %.0f s",
                        time.monotonic() - self._poll_trouble_since)
            self._poll_trouble_since = None

    def redact(self, text: str) -> str:
        """`text` without the bot token, for logging errors that may quote a Bot API URL."""
        return text.replace(self._token, "<token>") if self._token else text

    async def _resume(self) -> None:
        """Follow undelivered jobs again after a restart, keeping their tasks so close() can stop them."""
        tasks = await self.core.resume_following(PLATFORM, lambda job: StatusMessage.from_job(self, job))
        for task in tasks:
            self.track(task)
        if tasks:
            log.info("following %d undelivered Telegram jobs again", len(tasks))

    def track(self, task: asyncio.Task) -> None:
        """Keep a job follower's task so close() can stop it."""
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    # ---- shared by all jobs of this front end

    def pacer(self, chat_id: int, interval: float) -> ChatPacer:
        """The chat's one edit pacer, shared by every job with a status message there."""
        pacer = self._pacers.get(chat_id)
        if pacer is None:
            pacer = ChatPacer(interval)
            self._pacers[chat_id] = pacer
        return pacer

    async def video_shape(self, job: Job, video: Path) -> tuple[int, int, int]:
        """Width, height and whole seconds of the video as sent (probed when it was shrunk or fell back)."""
        preset = self.config.presets.get(job.preset)
        if video == Path(job.result_path) and not job.fell_back and preset and job.width and job.height:
            return job.width, job.height, max(1, round(job.frames / preset.fps))
        from engine.media.video import probe_mp4

        info = await asyncio.to_thread(probe_mp4, video)
        return info["width"], info["height"], max(1, round(info.get("duration_s") or 1))


__all__ = ["TelegramFrontEnd"]
