"""Telegram front end on python-telegram-bot 22: chat events -> `JobRequest`s, one status message per job.

Everything platform-neutral (checks, queue, status texts, per-message edit throttling, delivery order) lives in
`bot.core`; this module only speaks the Bot API. State that must survive a restart lives in the job store
(`status_ref`) and in the buttons' callback data; the only in-memory state is short-lived (pending image asks,
albums already handled, a cache of result message ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import json
import logging
import re
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telegram import (
    BotCommand,
    CallbackQuery,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
    Update,
)
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from bot.core import (
    BotCore,
    Button,
    JobRequest,
    RetryLater,
    StatusState,
    error_text,
    parse_custom_id,
    shorten,
    t,
    with_retries,
)
from engine.config import Config
from engine.errors import UserError
from engine.jobs import Job

log = logging.getLogger("bot.telegram")

PLATFORM = "telegram"
PENDING_ASK_S = 300.0           # how long "/animate prompt" waits for the image
ALERT_LIMIT = 200               # answerCallbackQuery text limit
UPLOAD_TIMEOUT_S = 120.0
DOWNLOAD_ATTEMPTS = 3
SEEN_ALBUMS = 512

CAPTION_COMMAND = re.compile(r"^\s*/(animate|hq)(?:@([A-Za-z0-9_]+))?(?=\s|$)", re.IGNORECASE)
TEXT_COMMAND = re.compile(r"^\s*/[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)?")
MEDIA = filters.PHOTO | filters.Document.ALL | filters.VIDEO | filters.ANIMATION
ADMIN_COMMANDS = ("stats", "pause", "resume", "ban", "unban")

# Command menu texts; a [commands] section in templates/messages overrides them.
COMMANDS = {
    "en": {
        "animate": "Animate a photo: send it captioned /animate <prompt>",
        "hq": "High-quality video (more steps): /hq <prompt> with a photo",
        "queue": "Your waiting and rendering jobs",
        "cancel": "Cancel your latest job",
        "info": "Reply to a video: how it was made",
        "forget": "Delete all your jobs, images and videos",
        "help": "How to use this bot",
    },
    "zh": {
        "animate": "把照片变成视频：发送图片并配文 /animate <提示词>",
        "hq": "高质量视频（更多步数）：图片配文 /hq <提示词>",
        "queue": "你等待中和渲染中的任务",
        "cancel": "取消你最新的任务",
        "info": "回复一个视频：查看生成参数",
        "forget": "删除你的所有任务、图片和视频",
        "help": "使用说明",
    },
}
# python-telegram-bot's loggers; some log the API URL, which holds the token, at DEBUG.
PTB_LOGGERS = ("telegram", "telegram.Bot", "telegram.ext", "telegram.ext.ExtBot", "telegram.ext.Application",
               "telegram.ext.Updater", "telegram.ext.JobQueue", "telegram.request.BaseRequest",
               "telegram.request.HTTPXRequest", "httpx")


# ---------------------------------------------------------------- small helpers


class RedactToken(logging.Filter):
    """Replaces the bot token in log records of the loggers it is attached to."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        if self.token:
            message = record.getMessage()
            if self.token in message:
                record.msg, record.args = message.replace(self.token, "<token>"), None
        return True


