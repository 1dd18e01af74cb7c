"""Discord front end (discord.py 2.x): slash commands, a message context menu, buttons that survive restarts,
and one status message per job that turns into the result video.

This module holds the lifecycle (connect, sync the commands, pick up unfinished jobs, disconnect), the client
and command tree, and the wiring between the parts, each in its own module:

- commands.py: the app commands and their handlers, where they may be used, command sync;
- components.py: the job buttons, the prompt modal and what a button press does;
- status.py: a job's status message (`StatusMessage`) and where it lives (`StatusRef`);
- api.py: shared Discord API helpers (rate limits, replies, attachment download).

Shards: with a `Replica` (`python -m bot`) and no `[discord] shard_ids`, the bot replicas on one store share
`shard_count` shards (0: as many as Discord recommends) by holds in the store (bot/replicas.py), evenly: each
replica takes free shards up to its fair share (shards / replicas running Discord, rounded up) and hands back
any above it, so replicas started alike end up with one share each, and a dead replica's shards are taken over
by the others within `[replicas] lease_s`. A replica runs each shard it holds in a gateway client of its own, so
taking a shard over or handing one back never disconnects the others; a replica without shards stands by.
Without a `Replica` (or with `shard_ids` listed) one gateway client runs them all (discord.py's
`AutoShardedClient` when `shard_count` is set). Status messages and deliveries never need the gateway
(interaction tokens, channel messages): they go through a REST-only client (`rest`), so any replica can carry
any job's status on.
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
from bot.replicas import Replica
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


SHARD_HOLD = "discord:shard:"     # + shard id: the replica that runs that shard
MEMBER_HOLD = "discord:member:"   # + replica id: a replica running Discord (how many share the shards)


class _Hooks:
    """What our gateway clients add to discord.py's: the front end, persistent buttons, readiness."""
    front_end: DiscordFrontEnd
    ready_event: asyncio.Event
    command_tree: _Tree | None   # its own command tree, when not the front end's

    def __init__(self, front: DiscordFrontEnd, **options: Any):
        super().__init__(**options)
        self.front_end = front
        self.ready_event = asyncio.Event()
        self.command_tree = None

    async def setup_hook(self) -> None:
        self.add_dynamic_items(JobButton)   # type: ignore[attr-defined]
        await (self.command_tree or self.front_end.tree).set_translator(CommandTranslator())

    async def on_ready(self) -> None:
        self.ready_event.set()


class _Client(_Hooks, discord.Client):
    pass


class _ShardedClient(_Hooks, discord.AutoShardedClient):
    pass


