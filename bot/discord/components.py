"""Message components: the job buttons, the prompt modal of the "Animate this image" context menu, and what a
button press does.

Buttons carry `anim:<action>:<job id>` and are matched by a DynamicItem pattern, so no view lives in memory
and buttons of old results keep working after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord.utils import MISSING

from bot.buttons import BUTTON_ACTIONS, Button, buttons, parse_page_id
from bot.discord.api import (
    NO_MENTIONS,
    PLATFORM,
    answer_deferred,
    rate_limited,
    reply,
    safety_rule,
    upload_limit,
)
from bot.texts import error_text, shorten, t
from engine.errors import UserError
from engine.jobs import Job

if TYPE_CHECKING:
    from bot.discord.app import DiscordFrontEnd

log = logging.getLogger("bot.discord")


BUTTON_STYLES = {
    "cancel": discord.ButtonStyle.danger,
    "hq": discord.ButtonStyle.primary,
    "reroll": discord.ButtonStyle.secondary,
    "delete": discord.ButtonStyle.secondary,
    "info": discord.ButtonStyle.secondary,
    "extend": discord.ButtonStyle.primary,
    "report": discord.ButtonStyle.danger,
    "remove": discord.ButtonStyle.danger,
}
# Actions whose work (a re-encode, reading a clip) may outlast Discord's 3 s to answer: deferred first.
SLOW_ACTIONS = ("extend", "smooth", "loop")


# ---------------------------------------------------------------- buttons


class JobButton(discord.ui.DynamicItem[discord.ui.Button],
                template=rf"anim:(?P<action>{'|'.join(BUTTON_ACTIONS)}):(?P<job_id>[\w-]{{1,64}})"):
    """A job's button, rebuilt from its custom id alone."""

    def __init__(self, action: str, job_id: str, label: str = "", row: int | None = None):
        button = Button(action, job_id, label)
        super().__init__(discord.ui.Button(label=label or action, custom_id=button.custom_id, row=row,
                                           style=BUTTON_STYLES.get(action, discord.ButtonStyle.secondary)))
        self.action, self.job_id = action, job_id

    # discord.py passes the base item, a Button for a DynamicItem[Button], but types it as any Item.
    @classmethod
    async def from_custom_id(  # type: ignore[override]
            cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str],
    ) -> JobButton:
        return cls(match["action"], match["job_id"], item.label or "")

    async def callback(self, interaction: discord.Interaction) -> None:
        front = getattr(interaction.client, "front_end", None)
        if front is not None:
            await on_button(front, interaction, self.action, self.job_id)


def job_view(buttons: list[Button]) -> discord.ui.View | None:
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for b in buttons:
        view.add_item(JobButton(b.action, b.job_id, b.label, b.row))
    return view


async def on_button(front: DiscordFrontEnd, interaction: discord.Interaction, action: str, job_id: str) -> None:
    """A press on a job's button: the core decides; the answer edits the message, starts a job or replies."""
    locale = str(interaction.locale)
    if not await front.commands.allowed_here(interaction):
        return
    if action in SLOW_ACTIONS:
        await _slow_action(front, interaction, action, job_id)
        return
    try:
        if action == "more":   # the result's second row, in place
            view = job_view(await front.core.more_buttons(job_id, locale))
            await interaction.response.edit_message(view=view)
            return
        if action in ("post", "drop", "page"):
            await _mine_action(front, interaction, action, job_id)
            return
        if action == "report":
            await _report(front, interaction, job_id)
            await reply(interaction, t(locale, "report.thanks"))
            return
        if action == "remove":
            await _remove(front, interaction, job_id)
            return
        text, new_job = await front.core.on_button(action, job_id, PLATFORM, str(interaction.user.id), locale,
                                                   safety_rule(interaction, front.config.safety.allow_in_dms))
    except UserError as exc:
        await reply(interaction, error_text(exc, locale))
        return
    if action == "delete":
        await interaction.response.edit_message(content=text, attachments=[], view=None,
                                                allowed_mentions=NO_MENTIONS)
    elif new_job is not None:
        await _follow_new_job(front, interaction, new_job)
    elif text:
        await reply(interaction, text)
    else:
        await interaction.response.defer()


async def show_mine(front: DiscordFrontEnd, interaction: discord.Interaction, page: int, edit: bool = False,
                    around: str = "") -> None:
    """The user's clips as an ephemeral message: one embed each with its first frame as the thumbnail, and
    buttons to post one here again or delete it, and to turn the page."""
    from engine.media.preview import clip_thumbnail

    mine = await front.core.mine(PLATFORM, str(interaction.user.id), str(interaction.locale), page, around)
    embeds, files = [], []
    for n, job in enumerate(mine.clips):
        embed = discord.Embed(description=mine.text.splitlines()[n + 1])
        if not job.expired and job.result_path and Path(job.result_path).exists():
            thumb = await asyncio.to_thread(clip_thumbnail, job.result_path)
            files.append(discord.File(io.BytesIO(thumb), filename=f"clip{n}.jpg"))
            embed.set_thumbnail(url=f"attachment://clip{n}.jpg")
        embeds.append(embed)
    content = mine.text.splitlines()[0]
    view = job_view(mine.buttons)
    if edit:
        await interaction.response.edit_message(content=content, embeds=embeds, attachments=files, view=view)
    else:
        await interaction.response.send_message(content, embeds=embeds, files=files, view=view or MISSING,
                                                ephemeral=True)