def retry_seconds(exc: RetryAfter) -> float:
    """RetryAfter.retry_after is an int or a timedelta depending on PTB_TIMEDELTA; read it without the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def is_not_modified(exc: TelegramError) -> bool:
    return "not modified" in exc.message.lower()


def is_gone(exc: TelegramError) -> bool:
    """The message to edit/delete no longer exists (deleted by a user or an admin)."""
    text = exc.message.lower()
    return "not found" in text or "can't be deleted" in text or "can't be edited" in text


def keyboard(buttons: list[Button], per_row: int = 2) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    keys = [InlineKeyboardButton(b.label, callback_data=b.custom_id) for b in buttons]
    return InlineKeyboardMarkup([keys[i:i + per_row] for i in range(0, len(keys), per_row)])


def reply_to(message_id: int | None) -> ReplyParameters | None:
    # The user may have deleted their message meanwhile: post anyway rather than fail.
    return ReplyParameters(message_id, allow_sending_without_reply=True) if message_id else None


def info_usage() -> UserError:
    return UserError("Reply to one of my videos with /info to see how it was made.", "info_usage")


def command_rest(text: str) -> str:
    """'/animate@bot a cat' -> 'a cat'."""
    return TEXT_COMMAND.sub("", text or "", count=1).strip()


def command_texts(locale: str) -> list[BotCommand]:
    return [BotCommand(name, _command_description(locale, name, text)) for name, text in COMMANDS[locale].items()]


def _command_description(locale: str, name: str, default: str) -> str:
    text = t(locale, f"commands.{name}")
    return default if text == f"commands.{name}" else text


@dataclass(frozen=True)
class Attachment:
    """An image candidate as the message's metadata describes it (nothing downloaded yet)."""
    file_id: str
    content_type: str | None
    size: int | None
    filename: str | None


def attachment_of(message: Message | None) -> Attachment | None:
    if message is None:
        return None
    if message.photo:
        largest = message.photo[-1]     # sizes come smallest first
        return Attachment(largest.file_id, "image/jpeg", largest.file_size, None)
    for media in (message.document, message.animation, message.video, message.sticker):
        if media is not None:
            mime = getattr(media, "mime_type", None)
            if mime is None and media is message.sticker:
                mime = "image/webp" if not (media.is_animated or media.is_video) else "video/webm"
            return Attachment(media.file_id, mime, media.file_size, getattr(media, "file_name", None))
    return None


@dataclass
class PendingAsk:
    """'/animate prompt' without an image: waits for the next image of that user in that chat."""
    prompt: str
    preset: str
    expires_at: float


@dataclass
class Ask:
    """A request pulled out of a message, before the image is fetched."""
    prompt: str
    preset: str


# ---------------------------------------------------------------- bounded Bot API calls

# httpx's connection pool re-scans every waiting request against every connection each time one is queued or
# finished, so hundreds of calls in flight at once cost quadratic time on the event loop (measured: 1.3 s
# stalls when 250 photos arrive together). Calls past this many wait on a cheap semaphore instead.
MAX_CALLS_IN_FLIGHT = 16


class BoundedHTTPXRequest(HTTPXRequest):
    """PTB's HTTP client with at most `limit` calls in flight; the rest wait their turn."""

    def __init__(self, limit: int = MAX_CALLS_IN_FLIGHT, **kwargs: Any):
        super().__init__(connection_pool_size=limit, **kwargs)
        self._slots = asyncio.Semaphore(limit)

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        async with self._slots:
            return await super().do_request(*args, **kwargs)


# ---------------------------------------------------------------- per-chat edit pacing


class ChatPacer:
    """Edits in one chat at least `interval` apart, across all jobs there: Telegram limits edits per chat,
    and several jobs in one group must share that budget. The next edit starts only after the previous answer
    arrived plus the interval, so even the server's arrival times keep the spacing."""

    def __init__(self, interval: float):
        self.interval = interval
        self._lock = asyncio.Lock()
        self._next_at = 0.0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self._lock:
            wait = self._next_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._next_at = max(self._next_at, time.monotonic() + self.interval)

    def hold(self, seconds: float) -> None:
        """Flood control: no edit in this chat for `seconds`."""
        self._next_at = max(self._next_at, time.monotonic() + seconds)


# ---------------------------------------------------------------- one job's status message


