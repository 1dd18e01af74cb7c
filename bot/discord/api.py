"""Small helpers over the Discord API that every part of the front end shares: the platform's limits, the one
place where a 429 becomes `RetryLater`, ephemeral replies, and the attachment download.

Nothing here knows about the front end itself, so the command, component and status modules can all import it
without importing each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import discord

from bot.edits import RetryLater
from bot.texts import shorten
from engine.errors import UserError
from engine.safety import Rule

log = logging.getLogger("bot.discord")

PLATFORM = "discord"
MAX_CONTENT = 2000              # characters of a message's content
DOWNLOAD_CHUNK = 64 * 1024
NO_MENTIONS = discord.AllowedMentions.none()


@contextlib.contextmanager
def rate_limited() -> Iterator[None]:
    """A 429 that discord.py did not wait out (longer than max_ratelimit_timeout) becomes RetryLater."""
    try:
        yield
    except discord.RateLimited as exc:
        raise RetryLater(exc.retry_after) from exc
    except discord.HTTPException as exc:
        if exc.status != 429:
            raise
        seconds = 1.0
        with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
            seconds = float(exc.response.headers["Retry-After"])
        raise RetryLater(seconds) from exc


async def reply(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer, whether or not the interaction was answered already."""
    text = shorten(text, MAX_CONTENT)
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


async def answer_deferred(interaction: discord.Interaction, text: str) -> None:
    """Replace a deferred "thinking…" response with `text`; a failure here has nobody left to tell."""
    with contextlib.suppress(discord.HTTPException):
        await interaction.edit_original_response(content=shorten(text, MAX_CONTENT),
                                                 allowed_mentions=NO_MENTIONS)


def _is_image(attachment: discord.Attachment) -> bool:
    if attachment.content_type:
        return attachment.content_type.lower().startswith("image/")
    return attachment.filename.lower().rsplit(".", 1)[-1] in ("jpg", "jpeg", "png", "webp", "gif")


def upload_limit(interaction: discord.Interaction, configured: int) -> int:
    """The smaller of the configured upload limit and the one Discord grants in this place (boosts raise it)."""
    granted = getattr(interaction, "filesize_limit", None)
    return min(configured, granted) if granted else configured


async def download_attachment(http: aiohttp.ClientSession, hosts: set[str], attachment: discord.Attachment,
                              max_bytes: int) -> bytes:
    """The attachment's bytes from an allowed host, streamed and cut off past `max_bytes`."""
    from engine.media.validate import read_capped

    failed = UserError("I could not download your image; please send it again.", "download_failed")
    parts = urlsplit(attachment.url)
    if parts.scheme not in ("http", "https") or (parts.hostname or "").lower() not in hosts:
        log.warning("refused an attachment URL on host %s", parts.hostname)
        raise failed
    try:
        async with http.get(attachment.url, allow_redirects=False) as resp:
            if resp.status != 200:
                log.warning("attachment download answered HTTP %s", resp.status)
                raise failed
            return await read_capped(resp.content.iter_chunked(DOWNLOAD_CHUNK), max_bytes)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("attachment download failed: %s", type(exc).__name__)
        raise failed from None


def _retrieve(task: asyncio.Future) -> None:
    """Take a shielded task's outcome, so one whose waiter was cancelled logs nothing at exit."""
    if not task.cancelled():
        task.exception()


def safety_rule(interaction: discord.Interaction, allow_in_dms: bool) -> Rule:
    """Where flagged content may go from this interaction's channel: Discord allows adult content only in
    age-restricted channels (a thread follows its parent), and in direct messages only if configured."""
    if interaction.guild_id is None:
        return "allow" if allow_in_dms else "withhold"
    is_nsfw = getattr(interaction.channel, "is_nsfw", None)
    return "allow" if callable(is_nsfw) and is_nsfw() else "withhold"
