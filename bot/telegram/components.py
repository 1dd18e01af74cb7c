"""Inline keyboards and the buttons' callback queries.

A button's callback data (`anim:<action>:<job id>`, see `bot.buttons.Button`) is all it needs, so buttons keep
working after a restart. The core decides what an action does; this module turns it into a callback answer
(an alert for refusals and for the info text) and follows any job a button started (HQ, reroll).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from telegram import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update, User
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import ContextTypes

from bot.buttons import Button, buttons, parse_custom_id, parse_page_id
from bot.telegram.api import PLATFORM, rate_limited, reply
from bot.texts import error_text, shorten, t
from engine.errors import UserError

if TYPE_CHECKING:
    from bot.telegram.app import TelegramFrontEnd

log = logging.getLogger("bot.telegram")

ALERT_LIMIT = 200               # answerCallbackQuery text limit


def keyboard(buttons: list[Button], per_row: int = 4) -> InlineKeyboardMarkup | None:
    """Each `Button.row` on rows of its own, at most `per_row` keys a row."""
    if not buttons:
        return None
    rows: list[list[InlineKeyboardButton]] = []
    for row in sorted({b.row for b in buttons}):
        keys = [InlineKeyboardButton(b.label, callback_data=b.custom_id) for b in buttons if b.row == row]
        rows += [keys[i:i + per_row] for i in range(0, len(keys), per_row)]
    return InlineKeyboardMarkup(rows)


class Buttons:
    """The callback-query handler of the front end's inline keyboards."""

    def __init__(self, front: TelegramFrontEnd):
        self.front = front

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        front = self.front
        query = update.callback_query
        if query is None:   # the CallbackQueryHandler passes only callback queries
            return
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
            if chat_id is not None and not front.commands.allowed(chat_id, user.id):
                raise UserError("This bot is not enabled in this chat.", "not_allowed_here")
            if action == "more":   # the result's second row, in place
                markup = keyboard(await front.core.more_buttons(job_id, locale))
                if isinstance(message, Message):
                    await message.edit_reply_markup(reply_markup=markup)
                await self._answer(query, "", False)
                return
            if action in ("post", "drop", "page") and isinstance(message, Message):
                return await self._answer(query, await self._mine_action(message, user, action, job_id, locale),
                                          False)
            if action == "report" and isinstance(message, Message):
                await self._report(message, user, job_id)
                text, alert = t(locale, "report.thanks"), True
                return await self._answer(query, text, alert)
            if action == "remove" and isinstance(message, Message):
                return await self._answer(query, await self._remove(message, user, job_id, locale), True)
            text, new_job = await front.core.on_button(action, job_id, PLATFORM, str(user.id), locale,
                                                       front.config.safety.telegram)
            if action == "delete" and message is not None:
                await self._delete_quietly(message.chat.id, message.message_id)
            elif action == "info":
                text, alert = await self._info_answer(query, text)
        except UserError as exc:
            text, alert = error_text(exc, locale), True
        except Exception as exc:
            log.exception("button %s failed: %s", query.data, type(exc).__name__)
            text, alert = t(locale, "errors.generic"), True
        await self._answer(query, text, alert)   # first: the button shows a spinner until answered
        if new_job is not None and query.message is not None:
            await front.commands.follow(new_job, query.message.chat.id, query.message.message_id, locale,
                                        user.first_name, [])

    async def _mine_action(self, message: Message, user: User, action: str, value: str, locale: str) -> str:
        """A /mine button: turn the page, delete a clip (the list is shown again), or post one in this chat."""
        core = self.front.core
        if action == "post":
            config = self.front.config
            job, video, spoiler = await core.repost(value, PLATFORM, str(user.id), config.safety.telegram,
                                                    config.telegram.upload_limit_bytes)
            data = await asyncio.to_thread(video.read_bytes)
            with rate_limited():
                sent = await self.front.bot.send_video(
                    message.chat_id, data, filename=f"{job.id}.mp4", caption=core.caption(job, locale, user.first_name),
                    reply_markup=keyboard(core.result_buttons(job, locale)), has_spoiler=spoiler,
                    supports_streaming=True)
            await core.service.link_message(job.id, PLATFORM, message.chat_id, sent.message_id)
            return t(locale, "mine.posted")
        if action == "page":
            owner, page = parse_page_id(value)
            if owner != str(user.id):
                raise UserError("Only the person who asked for this list can turn its pages.", "not_owner")
        else:
            page = 0
            await core.service.delete(value, by_user=f"{PLATFORM}:{user.id}")
        mine = await core.mine(PLATFORM, str(user.id), locale, page, around=value if action == "drop" else "")
        with contextlib.suppress(BadRequest):   # "message is not modified"
            await message.edit_text(mine.text, reply_markup=keyboard(mine.buttons, per_row=5))
        return ""

    async def _report(self, message: Message, user: User, job_id: str) -> None:
        """Tell the group's moderation chat about a reported clip (or the bot's admins privately), with a
        button that removes it."""
        core = self.front.core
        job, settings = await core.report(job_id, PLATFORM)
        chat = str(message.chat_id)
        # Only a supergroup's messages have links (t.me/c/<id without -100>/<message>).
        link = f"https://t.me/c/{chat[4:]}/{message.message_id}" if chat.startswith("-100") else ""
        text = core.moderation_text(job, settings, user.first_name + (f" (@{user.username})" if user.username
                                                                     else f" ({user.id})"), link)
        markup = keyboard(buttons(settings.language or "en", job.id, "remove"))
        targets = [settings.moderation_channel] if settings.moderation_channel else self.front.config.telegram.admins
        for target in targets:
            try:
                with rate_limited():
                    await self.front.bot.send_message(int(target), text, reply_markup=markup)
            except (BadRequest, Forbidden) as exc:   # the admin never started the bot: the others still hear
                log.warning("report of job %s not sent to %s: %s", job.id, target, exc.message)

    async def _remove(self, message: Message, user: User, job_id: str, locale: str) -> str:
        """A moderator's Remove: the clip's message and files go, and the report says who removed it."""
        front = self.front
        allowed = front.core.is_admin(PLATFORM, user.id) or (
            message.chat.type in ("group", "supergroup") and await front.commands.is_moderator(message.chat_id,
                                                                                               user.id))
        if not allowed:
            return t(locale, "report.not_moderator")
        job = await front.core.remove(job_id, PLATFORM, str(user.id))
        ref = json.loads(job.status_ref) if job.status_ref else {}
        if ref.get("chat") and ref.get("result"):
            await self._delete_quietly(int(ref["chat"]), int(ref["result"]))
        removed = t(locale, "report.removed", moderator=user.first_name)
        with contextlib.suppress(TelegramError):
            await message.edit_text(f"{message.text or ''}\n{removed}", reply_markup=None)
        return removed

    async def _info_answer(self, query: CallbackQuery, text: str) -> tuple[str, bool]:
        """The info fits an alert when short; otherwise the alert is shortened and the whole text posted."""
        # An inaccessible message (too old, or deleted) cannot be answered: the shortened alert must do.
        if len(text) > ALERT_LIMIT and isinstance(query.message, Message):
            await reply(self.front.bot, query.message, text)
        return shorten(text, ALERT_LIMIT), True

    async def _answer(self, query: CallbackQuery, text: str, alert: bool) -> None:
        try:
            await query.answer(shorten(text, ALERT_LIMIT) if text else None, show_alert=alert and bool(text))
        except TelegramError as exc:   # too late (over ~15 s) or already answered
            log.info("callback query not answered: %s", exc.message)

    async def _delete_quietly(self, chat_id: int, message_id: int) -> None:
        try:
            await self.front.bot.delete_message(chat_id, message_id)
        except (BadRequest, Forbidden) as exc:
            log.info("message %s in %s not deleted: %s", message_id, chat_id, exc.message)