class TelegramJobUI:
    """One job's status message in a chat (the `JobUI` of bot.core)."""

    def __init__(self, front: TelegramFrontEnd, job_id: str, chat_id: int, reply_to_id: int | None,
                 locale: str, mention: str, status_id: int | None = None, result_id: int | None = None):
        tg = front.config.telegram
        self.front = front
        self.job_id = job_id
        self.chat_id = chat_id
        self.reply_to_id = reply_to_id
        self.locale = locale
        self.mention = mention
        self.status_id = status_id
        self.result_id = result_id
        self.upload_limit_bytes = tg.upload_limit_bytes
        self.min_edit_interval_s = tg.edit_interval_group_s if chat_id < 0 else tg.edit_interval_private_s
        self._pacer = front.pacer(chat_id, self.min_edit_interval_s)
        self._shown: tuple[str, Any] | None = None
        self._status_gone = False
        self._upload_timeouts = 0

    # ---- status_ref: what a restart needs to find this job's messages again

    def ref(self) -> str:
        data = {"chat": self.chat_id, "status": self.status_id, "reply_to": self.reply_to_id,
                "name": self.mention, "locale": self.locale}
        if self.result_id:
            data["result"] = self.result_id
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_job(cls, front: TelegramFrontEnd, job: Job) -> TelegramJobUI | None:
        try:
            ref = json.loads(job.status_ref) if job.status_ref else {}
        except ValueError:
            ref = {}
        chat = ref.get("chat") or job.chat
        try:
            chat_id = int(chat)
        except (TypeError, ValueError):
            return None
        return cls(front, job.id, chat_id, ref.get("reply_to"), ref.get("locale") or job.locale,
                   ref.get("name") or job.user_name, ref.get("status"), ref.get("result"))

    def posted(self, status_id: int, text: str, markup: InlineKeyboardMarkup | None) -> None:
        """The status message was sent by the front end showing `text`: the first equal edit is skipped."""
        self.status_id, self._shown = status_id, (text, markup)

    async def save_ref(self) -> None:
        service = self.front.core.service
        await service.set_status_ref(self.job_id, self.ref())
        for message_id in (self.status_id, self.result_id):
            if message_id:   # /info as a reply to either finds the job again, after a restart too
                await service.link_message(self.job_id, PLATFORM, self.chat_id, message_id)

    # ---- JobUI

    async def edit_status(self, text: str, buttons: list[Button]) -> None:
        markup = keyboard(buttons, per_row=1)
        if self._status_gone:
            return
        if self.status_id is None:   # followed again after a restart without a status message
            await self._post_status(text, markup)
            return
        if self._shown == (text, markup):
            return
        bot = self.front.bot
        async with self._pacer.turn():
            try:
                await bot.edit_message_text(text, self.chat_id, self.status_id, reply_markup=markup)
            except RetryAfter as exc:
                seconds = retry_seconds(exc)
                self._pacer.hold(seconds)
                raise RetryLater(seconds) from None
            except BadRequest as exc:
                if is_gone(exc):
                    self._status_gone = True
                elif not is_not_modified(exc):
                    raise
            except Forbidden:
                self._status_gone = True   # the bot was blocked or removed from the chat
        self._shown = (text, markup)

    async def finish(self, text: str) -> None:
        if self.status_id is not None and not self._status_gone:
            async with self._pacer.turn():
                try:
                    await self.front.bot.edit_message_text(text, self.chat_id, self.status_id)
                    return
                except RetryAfter as exc:
                    seconds = retry_seconds(exc)
                    self._pacer.hold(seconds)
                    raise RetryLater(seconds) from None
                except BadRequest as exc:
                    if is_not_modified(exc):
                        return
                    if not is_gone(exc):
                        raise
                except Forbidden:
                    return
        await self.front.send_text(self.chat_id, text, self.reply_to_id)

    async def deliver(self, job: Job, video: Path, caption: str, buttons: list[Button]) -> None:
        """Post the video as a reply, then delete the status message. Retried by the core: each step is
        skipped once done, so a retry after a failed delete does not post the video twice."""
        if self.result_id is None:
            if not await self._send_video(job, video, buttons):
                return
            await self.save_ref()
        await self._delete_status()

    # ---- helpers

    async def _post_status(self, text: str, markup: InlineKeyboardMarkup | None) -> None:
        try:
            sent = await self.front.bot.send_message(self.chat_id, text, reply_markup=markup,
                                                     reply_parameters=reply_to(self.reply_to_id))
        except RetryAfter as exc:
            raise RetryLater(retry_seconds(exc)) from None
        except Forbidden:
            self._status_gone = True
            return
        self.posted(sent.message_id, text, markup)
        await self.save_ref()

    async def _send_video(self, job: Job, video: Path, buttons: list[Button]) -> bool:
        """Upload the result; False when nobody can receive it (the bot was blocked)."""
        caption = self.front.core.caption(job, self.locale, mention=self.mention)
        data = await asyncio.to_thread(video.read_bytes)
        width, height, seconds = await self.front.video_shape(job, video)
        animation = self.front.config.telegram.send_as == "animation"
        send = self.front.bot.send_animation if animation else self.front.bot.send_video
        extra = {} if animation else {"supports_streaming": True}
        # An upload that times out may still arrive: after a second ambiguous timeout stop re-sending,
        # so a user sees at most one duplicate.
        timeout = self.front.upload_timeout_s * (1 + self._upload_timeouts)
        try:
            sent = await send(self.chat_id, data, filename=f"{job.id}.mp4", caption=caption, width=width,
                              height=height, duration=seconds, reply_markup=keyboard(buttons),
                              reply_parameters=reply_to(self.reply_to_id), write_timeout=timeout,
                              read_timeout=timeout, **extra)
        except RetryAfter as exc:
            raise RetryLater(retry_seconds(exc)) from None
        except TimedOut:
            self._upload_timeouts += 1
            if self._upload_timeouts >= 2:
                # Both uploads may still arrive; say it is on its way instead of sending a third copy.
                with contextlib.suppress(TelegramError, RetryLater):
                    await self.edit_status(t(self.locale, "status.delivering"), [])
                raise UserError("The video upload timed out twice.", "upload_timeout") from None
            raise
        except Forbidden as exc:
            log.warning("job %s: cannot deliver to chat %s (%s)", job.id, self.chat_id, exc.message)
            return False
        self.result_id = sent.message_id
        return True

    async def _delete_status(self) -> None:
        if self.status_id is None or self._status_gone:
            return
        try:
            await self.front.bot.delete_message(self.chat_id, self.status_id)
        except RetryAfter as exc:
            raise RetryLater(retry_seconds(exc)) from None
        except (BadRequest, Forbidden) as exc:
            log.info("status message %s in %s not deleted: %s", self.status_id, self.chat_id, exc.message)
        self._status_gone = True


