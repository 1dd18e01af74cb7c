"""Discord front end (discord.py 2.x): slash commands, a message context menu, buttons that survive restarts,
and one status message per job that turns into the result video.

This module holds the lifecycle (connect, sync the commands, pick up unfinished jobs, disconnect), the client
and command tree, and the wiring between the parts, each in its own module:

- commands.py: the app commands and their handlers, where they may be used, command sync;
- components.py: the job buttons, the prompt modal and what a button press does;
- status.py: a job's status message (`StatusMessage`) and where it lives (`StatusRef`);
- api.py: shared Discord API helpers (rate limits, replies, attachment download).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands

from bot.core import BotCore
from bot.discord.api import NO_MENTIONS, PLATFORM, download_attachment, reply
from bot.discord.commands import Commands, CommandTranslator
from bot.discord.components import JobButton
from bot.discord.status import StatusMessage, StatusRef, ref_for, status_for_stored_job
from bot.startup import PlatformUnavailable, TokenRefused
from bot.texts import error_text, t
from engine.config import Config
from engine.errors import UserError
from engine.jobs import Job

log = logging.getLogger("bot.discord")

AUTHENTICATION_FAILED = 4004   # the gateway's close code for a refused token


class _QuietLogin(logging.Filter):
    """Drops discord.py's "logging in" line: each try at starting is logged once, by `bot.startup`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "logging in using static token"


_QUIET_LOGIN = _QuietLogin()


class _Client(discord.Client):
    def __init__(self, front: DiscordFrontEnd, **options: Any):
        super().__init__(**options)
        self.front_end = front
        self.ready_event = asyncio.Event()

    async def setup_hook(self) -> None:
        self.add_dynamic_items(JobButton)
        await self.front_end.tree.set_translator(CommandTranslator())

    async def on_ready(self) -> None:
        self.ready_event.set()


class _Tree(app_commands.CommandTree[_Client]):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await self.client.front_end.commands.allowed_here(interaction)

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        locale = str(interaction.locale)
        original = getattr(error, "original", error)
        if isinstance(original, UserError):
            text = error_text(original, locale)
        else:
            log.error("command %s failed", interaction.command.name if interaction.command else "?",
                      exc_info=error)
            text = t(locale, "errors.generic")
        with contextlib.suppress(discord.HTTPException):
            await reply(interaction, text)


