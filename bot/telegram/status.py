"""One job's status message in a Telegram chat (`StatusMessage`, the core's `JobUI`) and the per-chat edit
pacing (`ChatPacer`) its edits share with every other job in that chat.

The core decides what the status says and when; this module only edits, replaces and deletes the message.
Where the messages are is written to the job store (`ref`), so a restarted bot finds them again.

A status starts as a photo (a small copy of the user's image) whose caption is the status text; each preview of
the forming clip replaces its media with an animation (`editMessageMedia`), and the result is a new video that
replies to the user's message, after which the status is deleted. A status posted again after a restart
without one is plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telegram import InlineKeyboardMarkup, InputMediaAnimation
from telegram.error import BadRequest, Forbidden, TelegramError, TimedOut

from bot.buttons import Button
from bot.edits import RetryLater
from bot.telegram.api import PLATFORM, is_gone, is_not_modified, rate_limited, reply_to, send_text
from bot.telegram.components import keyboard
from bot.texts import shorten, t
from engine.errors import UserError
from engine.jobs import Job
from engine.queue.resilient import background

if TYPE_CHECKING:
    from bot.telegram.app import TelegramFrontEnd

log = logging.getLogger("bot.telegram")

CAPTION_LIMIT = 1024        # characters of a media message's caption
PREVIEW_NAME = "preview.gif"


class ChatPacer:
    """Edits in one chat at least `interval` apart, across all jobs there and across bot replicas: Telegram
    limits edits per chat, and several jobs in one group must share that budget. The next edit starts only
    after the previous answer arrived plus the interval, so even the server's arrival times keep the spacing.

    The spacing lives in the job store (`next_turn` / `push_turn` under `key`), so replicas that follow jobs
    in the same chat share it (between two replicas' edits, turns start at least `interval` apart) and a
    flood-control wait holds them all; a lock keeps the edits of this process in line, so only one of them at
    a time asks the store for a turn."""

    def __init__(self, store: Any, key: str, interval: float):
        self.store = store
        self.key = key
        self.interval = interval
        self._lock = asyncio.Lock()
        self._held_until = 0.0          # flood control seen here (monotonic), before the store has it
        self._pushes: set[asyncio.Task] = set()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self._lock:
            wait = max(await self.store.next_turn(self.key, self.interval), self._held_until - time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                await self.store.push_turn(self.key, self.interval)

    def hold(self, seconds: float) -> None:
        """Flood control: no edit in this chat for `seconds` (here at once, in the store as soon as it
        answers)."""
        self._held_until = max(self._held_until, time.monotonic() + seconds)
        task = asyncio.create_task(self.store.push_turn(self.key, seconds), name=f"hold-{self.key}",
                                   context=background())
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)


class StatusMessage:
    """One job's status message in a chat (the `JobUI` of bot.core)."""

    def __init__(self, front: TelegramFrontEnd, job_id: str, chat_id: int, reply_to_id: int | None,
                 locale: str, mention: str, status_id: int | None = None, result_id: int | None = None,
                 media: bool = False):
        tg = front.config.telegram
        self.front = front
        self.job_id = job_id
        self.chat_id = chat_id
        self.reply_to_id = reply_to_id
        self.locale = locale
        self.mention = mention
        self.status_id = status_id
        self.result_id = result_id
        self.media = media          # the status is a photo or animation: its text is a caption
        self.upload_limit_bytes = tg.upload_limit_bytes
        self.min_edit_interval_s = tg.edit_interval_group_s if chat_id < 0 else tg.edit_interval_private_s
        self._pacer = front.pacer(chat_id, self.min_edit_interval_s)
        self._shown: tuple[str, Any] | None = None
        self._status_gone = False
        self._upload_timeouts = 0

    # ---- status_ref: what a restart needs to find this job's messages again

    def ref(self) -> str:
        data = {"chat": self.chat_id, "status": self.status_id, "reply_to": self.reply_to_id,
                "name": self.mention, "locale": self.locale, "media": self.media}
        if self.result_id:
            data["result"] = self.result_id
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_job(cls, front: TelegramFrontEnd, job: Job) -> StatusMessage | None:
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
                   ref.get("name") or job.user_name, ref.get("status"), ref.get("result"), bool(ref.get("media")))

    def posted(self, status_id: int, text: str, markup: InlineKeyboardMarkup | None, media: bool = False) -> None:
        """The status message was sent by the front end showing `text`: the first equal edit is skipped."""
        self.status_id, self._shown, self.media = status_id, (text, markup), media

    async def post_photo(self, photo: bytes, text: str, markup: InlineKeyboardMarkup | None,
                         spoiler: bool = False) -> None:
        """The first status: the user's photo (small), captioned with the status text."""
        with rate_limited():
            sent = await self.front.bot.send_photo(self.chat_id, photo, caption=shorten(text, CAPTION_LIMIT),
                                                   reply_markup=markup, reply_parameters=reply_to(self.reply_to_id),
                                                   has_spoiler=spoiler)
        self.posted(sent.message_id, text, markup, media=True)

    async def save_ref(self) -> None:
        service = self.front.core.service
        await service.set_status_ref(self.job_id, self.ref())
        for message_id in (self.status_id, self.result_id):
            if message_id:   # /info as a reply to either finds the job again, after a restart too
                await service.link_message(self.job_id, PLATFORM, self.chat_id, message_id)

    # ---- JobUI

    async def edit_status(self, text: str, buttons: list[Button], preview: bytes | None = None,
                          spoiler: bool = False) -> None:
        markup = keyboard(buttons, per_row=1)
        if self._status_gone:
            return
        if self.status_id is None:   # followed again after a restart without a status message
            await self._post_status(text, markup)
            return
        if self._shown == (text, markup) and (preview is None or not self.media):
            return
        async with self._pacer.turn():
            try:
                with rate_limited(self._pacer):
                    await self._edit(text, markup, preview, spoiler)
            except BadRequest as exc:
                if is_gone(exc):
                    self._status_gone = True
                elif not is_not_modified(exc):
                    raise
            except Forbidden:
                self._status_gone = True   # the bot was blocked or removed from the chat
        self._shown = (text, markup)

    async def hide_preview(self, text: str, buttons: list[Button]) -> None:
        """A media message cannot become text: the status is deleted and posted again as text."""
        if not self.media or self.status_id is None or self._status_gone:
            await (self.edit_status(text, buttons) if buttons else self.finish(text))
            return
        await self._delete_status()
        self.status_id, self.media, self._status_gone = None, False, False
        await self._post_status(text, keyboard(buttons, per_row=1))

    async def finish(self, text: str) -> None:
        if self.status_id is not None and not self._status_gone:
            async with self._pacer.turn():
                try:
                    with rate_limited(self._pacer):
                        await self._edit(text, None, None)
                    return
                except BadRequest as exc:
                    if is_not_modified(exc):
                        return
                    if not is_gone(exc):
                        raise
                except Forbidden:
                    return
        await send_text(self.front.bot, self.chat_id, text, self.reply_to_id)

    async def deliver(self, job: Job, video: Path, caption: str, buttons: list[Button],
                      spoiler: bool = False) -> None:
        """Post the video as a reply, then delete the status message. Retried by the core: each step is
        skipped once done, so a retry after a failed delete does not post the video twice."""
        if self.result_id is None:
            if not await self._send_video(job, video, buttons, spoiler):
                return
            await self.save_ref()
        await self._delete_status()

    # ---- helpers

    async def _edit(self, text: str, markup: InlineKeyboardMarkup | None, preview: bytes | None,
                    spoiler: bool = False) -> None:
        bot, chat, message = self.front.bot, self.chat_id, self.status_id
        if not self.media:
            await bot.edit_message_text(text, chat, message, reply_markup=markup)
        elif preview is not None:   # a photo becomes an animation; later previews replace it again
            media = InputMediaAnimation(preview, caption=shorten(text, CAPTION_LIMIT), filename=PREVIEW_NAME,
                                        has_spoiler=spoiler)
            await bot.edit_message_media(media, chat, message, reply_markup=markup)
        else:
            await bot.edit_message_caption(chat, message, caption=shorten(text, CAPTION_LIMIT), reply_markup=markup)

    async def _post_status(self, text: str, markup: InlineKeyboardMarkup | None) -> None:
        try:
            with rate_limited():
                sent = await self.front.bot.send_message(self.chat_id, text, reply_markup=markup,
                                                         reply_parameters=reply_to(self.reply_to_id))
        except Forbidden:
            self._status_gone = True
            return
        self.posted(sent.message_id, text, markup)
        await self.save_ref()

    async def _send_video(self, job: Job, video: Path, buttons: list[Button], spoiler: bool = False) -> bool:
        """Upload the result; False when nobody can receive it (the bot was blocked)."""
        front = self.front
        caption = front.core.caption(job, self.locale, mention=self.mention)
        data = await asyncio.to_thread(video.read_bytes)
        width, height, seconds = await front.video_shape(job, video)
        animation = front.config.telegram.send_as == "animation"
        send = front.bot.send_animation if animation else front.bot.send_video
        extra = {} if animation else {"supports_streaming": True}
        # An upload that times out may still arrive: after a second ambiguous timeout stop re-sending,
        # so a user sees at most one duplicate.
        timeout = front.upload_timeout_s * (1 + self._upload_timeouts)
        try:
            with rate_limited():
                sent = await send(self.chat_id, data, filename=f"{job.id}.mp4", caption=caption, width=width,
                                  height=height, duration=seconds, reply_markup=keyboard(buttons),
                                  reply_parameters=reply_to(self.reply_to_id), write_timeout=timeout,
                                  read_timeout=timeout, has_spoiler=spoiler, **extra)
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
            with rate_limited():
                await self.front.bot.delete_message(self.chat_id, self.status_id)
        except (BadRequest, Forbidden) as exc:
            log.info("status message %s in %s not deleted: %s", self.status_id, self.chat_id, exc.message)
        self._status_gone = True