class _Tree(app_commands.CommandTree[Any]):   # over a _Client or a _ShardedClient
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

    def __init__(self, core: BotCore, config: Config, token: str, replica: Replica | None = None):
        self.core = core
        self.replica = replica
        self.config = config
        self._token = token
        cfg = config.discord
        # Seconds after which a job stops using its interaction token (Discord's limit is 900 s).
        self.interaction_ttl_s = cfg.interaction_ttl_s
        self._ready_timeout_s = cfg.ready_timeout_s
        self._hosts = {h.lower() for h in cfg.attachment_hosts}
        # Shards by hold in the store among the replicas (see the module docstring), or as configured.
        self._by_hold = replica is not None and not cfg.shard_ids
        self.shard_count = cfg.shard_count
        self._rest: _Client | None = None
        self._gateways: dict[int, tuple[_Client, asyncio.Task]] = {}   # shard -> its client, by hold
        self._running = False
        self._balancing: asyncio.Task | None = None
        self._new_client()
        if self._by_hold:
            assert replica is not None
            replica.every_beat(self._balance_soon)
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
        """The main client (and its command tree): with `[discord] shard_count` set, one for `shard_ids` (all
        shards when empty); else one plain client. By hold, it is replaced by the REST client at start."""
        options = self._client_options()
        cfg = self.config.discord
        if cfg.shard_count:
            self.client: _Client | _ShardedClient = _ShardedClient(self, shard_ids=cfg.shard_ids or None,
                                                                   shard_count=self.shard_count, **options)
        else:
            self.client = _Client(self, **options)
        self._new_tree()

    def _client_options(self) -> dict[str, Any]:
        cfg = self.config.discord
        return dict(intents=discord.Intents(guilds=True), allowed_mentions=NO_MENTIONS,
                    max_ratelimit_timeout=cfg.max_ratelimit_timeout_s, guild_ready_timeout=cfg.guild_ready_timeout_s)

    def _new_tree(self, client: _Client | _ShardedClient | None = None) -> _Tree:
        """The command tree of `client` (default: the main client, whose tree syncs the commands)."""
        tree = _Tree(client or self.client, allowed_contexts=app_commands.AppCommandContext(
            guild=True, dm_channel=self.config.discord.dms, private_channel=False))
        commands = Commands(self, tree)   # registers the commands on the tree
        if client is None:
            self.tree, self.commands = tree, commands
        return tree

    @property
    def rest(self) -> discord.Client:
        """The client that status messages and deliveries use: REST only, whichever shards run here."""
        return self._rest or self.client

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
            if self._by_hold:
                await self._start_by_hold()
            else:
                await self._connect()
                self.synced = await self.commands.sync_commands()
            resumed = await self.core.resume_following(PLATFORM, self.status_for_stored_job)
        except BaseException as exc:
            await self.close()
            problem = _start_problem(exc)
            if problem is None:
                raise
            raise problem from exc
        self._running = True
        if resumed:
            log.info("discord: following %d unfinished jobs again", len(resumed))

    # ---- shards held in the store ----

    async def _start_by_hold(self) -> None:
        """Log in (the token is checked here), then run a fair share of the shards, or stand by."""
        assert self.replica is not None
        # The REST client: statuses, deliveries and the command sync, whichever shards run here.
        self._rest = self.client = _Client(self, **self._client_options())
        self._new_tree()
        await self.client.login(self._token)
        if not self.shard_count:
            self.shard_count, _, _ = await self.client.http.get_bot_gateway()
        await self.replica.take(MEMBER_HOLD + self.replica.id)
        await self._balance()
        self.synced = await self.commands.sync_commands()
        if not self._gateways:
            log.info("discord: standing by (the other replicas run all %d shards); statuses are carried on here",
                     self.shard_count)

    async def _balance_soon(self) -> None:
        """After each heartbeat: rebalance in a task of its own (connecting must not hold up the heartbeat)."""
        if self._running and (self._balancing is None or self._balancing.done()):
            self._balancing = asyncio.create_task(self._balance_logged(), name="discord-shards")

    async def _balance_logged(self) -> None:
        try:
            await self._balance()
        except Exception as exc:
            log.warning("discord: could not change shards (%s: %s); trying again at the next heartbeat",
                        type(exc).__name__, exc)

    async def _balance(self) -> None:
        """Hold a fair share of the shards: take free ones (a dead replica's too) below it, hand back any above
        it, and run exactly the shards held, each in a gateway client of its own (starting or stopping one
        never touches the others)."""
        replica = self.replica
        assert replica is not None
        count = self.shard_count
        taken = await replica.live_owners(SHARD_HOLD)
        members = len(await replica.live_owners(MEMBER_HOLD)) or 1
        fair = -(-count // members)
        mine = [i for i in range(count) if replica.holds(f"{SHARD_HOLD}{i}")]
        if len(mine) < fair:
            free = [f"{SHARD_HOLD}{i}" for i in range(count) if f"{SHARD_HOLD}{i}" not in taken]
            got = await replica.take_many(free[:fair - len(mine)]) if free else []
            mine = sorted(mine + [int(name[len(SHARD_HOLD):]) for name in got])
        keep = mine[:fair]
        for shard in sorted(set(self._gateways) - set(keep)):
            await self._stop_shard(shard)
        for shard in mine[fair:]:   # only once disconnected from it, so no two replicas receive its events
            await replica.hand_over(f"{SHARD_HOLD}{shard}")
        for shard in keep:
            if shard not in self._gateways:
                await self._start_shard(shard)

    async def _start_shard(self, shard: int) -> None:
        client = _Client(self, shard_id=shard, shard_count=self.shard_count, **self._client_options())
        client.command_tree = self._new_tree(client)
        runner = asyncio.create_task(client.start(self._token), name=f"discord-shard-{shard}")
        try:
            await self._wait_ready(client, runner)
        except BaseException:
            await _close_client(client, runner)
            assert self.replica is not None
            await self.replica.hand_over(f"{SHARD_HOLD}{shard}")   # for another replica to take
            raise
        self._gateways[shard] = (client, runner)
        log.info("discord: running shard %d of %d (here: %s)", shard, self.shard_count, sorted(self._gateways))

    async def _stop_shard(self, shard: int) -> None:
        client, runner = self._gateways.pop(shard)
        await _close_client(client, runner)
        log.info("discord: stopped shard %d of %d (here: %s)", shard, self.shard_count,
                 sorted(self._gateways) or "none")

    async def _connect(self) -> None:
        self._runner = asyncio.create_task(self.client.start(self._token), name="discord-client")
        await self._wait_ready(self.client, self._runner)

    async def _wait_ready(self, client: _Client | _ShardedClient, runner: asyncio.Task) -> None:
        ready = asyncio.create_task(client.ready_event.wait())
        try:
            await asyncio.wait({runner, ready}, timeout=self._ready_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not client.ready_event.is_set():
            if runner.done():
                runner.result()   # raises the login/connection error
                raise ConnectionError("Discord closed the connection before the bot was ready")
            raise TimeoutError(f"Discord did not get ready within {self._ready_timeout_s:.0f} s")
        user = client.user
        assert user is not None   # set at login, before the client gets ready
        log.info("discord: connected as %s (%s)", user, user.id)

    async def close(self) -> None:
        self._running = False
        if self._balancing is not None:
            self._balancing.cancel()
            with contextlib.suppress(BaseException):
                await self._balancing
        for shard in list(self._gateways):
            await self._stop_shard(shard)
        if self._rest is not None:
            await self._rest.close()
            self._rest = None
        else:
            await self._close_gateway()
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._restore_urls()

    async def _close_gateway(self) -> None:
        if self._runner is None:   # never started (a sharded client cannot close before it starts)
            return
        await _close_client(self.client, self._runner)
        self._runner = None

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

    async def take_over(self) -> None:
        """Follow the Discord jobs of a replica that stopped (after each heartbeat of this one)."""
        await self.core.take_over(PLATFORM, self.status_for_stored_job)

    def status_for_stored_job(self, job: Job) -> StatusMessage | None:
        return status_for_stored_job(self, job)


async def _close_client(client: discord.Client, runner: asyncio.Task) -> None:
    if not client.is_closed():
        await client.close()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await runner


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
