"""Bot API helpers shared by the Telegram modules: the bounded HTTP client, token redaction, reading PTB's
errors, sending a text or a reply, describing and downloading an attached image, and `rate_limited`, the one
place that turns Telegram's flood control (`RetryAfter`) into the core's `RetryLater`.

Nothing here knows about handlers or jobs; it only wraps python-telegram-bot calls so the other modules
read the same way whatever the Bot API answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from telegram import Bot, Message, ReplyParameters
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from bot.core import BotCore
from bot.edits import RetryLater, with_retries
from engine.errors import UserError

if TYPE_CHECKING:
    from bot.telegram.status import ChatPacer

PLATFORM = "telegram"          # how the core and the job store name this platform's users and chats
DOWNLOAD_ATTEMPTS = 3

# python-telegram-bot's loggers; some log the API URL, which holds the token, at DEBUG.
PTB_LOGGERS = ("telegram", "telegram.Bot", "telegram.ext", "telegram.ext.ExtBot", "telegram.ext.Application",
               "telegram.ext.Updater", "telegram.ext.JobQueue", "telegram.request.BaseRequest",
               "telegram.request.HTTPXRequest", "httpx")


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


NO_UPDATES = b'{"ok": true, "result": []}'


class PollRequest(HTTPXRequest):
    """PTB's HTTP client for getUpdates (one connection, as PTB's own), telling `on_answer` the HTTP status of
    every answer: the one place that sees polling work again after a 409 Conflict or an outage. While
    `may_poll()` is False (this replica lost the poller's hold to another) no getUpdates goes out: each is
    answered here with no updates, so the poll that PTB sends while stopping does not cut the new poller's
    long poll short (Telegram would answer that one 409)."""

    def __init__(self, on_answer: Callable[[int], None], may_poll: Callable[[], bool] = lambda: True,
                 **kwargs: Any):
        super().__init__(connection_pool_size=1, **kwargs)
        self._on_answer = on_answer
        self._may_poll = may_poll

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        if not self._may_poll():
            await asyncio.sleep(0.1)   # not a busy loop while polling stops
            return 200, NO_UPDATES
        status, payload = await super().do_request(*args, **kwargs)
        self._on_answer(status)
        return status, payload


# ---------------------------------------------------------------- reading errors


def retry_seconds(exc: RetryAfter) -> float:
    """RetryAfter.retry_after is an int or a timedelta depending on PTB_TIMEDELTA; read it without the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


@contextlib.contextmanager
def rate_limited(pacer: ChatPacer | None = None) -> Iterator[None]:
    """Bot API calls inside raise `RetryLater(seconds)` instead of `RetryAfter`, so the core waits exactly as
    long as Telegram asked. With a chat's `pacer`, that chat's edits are held for as long first: flood control
    is per chat, and the other jobs there must wait too."""
    try:
        yield
    except RetryAfter as exc:
        seconds = retry_seconds(exc)
        if pacer is not None:
            pacer.hold(seconds)
        raise RetryLater(seconds) from None


def is_not_modified(exc: TelegramError) -> bool:
    return "not modified" in exc.message.lower()


def is_gone(exc: TelegramError) -> bool:
    """The message to edit/delete no longer exists (deleted by a user or an admin)."""
    text = exc.message.lower()
    return "not found" in text or "can't be deleted" in text or "can't be edited" in text


# ---------------------------------------------------------------- sending


def reply_to(message_id: int | None) -> ReplyParameters | None:
    # The user may have deleted their message meanwhile: post anyway rather than fail.
    return ReplyParameters(message_id, allow_sending_without_reply=True) if message_id else None


async def send_text(bot: Bot, chat_id: int, text: str, reply_to_id: int | None = None, **kwargs: Any) -> Message:
    with rate_limited():
        return await bot.send_message(chat_id, text, reply_parameters=reply_to(reply_to_id), **kwargs)


async def reply(bot: Bot, message: Message, text: str, **kwargs: Any) -> Message | None:
    """Answer a user's message, retrying flood control and timeouts; None when the bot was blocked."""
    try:
        return await with_retries(lambda: send_text(bot, message.chat_id, text, message.message_id, **kwargs),
                                  attempts=3, retry_on=(RetryLater, TimedOut))
    except Forbidden:
        return None


# ---------------------------------------------------------------- attached images


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


async def download(bot: Bot, core: BotCore, attachment: Attachment, limit: int) -> bytes:
    """The attachment's bytes, at most `limit` of them; a `UserError` when it cannot be had."""

    async def fetch() -> bytes:
        try:
            with rate_limited():
                file = await bot.get_file(attachment.file_id)
                if file.file_size and file.file_size > limit:
                    core.check_attachment(attachment.content_type, file.file_size, attachment.filename, limit)
                return bytes(await file.download_as_bytearray())
        except BadRequest as exc:   # not retried: the file is too big or gone
            if "too big" in exc.message.lower():
                core.check_attachment(None, limit + 1, None, limit)
            raise UserError("I could not download your image; please send it again.", "download_failed") from None

    try:
        return await with_retries(fetch, attempts=DOWNLOAD_ATTEMPTS, retry_on=(NetworkError, RetryLater))
    except (NetworkError, RetryLater):
        raise UserError("I could not download your image; please send it again.", "download_failed") from None
