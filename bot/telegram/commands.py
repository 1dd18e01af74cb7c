"""The Telegram commands and messages that users send, and how a job is started from them.

A job starts from a photo captioned `/animate` or `/hq`, from either command as a reply to an image, or from
the next image a user sends after a bare `/animate <prompt>` (a pending ask), and from `/extend` as a reply
to a result. `/settings` and `/mine` answer with a message of their own; the other commands (`/help`, `/queue`,
`/cancel`, `/forget`, `/privacy`, `/info` and the admin ones) with one text each. The command menu texts
(`command_texts`, from templates/messages) live here too, next to the commands they describe.

The only state is short-lived and kept as expiring notes in the job store, so that any bot replica can carry
on where another left off: the pending asks (`telegram:ask:<chat>:<user>`, taken once) and the albums already
handled (`telegram:album:<media group>`, claimed once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from telegram import BotCommand, ForceReply, Message, Update, User
from telegram.error import TimedOut
from telegram.ext import ContextTypes, filters

from bot.buttons import Button
from bot.core import JobRequest
from bot.edits import RetryLater, with_retries
from bot.telegram.api import PLATFORM, attachment_of, download, reply
from bot.telegram.components import keyboard
from bot.telegram.status import StatusMessage
from bot.texts import StatusState, error_text, t
from engine.errors import UserError
from engine.jobs import Job
from engine.media.preview import status_photo
from engine.queue.store import Store
from engine.safety import placement

if TYPE_CHECKING:
    from bot.telegram.app import TelegramFrontEnd

log = logging.getLogger("bot.telegram")

PENDING_ASK_S = 300.0           # how long "/animate prompt" waits for the image
ALBUM_SEEN_S = 600.0            # how long the photos of an album already handled are recognised

CAPTION_COMMAND = re.compile(r"^\s*/(animate|hq)(?:@([A-Za-z0-9_]+))?(?=\s|$)", re.IGNORECASE)
TEXT_COMMAND = re.compile(r"^\s*/[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)?")
MEDIA = filters.PHOTO | filters.Document.ALL | filters.VIDEO | filters.ANIMATION
ADMIN_COMMANDS = ("stats", "pause", "resume", "ban", "unban")

MENU_COMMANDS = ("animate", "hq", "extend", "mine", "queue", "cancel", "info", "forget", "privacy",
                 "help")   # texts: [telegram] in templates


def command_texts(locale: str) -> list[BotCommand]:
    """The command menu in one language (setMyCommands)."""
    return [BotCommand(name, t(locale, f"telegram.{name}")) for name in MENU_COMMANDS]


def command_rest(text: str | None) -> str:
    """'/animate@bot a cat' -> 'a cat'."""
    return TEXT_COMMAND.sub("", text or "", count=1).strip()


def command_name(text: str | None) -> str:
    """'/HQ@bot a cat' -> 'hq', for the text of a message that a CommandHandler matched."""
    match = TEXT_COMMAND.match(text or "")
    # A CommandHandler only passes messages whose text starts with one of its commands.
    assert match is not None, "not a command"
    return match.group(0).strip().lstrip("/").split("@")[0].lower()


def ask_key(chat_id: int, user_id: int) -> str:
    """The store note of a pending '/animate prompt' that waits for the user's next image in that chat."""
    return f"telegram:ask:{chat_id}:{user_id}"


def info_usage() -> UserError:
    return UserError("Reply to one of my videos with /info to see how it was made.", "info_usage")


def sender_of(update: Update) -> tuple[Message, User] | None:
    """The message of an update and its sender; None when there is no one to answer (an update without a
    message, or a message from a channel)."""
    message = update.effective_message
    if message is None or message.from_user is None:
        return None
    return message, message.from_user


def locale_of(message: Message | None) -> str:
    user = message.from_user if message else None
    return (user.language_code if user else None) or "en"


@dataclass
class Ask:
    """A request pulled out of a message, before the image is fetched."""
    prompt: str
    preset: str


