"""The status message of one job: where it lives (`StatusRef`, stored on the job so a restart can carry on)
and the `StatusMessage` that edits it while the job runs and turns it into the result video.

Edits go to the interaction response while its token lives; once the token is about to expire (15 min) or
Discord says it is gone, the job continues in an ordinary channel message sent with the bot token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.core import Button, shorten
from bot.discord.api import MAX_CONTENT, NO_MENTIONS, _retrieve, rate_limited, upload_limit
from bot.discord.components import job_view
from engine.errors import UserError
from engine.jobs import Job

if TYPE_CHECKING:
    from bot.discord.app import DiscordFrontEnd

log = logging.getLogger("bot.discord")


@dataclass
class StatusRef:
    """Where a job's status message lives; stored on the job (JSON) so a restart can carry on."""
    channel: int
    owner: int
    locale: str = "en-US"
    guild: int | None = None
    app: int = 0
    token: str = ""                 # interaction token: edits while it lives
    message: int = 0                # the interaction response's message id
    at: float = 0.0                 # interaction creation time (epoch s)
    limit: int = 10_485_760         # upload limit in bytes
    channel_message: int = 0        # the bot's own channel message once the token is gone
    posts: int = 0                  # channel status messages posted (each gets its own nonce)

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> StatusRef | None:
        try:
            data = json.loads(text)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (AttributeError, TypeError, ValueError):
            return None


def ref_for(front: DiscordFrontEnd, interaction: discord.Interaction, response: Any) -> StatusRef:
    """The status message of a job started by `interaction`: its (deferred) response while the token lives."""
    return StatusRef(
        channel=interaction.channel_id or 0, owner=interaction.user.id, locale=str(interaction.locale),
        guild=interaction.guild_id, app=interaction.application_id, token=interaction.token,
        message=getattr(response, "message_id", None) or 0, at=interaction.created_at.timestamp(),
        limit=upload_limit(interaction, front.config.discord.upload_limit_bytes),
    )


def status_for_stored_job(front: DiscordFrontEnd, job: Job) -> StatusMessage | None:
    """After a restart: the status message of an unfinished job, or None when it has nowhere to go."""
    ref = StatusRef.loads(job.status_ref) if job.status_ref else None
    if ref is None:
        if not job.chat.isdigit():
            return None
        ref = StatusRef(channel=int(job.chat), owner=owner_of(job), locale=job.locale,
                        limit=front.config.discord.upload_limit_bytes)
    return StatusMessage(front, job.id, ref)


class TokenGone(Exception):
    """The interaction token can no longer edit its message (expired, or the message is gone)."""


def owner_of(job: Job) -> int:
    return int(job.user.split(":", 1)[1])


class StatusMessage:
    """JobUI for one job: the interaction response while its token lives, then a channel message."""

    def __init__(self, front: DiscordFrontEnd, job_id: str, ref: StatusRef,
                 interaction: discord.Interaction | None = None):
        self.front = front
        self.job_id = job_id
        self.ref = ref
        self.locale = ref.locale
        self.upload_limit_bytes = ref.limit
        self.min_edit_interval_s = front.config.discord.edit_interval_s
        self._interaction = interaction

    # ---- JobUI ----

    async def edit_status(self, text: str, buttons: list[Button]) -> None:
        await self._show(content=shorten(text, MAX_CONTENT), view=job_view(buttons), allowed_mentions=NO_MENTIONS)

    async def finish(self, text: str) -> None:
        await self._show(content=shorten(text, MAX_CONTENT), view=None, allowed_mentions=NO_MENTIONS)

    async def deliver(self, job: Job, video: Path, caption: str, buttons: list[Button]) -> None:
        owner = owner_of(job)
        fields = dict(
            content=shorten(self.front.core.caption(job, self.locale, mention=f"<@{owner}>"), MAX_CONTENT),
            view=job_view(buttons),
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(owner)]),
        )
        filename = f"{job.id}.mp4"
        if self._token_alive():
            try:
                await self._token_edit(attachments=[discord.File(video, filename=filename)], **fields)
                return
            except TokenGone:
                await self._token_expired()
        await self._post_result(discord.File(video, filename=filename), fields)

    # ---- where edits go ----

    def _token_alive(self) -> bool:
        return bool(self.ref.token) and time.time() - self.ref.at < self.front.interaction_ttl_s

    async def _show(self, **fields: Any) -> None:
        if self._token_alive():
            try:
                await self._token_edit(**fields)
                return
            except TokenGone:
                await self._token_expired()
        await self._channel_edit(fields)

    async def _token_edit(self, **fields: Any) -> None:
        if self._interaction is None and not self.ref.message:
            raise TokenGone()
        try:
            with rate_limited():
                if self._interaction is not None:
                    await self._interaction.edit_original_response(**fields)
                else:
                    webhook = discord.Webhook.partial(self.ref.app, self.ref.token, client=self.front.client)
                    await webhook.edit_message(self.ref.message, **fields)
        except discord.HTTPException as exc:
            if exc.status in (401, 404):   # 50027 Invalid Webhook Token, 10008 Unknown Message
                raise TokenGone() from exc
            raise

    async def _token_expired(self) -> None:
        log.info("job %s: interaction token gone, continuing in a channel message", self.job_id)
        self.ref.token, self._interaction = "", None
        await self._save_ref()

    async def _channel_edit(self, fields: dict[str, Any]) -> None:
        channel = self.front.client.get_partial_messageable(self.ref.channel, guild_id=self.ref.guild)
        with rate_limited():
            if self.ref.channel_message:
                try:
                    await channel.get_partial_message(self.ref.channel_message).edit(**fields)
                    return
                except discord.NotFound:   # deleted by someone: post a fresh one
                    self.ref.channel_message, self.ref.posts = 0, self.ref.posts + 1
            send = {k: v for k, v in fields.items() if v is not None}
            message = await channel.send(nonce=f"{self.job_id}s{self.ref.posts}", **send)
        self.ref.channel_message = message.id
        await self._save_ref()

    async def _post_result(self, file: discord.File, fields: dict[str, Any]) -> None:
        """A new message that pings the owner; the stable nonce makes a retried post a no-op."""
        channel = self.front.client.get_partial_messageable(self.ref.channel, guild_id=self.ref.guild)
        send = {k: v for k, v in fields.items() if v is not None}
        with rate_limited():
            await channel.send(file=file, nonce=f"{self.job_id}v", **send)
        if self.ref.channel_message:
            with contextlib.suppress(discord.HTTPException):
                await channel.get_partial_message(self.ref.channel_message).delete()

    async def _save_ref(self) -> None:
        # Shielded: an edit is cancelled when its job finishes, and a store write cut off halfway would
        # leave its SQLite transaction open.
        save = asyncio.ensure_future(self.front.core.service.set_status_ref(self.job_id, self.ref.dumps()))
        save.add_done_callback(_retrieve)
        with contextlib.suppress(KeyError, UserError):   # the job was forgotten meanwhile
            await asyncio.shield(save)