# ---------------------------------------------------------------- the front end


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
        self._pending: dict[tuple[int, int], PendingAsk] = {}
        self._albums: OrderedDict[str, None] = OrderedDict()
        self._pacers: weakref.WeakValueDictionary[int, ChatPacer] = weakref.WeakValueDictionary()
        self._followers: set[asyncio.Task] = set()

    def __repr__(self) -> str:   # never show the token
        return f"<TelegramFrontEnd running={self.app is not None}>"

    @property
    def bot(self):
        assert self.app is not None, "start() first"
        return self.app.bot

    # ---- lifecycle

    async def start(self) -> None:
        # httpx logs request URLs at INFO, and Bot API URLs contain the token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        for name in PTB_LOGGERS:
            logging.getLogger(name).addFilter(self._redact_filter)
        tg = self.config.telegram
        builder = (ApplicationBuilder().token(self._token).concurrent_updates(True)
                   .request(BoundedHTTPXRequest()))
        if tg.api_base_url:
            builder = builder.base_url(tg.api_base_url)
        if tg.file_base_url:
            builder = builder.base_file_url(tg.file_base_url)
        app = builder.build()
        self._add_handlers(app)
        await app.initialize()
        self.app = app
        await self._set_commands()
        await app.start()
        await self._resume()
        await app.updater.start_polling(poll_interval=0, timeout=self.poll_timeout,
                                        allowed_updates=["message", "callback_query"])
        log.info("Telegram bot @%s is polling", app.bot.username)

    async def close(self) -> None:
        """Stop polling, let running handlers finish, stop following this front end's jobs (they are
        followed again on the next start), then release the HTTP client."""
        app = self.app
        if app is None:
            return
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

    def _add_handlers(self, app: Application) -> None:
        message = filters.UpdateType.MESSAGE
        app.add_handler(CallbackQueryHandler(self._on_button, pattern=r"^anim:"))
        app.add_handler(MessageHandler(message & MEDIA & filters.CaptionRegex(CAPTION_COMMAND), self._on_captioned))
        app.add_handler(CommandHandler(["animate", "hq"], self._on_animate, filters=message))
        simple = {"cancel": self._on_cancel, "queue": self._on_queue, "help": self._on_help,
                  "start": self._on_help, "forget": self._on_forget, "info": self._on_info}
        for name, callback in simple.items():
            app.add_handler(CommandHandler(name, callback, filters=message))
        app.add_handler(CommandHandler(list(ADMIN_COMMANDS), self._on_admin, filters=message))
        app.add_handler(MessageHandler(message & MEDIA, self._on_image))
        app.add_error_handler(self._on_error)

    async def _set_commands(self) -> None:
        try:
            await self.bot.set_my_commands(command_texts("en"))
            await self.bot.set_my_commands(command_texts("zh"), language_code="zh")
        except TelegramError as exc:   # a missing menu must not keep the bot from starting
            log.warning("could not register the command menu: %s", exc.message)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        exc = context.error
        log.error("Telegram handler failed: %s: %s", type(exc).__name__, self._redact(str(exc)))

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "<token>") if self._token else text

    # ---- shared per-chat state

    def pacer(self, chat_id: int, interval: float) -> ChatPacer:
        pacer = self._pacers.get(chat_id)
        if pacer is None:
            pacer = ChatPacer(interval)
            self._pacers[chat_id] = pacer
        return pacer

    async def _resume(self) -> None:
        """Follow undelivered jobs again after a restart, keeping their tasks so close() can stop them."""
        tasks = await self.core.resume_following(PLATFORM, lambda job: TelegramJobUI.from_job(self, job))
        for task in tasks:
            self._track(task)
        if tasks:
            log.info("following %d undelivered Telegram jobs again", len(tasks))

    def _track(self, task: asyncio.Task) -> None:
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def video_shape(self, job: Job, video: Path) -> tuple[int, int, int]:
        """Width, height and whole seconds of the video as sent (probed when it was shrunk or fell back)."""
        preset = self.config.presets.get(job.preset)
        if video == Path(job.result_path) and not job.fell_back and preset and job.width and job.height:
            return job.width, job.height, max(1, round(job.frames / preset.fps))
        from engine.media.video import probe_mp4

        info = await asyncio.to_thread(probe_mp4, video)
        return info["width"], info["height"], max(1, round(info.get("duration_s") or 1))

    # ---- sending

    async def send_text(self, chat_id: int, text: str, reply_to_id: int | None = None, **kwargs: Any) -> Message:
        try:
            return await self.bot.send_message(chat_id, text, reply_parameters=reply_to(reply_to_id), **kwargs)
        except RetryAfter as exc:
            raise RetryLater(retry_seconds(exc)) from None

    async def _reply(self, message: Message, text: str, **kwargs: Any) -> Message | None:
        try:
            return await with_retries(lambda: self.send_text(message.chat_id, text, message.message_id, **kwargs),
                                      attempts=3, retry_on=(RetryLater, TimedOut))
        except Forbidden:
            return None

    async def _refuse(self, message: Message, exc: UserError) -> None:
        await self._reply(message, error_text(exc, self._locale(message)))

    @staticmethod
    def _locale(message: Message | None, user=None) -> str:
        user = user or (message.from_user if message else None)
        return (user.language_code if user else None) or "en"

    def _allowed(self, chat_id: int, user_id: int) -> bool:
        chats = self.config.telegram.chats
        return not chats or chat_id in {int(c) for c in chats} or self.core.is_admin(PLATFORM, user_id)

    def _for_us(self, mentioned: str | None) -> bool:
        return not mentioned or mentioned.lower() == (self.bot.username or "").lower()

    # ---- starting jobs

    async def _on_captioned(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        match = CAPTION_COMMAND.match(message.caption or "")
        if match is None or message.from_user is None or not self._for_us(match.group(2)):
            return
        self._pending.pop((message.chat_id, message.from_user.id), None)
        if message.media_group_id:
            self._mark_album(message.media_group_id)
        ask = Ask(message.caption[match.end():].strip(), "hq" if match.group(1).lower() == "hq" else "quick")
        await self._start_job(message, message, ask)

    async def _on_animate(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message.from_user is None:
            return
        command = TEXT_COMMAND.match(message.text or "").group(0).strip().lstrip("/").split("@")[0].lower()
        ask = Ask(command_rest(message.text), "hq" if command == "hq" else "quick")
        source = message.reply_to_message
        if attachment_of(source) is not None:
            await self._start_job(message, source, ask)
            return
        if not self._allowed(message.chat_id, message.from_user.id):
            await self._refuse(message, UserError("This bot is not enabled in this chat.", "not_allowed_here"))
            return
        try:   # refuse bad flags now rather than after the user found an image
            self._parse(ask)
        except UserError as exc:
            await self._refuse(message, exc)
            return
        self._drop_expired_asks()
        key = (message.chat_id, message.from_user.id)
        self._pending[key] = PendingAsk(ask.prompt, ask.preset, time.monotonic() + PENDING_ASK_S)
        # ForceReply: in groups with privacy mode on, only replies to the bot reach it.
        await self._reply(message, t(self._locale(message), "errors.ask_image"),
                          reply_markup=ForceReply(selective=True))

    async def _on_image(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An image without a command: the answer to an earlier '/animate prompt', else ignored."""
        message = update.effective_message
        if message.from_user is None:
            return
        if message.media_group_id and message.media_group_id in self._albums:
            return
        self._drop_expired_asks()
        pending = self._pending.pop((message.chat_id, message.from_user.id), None)
        if pending is None:
            return
        if message.media_group_id:
            self._mark_album(message.media_group_id)
        await self._start_job(message, message, Ask(pending.prompt, pending.preset))

    def _drop_expired_asks(self) -> None:
        now = time.monotonic()
        for key in [k for k, p in self._pending.items() if p.expires_at < now]:
            del self._pending[key]

    def _mark_album(self, group_id: str) -> None:
        self._albums[group_id] = None
        while len(self._albums) > SEEN_ALBUMS:
            self._albums.popitem(last=False)

    def _parse(self, ask: Ask) -> tuple[str, dict]:
        """Caption flags -> (prompt text, options)."""
        from engine.prompts import parse_flags

        return parse_flags(ask.prompt)

    async def _start_job(self, message: Message, source: Message, ask: Ask) -> None:
        """`message` carries the command (replies go to it); `source` carries the image."""
        user = message.from_user
        locale = self._locale(message)
        try:
            if not self._allowed(message.chat_id, user.id):
                raise UserError("This bot is not enabled in this chat.", "not_allowed_here")
            text, options = self._parse(ask)
            attachment = attachment_of(source)
            if attachment is None:
                raise UserError("Please attach an image.", "no_image")
            self.core.check_attachment(attachment.content_type, attachment.size, attachment.filename,
                                       self.config.telegram.download_limit_bytes)
            image = await self._download(attachment)
            request = JobRequest(
                platform=PLATFORM, user_id=str(user.id), user_name=user.first_name, chat_id=str(message.chat_id),
                locale=locale, image=image, prompt=text, preset=options.get("preset") or ask.preset,
                seed=options.get("seed"), negative_prompt=options.get("negative") or "",
                camera=options.get("camera"), speed=options.get("speed"), scope=str(message.chat_id),
                subject=options.get("subject"), environment=options.get("environment"),
            )
            submitted = await self.core.submit(request)
        except UserError as exc:
            await self._refuse(message, exc)
            return
        except Exception as exc:
            log.exception("starting a job failed: %s", type(exc).__name__)
            await self._reply(message, t(locale, "errors.generic"))
            return
        if source is message and message.media_group_id:   # only the album's first photo is animated
            await self._reply(message, t(locale, "errors.album"))
        await self._follow(submitted.job, message.chat_id, message.message_id, locale, user.first_name,
                           submitted.hints)

    async def _download(self, attachment: Attachment) -> bytes:
        limit = min(self.config.limits.max_image_bytes, self.config.telegram.download_limit_bytes)

        async def fetch() -> bytes:
            try:
                file = await self.bot.get_file(attachment.file_id)
                if file.file_size and file.file_size > limit:
                    self.core.check_attachment(attachment.content_type, file.file_size, attachment.filename,
                                               limit)
                return bytes(await file.download_as_bytearray())
            except BadRequest as exc:   # not retried: the file is too big or gone
                if "too big" in exc.message.lower():
                    self.core.check_attachment(None, limit + 1, None, limit)
                raise UserError("I could not download your image; please send it again.",
                                "download_failed") from None
            except RetryAfter as exc:
                raise RetryLater(retry_seconds(exc)) from None

        try:
            return await with_retries(fetch, attempts=DOWNLOAD_ATTEMPTS, retry_on=(NetworkError, RetryLater))
        except (NetworkError, RetryLater):
            raise UserError("I could not download your image; please send it again.", "download_failed") from None

    async def _follow(self, job: Job, chat_id: int, reply_to_id: int | None, locale: str, mention: str,
                      hints: list[str]) -> None:
        """Post the job's status message, remember where it is, and let the core follow the job."""
        ui = TelegramJobUI(self, job.id, chat_id, reply_to_id, locale, mention)
        markup = keyboard([Button("cancel", job.id, t(locale, "buttons.cancel"))], per_row=1)
        try:
            text = await self._first_status(job, locale, hints)
            sent = await with_retries(lambda: self.send_text(chat_id, text, reply_to_id, reply_markup=markup),
                                      attempts=3, retry_on=(RetryLater, TimedOut))
            ui.posted(sent.message_id, text, markup)
            await ui.save_ref()
        except Exception as exc:   # the job is queued either way: the follower posts what it can
            log.warning("job %s: status message in %s not set up: %s: %s", job.id, chat_id,
                        type(exc).__name__, self._redact(str(exc)))
        finally:
            self._track(self.core.follow(job, ui, hints))

    async def _first_status(self, job: Job, locale: str, hints: list[str]) -> str:
        """The text the follower's first event will show, so the status needs no immediate edit."""
        service = self.core.service
        queued, etas = await service.queue_snapshot()
        position = next((i for i, j in enumerate(queued, 1) if j.id == job.id), 0)
        state = StatusState(hints=hints)
        if position:
            state.position, state.eta_s, state.paused = position, etas.get(job.id), await service.paused()
        else:
            state.phase = "starting"
        return state.render(locale)

    # ---- buttons

    async def _on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        user = query.from_user
        locale = user.language_code or "en"
        text, alert, new_job = "", False, None
        try:
            parsed = parse_custom_id(query.data or "")
            if parsed is None:
                raise UserError("Unknown button.", "unknown_button")
            action, job_id = parsed
            message = query.message
            chat_id = message.chat.id if message else None
            if chat_id is not None and not self._allowed(chat_id, user.id):
                raise UserError("This bot is not enabled in this chat.", "not_allowed_here")
            text, new_job = await self.core.on_button(action, job_id, PLATFORM, str(user.id), locale)
            if action == "delete" and message is not None:
                await self._delete_quietly(chat_id, message.message_id)
            elif action == "info":
                text, alert = await self._info_answer(query, text)
        except UserError as exc:
            text, alert = error_text(exc, locale), True
        except Exception as exc:
            log.exception("button %s failed: %s", query.data, type(exc).__name__)
            text, alert = t(locale, "errors.generic"), True
        await self._answer(query, text, alert)   # first: the button shows a spinner until answered
        if new_job is not None and query.message is not None:
            await self._follow(new_job, query.message.chat.id, query.message.message_id, locale,
                               user.first_name, [])

    async def _info_answer(self, query: CallbackQuery, text: str) -> tuple[str, bool]:
        """The info fits an alert when short; otherwise the alert is shortened and the whole text posted."""
        if len(text) > ALERT_LIMIT and query.message is not None:
            await self._reply(query.message, text)
        return shorten(text, ALERT_LIMIT), True

    async def _answer(self, query: CallbackQuery, text: str, alert: bool) -> None:
        try:
            await query.answer(shorten(text, ALERT_LIMIT) if text else None, show_alert=alert and bool(text))
        except TelegramError as exc:   # too late (over ~15 s) or already answered
            log.info("callback query not answered: %s", exc.message)

    async def _delete_quietly(self, chat_id: int, message_id: int) -> None:
        try:
            await self.bot.delete_message(chat_id, message_id)
        except (BadRequest, Forbidden) as exc:
            log.info("message %s in %s not deleted: %s", message_id, chat_id, exc.message)

    # ---- commands

    async def _run_command(self, update: Update, produce) -> None:
        """Reply with what `produce(message, locale, user_id)` returns; refusals and failures get a clear text."""
        message = update.effective_message
        user = message.from_user if message else None
        if user is None:
            return
        locale = self._locale(message)
        try:
            if not self._allowed(message.chat_id, user.id):
                raise UserError("This bot is not enabled in this chat.", "not_allowed_here")
            text = await produce(message, locale, str(user.id))
        except UserError as exc:
            text = error_text(exc, locale)
        except Exception as exc:
            log.exception("command failed: %s", type(exc).__name__)
            text = t(locale, "errors.generic")
        if text:
            await self._reply(message, text)

    async def _on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            return t(locale, "help.text")
        await self._run_command(update, produce)

    async def _on_queue(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            return await self.core.queue_text(PLATFORM, user_id, locale)
        await self._run_command(update, produce)

    async def _on_cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            job = await self.core.cancel_latest(PLATFORM, user_id)
            return t(locale, "errors.cancel_none") if job is None else t(locale, "status.cancelled")
        await self._run_command(update, produce)

    async def _on_forget(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            return await self.core.forget(PLATFORM, user_id, locale)
        await self._run_command(update, produce)

    async def _on_admin(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            command = TEXT_COMMAND.match(message.text).group(0).strip().lstrip("/").split("@")[0].lower()
            return await self.core.admin(PLATFORM, user_id, locale, command, command_rest(message.text))
        await self._run_command(update, produce)

    async def _on_info(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            target = message.reply_to_message
            job_id = await self.job_for_message(message.chat_id, target.message_id) if target else None
            if job_id is None:
                raise info_usage()
            return self.core.info_text(await self.core.service.require(job_id), locale)
        await self._run_command(update, produce)

    async def job_for_message(self, chat_id: int, message_id: int) -> str | None:
        """The job whose result (or status) message this is."""
        job = await self.core.service.job_for_message(PLATFORM, chat_id, message_id)
        return job.id if job else None


__all__ = ["ChatPacer", "TelegramFrontEnd", "TelegramJobUI"]