class Commands:
    """The message and command handlers of one front end, and the job start they lead to."""

    def __init__(self, front: TelegramFrontEnd):
        self.front = front

    @property
    def _store(self) -> Store:
        return self.front.core.service.store

    def allowed(self, chat_id: int, user_id: int) -> bool:
        chats = self.front.config.telegram.chats
        return not chats or chat_id in {int(c) for c in chats} or self.front.core.is_admin(PLATFORM, user_id)

    def _for_us(self, mentioned: str | None) -> bool:
        return not mentioned or mentioned.lower() == (self.front.bot.username or "").lower()

    async def _refuse(self, message: Message, exc: UserError) -> None:
        await reply(self.front.bot, message, error_text(exc, locale_of(message)))

    # ---- starting jobs

    async def on_captioned(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if (sent := sender_of(update)) is None:
            return
        message, user = sent
        caption = message.caption or ""
        match = CAPTION_COMMAND.match(caption)
        if match is None or not self._for_us(match.group(2)):
            return
        try:
            await self._take_ask(message.chat_id, user.id)   # the caption replaces an earlier ask
            if message.media_group_id:
                await self._claim_album(message.media_group_id)
        except UserError as exc:
            await self._refuse(message, exc)
            return
        ask = Ask(caption[match.end():].strip(), "hq" if match.group(1).lower() == "hq" else "quick")
        await self._start_job(message, user, message, ask)

    async def on_animate(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if (sent := sender_of(update)) is None:
            return
        message, user = sent
        command = command_name(message.text)
        ask = Ask(command_rest(message.text), "hq" if command == "hq" else "quick")
        source = message.reply_to_message
        if source is not None and attachment_of(source) is not None:
            await self._start_job(message, user, source, ask)
            return
        if not self.allowed(message.chat_id, user.id):
            await self._refuse(message, UserError("This bot is not enabled in this chat.", "not_allowed_here"))
            return
        try:   # refuse bad flags now rather than after the user found an image
            self._parse(ask)
        except UserError as exc:
            await self._refuse(message, exc)
            return
        try:
            await self._store.put_note(ask_key(message.chat_id, user.id),
                                       json.dumps({"prompt": ask.prompt, "preset": ask.preset}), PENDING_ASK_S)
        except UserError as exc:   # the store is unavailable
            await self._refuse(message, exc)
            return
        # ForceReply: in groups with privacy mode on, only replies to the bot reach it.
        await reply(self.front.bot, message, t(locale_of(message), "errors.ask_image"),
                    reply_markup=ForceReply(selective=True))

    async def on_image(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An image without a command: the answer to an earlier '/animate prompt', else ignored."""
        if (sent := sender_of(update)) is None:
            return
        message, user = sent
        try:
            # One photo of an album answers the ask: the first to claim the album (on any replica) goes on.
            if message.media_group_id and not await self._claim_album(message.media_group_id, only_new=True):
                return
            pending = await self._take_ask(message.chat_id, user.id)
        except UserError as exc:   # the store is unavailable
            await self._refuse(message, exc)
            return
        if pending is None:
            return
        await self._start_job(message, user, message, pending)

    async def _take_ask(self, chat_id: int, user_id: int) -> Ask | None:
        """The user's pending '/animate prompt' in this chat, taken (at most one image answers it)."""
        note = await self._store.take_note(ask_key(chat_id, user_id))
        if note is None:
            return None
        try:
            data = json.loads(note)
            return Ask(str(data["prompt"]), str(data["preset"]))
        except (ValueError, KeyError, TypeError):
            return None

    async def _claim_album(self, group_id: str, only_new: bool = False) -> bool:
        """Mark the album as handled; with only_new, False when it already was."""
        return await self._store.put_note(f"telegram:album:{group_id}", "1", ALBUM_SEEN_S, only_new=only_new)

    def _parse(self, ask: Ask) -> tuple[str, dict]:
        """Caption flags -> (prompt text, options)."""
        from engine.prompts import parse_flags

        return parse_flags(ask.prompt)

    async def _start_job(self, message: Message, user: User, source: Message, ask: Ask) -> None:
        """`message` carries the command (replies go to it), `user` sent it, `source` carries the image."""
        front = self.front
        config, core = front.config, front.core
        group = message.chat.type in ("group", "supergroup")
        locale = locale_of(message)
        try:
            settings = await core.service.server_settings(PLATFORM, str(message.chat_id) if group else None)
            locale = settings.language or locale
            if not self.allowed(message.chat_id, user.id):
                raise UserError("This bot is not enabled in this chat.", "not_allowed_here")
            text, options = self._parse(ask)
            attachment = attachment_of(source)
            if attachment is None:
                raise UserError("Please attach an image.", "no_image")
            core.check_attachment(attachment.content_type, attachment.size, attachment.filename,
                                  config.telegram.download_limit_bytes)
            limit = min(config.limits.max_image_bytes, config.telegram.download_limit_bytes)
            image = await download(front.bot, core, attachment, limit)
            request = JobRequest(
                platform=PLATFORM, user_id=str(user.id), user_name=user.first_name, chat_id=str(message.chat_id),
                locale=locale, image=image, prompt=text, preset=options.get("preset") or ask.preset,
                seed=options.get("seed"), negative_prompt=options.get("negative") or "",
                camera=options.get("camera"), speed=options.get("speed"),
                scope=str(message.chat_id), safety_rule=settings.telegram_safety or config.safety.telegram,
                smooth=options.get("smooth"), loop=bool(options.get("loop")), settings=settings,
                subject=options.get("subject"), environment=options.get("environment"),
            )
            submitted = await core.submit(request)
        except UserError as exc:
            await self._refuse(message, exc)
            return
        except Exception as exc:
            log.exception("starting a job failed: %s", type(exc).__name__)
            await reply(front.bot, message, t(locale, "errors.generic"))
            return
        if source is message and message.media_group_id:   # only the album's first photo is animated
            await reply(front.bot, message, t(locale, "errors.album"))
        await self.follow(submitted.job, message.chat_id, message.message_id, locale, user.first_name,
                          submitted.hints)

    async def follow(self, job: Job, chat_id: int, reply_to_id: int | None, locale: str, mention: str,
                     hints: list[str]) -> None:
        """Post the job's status message, remember where it is, and let the core follow the job."""
        front = self.front
        ui = StatusMessage(front, job.id, chat_id, reply_to_id, locale, mention)
        markup = keyboard([Button("cancel", job.id, t(locale, "buttons.cancel"))], per_row=1)
        try:
            text = await self._first_status(job, locale, hints)
            photo = await asyncio.to_thread(status_photo, job.image_path)
            spoiler = placement(job.verdict == "flagged", job.safety_rule) == "spoiler"
            await with_retries(lambda: ui.post_photo(photo, text, markup, spoiler), attempts=3,
                               retry_on=(RetryLater, TimedOut))
            await ui.save_ref()
        except Exception as exc:   # the job is queued either way: the follower posts what it can
            log.warning("job %s: status message in %s not set up: %s: %s", job.id, chat_id,
                        type(exc).__name__, front.redact(str(exc)))
        finally:
            front.track(front.core.follow(job, ui, hints))

    async def _first_status(self, job: Job, locale: str, hints: list[str]) -> str:
        """The text the follower's first event will show, so the status needs no immediate edit."""
        service = self.front.core.service
        queued, etas = await service.queue_snapshot()
        position = next((i for i, j in enumerate(queued, 1) if j.id == job.id), 0)
        state = StatusState(hints=hints)
        if position:
            state.position, state.eta_s, state.paused = position, etas.get(job.id), await service.paused()
        else:
            state.phase = "starting"
        return state.render(locale)

    # ---- commands that answer with a text

    async def _run_command(self, update: Update, produce) -> None:
        """Reply with what `produce(message, locale, user_id)` returns; refusals and failures get a clear text."""
        if (sent := sender_of(update)) is None:
            return
        message, user = sent
        locale = locale_of(message)
        try:
            if not self.allowed(message.chat_id, user.id):
                raise UserError("This bot is not enabled in this chat.", "not_allowed_here")
            text = await produce(message, locale, str(user.id))
        except UserError as exc:
            text = error_text(exc, locale)
        except Exception as exc:
            log.exception("command failed: %s", type(exc).__name__)
            text = t(locale, "errors.generic")
        if text:
            await reply(self.front.bot, message, text)

    async def on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            return t(locale, "help.text")
        await self._run_command(update, produce)

    async def on_queue(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            return await self.front.core.queue_text(PLATFORM, user_id, locale, str(message.chat_id))
        await self._run_command(update, produce)

    async def on_cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            job = await self.front.core.cancel_latest(PLATFORM, user_id)
            return t(locale, "errors.cancel_none") if job is None else t(locale, "status.cancelled")
        await self._run_command(update, produce)

    async def on_forget(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            return await self.front.core.forget(PLATFORM, user_id, locale)
        await self._run_command(update, produce)

    async def on_privacy(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            return self.front.core.privacy_text(locale)
        await self._run_command(update, produce)

    async def on_admin(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            return await self.front.core.admin(PLATFORM, user_id, locale, command_name(message.text),
                                               command_rest(message.text))
        await self._run_command(update, produce)

    async def on_mine(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/mine: the user's clips, five a page, with buttons to post one here again, delete it, turn the page."""
        if (sent := sender_of(update)) is None:
            return
        message, user = sent
        mine = await self.front.core.mine(PLATFORM, str(user.id), locale_of(message))
        await reply(self.front.bot, message, mine.text, reply_markup=keyboard(mine.buttons, per_row=5))

    async def on_settings(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/settings shows a group's settings; /settings KEY VALUE changes one (the group's administrators)."""
        async def produce(message, locale, user_id):
            if message.chat.type not in ("group", "supergroup"):
                raise UserError("Use /settings in a group.", "settings_usage")
            words = command_rest(message.text).split(maxsplit=1)
            if len(words) == 1:
                raise UserError("Use /settings KEY VALUE.", "settings_usage")
            changes = [(words[0], words[1])] if words else []
            moderator = bool(changes) and await self.is_moderator(message.chat_id, int(user_id))
            return await self.front.core.change_settings(PLATFORM, str(message.chat_id), changes, locale,
                                                         moderator)
        await self._run_command(update, produce)

    async def is_moderator(self, chat_id: int, user_id: int) -> bool:
        """An administrator of the group, or one of the bot's admins."""
        if self.front.core.is_admin(PLATFORM, user_id):
            return True
        member = await self.front.bot.get_chat_member(chat_id, user_id)
        return member.status in ("administrator", "creator")

    async def on_extend(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/extend as a reply to a result: its next extension, followed in a status message of its own."""
        if (sent := sender_of(update)) is None:
            return
        message, user = sent
        locale = locale_of(message)
        core = self.front.core
        try:
            if not self.allowed(message.chat_id, user.id):
                raise UserError("This bot is not enabled in this chat.", "not_allowed_here")
            target = message.reply_to_message
            job_id = await self.job_for_message(message.chat_id, target.message_id) if target else None
            if job_id is None:
                raise UserError("Reply to one of my videos with /extend to make it longer.", "extend_usage")
            _, job = await core.on_button("extend", job_id, PLATFORM, str(user.id), locale,
                                          self.front.config.safety.telegram)
        except UserError as exc:
            await self._refuse(message, exc)
            return
        assert job is not None
        await self.follow(job, message.chat_id, message.message_id, locale, user.first_name, [])

    async def on_info(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        async def produce(message, locale, user_id):
            target = message.reply_to_message
            job_id = await self.job_for_message(message.chat_id, target.message_id) if target else None
            if job_id is None:
                raise info_usage()
            return self.front.core.info_text(await self.front.core.service.require(job_id), locale)
        await self._run_command(update, produce)

    async def job_for_message(self, chat_id: int, message_id: int) -> str | None:
        """The job whose result (or status) message this is."""
        job = await self.front.core.service.job_for_message(PLATFORM, chat_id, message_id)
        return job.id if job else None
