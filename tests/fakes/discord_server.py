"""A local fake Discord (gateway, REST API and CDN) for end-to-end tests of the real discord.py client.

One aiohttp server on 127.0.0.1 (free port) plays all three parts:

* ``fake.api_base``    ``http://127.0.0.1:PORT/api/v10``  REST, what ``discord.http.Route.BASE`` points at
* ``fake.gateway_url`` ``ws://127.0.0.1:PORT/gateway``    gateway websocket (``DiscordWebSocket.DEFAULT_GATEWAY``)
* ``fake.cdn_base``    ``http://127.0.0.1:PORT``          attachment files under ``/attachments/...``

Quick start::

    async with FakeDiscord() as fake:
        with fake.install():                        # points discord.py at the fake, restores on exit
            client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)
            tree = app_commands.CommandTree(client)
            ...                                     # register commands / views
            task = asyncio.create_task(client.start(fake.token))
            await fake.wait_until_connected()       # IDENTIFY done, READY and GUILD_CREATE sent
            tree.copy_global_to(guild=discord.Object(fake.guild_id))
            await tree.sync(guild=discord.Object(fake.guild_id))

            image = fake.add_attachment("cat.png", png_bytes, "image/png")
            inter = await fake.slash_command("animate", [{"name": "image", "value": image["id"]}])
            await fake.wait_for(lambda: inter.original_message and inter.original_message.attachments)
            video = fake.read_attachment(inter.original_message.attachments[0])

            await client.close()                    # stop the client before leaving the fake
            await task

A bot that takes its URLs from config instead can set ``Route.BASE = fake.api_base`` and
``DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)`` itself; ``install()`` does exactly that.
Pass a small ``guild_ready_timeout`` (0.05 s) to the client: discord.py waits that long after the last
GUILD_CREATE before it fires ``on_ready``. A whole connect, sync, command, edit-with-file run takes about
0.2 s.

Options (keyword arguments of ``FakeDiscord``): ``token``, ``heartbeat_interval_ms``,
``interaction_ack_timeout_s`` (3.0), ``interaction_token_ttl_s`` (900), ``nonce_window_s`` (300),
``attachment_size_limit`` (10 MiB, also sent in every interaction), ``strict_commands`` (True),
``echo_message_events`` (True), ``gateway_wait_s`` (2.0: how long a dispatch helper waits for a client),
``port`` (0: a free one; a given port lets a test start the fake where a client already tries to connect).
The same attributes may be changed on a running fake, e.g. ``fake.interaction_ack_timeout_s = 0.05``.

World
    One application whose bot user is ``fake.bot_user_id`` (token ``fake.token``, checked on IDENTIFY and on
    every REST call that needs ``Authorization: Bot ...``), one guild ``fake.guild_id`` with a text channel
    ``fake.channel_id`` and three human members: ``fake.owner_id`` (administrator), ``fake.user_id`` (alice,
    the default actor of the dispatch helpers) and ``fake.other_user_id`` (bob). ``add_member``,
    ``add_channel`` and ``dm_channel`` extend it.

Gateway
    HELLO (op 10), IDENTIFY (op 2) -> READY + GUILD_CREATE (only with the GUILDS intent; members other than
    the bot only with GUILD_MEMBERS, as on Discord), HEARTBEAT (op 1) -> ACK (op 11), REQUEST_GUILD_MEMBERS
    (op 8) -> GUILD_MEMBERS_CHUNK, RESUME (op 6) -> replay of missed events + RESUMED (or INVALID_SESSION
    for an unknown session). ``compress=zlib-stream`` (what discord.py asks for by default) is implemented
    as a real zlib stream with Z_SYNC_FLUSH per message; ``zstd-stream`` is used when ``zstandard`` is
    importable, plain text frames otherwise. ``send_reconnect()`` sends op 7 to exercise RESUME.
    Dropped connections, as when Discord restarts a gateway node: ``drop_gateway(code=4000, hold_s=0)``
    closes every live connection with a close code that allows RESUME (4000 "unknown error"; ``code=None``
    cuts the TCP connection without a close frame), and answers new connections with 503 for ``hold_s``. The
    sessions stay resumable: dispatches meanwhile (an interaction sent before the client is back) are kept
    in the session and replayed on RESUME, before RESUMED.
    ``invalidate_sessions()`` sends op 9 INVALID_SESSION with ``d: false`` and forgets the sessions: the
    client must IDENTIFY anew (a RESUME of a forgotten session gets op 9 again); ``identifies`` counts
    IDENTIFYs, ``GatewaySession.resumes`` the RESUMEs of a session.
    Messages the bot creates, edits or deletes are echoed as MESSAGE_CREATE / UPDATE / DELETE (not for
    ephemeral ones) when the client asked for the matching intent.

Dispatch helpers (each sends one INTERACTION_CREATE and returns its ``InteractionRecord``)
    ``slash_command(name, options, ...)``    type 2, chat input; options may omit ``type`` (taken from the
                                             synced command); attachment/user/channel/role options get
                                             their ``resolved`` entries filled in from the fake's state
    ``autocomplete(name, options, ...)``     type 4; mark one option ``"focused": True``
    ``message_command(name, target_message)``/``user_command(name, target_user_id)``  context menus
    ``click_button(message_id, custom_id)``  type 3 on a stored message; the component must exist and be
                                             enabled (``values=[...]`` and ``component_type=3`` for selects)
    ``submit_modal(custom_id, {field: value})``  type 5 mirroring the modal the bot opened (callback type 9);
                                             a raw ``components`` list is sent as is
    ``user_message(content, ...)``           a human's MESSAGE_CREATE (content blanked without the
                                             MESSAGE_CONTENT intent, as on Discord)
    ``dispatch_event(event, data)``          any other gateway dispatch, sent as is
    Each ``InteractionRecord`` tracks ``callbacks``, ``responded``, ``response_type``, ``modal``,
    ``original_message`` and ``followups`` (``StoredMessage`` objects) as the bot answers.
    With ``strict_commands=True`` (default) invoking a command that was never synced raises ``LookupError``,
    since Discord would not show it to the user; guild commands are looked up first, then global ones, and
    a DM invocation (``guild_id=None``) only finds global commands, as on Discord.

REST (see ``_ROUTES`` for the full table)
    users/@me, (oauth2/)applications/@me, gateway(/bot), command CRUD and bulk sync (global and guild),
    interaction callback (types 4, 5, 6, 7, 8, 9; JSON or multipart; ``with_response`` answered with the
    callback resource), webhook ``@original`` GET/PATCH/DELETE, followups POST, webhook message
    GET/PATCH/DELETE, channel GET, channel messages list/POST/GET/PATCH/DELETE (``enforce_nonce``: the same
    nonce within ``nonce_window_s`` returns the first message), typing, DM channel creation, guild, guild
    channels and member lookups. Anything else is recorded in ``fake.unknown_routes`` and answered with a
    404 JSON error. Every JSON answer has ``Content-Type: application/json`` exactly (discord.py only
    decodes that). Discord's rules that catch real bugs are enforced with Discord's error codes: the
    3 s acknowledgement window (10062), one acknowledgement per interaction (40060), the 15 min token
    lifetime (401, 50027), empty messages (50006), content over 2000 characters and malformed command
    payloads (50035), uploads over ``attachment_size_limit`` (413, 40005), editing others' messages (50005).
    After a deferred (type 5) response the first followup fills the "thinking" message, as on Discord.

Records (all mutable state is plain Python, inspect it directly)
    ``requests``       list of ``RecordedRequest`` (method, path relative to the API, query, json body or
                       ``payload_json``, files as (filename, bytes), headers, time, status, fault)
    ``messages``       dict int id -> ``StoredMessage`` (content, attachments, components, embeds, flags,
                       allowed_mentions, nonce, deleted, ``history`` of earlier states)
    ``interactions``   dict int id -> ``InteractionRecord``; ``callbacks`` dict int id -> list of callbacks
    ``commands``       dict guild id (None = global) -> list of command payloads; ``command_syncs`` counts
                       bulk PUTs
    ``gateway_events`` dispatches sent; ``gateway_received`` payloads the client sent
    ``server_errors``  exceptions raised inside the fake (a test fixture should assert it is empty)
    ``await fake.wait_for(predicate, timeout=5.0)`` polls a zero-argument predicate after every change
    and returns its first truthy value; ``wait_for_request(method, path_regex)`` is the common case,
    ``requests_matching(method, path_regex)`` filters without waiting, ``read_attachment(payload)`` gives
    the bytes of any stored file, ``find_command(name, guild_id=...)`` a synced command.

Fault injection
    ``fail_next(method, path_regex, status=429, retry_after=0.05, times=1)``: 429 answers carry Discord's
    body ``{"message", "retry_after", "global"}`` and ``Retry-After`` / ``X-RateLimit-*`` / ``Via`` headers
    (discord.py treats a 429 without ``Via`` as a Cloudflare ban and does not retry). Note that discord.py
    sleeps 1 s, 3 s, ... before retrying a 5xx. ``delay_next(method, path_regex, seconds)`` holds matching
    requests before handling them. ``expire_interaction_token(token)`` makes every webhook route for that
    token answer 401 ``{"code": 50027, "message": "Invalid Webhook Token"}`` and the callback 404 10062.
    ``method`` may be ``"*"``; ``path_regex`` is searched in the API-relative path (CDN paths too);
    ``pending_faults`` counts injections not yet used.

Limits: one process, one event loop; no voice, no threads/forums, no permissions overwrites, no real rate
limit buckets (only injected ones). Stop the client before the fake closes, or it will try to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import mimetypes
import re
import secrets
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000

# Gateway opcodes.
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_RESUME, OP_RECONNECT = 0, 1, 2, 6, 7
OP_REQUEST_MEMBERS, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 8, 9, 10, 11

# Gateway intents the fake honours.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15

# Interaction types and callback types.
INTERACTION_PING, INTERACTION_COMMAND, INTERACTION_COMPONENT = 1, 2, 3
INTERACTION_AUTOCOMPLETE, INTERACTION_MODAL_SUBMIT = 4, 5
CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE = 4, 5, 6
CALLBACK_UPDATE_MESSAGE, CALLBACK_AUTOCOMPLETE, CALLBACK_MODAL, CALLBACK_LAUNCH_ACTIVITY = 7, 8, 9, 12
ALLOWED_CALLBACKS = {
    INTERACTION_COMMAND: {
        CALLBACK_MESSAGE,
        CALLBACK_DEFERRED_MESSAGE,
        CALLBACK_MODAL,
        CALLBACK_LAUNCH_ACTIVITY,
    },
    INTERACTION_COMPONENT: {
        CALLBACK_MESSAGE,
        CALLBACK_DEFERRED_MESSAGE,
        CALLBACK_DEFERRED_UPDATE,
        CALLBACK_UPDATE_MESSAGE,
        CALLBACK_MODAL,
        CALLBACK_LAUNCH_ACTIVITY,
    },
    INTERACTION_AUTOCOMPLETE: {CALLBACK_AUTOCOMPLETE},
    INTERACTION_MODAL_SUBMIT: {
        CALLBACK_MESSAGE,
        CALLBACK_DEFERRED_MESSAGE,
        CALLBACK_DEFERRED_UPDATE,
        CALLBACK_UPDATE_MESSAGE,
    },
}

# Message flags and types.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_COMPONENTS_V2 = 1 << 15
MSG_DEFAULT, MSG_REPLY, MSG_CHAT_INPUT_COMMAND, MSG_CONTEXT_MENU_COMMAND = 0, 19, 20, 23

# Application command option types.
OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP, OPT_STRING, OPT_INTEGER, OPT_BOOLEAN = 1, 2, 3, 4, 5
OPT_USER, OPT_CHANNEL, OPT_ROLE, OPT_MENTIONABLE, OPT_NUMBER, OPT_ATTACHMENT = 6, 7, 8, 9, 10, 11

# Permission bits.
PERM_ADMINISTRATOR = 1 << 3
PERM_ADD_REACTIONS = 1 << 6
PERM_VIEW_CHANNEL = 1 << 10
PERM_SEND_MESSAGES = 1 << 11
PERM_EMBED_LINKS = 1 << 14
PERM_ATTACH_FILES = 1 << 15
PERM_READ_MESSAGE_HISTORY = 1 << 16
PERM_USE_EXTERNAL_EMOJIS = 1 << 18
PERM_USE_APPLICATION_COMMANDS = 1 << 31
PERM_SEND_MESSAGES_IN_THREADS = 1 << 38
MEMBER_PERMISSIONS = (
    PERM_ADD_REACTIONS
    | PERM_VIEW_CHANNEL
    | PERM_SEND_MESSAGES
    | PERM_EMBED_LINKS
    | PERM_ATTACH_FILES
    | PERM_READ_MESSAGE_HISTORY
    | PERM_USE_EXTERNAL_EMOJIS
    | PERM_USE_APPLICATION_COMMANDS
    | PERM_SEND_MESSAGES_IN_THREADS
)
ALL_PERMISSIONS = (1 << 51) - 1

# Discord JSON error codes used by the fake.
ERR_UNKNOWN_CHANNEL = 10003
ERR_UNKNOWN_MEMBER = 10007
ERR_UNKNOWN_MESSAGE = 10008
ERR_UNKNOWN_WEBHOOK = 10015
ERR_UNKNOWN_USER = 10013
ERR_UNKNOWN_COMMAND = 10063
ERR_UNKNOWN_INTERACTION = 10062
ERR_TOO_LARGE = 40005
ERR_ALREADY_ACKNOWLEDGED = 40060
ERR_EDIT_OTHERS_MESSAGE = 50005
ERR_EMPTY_MESSAGE = 50006
ERR_INVALID_WEBHOOK_TOKEN = 50027
ERR_INVALID_FORM_BODY = 50035

DEFAULT_ERROR_MESSAGES = {
    400: (ERR_INVALID_FORM_BODY, "Invalid Form Body"),
    401: (0, "401: Unauthorized"),
    403: (50013, "Missing Permissions"),
    404: (0, "404: Not Found"),
    500: (0, "500: Internal Server Error"),
    502: (0, "502: Bad Gateway"),
    503: (0, "503: Service Unavailable"),
}

MAX_CONTENT_CHARS = 2000
COMMAND_NAME_RE = re.compile(r"^[-_'\w\u0900-\u097F\u0E00-\u0E7F]{1,32}$")


# ----------------------------------------------------------------------------------------------- records


@dataclass
class RecordedRequest:
    """One HTTP request the fake received (REST or CDN)."""

    method: str
    path: str  # relative to the API base for REST ("/channels/1/messages"), absolute for the CDN
    query: dict[str, str]
    json: Any  # JSON body, or the parsed ``payload_json`` of a multipart body
    files: list[tuple[str, bytes]]
    headers: dict[str, str]
    time: float  # time.monotonic() on arrival
    multipart: bool = False
    status: int | None = None  # filled in once answered
    fault: str | None = None  # "429", "500", "delay", ... when an injected fault hit this request

    def matches(self, method: str, path_regex: str) -> bool:
        return _method_matches(method, self.method) and re.search(path_regex, self.path) is not None


@dataclass
class StoredMessage:
    """A message as the fake stores it; ``payload()`` is the Discord message object."""

    id: int
    channel_id: int
    guild_id: int | None
    author: dict[str, Any]
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict[str, Any] | None = None
    nonce: str | None = None
    tts: bool = False
    type: int = MSG_DEFAULT
    message_reference: dict[str, Any] | None = None
    mentions: list[dict[str, Any]] = field(default_factory=list)
    member: dict[str, Any] | None = None  # partial member of a human author
    webhook_id: int | None = None  # the application id for interaction responses
    application_id: int | None = None
    interaction_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    edited_at: dt.datetime | None = None
    deleted: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # snapshots before each edit

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred "thinking" message nobody has filled in yet."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def edits(self) -> int:
        return len(self.history)

    def snapshot(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "embeds": list(self.embeds),
            "components": list(self.components),
            "attachments": list(self.attachments),
            "flags": self.flags,
            "allowed_mentions": self.allowed_mentions,
            "edited_at": self.edited_at,
        }

    def component_custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in _walk_components(self.components) if "custom_id" in c]

    def custom_ids_ever(self) -> list[str]:
        """Custom ids of the components this message has carried, in any revision."""
        revisions = [h.get("components") or [] for h in self.history] + [self.components]
        return [c["custom_id"] for r in revisions for c in _walk_components(r) if "custom_id" in c]

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author,
            "content": self.content,
            "timestamp": self.created_at.isoformat(),
            "edited_timestamp": self.edited_at.isoformat() if self.edited_at else None,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": self.mentions,
            "mention_roles": [],
            "attachments": self.attachments,
            "embeds": self.embeds,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
            "components": self.components,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.nonce is not None:
            data["nonce"] = self.nonce
        if self.member is not None:
            data["member"] = self.member
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            data["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
        return data


@dataclass
class InteractionRecord:
    """One dispatched interaction and everything the bot did with it."""

    id: int
    token: str
    type: int
    payload: dict[str, Any]
    created_at: float  # time.monotonic() at dispatch
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # {"type", "data", "files", "time"}
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: dict[str, Any] | None = None  # data of a type 9 callback
    expired: bool = False
    _fake: FakeDiscord | None = field(default=None, repr=False)

    @property
    def responded(self) -> bool:
        return bool(self.callbacks)

    @property
    def response_type(self) -> int | None:
        return self.callbacks[0]["type"] if self.callbacks else None

    @property
    def user_id(self) -> int:
        user = self.payload.get("member", {}).get("user") or self.payload["user"]
        return int(user["id"])

    @property
    def channel_id(self) -> int:
        return int(self.payload["channel_id"])

    @property
    def original_message(self) -> StoredMessage | None:
        if self.original_message_id is None or self._fake is None:
            return None
        return self._fake.messages.get(self.original_message_id)

    @property
    def followups(self) -> list[StoredMessage]:
        if self._fake is None:
            return []
        return [self._fake.messages[i] for i in self.followup_ids]


@dataclass
class StoredFile:
    filename: str
    data: bytes
    content_type: str | None


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    times: int
    status: int | None = None
    retry_after: float = 0.0
    is_global: bool = False
    code: int | None = None
    message: str | None = None
    delay_s: float = 0.0


@dataclass
class GatewaySession:
    """An identified gateway session; survives reconnects that RESUME it."""

    id: str
    intents: int
    shard: tuple[int, int]
    compress: str | None = None  # the transport compression the client asked for
    seq: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)  # sent dispatches, for RESUME replay
    resumes: int = 0


class _ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None):
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return json_response(body, status=self.status)


class _GatewayConnection:
    """One websocket; serialises sends so the zlib stream stays in order."""

    def __init__(self, ws: web.WebSocketResponse, compress: str | None):
        self.ws = ws
        self.compress = compress
        self.session: GatewaySession | None = None
        self.ready = False  # READY (and GUILD_CREATE) or RESUMED sent: dispatches may follow
        self.transport: Any = None  # the TCP transport, to cut the connection abruptly
        self._lock = asyncio.Lock()
        self._zlib = zlib.compressobj() if compress == "zlib-stream" else None
        self._zstd = _zstd_compressor() if compress == "zstd-stream" else None

    @property
    def live(self) -> bool:
        return self.ready and self.session is not None and not self.ws.closed

    async def send(self, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload, separators=(",", ":")).encode()
        async with self._lock:
            if self.ws.closed:
                return
            if self._zlib is not None:
                await self.ws.send_bytes(self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH))
            elif self._zstd is not None:
                import zstandard

                chunk = self._zstd.compress(raw) + self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                await self.ws.send_bytes(chunk)
            else:
                await self.ws.send_str(raw.decode())


# ----------------------------------------------------------------------------------------------- helpers


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer whose Content-Type is exactly ``application/json`` (no charset), as Discord sends."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _method_matches(wanted: str, actual: str) -> bool:
    return wanted == "*" or wanted.upper() == actual.upper()


def _zstd_compressor() -> Any:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard.ZstdCompressor().compressobj()


def _walk_components(components: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for component in components:
        yield component
        yield from _walk_components(component.get("components", []))
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                yield from _walk_components([component[key]])


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None


def _form_error(field_name: str, code: str, message: str) -> _ApiError:
    errors = {field_name: {"_errors": [{"code": code, "message": message}]}}
    return _ApiError(400, ERR_INVALID_FORM_BODY, "Invalid Form Body", errors)


class _Snowflakes:
    """Increasing, time-based snowflake ids, so ids sort like Discord's."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        value = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = value if value > self._last else self._last + 1
        return self._last


