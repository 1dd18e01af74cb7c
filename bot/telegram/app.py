"""Telegram front end on python-telegram-bot 22: chat events -> `JobRequest`s, one status message per job.

Everything platform-neutral (checks, queue, status texts, per-message edit throttling, delivery order) lives in
`bot.core`; the `bot.telegram` modules only speak the Bot API. This module holds `TelegramFrontEnd`, which
owns the PTB `Application` and its lifecycle (start, handler registration, errors, token redaction, resuming
jobs after a restart, close) and what all jobs of the front end share (per-chat pacers, follower tasks). The
handlers themselves live in `commands` (messages and commands) and `components` (buttons), the status
messages in `status`, and the Bot API helpers in `api`.

State that must survive a restart lives in the job store (`status_ref`) and in the buttons' callback data;
so does the short-lived state that another replica may need (pending image asks, albums already handled, the
per-chat edit pacing): several `python -m bot` replicas may share one store.

How updates come in (`[telegram] mode`):

- "polling": one replica at a time polls (getUpdates), the one that holds `telegram:poller` in the store
  (bot/replicas.py); the others start everything else (they send, edit and follow jobs) and stand by. A
  standby takes the hold on its heartbeat once the poller's has expired, and polls; a poller that lost its
  hold stops polling (and sends no more getUpdates, which would cut the new poller's long poll short with a
  409). Without a replica (tests that build the front end directly) it polls.
- "webhook": every replica serves python-telegram-bot's webhook server on `listen:port` at the path of
  `webhook_url` (a load balancer in front spreads Telegram's posts) and sets the webhook (the same URL from
  each: idempotent; none deletes it when it stops). A post without the right secret token is refused with 403
  and one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import logging
import time
import weakref
from pathlib import Path
from urllib.parse import urlsplit

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
from bot.replicas import Replica
from bot.startup import PlatformUnavailable, TokenRefused
from bot.telegram.api import PLATFORM, PTB_LOGGERS, BoundedHTTPXRequest, PollRequest, RedactToken
from bot.telegram.commands import ADMIN_COMMANDS, CAPTION_COMMAND, MEDIA, Commands, command_texts
from bot.telegram.components import Buttons
from bot.telegram.status import ChatPacer, StatusMessage
from engine.config import Config
from engine.jobs import Job

log = logging.getLogger("bot.telegram")

UPLOAD_TIMEOUT_S = 120.0
POLLER = "telegram:poller"          # the hold of the one replica that polls for updates
ALLOWED_UPDATES = ["message", "callback_query"]


class WebhookRefusals(logging.Filter):
    """python-telegram-bot refuses a webhook post without the right secret token (403) but says so only at
    DEBUG. On its updater's logger (set to DEBUG for this), this turns that record into one WARNING line and
    lets the other DEBUG records through only where DEBUG is wanted (the parent logger's level)."""

    REFUSALS = {"Request did not include the secret token": "without the secret token",
                "Request had the wrong secret token": "with a wrong secret token"}

    def __init__(self, logger: logging.Logger):
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.DEBUG and isinstance(record.msg, str):
            for start, what in self.REFUSALS.items():
                if record.msg.startswith(start):   # the wrong token itself is not repeated
                    record.msg, record.args = f"telegram webhook: refused a post {what} (403)", None
                    record.levelno, record.levelname = logging.WARNING, "WARNING"
                    record.name = "bot.telegram"
                    return True
        parent = self.logger.parent
        return record.levelno >= (parent.getEffectiveLevel() if parent else logging.WARNING)


def webhook_refusals_logged() -> None:
    """Install `WebhookRefusals` on python-telegram-bot's updater logger (once)."""
    logger = logging.getLogger("telegram.ext.Updater")
    if not any(isinstance(f, WebhookRefusals) for f in logger.filters):
        logger.addFilter(WebhookRefusals(logger))
        logger.setLevel(logging.DEBUG)


class TelegramFrontEnd:
    def __init__(self, core: BotCore, config: Config, token: str, *, poll_timeout: float = 10.0,
                 upload_timeout_s: float = UPLOAD_TIMEOUT_S, replica: Replica | None = None):
        self.core = core
        self.replica = replica
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
        self._poll_lock = asyncio.Lock()   # polling starts and stops one at a time
        self._poll_stopping: asyncio.Task | None = None
        self._poll_lost = False             # the poller's hold went to another replica: send no getUpdates

    def __repr__(self) -> str:   # never show the token
        return f"<TelegramFrontEnd running={self.app is not None}>"

    @property
    def bot(self):
        assert self.app is not None, "start() first"
        return self.app.bot

    # ---- lifecycle

    async def start(self) -> None:
        """Take updates (poll, stand by for polling, or serve the webhook) once Telegram has accepted the
        token; TokenRefused or PlatformUnavailable (`bot.startup`), with everything closed, when it cannot be
        done now."""
        # httpx logs request URLs at INFO, and Bot API URLs contain the token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        for name in PTB_LOGGERS:
            logging.getLogger(name).addFilter(self._redact_filter)
        tg = self.config.telegram
        polls = PollRequest(self._poll_answered, may_poll=lambda: not self._poll_lost)
        builder = (ApplicationBuilder().token(self._token).concurrent_updates(True)
                   .request(BoundedHTTPXRequest()).get_updates_request(polls))
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
            how = await self._take_updates(app)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self._shut(app)
            if self.replica is not None:   # another replica polls in its place
                with contextlib.suppress(Exception):
                    await self.replica.hand_over(POLLER)
            if isinstance(exc, OSError):   # the webhook server's port (in use, not allowed)
                raise PlatformUnavailable(f"the webhook server cannot listen on {tg.listen}:{tg.port}: "
                                          f"{exc.strerror or exc}") from None
            if isinstance(exc, InvalidToken):   # 401, or 404 for a malformed token
                # PTB's text quotes the token; the answer's own text is the cause's.
                answer = exc.__cause__ if isinstance(exc.__cause__, InvalidToken) else exc
                raise TokenRefused(f"Telegram refused the token ({self.redact(answer.message)})") from None
            if isinstance(exc, TelegramError):   # NetworkError, TimedOut, RetryAfter, an error answer
                raise PlatformUnavailable(f"{type(exc).__name__}: {self.redact(exc.message)}") from None
            raise
        log.info("Telegram bot @%s %s", app.bot.username, how)

    async def _take_updates(self, app: Application) -> str:
        """Start taking updates as `[telegram] mode` says; returns how, for the log."""
        tg = self.config.telegram
        assert app.updater is not None   # the builder makes one unless told `.updater(None)`
        if tg.mode == "webhook":
            webhook_refusals_logged()
            path = urlsplit(tg.webhook_url).path or "/"
            # No drop_pending_updates: the other replicas' updates stay; PTB never deletes the webhook.
            await app.updater.start_webhook(listen=tg.listen, port=tg.port, url_path=path,
                                            secret_token=tg.secret_token, webhook_url=tg.webhook_url,
                                            allowed_updates=ALLOWED_UPDATES)
            return f"serves its webhook on {tg.listen}:{tg.port}{path}"
        if self.replica is not None and not await self.replica.take(POLLER, on_lost=self._poller_lost):
            return "is up; another replica polls for updates (this one stands by)"
        await self._start_polling(app)
        return "is polling"

    async def _start_polling(self, app: Application) -> None:
        assert app.updater is not None
        self._poll_lost = False
        await app.updater.start_polling(poll_interval=0, timeout=dtm.timedelta(seconds=self.poll_timeout),
                                        allowed_updates=ALLOWED_UPDATES, error_callback=self._polling_failed)

    @property
    def polling(self) -> bool:
        app = self.app
        return bool(app is not None and app.updater is not None and app.updater.running
                    and self.config.telegram.mode == "polling")

    async def _claim_poller(self) -> None:
        """On a standby's heartbeat: poll in place of a poller that stopped (its hold free or expired)."""
        app = self.app
        if (app is None or self.replica is None or self.config.telegram.mode != "polling"
                or self._poll_stopping is not None):
            return
        async with self._poll_lock:
            if self.polling or app is not self.app:
                return
            if not await self.replica.take(POLLER, on_lost=self._poller_lost):
                return
            try:
                await self._start_polling(app)
            except TelegramError as exc:   # deleteWebhook failed: another replica tries at its next beat
                log.warning("telegram: could not start polling in place of a stopped replica: %s: %s",
                            type(exc).__name__, self.redact(exc.message))
                await self.replica.hand_over(POLLER)
                return
        log.info("telegram: polling for updates in place of a replica that stopped")

    def _poller_lost(self) -> None:
        """Another replica took `telegram:poller` (this one missed its lease): stop polling here, so two never
        poll at once."""
        self._poll_lost = True
        if self._poll_stopping is None:
            self._poll_stopping = asyncio.create_task(self._stop_polling(), name="telegram-stop-polling")

    async def _stop_polling(self) -> None:
        try:
            async with self._poll_lock:
                if self.polling:
                    assert self.app is not None and self.app.updater is not None
                    with contextlib.suppress(Exception):
                        await self.app.updater.stop()
                    log.warning("telegram: stopped polling; another replica polls now")
        finally:
            self._poll_stopping = None

    async def close(self) -> None:
        """Stop polling, let running handlers finish, stop following this front end's jobs (they are
        followed again on the next start), then release the HTTP client."""
        if self.app is not None:
            await self._shut(self.app)

    async def _shut(self, app: Application) -> None:
        if self._poll_stopping is not None:
            with contextlib.suppress(BaseException):
                await self._poll_stopping
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

    async def take_over(self) -> None:
        """After each heartbeat of this replica: poll in place of a poller that stopped, and follow the Telegram
        jobs of a replica that stopped."""
        if self.app is None:
            return
        await self._claim_poller()
        if self.app is None:
            return
        for task in await self.core.take_over(PLATFORM, lambda job: StatusMessage.from_job(self, job)):
            self.track(task)

    def track(self, task: asyncio.Task) -> None:
        """Keep a job follower's task so close() can stop it."""
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    # ---- shared by all jobs of this front end

    def pacer(self, chat_id: int, interval: float) -> ChatPacer:
        """The chat's one edit pacer, shared by every job with a status message there (and, through the
        store, with the other replicas)."""
        pacer = self._pacers.get(chat_id)
        if pacer is None:
            pacer = ChatPacer(self.core.service.store, f"telegram:chat:{chat_id}", interval)
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