async def _mine_action(front: DiscordFrontEnd, interaction: discord.Interaction, action: str, value: str) -> None:
    user_id, locale = str(interaction.user.id), str(interaction.locale)
    if action == "page":
        owner, page = parse_page_id(value)
        if owner != user_id:
            raise UserError("Only the person who asked for this list can turn its pages.", "not_owner")
        await show_mine(front, interaction, page, edit=True)
        return
    if action == "drop":
        await front.core.service.delete(value, by_user=f"{PLATFORM}:{user_id}")
        await show_mine(front, interaction, 0, edit=True, around=value)   # the same page, saying "expired"
        return
    job, video, spoiler = await front.core.repost(value, PLATFORM, user_id, _rule(front, interaction),
                                                   upload_limit(interaction, front.config.discord.upload_limit_bytes))
    await interaction.response.defer(thinking=True)   # a public message in this channel, then the clip
    caption = shorten(front.core.caption(job, locale, mention=f"<@{user_id}>"), 2000)
    with rate_limited():
        message = await interaction.edit_original_response(
            content=caption, attachments=[discord.File(video, filename=f"{job.id}.mp4", spoiler=spoiler)],
            view=job_view(front.core.result_buttons(job, locale)), allowed_mentions=NO_MENTIONS)
    await front.core.service.link_message(job.id, PLATFORM, message.channel.id, message.id)


def _rule(front: DiscordFrontEnd, interaction: discord.Interaction):
    return safety_rule(interaction, front.config.safety.allow_in_dms)


async def _report(front: DiscordFrontEnd, interaction: discord.Interaction, job_id: str) -> None:
    """Tell the server's moderation channel about a reported clip (or the bot's admins by DM), with a button
    that removes it."""
    core = front.core
    job, settings = await core.report(job_id, PLATFORM)
    link = interaction.message.jump_url if interaction.message else ""
    text = core.moderation_text(job, settings, f"<@{interaction.user.id}>", link)
    remove = job_view(buttons(settings.language or "en", job.id, "remove"))
    assert remove is not None
    if settings.moderation_channel:
        channel = front.rest.get_partial_messageable(int(settings.moderation_channel), guild_id=interaction.guild_id)
        with rate_limited():
            await channel.send(text, view=remove, allowed_mentions=NO_MENTIONS)
        return
    for admin in front.config.discord.admins:
        try:
            with rate_limited():
                user = await front.rest.fetch_user(int(admin))
                await user.send(text, view=remove, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:   # DMs closed: the other admins still hear of it
            log.warning("report of job %s not sent to admin %s: %s", job.id, admin, exc.status)


async def _remove(front: DiscordFrontEnd, interaction: discord.Interaction, job_id: str) -> None:
    """A moderator's Remove: the clip's message and files go, and the report says who removed it."""
    locale = str(interaction.locale)
    moderator = front.commands.is_moderator(interaction) or bool(
        interaction.guild_id and interaction.permissions.manage_messages)
    if not moderator:
        await reply(interaction, t(locale, "report.not_moderator"))
        return
    from bot.discord.status import StatusRef  # status.py builds its buttons with this module

    job = await front.core.remove(job_id, PLATFORM, str(interaction.user.id))
    ref = StatusRef.loads(job.status_ref) if job.status_ref else None
    if ref is not None and ref.result:
        channel = ref.messageable(front.rest)
        with contextlib.suppress(discord.NotFound, discord.Forbidden), rate_limited():
            await channel.get_partial_message(ref.result).delete()
    content = (interaction.message.content if interaction.message else "") + "\n" + t(
        locale, "report.removed", moderator=f"<@{interaction.user.id}>")
    await interaction.response.edit_message(content=content, view=None, allowed_mentions=NO_MENTIONS)


async def _slow_action(front: DiscordFrontEnd, interaction: discord.Interaction, action: str, job_id: str) -> None:
    """Extend, Smooth, Loop: answered at once with the new clip's status message, which then says how it went."""
    locale = str(interaction.locale)
    response = await interaction.response.defer(thinking=True)
    ref = front.status_ref(interaction, response)
    try:
        _, job = await front.core.on_button(action, job_id, PLATFORM, str(interaction.user.id), locale,
                                            safety_rule(interaction, front.config.safety.allow_in_dms))
    except UserError as exc:
        await answer_deferred(interaction, error_text(exc, locale))
        return
    except Exception:
        log.exception("button %s failed", action)
        await answer_deferred(interaction, t(locale, "errors.generic"))
        return
    assert job is not None
    await front.core.service.set_status_ref(job.id, ref.dumps())
    front.follow(job, ref, interaction)


async def _follow_new_job(front: DiscordFrontEnd, interaction: discord.Interaction, job: Job) -> None:
    """An HQ render or re-roll: its own status message, owned by whoever pressed the button."""
    try:
        response = await interaction.response.defer(thinking=True)
        ref = front.status_ref(interaction, response)
    except discord.HTTPException as exc:   # too late to answer: use a channel message from the start
        log.warning("could not answer a button press (%s); posting in the channel", exc.status)
        ref = front.status_ref(interaction, None)
        ref.token = ""
    await front.core.service.set_status_ref(job.id, ref.dumps())
    front.follow(job, ref, interaction if ref.token else None)


# ---------------------------------------------------------------- the prompt modal


class PromptModal(discord.ui.Modal):
    """Asks for the prompt after "Animate this image" on a message."""

    def __init__(self, front: DiscordFrontEnd, attachment: discord.Attachment, locale: str):
        super().__init__(title=t(locale, "discord.form_title"), timeout=600)
        self.front, self.attachment = front, attachment
        self.prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
            label=t(locale, "discord.form_prompt"), custom_id="prompt",
            placeholder=t(locale, "discord.form_placeholder"),
            style=discord.TextStyle.paragraph, max_length=min(4000, front.config.limits.max_prompt_chars))
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.front.commands.render(interaction, self.attachment, self.prompt.value, "quick")