class _Installation:
    """Points discord.py at the fake; restores the previous URLs on ``__exit__`` / ``restore()``."""

    def __init__(self, fake: FakeDiscord):
        import discord.gateway
        import discord.http
        import yarl

        self._route, self._ws = discord.http.Route, discord.gateway.DiscordWebSocket
        self._saved = (self._route.BASE, self._ws.DEFAULT_GATEWAY)
        self._route.BASE = fake.api_base
        self._ws.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
        self._active = True

    def restore(self) -> None:
        if self._active:
            self._route.BASE, self._ws.DEFAULT_GATEWAY = self._saved
            self._active = False

    def __enter__(self) -> _Installation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


_GUILD_DEFAULT: Any = object()  # sentinel: "the fake's guild"; pass guild_id=None for a DM


# ----------------------------------------------------------------------------------------------- the fake


class FakeDiscord:
    """Fake Discord gateway + REST API + CDN on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        token: str = "fake.discord.token",
        heartbeat_interval_ms: int = 41_250,
        interaction_ack_timeout_s: float = 3.0,
        interaction_token_ttl_s: float = 900.0,
        nonce_window_s: float = 300.0,
        attachment_size_limit: int = 10 * 1024 * 1024,
        strict_commands: bool = True,
        echo_message_events: bool = True,
        gateway_wait_s: float = 2.0,
        port: int = 0,
        recommended_shards: int = 1,
    ):
        self.token = token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.interaction_ack_timeout_s = interaction_ack_timeout_s
        self.interaction_token_ttl_s = interaction_token_ttl_s
        self.nonce_window_s = nonce_window_s
        self.attachment_size_limit = attachment_size_limit
        self.strict_commands = strict_commands
        self.echo_message_events = echo_message_events
        self.gateway_wait_s = gateway_wait_s
        self.recommended_shards = recommended_shards

        self._ids = _Snowflakes()
        self.application_id = self._ids.next()
        self.bot_user_id = self.application_id  # modern bots share the application's id
        self.guild_id = self._ids.next()
        self.channel_id = self._ids.next()
        self.owner_id = self._ids.next()
        self.user_id = self._ids.next()
        self.other_user_id = self._ids.next()

        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[RecordedRequest] = []
        self.messages: dict[int, StoredMessage] = {}
        self.files: dict[int, StoredFile] = {}
        self.attachment_payloads: dict[int, dict[str, Any]] = {}
        self.interactions: dict[int, InteractionRecord] = {}
        self.callbacks: dict[int, list[dict[str, Any]]] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.command_syncs = 0
        self.gateway_events: list[dict[str, Any]] = []
        self.gateway_received: list[dict[str, Any]] = []
        self.gateway_sessions: dict[str, GatewaySession] = {}
        self.identifies = 0
        self._gateway_down_until = 0.0
        self._detached: set[str] = set()  # sessions whose connection dropped, not resumed yet
        self.server_errors: list[BaseException] = []
        self.tokens: dict[str, int] = {}  # interaction token -> interaction id
        self._connections: list[_GatewayConnection] = []
        self._faults: list[_Fault] = []
        self._installations: list[_Installation] = []
        self._tasks: set[asyncio.Task[Any]] = set()

        self.users: dict[int, dict[str, Any]] = {}
        self.members: dict[int, dict[int, dict[str, Any]]] = {self.guild_id: {}}
        self.member_permissions: dict[int, int] = {}
        self.channels: dict[int, dict[str, Any]] = {}
        self.dm_channels: dict[int, int] = {}  # user id -> DM channel id
        self._default_channels: dict[int, int] = {}  # guild id -> where its interactions happen by default
        self._add_user(self.bot_user_id, "fakebot", bot=True)
        self.guild = self._build_guild(self.guild_id, "Fake Guild")
        self.guilds: dict[int, dict[str, Any]] = {self.guild_id: self.guild}   # every server the bot is in
        self._add_guild_channel(self.channel_id, "general")
        self.add_member("owner", user_id=self.owner_id, permissions=ALL_PERMISSIONS)
        self.add_member("alice", user_id=self.user_id)
        self.add_member("bob", user_id=self.other_user_id)
        self._add_guild_member(self.bot_user_id, permissions=MEMBER_PERMISSIONS)

        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = port

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        for installation in reversed(self._installations):
            installation.restore()
        self._installations.clear()
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"fake discord shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def cdn_base(self) -> str:
        return self.base_url

    def install(self) -> _Installation:
        """Point ``Route.BASE`` and ``DEFAULT_GATEWAY`` at this fake now; restored by the returned context
        manager's exit, ``restore()``, or when the fake closes."""
        installation = _Installation(self)
        self._installations.append(installation)
        return installation

    # ------------------------------------------------------------------ world building

    def _add_user(self, user_id: int, username: str, *, bot: bool = False) -> dict[str, Any]:
        user = {
            "id": str(user_id),
            "username": username,
            "discriminator": "0",
            "global_name": None if bot else username.capitalize(),
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }
        self.users[user_id] = user
        return user

    def _build_guild(self, guild_id: int, name: str) -> dict[str, Any]:
        return {
            "id": str(guild_id),
            "name": name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [
                {
                    "id": str(guild_id),  # @everyone shares the guild id
                    "name": "@everyone",
                    "color": 0,
                    "hoist": False,
                    "position": 0,
                    "permissions": str(MEMBER_PERMISSIONS),
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
        }

    def _add_guild_channel(self, channel_id: int, name: str, channel_type: int = 0, nsfw: bool = False,
                           guild_id: int | None = None) -> dict[str, Any]:
        channel = {
            "id": str(channel_id),
            "type": channel_type,
            "guild_id": str(guild_id or self.guild_id),
            "name": name,
            "position": len(self.channels),
            "permission_overwrites": [],
            "nsfw": nsfw,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }
        self.channels[channel_id] = channel
        return channel

    def _add_guild_member(self, user_id: int, *, permissions: int, guild_id: int | None = None) -> dict[str, Any]:
        member = {
            "user": self.users[user_id],
            "nick": None,
            "avatar": None,
            "roles": [],
            "joined_at": dt.datetime.now(dt.UTC).isoformat(),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        self.members[guild_id or self.guild_id][user_id] = member
        self.member_permissions[user_id] = permissions
        return member

    def add_member(
        self, username: str, *, user_id: int | None = None, permissions: int = MEMBER_PERMISSIONS
    ) -> int:
        """Add a human member to the guild; returns the user id. ``permissions`` is what interactions
        report for this member (``ALL_PERMISSIONS`` for an administrator)."""
        user_id = user_id or self._ids.next()
        self._add_user(user_id, username)
        member = self._add_guild_member(user_id, permissions=permissions)
        self._dispatch_soon(
            "GUILD_MEMBER_ADD", {**member, "guild_id": str(self.guild_id)}, INTENT_GUILD_MEMBERS
        )
        return user_id

    def add_guild(self, name: str, *, shard: tuple[int, int] | None = None) -> tuple[int, int]:
        """Another server the bot is in, with a "general" text channel and the first server's members; returns
        (guild id, channel id). ``shard=(i, n)`` picks its id so that Discord routes it to shard i of n:
        ``(guild_id >> 22) % n == i`` (the id's time part moves up to n-1 ms on)."""
        guild_id = self._ids.next()
        if shard is not None:
            index, count = shard
            ms = guild_id >> 22
            guild_id = (ms + (index - ms) % count) << 22
            self._ids._last = max(self._ids._last, guild_id)
        self.guilds[guild_id] = self._build_guild(guild_id, name)
        self.members[guild_id] = {}
        channel_id = self._ids.next()
        self._add_guild_channel(channel_id, "general", guild_id=guild_id)
        for user_id in self.members[self.guild_id]:
            self._add_guild_member(user_id, permissions=self.member_permissions[user_id], guild_id=guild_id)
        self._default_channels[guild_id] = channel_id
        return guild_id, channel_id

    def add_channel(self, name: str, channel_type: int = 0, nsfw: bool = False) -> int:
        """Add a guild channel (type 0 text by default; ``nsfw``: age-restricted); returns its id."""
        channel = self._add_guild_channel(self._ids.next(), name, channel_type, nsfw)
        self._dispatch_soon("CHANNEL_CREATE", channel, INTENT_GUILDS)
        return int(channel["id"])

    def dm_channel(self, user_id: int) -> int:
        """The DM channel between the bot and ``user_id`` (created on first use)."""
        if user_id not in self.dm_channels:
            channel_id = self._ids.next()
            self.channels[channel_id] = {
                "id": str(channel_id),
                "type": 1,
                "last_message_id": None,
                "recipients": [self.users[user_id]],
                "flags": 0,
            }
            self.dm_channels[user_id] = channel_id
        return self.dm_channels[user_id]

    def add_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        *,
        channel_id: int | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Store a file on the fake CDN (as if a user uploaded it); returns its attachment payload."""
        return self._store_file(channel_id or self.channel_id, filename, data, content_type, description)

    def _store_file(
        self,
        channel_id: int,
        filename: str,
        data: bytes,
        content_type: str | None,
        description: str | None = None,
    ) -> dict[str, Any]:
        attachment_id = self._ids.next()
        content_type = content_type or mimetypes.guess_type(filename)[0]
        self.files[attachment_id] = StoredFile(filename, data, content_type)
        path = f"/attachments/{channel_id}/{attachment_id}/{quote(filename)}"
        # Real CDN links carry signed expiry parameters; keep them so URL handling gets exercised.
        expires = int(time.time()) + 86_400
        signature = f"?ex={expires:x}&is={int(time.time()):x}&hm={secrets.token_hex(32)}&"
        payload: dict[str, Any] = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": self.cdn_base + path + signature,
            "proxy_url": self.cdn_base + "/media" + path + signature,
            "content_type": content_type,
        }
        if description is not None:
            payload["description"] = description
        if content_type and content_type.startswith("image/"):
            size = _image_size(data)
            if size is not None:
                payload["width"], payload["height"] = size
        self.attachment_payloads[attachment_id] = payload
        return payload

    def read_attachment(self, attachment: dict[str, Any] | int | str) -> bytes:
        """The bytes behind an attachment payload (or attachment id) stored on the fake CDN."""
        attachment_id = int(attachment["id"] if isinstance(attachment, dict) else attachment)
        return self.files[attachment_id].data

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 429,
        *,
        retry_after: float = 0.05,
        times: int = 1,
        is_global: bool = False,
        code: int | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` instead of handling them."""
        self._faults.append(
            _Fault(method, re.compile(path_regex), times, status, retry_after, is_global, code, message)
        )

    def delay_next(self, method: str, path_regex: str, seconds: float, *, times: int = 1) -> None:
        """Hold the next ``times`` matching requests for ``seconds`` before handling them normally."""
        self._faults.append(_Fault(method, re.compile(path_regex), times, delay_s=seconds))

    @property
    def pending_faults(self) -> int:
        return sum(f.times for f in self._faults)

    def expire_interaction_token(self, token: str) -> None:
        """Make a token behave like one older than 15 minutes."""
        self.interactions[self.tokens[token]].expired = True
        self._notify()

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until ``predicate()`` is truthy (checked after every change, and every 50 ms);
        returns that value or raises ``TimeoutError`` listing the last requests."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = "\n".join(f"  {r.method} {r.path} -> {r.status}" for r in self.requests[-10:])
                raise TimeoutError(f"condition not met within {timeout} s; last requests:\n{recent}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    async def wait_for_request(
        self, method: str, path_regex: str, *, timeout: float = 5.0, answered: bool = True
    ) -> RecordedRequest:
        """The first recorded request matching ``method`` and ``path_regex`` (answered, by default)."""

        def find() -> RecordedRequest | None:
            for request in self.requests:
                if request.matches(method, path_regex) and (request.status is not None or not answered):
                    return request
            return None

        return await self.wait_for(find, timeout)

    def requests_matching(self, method: str, path_regex: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.matches(method, path_regex)]

    async def wait_until_connected(self, timeout: float = 5.0) -> None:
        """Wait until a client has identified and received READY (and GUILD_CREATE)."""
        await self.wait_for(lambda: any(c.live for c in self._connections), timeout)

    # ------------------------------------------------------------------ HTTP entry point

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if (
            request.path.rstrip("/") == "/gateway"
            and request.headers.get("Upgrade", "").lower() == "websocket"
        ):
            return await self._gateway(request)
        record = await self._record(request)
        try:
            response = await self._answer(request, record)
        except _ApiError as error:
            response = error.response()
        except Exception as error:  # a bug in the fake: answer 400 so discord.py does not retry for 25 s
            log.exception("fake discord failed on %s %s", record.method, record.path)
            self.server_errors.append(error)
            response = json_response({"message": f"fake server error: {error!r}", "code": 0}, status=400)
        record.status = response.status
        self._notify()
        return response

    async def _record(self, request: web.Request) -> RecordedRequest:
        path = request.path
        if path.startswith(API_PREFIX):
            path = path[len(API_PREFIX) :] or "/"
        body: Any = None
        files: list[tuple[str, bytes]] = []
        multipart = request.content_type.startswith("multipart/")
        if multipart:
            body, files = await self._read_multipart(request)
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
        record = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            json=body,
            files=files,
            headers=dict(request.headers),
            time=time.monotonic(),
            multipart=multipart,
        )
        self.requests.append(record)
        self._notify()
        return record

    @staticmethod
    async def _read_multipart(request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        """discord.py sends ``payload_json`` plus ``files[n]`` parts; files keep their index order."""
        reader = await request.multipart()
        payload: Any = None
        indexed: list[tuple[int, str, bytes]] = []
        while (part := await reader.next()) is not None:
            name = part.name or ""
            if name == "payload_json":
                payload = json.loads(await part.text())
                continue
            match = re.fullmatch(r"files\[(\d+)\]|file(\d*)", name)
            if match is None:
                continue
            index = int(match.group(1) or match.group(2) or 0)
            indexed.append((index, part.filename or f"file{index}", bytes(await part.read())))
        indexed.sort(key=lambda item: item[0])
        return payload, [(filename, data) for _, filename, data in indexed]

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        fault = self._take_fault(record)
        if fault is not None and fault.delay_s:
            record.fault = "delay"
            await asyncio.sleep(fault.delay_s)
        elif fault is not None:
            record.fault = str(fault.status)
            return self._fault_response(fault)

        if not request.path.startswith(API_PREFIX):
            return self._cdn(request, record)
        for method, pattern, handler_name, needs_auth in _COMPILED_ROUTES:
            match = pattern.fullmatch(record.path)
            if match is None or method != record.method:
                continue
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise _ApiError(401, 0, "401: Unauthorized")
            handler = getattr(self, handler_name)
            return await handler(record, **match.groupdict())
        self.unknown_routes.append(record)
        raise _ApiError(404, 0, "404: Not Found")

    def _take_fault(self, record: RecordedRequest) -> _Fault | None:
        for fault in self._faults:
            if record.matches(fault.method, fault.pattern.pattern):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _fault_response(fault: _Fault) -> web.Response:
        assert fault.status is not None
        if fault.status == 429:
            reset_after = f"{fault.retry_after:.3f}"
            headers = {
                "Retry-After": str(max(1, int(fault.retry_after + 0.999))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
                "X-RateLimit-Reset-After": reset_after,
                "X-RateLimit-Bucket": "fake-" + secrets.token_hex(8),
                "X-RateLimit-Scope": "global" if fault.is_global else "user",
                "Via": "1.1 google",  # discord.py treats a 429 without Via as a Cloudflare ban
            }
            if fault.is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {
                "message": fault.message or "You are being rate limited.",
                "retry_after": fault.retry_after,
                "global": fault.is_global,
            }
            if fault.code is not None:
                body["code"] = fault.code
            return json_response(body, status=429, headers=headers)
        default_code, default_message = DEFAULT_ERROR_MESSAGES.get(
            fault.status, (0, f"{fault.status}: Error")
        )
        code = default_code if fault.code is None else fault.code
        return json_response({"message": fault.message or default_message, "code": code}, status=fault.status)

    # ------------------------------------------------------------------ CDN

    def _cdn(self, request: web.Request, record: RecordedRequest) -> web.Response:
        match = re.fullmatch(r"(?:/media)?/(?:ephemeral-)?attachments/(\d+)/(\d+)/[^/]+", request.path)
        stored = self.files.get(int(match.group(2))) if match else None
        if stored is None:
            self.unknown_routes.append(record)
            return web.Response(status=404, text="Not Found")
        return web.Response(
            body=stored.data, headers={"Content-Type": stored.content_type or "application/octet-stream"}
        )

    # ------------------------------------------------------------------ REST: users, application, gateway

    async def _get_me(self, record: RecordedRequest) -> web.Response:
        return json_response(
            {**self.users[self.bot_user_id], "verified": True, "mfa_enabled": False, "flags": 0}
        )

    async def _get_user(self, record: RecordedRequest, user_id: str) -> web.Response:
        user = self.users.get(int(user_id))
        if user is None:
            raise _ApiError(404, ERR_UNKNOWN_USER, "Unknown User")
        return json_response(user)

    async def _get_application(self, record: RecordedRequest) -> web.Response:
        return json_response(
            {
                "id": str(self.application_id),
                "name": "Fake App",
                "icon": None,
                "description": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.users[self.owner_id],
                "verify_key": "0" * 64,
                "flags": 0,
                "team": None,
                "bot": self.users[self.bot_user_id],
                "interactions_endpoint_url": None,
                "integration_types_config": {"0": {}},
            }
        )

    async def _get_gateway(self, record: RecordedRequest) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, record: RecordedRequest) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}
        return json_response({"url": self.gateway_url, "shards": self.recommended_shards,
                              "session_start_limit": limit})

    async def _create_dm(self, record: RecordedRequest) -> web.Response:
        recipient = int((record.json or {}).get("recipient_id", 0))
        if recipient not in self.users:
            raise _ApiError(400, ERR_INVALID_FORM_BODY, "Invalid Recipient(s)")
        return json_response(self.channels[self.dm_channel(recipient)])

    # ------------------------------------------------------------------ REST: guilds

    def _guild_or_404(self, guild_id: str) -> None:
        if int(guild_id) not in self.guilds:
            raise _ApiError(404, 10004, "Unknown Guild")

    async def _get_guild(self, record: RecordedRequest, guild_id: str) -> web.Response:
        self._guild_or_404(guild_id)
        return json_response(self.guilds[int(guild_id)])

    async def _get_guild_channels(self, record: RecordedRequest, guild_id: str) -> web.Response:
        self._guild_or_404(guild_id)
        return json_response([c for c in self.channels.values() if c.get("guild_id") == guild_id])

    async def _get_guild_member(self, record: RecordedRequest, guild_id: str, user_id: str) -> web.Response:
        self._guild_or_404(guild_id)
        member = self.members[int(guild_id)].get(int(user_id))
        if member is None:
            raise _ApiError(404, ERR_UNKNOWN_MEMBER, "Unknown Member")
        return json_response(member)

    # ------------------------------------------------------------------ REST: application commands

    def _command_scope(self, application_id: str, guild_id: str | None) -> int | None:
        if int(application_id) != self.application_id:
            raise _ApiError(403, 50001, "Missing Access")
        if guild_id is not None:
            self._guild_or_404(guild_id)
            return int(guild_id)
        return None

    def _validate_command(self, command: dict[str, Any], prefix: str) -> None:
        command_type = command.get("type", 1)
        name = command.get("name") or ""
        if command_type == 1:
            if not COMMAND_NAME_RE.fullmatch(name) or name != name.lower():
                raise _form_error(
                    f"{prefix}name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {name!r}"
                )
            if not 1 <= len(command.get("description") or "") <= 100:
                raise _form_error(f"{prefix}description", "BASE_TYPE_BAD_LENGTH", "Must be 1-100 characters")
        elif not 1 <= len(name) <= 32:
            raise _form_error(f"{prefix}name", "BASE_TYPE_BAD_LENGTH", "Must be 1-32 characters")
        self._validate_options(command.get("options") or [], f"{prefix}options.")

    def _validate_options(self, options: list[dict[str, Any]], prefix: str) -> None:
        if len(options) > 25:
            raise _form_error(prefix.rstrip("."), "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length")
        seen_optional = False
        for index, option in enumerate(options):
            where = f"{prefix}{index}."
            name = option.get("name") or ""
            if not COMMAND_NAME_RE.fullmatch(name) or name != name.lower():
                raise _form_error(
                    f"{where}name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {name!r}"
                )
            if not 1 <= len(option.get("description") or "") <= 100:
                raise _form_error(f"{where}description", "BASE_TYPE_BAD_LENGTH", "Must be 1-100 characters")
            if len(option.get("choices") or []) > 25:
                raise _form_error(f"{where}choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length")
            if option.get("type") in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP):
                self._validate_options(option.get("options") or [], f"{where}options.")
                continue
            if option.get("required"):
                if seen_optional:
                    raise _form_error(
                        f"{where}required",
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True

    def _store_command(self, scope: int | None, command: dict[str, Any]) -> dict[str, Any]:
        existing = {(c["name"], c.get("type", 1)): c for c in self.commands.get(scope, [])}
        previous = existing.get((command["name"], command.get("type", 1)))
        stored = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "nsfw": False,
            **command,
            "id": previous["id"] if previous else str(self._ids.next()),  # Discord keeps ids across syncs
            "application_id": str(self.application_id),
            "version": str(self._ids.next()),
        }
        if scope is not None:
            stored["guild_id"] = str(scope)
        return stored

    async def _list_commands(
        self, record: RecordedRequest, application_id: str, guild_id: str | None = None
    ) -> web.Response:
        return json_response(self.commands.get(self._command_scope(application_id, guild_id), []))

    async def _bulk_commands(
        self, record: RecordedRequest, application_id: str, guild_id: str | None = None
    ) -> web.Response:
        scope = self._command_scope(application_id, guild_id)
        payload = record.json or []
        names: set[tuple[str, int]] = set()
        for index, command in enumerate(payload):
            self._validate_command(command, f"{index}.")
            key = (command["name"], command.get("type", 1))
            if key in names:
                raise _form_error(f"{index}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME", "Duplicate name")
            names.add(key)
        stored = [self._store_command(scope, command) for command in payload]
        self.commands[scope] = stored
        self.command_syncs += 1
        return json_response(stored)

    async def _create_command(
        self, record: RecordedRequest, application_id: str, guild_id: str | None = None
    ) -> web.Response:
        scope = self._command_scope(application_id, guild_id)
        self._validate_command(record.json or {}, "")
        stored = self._store_command(scope, record.json)
        others = [
            c
            for c in self.commands.get(scope, [])
            if (c["name"], c.get("type", 1)) != (stored["name"], stored["type"])
        ]
        self.commands[scope] = [*others, stored]
        return json_response(stored, status=201)

    def _find_command_by_id(self, scope: int | None, command_id: str) -> dict[str, Any]:
        for command in self.commands.get(scope, []):
            if command["id"] == command_id:
                return command
        raise _ApiError(404, ERR_UNKNOWN_COMMAND, "Unknown application command")

    async def _get_command(
        self, record: RecordedRequest, application_id: str, command_id: str, guild_id: str | None = None
    ) -> web.Response:
        return json_response(
            self._find_command_by_id(self._command_scope(application_id, guild_id), command_id)
        )

    async def _edit_command(
        self, record: RecordedRequest, application_id: str, command_id: str, guild_id: str | None = None
    ) -> web.Response:
        command = self._find_command_by_id(self._command_scope(application_id, guild_id), command_id)
        command.update({k: v for k, v in (record.json or {}).items() if k not in ("id", "application_id")})
        return json_response(command)

    async def _delete_command(
        self, record: RecordedRequest, application_id: str, command_id: str, guild_id: str | None = None
    ) -> web.Response:
        scope = self._command_scope(application_id, guild_id)
        command = self._find_command_by_id(scope, command_id)
        self.commands[scope].remove(command)
        return web.Response(status=204)

    # ------------------------------------------------------------------ REST: channels and messages

    def _channel_or_404(self, channel_id: str) -> dict[str, Any]:
        channel = self.channels.get(int(channel_id))
        if channel is None:
            raise _ApiError(404, ERR_UNKNOWN_CHANNEL, "Unknown Channel")
        return channel

    def _message_or_404(self, message_id: int | str, channel_id: int | str | None = None) -> StoredMessage:
        message = self.messages.get(int(message_id))
        if (
            message is None
            or message.deleted
            or (channel_id is not None and message.channel_id != int(channel_id))
        ):
            raise _ApiError(404, ERR_UNKNOWN_MESSAGE, "Unknown Message")
        return message

    async def _get_channel(self, record: RecordedRequest, channel_id: str) -> web.Response:
        return json_response(self._channel_or_404(channel_id))

    async def _typing(self, record: RecordedRequest, channel_id: str) -> web.Response:
        self._channel_or_404(channel_id)
        return web.Response(status=204)

    async def _list_messages(self, record: RecordedRequest, channel_id: str) -> web.Response:
        self._channel_or_404(channel_id)
        limit = int(record.query.get("limit", 50))
        before = int(record.query.get("before", 1 << 63))
        after = int(record.query.get("after", 0))
        visible = [
            m
            for m in self.messages.values()
            if m.channel_id == int(channel_id) and not m.deleted and not m.ephemeral and after < m.id < before
        ]
        visible.sort(key=lambda m: m.id, reverse=True)
        return json_response([m.payload() for m in visible[:limit]])

    async def _create_channel_message(self, record: RecordedRequest, channel_id: str) -> web.Response:
        channel = self._channel_or_404(channel_id)
        payload = dict(record.json or {})
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            duplicate = self._recent_nonce(int(channel_id), str(nonce))
            if duplicate is not None:
                return json_response(duplicate.payload())
        message = self._new_message(
            int(channel_id),
            payload,
            record.files,
            guild_id=int(channel["guild_id"]) if "guild_id" in channel else None,
        )
        message.nonce = None if nonce is None else str(nonce)
        await self._commit_new(message)
        return json_response(message.payload())

    def _recent_nonce(self, channel_id: int, nonce: str) -> StoredMessage | None:
        horizon = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.nonce_window_s)
        for message in self.messages.values():
            if (
                message.channel_id == channel_id
                and message.nonce == nonce
                and int(message.author["id"]) == self.bot_user_id
                and message.created_at >= horizon
            ):
                return message
        return None

    async def _get_channel_message(
        self, record: RecordedRequest, channel_id: str, message_id: str
    ) -> web.Response:
        self._channel_or_404(channel_id)
        message = self._message_or_404(message_id, channel_id)
        if message.ephemeral:
            raise _ApiError(404, ERR_UNKNOWN_MESSAGE, "Unknown Message")
        return json_response(message.payload())

    async def _edit_channel_message(
        self, record: RecordedRequest, channel_id: str, message_id: str
    ) -> web.Response:
        self._channel_or_404(channel_id)
        message = self._message_or_404(message_id, channel_id)
        if int(message.author["id"]) != self.bot_user_id:
            raise _ApiError(403, ERR_EDIT_OTHERS_MESSAGE, "Cannot edit a message authored by another user")
        await self._edit_message(message, record.json or {}, record.files)
        return json_response(message.payload())

    async def _delete_channel_message(
        self, record: RecordedRequest, channel_id: str, message_id: str
    ) -> web.Response:
        self._channel_or_404(channel_id)
        await self._delete_message(self._message_or_404(message_id, channel_id))
        return web.Response(status=204)

    # ------------------------------------------------------------------ message building

    def _new_message(
        self,
        channel_id: int,
        payload: dict[str, Any],
        files: list[tuple[str, bytes]],
        *,
        guild_id: int | None,
        interaction: InteractionRecord | None = None,
        message_type: int = MSG_DEFAULT,
    ) -> StoredMessage:
        self._check_upload_size(files)
        message = StoredMessage(
            id=self._ids.next(),
            channel_id=channel_id,
            guild_id=guild_id,
            author=self.users[self.bot_user_id],
            content=payload.get("content") or "",
            embeds=list(payload.get("embeds") or []),
            components=list(payload.get("components") or []),
            flags=int(payload.get("flags") or 0),
            allowed_mentions=payload.get("allowed_mentions"),
            tts=bool(payload.get("tts", False)),
            message_reference=payload.get("message_reference"),
            type=MSG_REPLY if payload.get("message_reference") else message_type,
        )
        message.attachments = self._resolve_attachments(channel_id, payload, files, existing=[])
        if interaction is not None:
            message.webhook_id = message.application_id = self.application_id
            message.interaction_id = interaction.id
            message.interaction_metadata = self._interaction_metadata(interaction)
        self._validate_message(message)
        return message

    def _check_upload_size(self, files: list[tuple[str, bytes]]) -> None:
        if sum(len(data) for _, data in files) > self.attachment_size_limit:
            raise _ApiError(413, ERR_TOO_LARGE, "Request entity too large")

    def _resolve_attachments(
        self,
        channel_id: int,
        payload: dict[str, Any],
        files: list[tuple[str, bytes]],
        existing: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Discord's rule: an ``attachments`` list names what the message keeps (existing ids) and which
        uploaded ``files[n]`` it gets (id ``n``); without the list, uploads are added to what is there."""
        uploads = dict(enumerate(files))
        if payload.get("attachments") is None:
            return existing + [self._store_file(channel_id, name, data, None) for name, data in files]
        kept_by_id = {a["id"]: a for a in existing}
        result: list[dict[str, Any]] = []
        used: set[int] = set()
        for index, entry in enumerate(payload["attachments"]):
            ident = str(entry.get("id"))
            if ident in kept_by_id:
                result.append(kept_by_id[ident])
            elif ident.isdigit() and int(ident) in uploads and int(ident) not in used:
                name, data = uploads[int(ident)]
                used.add(int(ident))
                filename = entry.get("filename") or name
                result.append(self._store_file(channel_id, filename, data, None, entry.get("description")))
            else:
                raise _form_error(
                    f"attachments.{index}.id", "ATTACHMENT_NOT_FOUND", f"Unknown attachment {ident}"
                )
        for index, (name, data) in uploads.items():
            if index not in used:
                result.append(self._store_file(channel_id, name, data, None))
        return result

    @staticmethod
    def _validate_message(message: StoredMessage) -> None:
        if len(message.content) > MAX_CONTENT_CHARS:
            raise _form_error(
                "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT_CHARS} or fewer in length."
            )
        empty = not (message.content or message.embeds or message.attachments or message.components)
        if empty and not message.loading:
            raise _ApiError(400, ERR_EMPTY_MESSAGE, "Cannot send an empty message")

    async def _edit_message(
        self, message: StoredMessage, payload: dict[str, Any], files: list[tuple[str, bytes]]
    ) -> None:
        self._check_upload_size(files)
        before = message.snapshot()
        if "content" in payload:
            message.content = payload["content"] or ""
        if "embeds" in payload:
            message.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            message.components = list(payload["components"] or [])
        if "allowed_mentions" in payload:
            message.allowed_mentions = payload["allowed_mentions"]
        if payload.get("flags") is not None:
            # Only these flags can change on edit; ephemeral and the rest stay as created.
            editable = FLAG_SUPPRESS_EMBEDS | FLAG_COMPONENTS_V2
            message.flags = (message.flags & ~editable) | (int(payload["flags"]) & editable)
        if files or "attachments" in payload:
            message.attachments = self._resolve_attachments(
                message.channel_id, payload, files, message.attachments
            )
        was_loading = message.loading
        message.flags &= ~FLAG_LOADING
        try:
            self._validate_message(message)
        except _ApiError:
            self._restore(message, before, was_loading)
            raise
        message.edited_at = None if was_loading else dt.datetime.now(dt.UTC)
        message.history.append(before)
        self._notify()
        await self._echo("MESSAGE_UPDATE", message)

    @staticmethod
    def _restore(message: StoredMessage, snapshot: dict[str, Any], was_loading: bool) -> None:
        for key, value in snapshot.items():
            setattr(message, key, value)
        if was_loading:
            message.flags |= FLAG_LOADING

    async def _commit_new(self, message: StoredMessage) -> None:
        self.messages[message.id] = message
        channel = self.channels.get(message.channel_id)
        if channel is not None:
            channel["last_message_id"] = str(message.id)
        self._notify()
        await self._echo("MESSAGE_CREATE", message)

    async def _delete_message(self, message: StoredMessage) -> None:
        message.deleted = True
        self._notify()
        if self.echo_message_events and not message.ephemeral:
            data = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
            await self._dispatch("MESSAGE_DELETE", data, self._message_intent(message))

    def _message_intent(self, message: StoredMessage) -> int:
        return INTENT_GUILD_MESSAGES if message.guild_id is not None else INTENT_DIRECT_MESSAGES

    async def _echo(self, event: str, message: StoredMessage) -> None:
        if self.echo_message_events and not message.ephemeral:
            await self._dispatch(event, message.payload(), self._message_intent(message))

    def _interaction_metadata(self, interaction: InteractionRecord) -> dict[str, Any]:
        user = self.users[interaction.user_id]
        owners = interaction.payload.get("authorizing_integration_owners", {})
        metadata: dict[str, Any] = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": user,
            "authorizing_integration_owners": owners,
        }
        if interaction.type == INTERACTION_COMMAND:
            metadata["name"] = interaction.payload["data"]["name"]
            metadata["command_type"] = interaction.payload["data"].get("type", 1)
        return metadata

    # ------------------------------------------------------------------ REST: interactions and webhooks

    def _interaction_for_token(self, application_id: str, token: str) -> InteractionRecord:
        """Webhook routes: unknown, expired or 15-minute-old tokens answer like Discord does."""
        interaction_id = self.tokens.get(token)
        interaction = self.interactions.get(interaction_id) if interaction_id is not None else None
        if interaction is None or interaction.expired or self._token_too_old(interaction):
            raise _ApiError(401, ERR_INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        if int(application_id) != self.application_id:
            raise _ApiError(404, ERR_UNKNOWN_WEBHOOK, "Unknown Webhook")
        return interaction

    def _token_too_old(self, interaction: InteractionRecord) -> bool:
        return time.monotonic() - interaction.created_at > self.interaction_token_ttl_s

    async def _interaction_callback(
        self, record: RecordedRequest, interaction_id: str, token: str
    ) -> web.StreamResponse:
        interaction = self.interactions.get(int(interaction_id))
        if (
            interaction is None
            or interaction.token != token
            or interaction.expired
            or self._token_too_old(interaction)
        ):
            raise _ApiError(404, ERR_UNKNOWN_INTERACTION, "Unknown interaction")
        if interaction.callbacks:
            raise _ApiError(400, ERR_ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.")
        if time.monotonic() - interaction.created_at > self.interaction_ack_timeout_s:
            raise _ApiError(404, ERR_UNKNOWN_INTERACTION, "Unknown interaction")
        body = record.json or {}
        callback_type = body.get("type")
        if callback_type not in ALLOWED_CALLBACKS.get(interaction.type, set()):
            raise _form_error(
                "type", "INTERACTION_RESPONSE_TYPE_INVALID", f"Invalid response type {callback_type}"
            )
        data = body.get("data") or {}
        message = await self._apply_callback(interaction, callback_type, data, record.files)
        interaction.callbacks.append(
            {"type": callback_type, "data": data, "files": record.files, "time": record.time}
        )
        self._notify()
        if record.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        return json_response(self._callback_resource(interaction, callback_type, message))

    async def _apply_callback(
        self,
        interaction: InteractionRecord,
        callback_type: int,
        data: dict[str, Any],
        files: list[tuple[str, bytes]],
    ) -> StoredMessage | None:
        if callback_type in (CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE):
            payload = dict(data)
            if callback_type == CALLBACK_DEFERRED_MESSAGE:
                payload = {"flags": (int(data.get("flags") or 0) & FLAG_EPHEMERAL) | FLAG_LOADING}
            message = self._new_message(
                interaction.channel_id,
                payload,
                files,
                guild_id=self._guild_of(interaction),
                interaction=interaction,
                message_type=self._response_message_type(interaction),
            )
            interaction.original_message_id = message.id
            await self._commit_new(message)
            return message
        if callback_type in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE):
            source = interaction.payload.get("message")
            if source is None:
                raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "No message to update")
            message = self._message_or_404(source["id"])
            interaction.original_message_id = message.id
            if callback_type == CALLBACK_UPDATE_MESSAGE:
                await self._edit_message(message, data, files)
            return message
        if callback_type == CALLBACK_MODAL:
            if not data.get("custom_id") or not data.get("title") or not data.get("components"):
                raise _form_error("data", "MODAL_INVALID", "A modal needs custom_id, title and components")
            interaction.modal = data
        return None

    def _guild_of(self, interaction: InteractionRecord) -> int | None:
        guild_id = interaction.payload.get("guild_id")
        return int(guild_id) if guild_id is not None else None

    @staticmethod
    def _response_message_type(interaction: InteractionRecord) -> int:
        if interaction.type != INTERACTION_COMMAND:
            return MSG_DEFAULT
        return (
            MSG_CHAT_INPUT_COMMAND
            if interaction.payload["data"].get("type", 1) == 1
            else MSG_CONTEXT_MENU_COMMAND
        )

    def _callback_resource(
        self, interaction: InteractionRecord, callback_type: int, message: StoredMessage | None
    ) -> dict[str, Any]:
        summary: dict[str, Any] = {"id": str(interaction.id), "type": interaction.type}
        if message is not None:
            summary["response_message_id"] = str(message.id)
            summary["response_message_loading"] = message.loading
            summary["response_message_ephemeral"] = message.ephemeral
        resource: dict[str, Any] = {"type": callback_type}
        if message is not None and callback_type != CALLBACK_DEFERRED_UPDATE:
            resource["message"] = message.payload()
        return {"interaction": summary, "resource": resource}

    def _original_or_404(self, interaction: InteractionRecord) -> StoredMessage:
        if not interaction.callbacks:
            raise _ApiError(404, ERR_UNKNOWN_WEBHOOK, "Unknown Webhook")
        if interaction.original_message_id is None:
            raise _ApiError(404, ERR_UNKNOWN_MESSAGE, "Unknown Message")
        return self._message_or_404(interaction.original_message_id)

    def _webhook_message(self, interaction: InteractionRecord, message_id: str) -> StoredMessage:
        if message_id == "@original":
            return self._original_or_404(interaction)
        if (
            int(message_id) != interaction.original_message_id
            and int(message_id) not in interaction.followup_ids
        ):
            raise _ApiError(404, ERR_UNKNOWN_MESSAGE, "Unknown Message")
        return self._message_or_404(message_id)

    async def _get_webhook_message(
        self, record: RecordedRequest, application_id: str, token: str, message_id: str
    ) -> web.Response:
        interaction = self._interaction_for_token(application_id, token)
        return json_response(self._webhook_message(interaction, message_id).payload())

    async def _edit_webhook_message(
        self, record: RecordedRequest, application_id: str, token: str, message_id: str
    ) -> web.Response:
        interaction = self._interaction_for_token(application_id, token)
        message = self._webhook_message(interaction, message_id)
        await self._edit_message(message, record.json or {}, record.files)
        return json_response(message.payload())

    async def _delete_webhook_message(
        self, record: RecordedRequest, application_id: str, token: str, message_id: str
    ) -> web.Response:
        interaction = self._interaction_for_token(application_id, token)
        await self._delete_message(self._webhook_message(interaction, message_id))
        return web.Response(status=204)

    async def _execute_webhook(
        self, record: RecordedRequest, application_id: str, token: str
    ) -> web.Response:
        """A followup. The first one after a deferred (thinking) response fills that message in."""
        interaction = self._interaction_for_token(application_id, token)
        if not interaction.callbacks:
            raise _ApiError(404, ERR_UNKNOWN_WEBHOOK, "Unknown Webhook")
        payload = dict(record.json or {})
        original = self.messages.get(interaction.original_message_id or 0)
        if original is not None and original.loading and not original.deleted:
            await self._edit_message(original, payload, record.files)
            message = original
        else:
            message = self._new_message(
                interaction.channel_id,
                payload,
                record.files,
                guild_id=self._guild_of(interaction),
                interaction=interaction,
                message_type=self._response_message_type(interaction),
            )
            interaction.followup_ids.append(message.id)
            await self._commit_new(message)
        if record.query.get("wait") in ("1", "true", "True"):
            return json_response(message.payload())
        return web.Response(status=204)

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._gateway_down_until:
            return web.Response(status=503, text="gateway restarting")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        if request.query.get("encoding", "json") != "json":
            await ws.close(code=4002, message=b"only json encoding is supported")
            return ws
        conn = _GatewayConnection(ws, request.query.get("compress"))
        conn.transport = request.transport
        self._connections.append(conn)
        try:
            await conn.send({"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                try:
                    await self._gateway_message(conn, json.loads(msg.data))
                except Exception as error:
                    log.exception("fake discord gateway failed")
                    self.server_errors.append(error)
        finally:
            self._connections.remove(conn)
            if conn.session is not None and conn.session.id in self.gateway_sessions:
                self._detached.add(conn.session.id)   # resumable, as on Discord
            self._notify()
        return ws

    async def _gateway_message(self, conn: _GatewayConnection, payload: dict[str, Any]) -> None:
        self.gateway_received.append(payload)
        self._notify()
        op, data = payload.get("op"), payload.get("d")
        if op == OP_HEARTBEAT:
            await conn.send({"op": OP_HEARTBEAT_ACK})
        elif op == OP_IDENTIFY:
            await self._identify(conn, data)
        elif op == OP_RESUME:
            await self._resume(conn, data)
        elif op == OP_REQUEST_MEMBERS:
            await self._send_member_chunk(conn, data)

    async def _identify(self, conn: _GatewayConnection, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identifies += 1
        shard_id, shard_count = data.get("shard") or (0, 1)
        shard = (int(shard_id), int(shard_count))
        session = GatewaySession(
            id=uuid.uuid4().hex, intents=int(data.get("intents", 0)), shard=shard, compress=conn.compress
        )
        self.gateway_sessions[session.id] = session
        conn.session = session
        ready = {
            "v": 10,
            "user": {**self.users[self.bot_user_id], "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds if self._owns_guild(session, g)],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["fake-discord"],
        }
        if data.get("shard"):
            ready["shard"] = list(shard)
        await self._send_dispatch(conn, "READY", ready)
        if session.intents & INTENT_GUILDS:
            for guild_id in [g for g in self.guilds if self._owns_guild(session, g)]:
                await self._send_dispatch(conn, "GUILD_CREATE", self._guild_create(session, guild_id))
        conn.ready = True
        self._notify()

    def _owns_guild(self, session: GatewaySession, guild_id: int | None = None) -> bool:
        shard_id, shard_count = session.shard
        return ((guild_id or self.guild_id) >> 22) % shard_count == shard_id

    def _guild_create(self, session: GatewaySession, guild_id: int) -> dict[str, Any]:
        members = self.members[guild_id]
        visible = (
            members
            if session.intents & INTENT_GUILD_MEMBERS
            else {self.bot_user_id: members[self.bot_user_id]}
        )
        return {
            **self.guilds[guild_id],
            "unavailable": False,
            "large": False,
            "member_count": len(members),
            "joined_at": dt.datetime.now(dt.UTC).isoformat(),
            "members": list(visible.values()),
            "channels": [c for c in self.channels.values() if c.get("guild_id") == str(guild_id)],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    async def _resume(self, conn: _GatewayConnection, data: dict[str, Any]) -> None:
        session = self.gateway_sessions.get(data.get("session_id", ""))
        if session is None or data.get("token") != self.token:
            await conn.send({"op": OP_INVALID_SESSION, "d": False})
            return
        conn.session = session
        session.resumes += 1
        self._detached.discard(session.id)
        since = int(data.get("seq") or 0)
        for event in [e for e in session.log if e["s"] > since]:
            await conn.send(event)
        await self._send_dispatch(conn, "RESUMED", {"_trace": ["fake-discord"]})
        conn.ready = True
        self._notify()

    async def _send_member_chunk(self, conn: _GatewayConnection, data: dict[str, Any]) -> None:
        members = list(self.members.get(int(data.get("guild_id", 0)), {}).values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if int(m["user"]["id"]) in wanted]
        elif data.get("query"):
            members = [m for m in members if m["user"]["username"].startswith(data["query"])]
        if data.get("limit"):
            members = members[: int(data["limit"])]
        chunk = {
            "guild_id": str(data.get("guild_id")),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(conn, "GUILD_MEMBERS_CHUNK", chunk)

    async def _send_dispatch(self, conn: _GatewayConnection, event: str, data: dict[str, Any]) -> None:
        assert conn.session is not None
        await conn.send(self._log_dispatch(conn.session, event, data))

    def _log_dispatch(self, session: GatewaySession, event: str, data: dict[str, Any]) -> dict[str, Any]:
        session.seq += 1
        message = {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data}
        session.log.append(message)
        self.gateway_events.append(message)
        return message

    def _detached_session_for(self, guild_id: int | None) -> GatewaySession | None:
        """A resumable session (its connection dropped) that receives events for ``guild_id``."""
        for session_id in self._detached:
            session = self.gateway_sessions.get(session_id)
            if session is not None and (session.shard[0] == 0 if guild_id is None
                                        else self._owns_guild(session, guild_id)):
                return session
        return None

    def _connection_for(self, guild_id: int | None) -> _GatewayConnection | None:
        """The live connection whose shard receives events for ``guild_id`` (DMs go to shard 0)."""
        for conn in self._connections:
            if not conn.live or conn.session is None:
                continue
            if guild_id is None and conn.session.shard[0] == 0:
                return conn
            if guild_id is not None and self._owns_guild(conn.session, guild_id):
                return conn
        return None

    async def _dispatch(
        self, event: str, data: dict[str, Any], intent: int, guild_id: int | None = None
    ) -> bool:
        """Send an event to the connection that owns ``guild_id`` if it asked for ``intent``."""
        conn = self._connection_for(guild_id if guild_id is not None else _guild_from(data))
        if conn is None or conn.session is None or not conn.session.intents & intent:
            return False
        await self._send_dispatch(conn, event, data)
        return True

    def _dispatch_soon(self, event: str, data: dict[str, Any], intent: int) -> None:
        """Dispatch from sync code when a client is connected; world changes made before connecting are
        simply part of READY / GUILD_CREATE."""
        if not any(c.live for c in self._connections):
            return
        task = asyncio.get_running_loop().create_task(self._dispatch(event, data, intent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT on every live connection; discord.py then RESUMEs on a new socket."""
        for conn in [c for c in self._connections if c.live]:
            await conn.send({"op": OP_RECONNECT, "d": None})

    async def drop_gateway(self, code: int | None = 4000, hold_s: float = 0.0) -> None:
        """Close every live connection with ``code`` (one that allows RESUME, e.g. 4000), or abruptly (None:
        the TCP connection is cut, no close frame), and refuse new ones for ``hold_s``. Their sessions stay
        resumable."""
        self._gateway_down_until = time.monotonic() + hold_s
        for conn in [c for c in self._connections if c.live]:
            conn.ready = False
            assert conn.session is not None
            self._detached.add(conn.session.id)
            if code is None:
                conn.transport.abort()
            else:
                await conn.ws.close(code=code, message=b"fake discord: gateway restarting")

    async def invalidate_sessions(self) -> None:
        """Op 9 INVALID_SESSION (``d: false``, not resumable) on every live connection, as Discord sends when
        it ends a session: the sessions are forgotten and the client must IDENTIFY again."""
        for conn in [c for c in self._connections if c.live]:
            conn.ready = False
            assert conn.session is not None
            self.gateway_sessions.pop(conn.session.id, None)
            self._detached.discard(conn.session.id)
            await conn.send({"op": OP_INVALID_SESSION, "d": False})

    async def dispatch_event(self, event: str, data: dict[str, Any], guild_id: int | None = None) -> None:
        """Send any gateway dispatch (no intent filtering), waiting for a connection if needed."""
        conn = await self._await_connection(guild_id)
        await self._send_dispatch(conn, event, data)

    async def _await_connection(self, guild_id: int | None) -> _GatewayConnection:
        try:
            return await self.wait_for(lambda: self._connection_for(guild_id), self.gateway_wait_s)
        except TimeoutError:
            raise RuntimeError("no identified gateway connection: is the client running?") from None

    # ------------------------------------------------------------------ interaction dispatch helpers

    def _member_payload(self, user_id: int, guild_id: int) -> dict[str, Any]:
        member = self.members[guild_id].get(user_id)
        if member is None:
            raise KeyError(f"user {user_id} is not a member of the fake guild")
        return {**member, "permissions": str(self.member_permissions[user_id])}

    def _base_interaction(
        self,
        interaction_type: int,
        data: dict[str, Any] | None,
        *,
        user_id: int | None,
        guild_id: Any,
        channel_id: int | None,
        locale: str,
    ) -> dict[str, Any]:
        user_id = user_id or self.user_id
        guild_id = self.guild_id if guild_id is _GUILD_DEFAULT else guild_id
        if channel_id is None:
            channel_id = (self._default_channels.get(guild_id, self.channel_id) if guild_id is not None
                          else self.dm_channel(user_id))
        payload: dict[str, Any] = {
            "id": str(self._ids.next()),
            "application_id": str(self.application_id),
            "type": interaction_type,
            "token": "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48),
            "version": 1,
            "channel": self.channels[channel_id],
            "channel_id": str(channel_id),
            "locale": locale,
            "app_permissions": str(MEMBER_PERMISSIONS),
            "entitlements": [],
            "attachment_size_limit": self.attachment_size_limit,
        }
        if data is not None:
            payload["data"] = data
        if guild_id is not None:
            payload["guild_id"] = str(guild_id)
            guild = self.guilds[int(guild_id)]
            payload["guild"] = {"id": str(guild_id), "locale": guild["preferred_locale"], "features": []}
            payload["guild_locale"] = guild["preferred_locale"]
            payload["member"] = self._member_payload(user_id, int(guild_id))
            payload["authorizing_integration_owners"] = {"0": str(guild_id)}
            payload["context"] = 0
        else:
            payload["user"] = self.users[user_id]
            payload["authorizing_integration_owners"] = {"0": str(self.guild_id)}
            payload["context"] = 1
        return payload

    async def _send_interaction(self, payload: dict[str, Any]) -> InteractionRecord:
        guild_id = int(payload["guild_id"]) if "guild_id" in payload else None
        detached = self._detached_session_for(guild_id) if self._connection_for(guild_id) is None else None
        conn = None if detached is not None else await self._await_connection(guild_id)
        record = InteractionRecord(
            id=int(payload["id"]),
            token=payload["token"],
            type=payload["type"],
            payload=payload,
            created_at=time.monotonic(),
            _fake=self,
        )
        self.interactions[record.id] = record
        self.callbacks[record.id] = record.callbacks
        self.tokens[record.token] = record.id
        if conn is not None:
            await self._send_dispatch(conn, "INTERACTION_CREATE", payload)
        else:   # the client is reconnecting: it gets this when it resumes the session
            assert detached is not None
            self._log_dispatch(detached, "INTERACTION_CREATE", payload)
        self._notify()
        return record

    def find_command(
        self, name: str, command_type: int = 1, guild_id: int | None = None
    ) -> dict[str, Any] | None:
        """A synced command by name: the guild's first, then the global one."""
        for scope in ([guild_id] if guild_id is not None else []) + [None]:
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == command_type:
                    return command
        return None

    def _command_data(self, name: str, command_type: int, guild_id: int | None) -> dict[str, Any]:
        command = self.find_command(name, command_type, guild_id)
        if command is None and self.strict_commands:
            synced = {scope: [c["name"] for c in cmds] for scope, cmds in self.commands.items()}
            raise LookupError(f"command {name!r} (type {command_type}) was never synced; synced: {synced}")
        data: dict[str, Any] = {
            "id": command["id"] if command else str(self._ids.next()),
            "name": name,
            "type": command_type,
        }
        if command is not None and "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return data

    async def slash_command(
        self,
        name: str,
        options: list[dict[str, Any]] | None = None,
        *,
        user_id: int | None = None,
        guild_id: Any = _GUILD_DEFAULT,
        channel_id: int | None = None,
        locale: str = "en-US",
        resolved: dict[str, Any] | None = None,
    ) -> InteractionRecord:
        """Invoke ``/name`` as ``user_id`` (alice by default). ``options`` are Discord option dicts;
        ``type`` may be left out, and attachment values may be the payload from ``add_attachment``.
        ``guild_id=None`` invokes it in the user's DM with the bot."""
        return await self._command_interaction(
            INTERACTION_COMMAND, name, options, user_id, guild_id, channel_id, locale, resolved
        )

    async def autocomplete(
        self,
        name: str,
        options: list[dict[str, Any]],
        *,
        user_id: int | None = None,
        guild_id: Any = _GUILD_DEFAULT,
        channel_id: int | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """An autocomplete request for ``/name``; mark the option being typed with ``"focused": True``."""
        return await self._command_interaction(
            INTERACTION_AUTOCOMPLETE, name, options, user_id, guild_id, channel_id, locale, None
        )

    async def _command_interaction(
        self,
        interaction_type: int,
        name: str,
        options: list[dict[str, Any]] | None,
        user_id: int | None,
        guild_id: Any,
        channel_id: int | None,
        locale: str,
        resolved: dict[str, Any] | None,
    ) -> InteractionRecord:
        scope = self.guild_id if guild_id is _GUILD_DEFAULT else guild_id
        data = self._command_data(name, 1, scope)
        command = self.find_command(name, 1, scope)
        auto_resolved: dict[str, dict[str, Any]] = {}
        data["options"] = self._complete_options(
            options or [], (command or {}).get("options", []), auto_resolved, scope
        )
        for kind, entries in (resolved or {}).items():
            auto_resolved.setdefault(kind, {}).update(entries)
        if auto_resolved:
            data["resolved"] = auto_resolved
        payload = self._base_interaction(
            interaction_type, data, user_id=user_id, guild_id=guild_id, channel_id=channel_id, locale=locale
        )
        return await self._send_interaction(payload)

    def _complete_options(
        self,
        options: list[dict[str, Any]],
        schema: list[dict[str, Any]],
        resolved: dict[str, dict[str, Any]],
        guild_id: int | None,
    ) -> list[dict[str, Any]]:
        by_name = {o["name"]: o for o in schema}
        completed = []
        for option in options:
            option = dict(option)
            spec = by_name.get(option["name"], {})
            if isinstance(option.get("value"), dict):  # an attachment payload from add_attachment
                option["value"] = option["value"]["id"]
            option.setdefault("type", spec.get("type") or self._guess_option_type(option.get("value")))
            if option["type"] in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP):
                option["options"] = self._complete_options(
                    option.get("options", []), spec.get("options", []), resolved, guild_id
                )
            elif "value" in option:
                self._resolve_option(option, resolved, guild_id)
            completed.append(option)
        return completed

    def _guess_option_type(self, value: Any) -> int:
        if isinstance(value, bool):
            return OPT_BOOLEAN
        if isinstance(value, int):
            return OPT_INTEGER
        if isinstance(value, float):
            return OPT_NUMBER
        if isinstance(value, str) and value.isdigit() and int(value) in self.files:
            return OPT_ATTACHMENT
        return OPT_STRING

    def _resolve_option(
        self, option: dict[str, Any], resolved: dict[str, dict[str, Any]], guild_id: int | None
    ) -> None:
        option_type, value = option["type"], str(option["value"])
        if option_type == OPT_ATTACHMENT:
            resolved.setdefault("attachments", {})[value] = self._attachment_payload(int(value))
            option["value"] = value
        elif option_type in (OPT_USER, OPT_MENTIONABLE) and int(value) in self.users:
            resolved.setdefault("users", {})[value] = self.users[int(value)]
            member = self.members.get(guild_id or 0, {}).get(int(value))
            if member is not None:
                partial = {k: v for k, v in member.items() if k != "user"}
                resolved.setdefault("members", {})[value] = {
                    **partial,
                    "permissions": str(self.member_permissions[int(value)]),
                }
            option["value"] = value
        elif option_type == OPT_CHANNEL and int(value) in self.channels:
            channel = self.channels[int(value)]
            resolved.setdefault("channels", {})[value] = {**channel, "permissions": str(MEMBER_PERMISSIONS)}
            option["value"] = value
        elif option_type == OPT_ROLE:
            for role in self.guild["roles"]:
                if role["id"] == value:
                    resolved.setdefault("roles", {})[value] = role
            option["value"] = value

    def _attachment_payload(self, attachment_id: int) -> dict[str, Any]:
        if attachment_id not in self.attachment_payloads:
            raise KeyError(f"attachment {attachment_id} is not on the fake CDN; use add_attachment()")
        return self.attachment_payloads[attachment_id]

    async def message_command(
        self,
        name: str,
        target_message: int | StoredMessage | dict[str, Any],
        *,
        user_id: int | None = None,
        guild_id: Any = _GUILD_DEFAULT,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Run the message context-menu command ``name`` on a stored message (id or object) or a raw payload."""
        if isinstance(target_message, dict):
            target = target_message
        else:
            message_id = (
                target_message.id if isinstance(target_message, StoredMessage) else int(target_message)
            )
            target = self.messages[message_id].payload()
        scope = self.guild_id if guild_id is _GUILD_DEFAULT else guild_id
        data = self._command_data(name, 3, scope)
        data["target_id"] = target["id"]
        data["resolved"] = {"messages": {target["id"]: target}}
        payload = self._base_interaction(
            INTERACTION_COMMAND,
            data,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=int(target["channel_id"]),
            locale=locale,
        )
        return await self._send_interaction(payload)

    async def user_command(
        self,
        name: str,
        target_user_id: int,
        *,
        user_id: int | None = None,
        guild_id: Any = _GUILD_DEFAULT,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Run the user context-menu command ``name`` on ``target_user_id``."""
        scope = self.guild_id if guild_id is _GUILD_DEFAULT else guild_id
        data = self._command_data(name, 2, scope)
        data["target_id"] = str(target_user_id)
        resolved: dict[str, dict[str, Any]] = {}
        self._resolve_option({"type": OPT_USER, "value": str(target_user_id)}, resolved, scope)
        data["resolved"] = resolved
        payload = self._base_interaction(
            INTERACTION_COMMAND, data, user_id=user_id, guild_id=guild_id, channel_id=None, locale=locale
        )
        return await self._send_interaction(payload)

    async def click_button(
        self,
        message_id: int,
        custom_id: str,
        *,
        user_id: int | None = None,
        component_type: int = 2,
        values: list[str] | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Click a button (or choose ``values`` in a select, ``component_type=3``) on a stored message."""
        message = self.messages.get(int(message_id))
        if message is None or message.deleted:
            raise KeyError(f"message {message_id} is not stored (or was deleted)")
        component = next(
            (c for c in _walk_components(message.components) if c.get("custom_id") == custom_id), None
        )
        if component is None:
            raise LookupError(
                f"no component {custom_id!r} on message {message_id}; has {message.component_custom_ids()}"
            )
        if component.get("disabled"):
            raise LookupError(f"component {custom_id!r} on message {message_id} is disabled")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = values
        payload = self._base_interaction(
            INTERACTION_COMPONENT,
            data,
            user_id=user_id,
            guild_id=message.guild_id,
            channel_id=message.channel_id,
            locale=locale,
        )
        payload["message"] = message.payload()
        return await self._send_interaction(payload)

    async def submit_modal(
        self,
        custom_id: str,
        components: dict[str, str | list[str]] | list[dict[str, Any]],
        *,
        user_id: int | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Submit the modal ``custom_id`` the bot opened most recently. ``components`` is either
        ``{field_custom_id: value}`` (mirrored onto the modal's layout; a list value fills a select) or
        the raw submitted components."""
        opener = next(
            (
                r
                for r in reversed(self.interactions.values())
                if r.modal and r.modal.get("custom_id") == custom_id
            ),
            None,
        )
        if opener is None:
            raise LookupError(f"the bot never opened a modal with custom_id {custom_id!r}")
        submitted = (
            components
            if isinstance(components, list)
            else _fill_modal(opener.modal["components"], components)
        )
        data = {"custom_id": custom_id, "components": submitted}
        payload = self._base_interaction(
            INTERACTION_MODAL_SUBMIT,
            data,
            user_id=user_id or opener.user_id,
            guild_id=self._guild_of(opener),
            channel_id=opener.channel_id,
            locale=locale,
        )
        if "message" in opener.payload:
            payload["message"] = self.messages[int(opener.payload["message"]["id"])].payload()
        return await self._send_interaction(payload)

    async def user_message(
        self,
        content: str = "",
        *,
        user_id: int | None = None,
        channel_id: int | None = None,
        attachments: list[dict[str, Any]] | None = None,
    ) -> StoredMessage:
        """A human posts a message (MESSAGE_CREATE). Without the MESSAGE_CONTENT intent, content and
        attachments are blanked unless the bot is mentioned or it is a DM, as on Discord."""
        user_id = user_id or self.user_id
        channel_id = channel_id or self.channel_id
        channel = self._channel_or_404(str(channel_id))
        guild_id = int(channel["guild_id"]) if "guild_id" in channel else None
        mentions = [self.users[self.bot_user_id]] if f"<@{self.bot_user_id}>" in content else []
        message = StoredMessage(
            id=self._ids.next(),
            channel_id=channel_id,
            guild_id=guild_id,
            author=self.users[user_id],
            content=content,
            attachments=list(attachments or []),
            mentions=mentions,
        )
        if guild_id is not None:
            message.member = {k: v for k, v in self.members[guild_id][user_id].items() if k != "user"}
        self.messages[message.id] = message
        channel["last_message_id"] = str(message.id)
        self._notify()
        conn = await self._await_connection(guild_id)
        session = conn.session
        assert session is not None
        if session.intents & self._message_intent(message):
            data = message.payload()
            if not (session.intents & INTENT_MESSAGE_CONTENT) and guild_id is not None and not mentions:
                data.update(content="", attachments=[], embeds=[], components=[])
            await self._send_dispatch(conn, "MESSAGE_CREATE", data)
        return message


def _fill_modal(layout: list[dict[str, Any]], values: dict[str, str | list[str]]) -> list[dict[str, Any]]:
    """Mirror the modal the bot sent (action rows or labels) with the user's values."""
    submitted = []
    for component in layout:
        if component.get("type") == 1:
            submitted.append({"type": 1, "components": _fill_modal(component.get("components", []), values)})
        elif component.get("type") == 18 and "component" in component:
            inner = _fill_modal([component["component"]], values)
            submitted.append({"type": 18, "id": component.get("id"), "component": inner[0]})
        elif "custom_id" in component:
            value = values.get(component["custom_id"], "")
            entry: dict[str, Any] = {"type": component["type"], "custom_id": component["custom_id"]}
            if isinstance(value, list):
                entry["values"] = value
            else:
                entry["value"] = value
            submitted.append(entry)
    return submitted


def _guild_from(data: dict[str, Any]) -> int | None:
    guild_id = data.get("guild_id")
    return int(guild_id) if guild_id is not None else None


# (method, API-relative path regex, handler name, needs bot auth). Path parameters are named groups.
_SNOWFLAKE = r"\d+"
_ROUTES: list[tuple[str, str, str, bool]] = [
    ("GET", r"/users/@me", "_get_me", True),
    ("GET", rf"/users/(?P<user_id>{_SNOWFLAKE})", "_get_user", True),
    ("POST", r"/users/@me/channels", "_create_dm", True),
    ("GET", r"/applications/@me", "_get_application", True),
    ("GET", r"/oauth2/applications/@me", "_get_application", True),
    ("GET", r"/gateway", "_get_gateway", False),
    ("GET", r"/gateway/bot", "_get_gateway_bot", True),
    ("GET", rf"/guilds/(?P<guild_id>{_SNOWFLAKE})", "_get_guild", True),
    ("GET", rf"/guilds/(?P<guild_id>{_SNOWFLAKE})/channels", "_get_guild_channels", True),
    (
        "GET",
        rf"/guilds/(?P<guild_id>{_SNOWFLAKE})/members/(?P<user_id>{_SNOWFLAKE})",
        "_get_guild_member",
        True,
    ),
]
for _scope in (r"", rf"/guilds/(?P<guild_id>{_SNOWFLAKE})"):
    _base = rf"/applications/(?P<application_id>{_SNOWFLAKE}){_scope}/commands"
    _ROUTES += [
        ("GET", _base, "_list_commands", True),
        ("PUT", _base, "_bulk_commands", True),
        ("POST", _base, "_create_command", True),
        ("GET", rf"{_base}/(?P<command_id>{_SNOWFLAKE})", "_get_command", True),
        ("PATCH", rf"{_base}/(?P<command_id>{_SNOWFLAKE})", "_edit_command", True),
        ("DELETE", rf"{_base}/(?P<command_id>{_SNOWFLAKE})", "_delete_command", True),
    ]
_CHANNEL = rf"/channels/(?P<channel_id>{_SNOWFLAKE})"
_MESSAGE = rf"{_CHANNEL}/messages/(?P<message_id>{_SNOWFLAKE})"
_WEBHOOK = rf"/webhooks/(?P<application_id>{_SNOWFLAKE})/(?P<token>[^/]+)"
_ROUTES += [
    ("GET", _CHANNEL, "_get_channel", True),
    ("POST", rf"{_CHANNEL}/typing", "_typing", True),
    ("GET", rf"{_CHANNEL}/messages", "_list_messages", True),
    ("POST", rf"{_CHANNEL}/messages", "_create_channel_message", True),
    ("GET", _MESSAGE, "_get_channel_message", True),
    ("PATCH", _MESSAGE, "_edit_channel_message", True),
    ("DELETE", _MESSAGE, "_delete_channel_message", True),
    (
        "POST",
        rf"/interactions/(?P<interaction_id>{_SNOWFLAKE})/(?P<token>[^/]+)/callback",
        "_interaction_callback",
        False,
    ),
    ("POST", _WEBHOOK, "_execute_webhook", False),
    ("GET", rf"{_WEBHOOK}/messages/(?P<message_id>@original|{_SNOWFLAKE})", "_get_webhook_message", False),
    ("PATCH", rf"{_WEBHOOK}/messages/(?P<message_id>@original|{_SNOWFLAKE})", "_edit_webhook_message", False),
    (
        "DELETE",
        rf"{_WEBHOOK}/messages/(?P<message_id>@original|{_SNOWFLAKE})",
        "_delete_webhook_message",
        False,
    ),
]
_COMPILED_ROUTES = [(method, re.compile(path), handler, auth) for method, path, handler, auth in _ROUTES]