class DiscordFrontEnd:
    """The Discord bot over a BotCore. `start()` returns once connected, or raises TokenRefused or
    PlatformUnavailable (`bot.startup`) with everything closed, ready for another try; `close()` disconnects
    (the core's followers belong to the core: close it separately)."""

    def __init__(self, core: BotCore, config: Config, token: str):
        self.core = core
        self.config = config
        self._token = token
        cfg = config.discord
        # Seconds after which a job stops using its interaction token (Discord's limit is 900 s).
        self.interaction_ttl_s = cfg.interaction_ttl_s
        self._ready_timeout_s = cfg.ready_timeout_s
        self._hosts = {h.lower() for h in cfg.attachment_hosts}
        self._new_client()
        self._tried = False
        self._runner: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None
        self._saved_urls: tuple[str, yarl.URL] | None = None
        self.synced = False
        self._refusing_channels: set[int] = set()

    def warned_refusal(self, channel_id: int) -> bool:
        """Whether a channel's refusal (403) was already logged; records it for next time."""
        seen = channel_id in self._refusing_channels
        self._refusing_channels.add(channel_id)
        return seen

    # ---- lifecycle ----

    def _new_client(self) -> None:
        cfg = self.config.discord
        self.client = _Client(
            self,
            intents=discord.Intents(guilds=True),
            allowed_mentions=NO_MENTIONS,
            max_ratelimit_timeout=cfg.max_ratelimit_timeout_s,
            guild_ready_timeout=cfg.guild_ready_timeout_s,
        )
        self.tree = _Tree(self.client, allowed_contexts=app_commands.AppCommandContext(
            guild=True, dm_channel=cfg.dms, private_channel=False))
        self.commands = Commands(self, self.tree)

    async def start(self) -> None:
        if self._tried:
            # The client of a failed try is closed, and discord.py's HTTP client keeps its closed connector:
            # a new client (and command tree) starts clean.
            self._new_client()
        self._tried = True
        logging.getLogger("discord.client").addFilter(_QUIET_LOGIN)
        self._point_at_configured_urls()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, sock_read=20))
        try:
            await self._connect()
            self.synced = await self.commands.sync_commands()
            resumed = await self.core.resume_following(PLATFORM, self.status_for_stored_job)
        except BaseException as exc:
            await self.close()
            problem = _start_problem(exc)
            if problem is None:
                raise
            raise problem from exc
        if resumed:
            log.info("discord: following %d unfinished jobs again", len(resumed))

    async def _connect(self) -> None:
        self._runner = asyncio.create_task(self.client.start(self._token), name="discord-client")
        ready = asyncio.create_task(self.client.ready_event.wait())
        try:
            await asyncio.wait({self._runner, ready}, timeout=self._ready_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self.client.ready_event.is_set():
            if self._runner.done():
                self._runner.result()   # raises the login/connection error
                raise ConnectionError("Discord closed the connection before the bot was ready")
            raise TimeoutError(f"Discord did not get ready within {self._ready_timeout_s:.0f} s")
        user = self.client.user
        assert user is not None   # set at login, before the client gets ready
        log.info("discord: connected as %s (%s)", user, user.id)

    async def close(self) -> None:
        if not self.client.is_closed():
            await self.client.close()
        if self._runner is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._runner
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._restore_urls()

    def _point_at_configured_urls(self) -> None:
        """Send REST calls and the gateway connection to a configured proxy (or a local fake) instead."""
        cfg = self.config.discord
        if not (cfg.api_base_url or cfg.gateway_url):
            return
        # discord.py reads these class attributes; they are put back on close.
        route, ws = discord.http.Route, discord.gateway.DiscordWebSocket
        self._saved_urls = (route.BASE, ws.DEFAULT_GATEWAY)
        if cfg.api_base_url:
            route.BASE = cfg.api_base_url.rstrip("/")
        if cfg.gateway_url:
            ws.DEFAULT_GATEWAY = yarl.URL(cfg.gateway_url)

    def _restore_urls(self) -> None:
        if self._saved_urls is not None:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved_urls
            self._saved_urls = None

    # ---- wiring: what commands and buttons share ----
    # Commands and buttons reach the status message through these, so components.py (whose job_view the
    # status message draws) does not have to import status.py back.

    async def download(self, attachment: discord.Attachment) -> bytes:
        """The attachment's bytes from an allowed host, over this front end's HTTP session."""
        assert self._http is not None
        return await download_attachment(self._http, self._hosts, attachment, self.config.limits.max_image_bytes)

    def status_ref(self, interaction: discord.Interaction, response: Any) -> StatusRef:
        return ref_for(self, interaction, response)

    def follow(self, job: Job, ref: StatusRef, interaction: discord.Interaction | None = None,
               hints: list[str] | None = None) -> None:
        """Follow a job in its status message until its user has the outcome."""
        self.core.follow(job, StatusMessage(self, job.id, ref, interaction), hints)

    def status_for_stored_job(self, job: Job) -> StatusMessage | None:
        return status_for_stored_job(self, job)


def _start_problem(exc: BaseException) -> Exception | None:
    """What a failed start means for the next try: TokenRefused, PlatformUnavailable, or None (anything else,
    raised as it is)."""
    if isinstance(exc, discord.LoginFailure) or (
            isinstance(exc, discord.ConnectionClosed) and exc.code == AUTHENTICATION_FAILED):
        return TokenRefused("Discord refused the token (401 Unauthorized)")
    if isinstance(exc, (OSError, aiohttp.ClientError, TimeoutError, discord.HTTPException,
                        discord.GatewayNotFound, discord.ConnectionClosed)):
        return PlatformUnavailable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return None
