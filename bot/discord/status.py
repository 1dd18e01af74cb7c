"""The status message of one job: where it lives (`StatusRef`, stored on the job so a restart can carry on)
and the `StatusMessage` that edits it while the job runs and turns it into the result video.

Edits go to the interaction response while its token lives; once the token is about to expire (15 min) or
Discord says it is gone, the job continues in an ordinary channel message sent with the bot token. The latest
preview of the forming clip is the status message's attachment, replaced in place.

An edit never notifies anyone, so the finished video is a new message that mentions its owner (a push on their
phone): an interaction followup while the token lives (no channel permissions needed), else a channel message
with a stable nonce. Only if the channel refuses the bot (403) does the status message itself become the
result. Otherwise the status message is deleted once the result is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.buttons import Button
from bot.discord.api import MAX_CONTENT, NO_MENTIONS, _retrieve, rate_limited, upload_limit
from bot.discord.components import job_view
from bot.texts import shorten
from engine.errors import UserError
from engine.jobs import Job

if TYPE_CHECKING:
    from bot.discord.app import DiscordFrontEnd

log = logging.getLogger("bot.discord")

PREVIEW_NAME = "preview.gif"
RESULT_LOOKBACK = 50   # messages of a channel searched for a result whose post was not confirmed


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
    result: int = 0                 # the result message, once posted (a retried delivery skips the post)
    posting: bool = False           # a result post was started: whoever retries looks for it first

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def messageable(self, client: discord.Client) -> discord.PartialMessageable:
        """The job's channel, to post, edit and delete in through `client` (REST: no gateway needed)."""
        return client.get_partial_messageable(self.channel, guild_id=self.guild)

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
        self._given_interaction = interaction

    # ---- JobUI ----

    async def edit_status(self, text: str, buttons: list[Button], preview: bytes | None = None,
                          spoiler: bool = False) -> None:
        fields: dict[str, Any] = dict(content=shorten(text, MAX_CONTENT), view=job_view(buttons),
                                      allowed_mentions=NO_MENTIONS)
        if preview is not None:   # replaces the previous preview; edits without one keep it
            fields["attachments"] = [discord.File(io.BytesIO(preview), filename=PREVIEW_NAME, spoiler=spoiler)]
        await self._show(**fields)

    async def hide_preview(self, text: str, buttons: list[Button]) -> None:
        await self._show(content=shorten(text, MAX_CONTENT), view=job_view(buttons),
                         allowed_mentions=NO_MENTIONS, attachments=[])

    async def finish(self, text: str) -> None:
        await self._show(content=shorten(text, MAX_CONTENT), view=None, allowed_mentions=NO_MENTIONS,
                         attachments=[])

    async def deliver(self, job: Job, video: Path, caption: str, buttons: list[Button],
                      spoiler: bool = False) -> None:
        owner = owner_of(job)
        fields: dict[str, Any] = dict(
            content=shorten(self.front.core.caption(job, self.locale, mention=f"<@{owner}>"), MAX_CONTENT),
            view=job_view(buttons),
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(owner)]),
        )
        filename = f"{job.id}.mp4"
        if not self.ref.result and self.ref.posting:
            # A post began and its answer was never saved (the replica that made it died, or the store write
            # failed): it may be in the channel already.
            self.ref.result = await self._posted_result(filename)
        if not self.ref.result:
            self.ref.posting = True
            await self._save_ref()
            try:
                self.ref.result = await self._post_result(discord.File(video, filename=filename, spoiler=spoiler),
                                                          fields)
            except discord.Forbidden as exc:
                # No Send Messages / Attach Files here: the status message (which needs neither) becomes
                # the result. It cannot notify, so say why once.
                if not self.front.warned_refusal(self.ref.channel):
                    log.warning("discord: channel %s refuses the bot (%s); results there are edits of the "
                                "status message and notify nobody", self.ref.channel, exc.text or exc.status)
                await self._show(attachments=[discord.File(video, filename=filename, spoiler=spoiler)], **fields)
                return
            await self._save_ref()
        await self._delete_status()

    async def _posted_result(self, filename: str) -> int:
        """The id of the bot's recent message in the channel carrying `filename`, or 0 (also when the channel's
        history cannot be read here: then the result is posted, perhaps a second time)."""
        rest = self.front.rest
        channel = self.ref.messageable(rest)
        try:
            with rate_limited():
                async for message in channel.history(limit=RESULT_LOOKBACK):
                    if (rest.user is None or message.author.id == rest.user.id) and any(
                            a.filename.endswith(filename) for a in message.attachments):
                        log.info("job %s: its result was already posted (message %s)", self.job_id, message.id)
                        return message.id
        except discord.HTTPException as exc:
            log.info("job %s: channel history not readable (%s); posting the result", self.job_id, exc.status)
        return 0

    # ---- where edits go ----

    @property
    def _interaction(self) -> discord.Interaction | None:
        """The interaction object while its gateway client runs here; after that (its shard moved to another
        replica) edits go by the stored token through the REST client."""
        interaction = self._given_interaction
        if interaction is not None and interaction.client.is_closed():
            self._given_interaction = interaction = None
        return interaction

    @_interaction.setter
    def _interaction(self, value: discord.Interaction | None) -> None:
        self._given_interaction = value

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
                    await self._webhook().edit_message(self.ref.message, **fields)
        except discord.HTTPException as exc:
            if exc.status in (401, 404):   # 50027 Invalid Webhook Token, 10008 Unknown Message
                raise TokenGone() from exc
            raise

    async def _token_expired(self) -> None:
        log.info("job %s: interaction token gone, continuing in a channel message", self.job_id)
        self.ref.token, self._interaction = "", None
        await self._save_ref()

    async def _channel_edit(self, fields: dict[str, Any]) -> None:
        channel = self.ref.messageable(self.front.rest)
        with rate_limited():
            if self.ref.channel_message:
                try:
                    await channel.get_partial_message(self.ref.channel_message).edit(**fields)
                    return
                except discord.NotFound:   # deleted by someone: post a fresh one
                    self.ref.channel_message, self.ref.posts = 0, self.ref.posts + 1
            send = {k: v for k, v in fields.items() if v is not None}
            if "attachments" in send:   # a new message takes files, not an attachment list
                files = send.pop("attachments")
                if files:
                    send["files"] = files
            message = await channel.send(nonce=f"{self.job_id}s{self.ref.posts}", **send)
        self.ref.channel_message = message.id
        await self._save_ref()

    async def _post_result(self, file: discord.File, fields: dict[str, Any]) -> int:
        """A new message that pings the owner: a followup while the token lives, else a channel message whose
        stable nonce makes a retried post return the first one. Returns its id."""
        send = {k: v for k, v in fields.items() if v is not None}
        if self._token_alive():
            try:
                with rate_limited():
                    message = await self._webhook().send(file=file, wait=True, **send)
                return message.id
            except discord.HTTPException as exc:
                if exc.status not in (401, 404):
                    raise
                await self._token_expired()
            file.reset()
        channel = self.ref.messageable(self.front.rest)
        with rate_limited():
            posted = await channel.send(file=file, nonce=f"{self.job_id}v", **send)
        return posted.id

    async def _delete_status(self) -> None:
        """The status message has done its job once the result is up (a missing one is fine)."""
        with contextlib.suppress(discord.NotFound, discord.Forbidden), rate_limited():
            if self.ref.channel_message:
                channel = self.ref.messageable(self.front.rest)
                await channel.get_partial_message(self.ref.channel_message).delete()
            elif self._token_alive() and (self._interaction is not None or self.ref.message):
                # A deferred response never edited (its first edit failed) is filled by the first followup:
                # then the status message *is* the result, and stays.
                original = self.ref.message
                if not original and self._interaction is not None:
                    original = (await self._interaction.original_response()).id
                if original == self.ref.result:
                    return
                await self._webhook().delete_message(original)

    def _webhook(self) -> discord.Webhook:
        if self._interaction is not None:
            return self._interaction.followup
        return discord.Webhook.partial(self.ref.app, self.ref.token, client=self.front.rest)

    async def _save_ref(self) -> None:
        # Shielded: an edit is cancelled when its job finishes, and a store write cut off halfway would
        # leave its SQLite transaction open.
        save = asyncio.ensure_future(self.front.core.service.set_status_ref(self.job_id, self.ref.dumps()))
        save.add_done_callback(_retrieve)
        with contextlib.suppress(KeyError, UserError):   # the job was forgotten meanwhile
            await asyncio.shield(save)
