"""A local fake of the Telegram Bot API for end-to-end tests of the Telegram front end.

`FakeTelegram` runs a small aiohttp server on 127.0.0.1 (a free port, or `port=`) that speaks the Bot API over HTTP, so the
real python-telegram-bot client (or any other Bot API client) can poll, download, send and edit against it
offline. Tests inject user activity with plain synchronous helpers and inspect what the bot did.

Wiring python-telegram-bot to it::

    async with FakeTelegram() as fake:
        app = (ApplicationBuilder().token(fake.token)
               .base_url(fake.base_url).base_file_url(fake.base_file_url).build())
        app.add_handler(...)
        async with app:
            await app.start()
            await app.updater.start_polling(poll_interval=0, timeout=1)
            alice = fake.user("Alice", language_code="zh")
            chat = fake.private_chat(alice)
            fake.send_photo(chat, alice, jpeg_bytes, caption="/animate a cat")
            await fake.wait_for_call("sendMessage")
            await app.updater.stop()
            await app.stop()

Keep the `httpx` logger at WARNING: it logs request URLs at INFO and Bot API URLs contain the token.

People and chats
    `fake.bot` (the bot's `User`), `fake.user(first_name, language_code=None, username=None)`,
    `fake.private_chat(user)`, `fake.group_chat(title, supergroup=False, username=None)`.
    `fake.block_bot(chat)` makes sends to that chat fail with 403 "Forbidden: bot was blocked by the user".

Injecting updates (each gets the next update_id; they stay pending until a getUpdates offset confirms them)
    `send_text(chat, user, text, reply_to=None)` -> ChatMessage. Bot commands anywhere in the text get
        `bot_command` entities (UTF-16 offsets), including the `/animate@animabot` form.
    `send_photo(chat, user, image_bytes, caption=None, reply_to=None, media_group_id=None, forward_from=None,
        file_size=None, width=None, height=None)` -> ChatMessage. The photo becomes a PhotoSize list, smallest
        first; smaller sizes are JPEG thumbnails made with Pillow and the largest keeps the exact bytes sent
        (the real API re-encodes; keeping them lets tests compare downloads). Undecodable bytes still give
        three sizes, all serving those bytes. Commands in the caption get `caption_entities`.
    `send_document(chat, user, data, filename, mime_type, caption=None, reply_to=None, file_size=None)`.
    `send_album(chat, user, images, caption=None)` -> list of ChatMessage sharing one media_group_id,
        caption on the first only.
    `press_button(chat, user, message, callback_data)` -> CallbackQuery (the data must be on one of the
        message's inline buttons, as only those can be pressed).
    `inject_update(payload)` queues any other update dict (e.g. `{"my_chat_member": {...}}`).
    `update(message_or_query_or_id)` is the pending update's dict, as getUpdates would give it.
    `file_size=` declares a size without storing that many bytes, so "file is too big" paths are cheap.

Webhooks
    `setWebhook` (url, secret_token, allowed_updates, max_connections, ip_address, drop_pending_updates; an
    empty url deletes it), `deleteWebhook` and `getWebhookInfo` keep `fake.webhook` (None, or a dict of those
    settings). While a webhook is set, getUpdates answers 409 "Conflict: can't use getUpdates method while
    webhook is active; use deleteWebhook to delete the webhook first", as Telegram does. Telegram wants an
    https URL; the fake also takes http, for servers on 127.0.0.1. The fake never posts updates by itself: a
    test delivers each pending update with `await fake.post_update(url, message_or_query_or_id,
    secret_token=...)`, which posts its JSON with the `X-Telegram-Bot-Api-Secret-Token` header (by default
    the webhook's secret; None sends none) and returns the HTTP status; a 200 delivers it (no longer
    pending). Each post is in `fake.webhook_posts` as (url, update_id, status).

Bot API methods answered
    getMe, setWebhook, deleteWebhook, getWebhookInfo, getUpdates, getFile (+ downloads at /file/bot<token>/<file_path>), sendMessage,
    editMessageText, editMessageCaption, editMessageReplyMarkup, deleteMessage, answerCallbackQuery, getChatMember,
    sendVideo, sendAnimation, sendPhoto, sendDocument, sendChatAction, setMyCommands, getMyCommands,
    deleteMyCommands. Any other method is recorded and answered with HTTP 404
    `{"ok": false, "error_code": 404, "description": "Not Found: method X"}` (see `fake.unknown_methods`).
    Parameters may come as query string, urlencoded form, multipart form or JSON body; form values are
    strings, so every field except free-text ones (text, caption, ...) is JSON-decoded when it parses.
    Multipart `attach://name` references are resolved to the uploaded part.

Behaviour copied from the real server
    A method call with a token other than `token` is answered 401
    `{"ok": false, "error_code": 401, "description": "Unauthorized"}`, as for a revoked token.
    getUpdates answers at once when updates are pending or `timeout` is 0, and otherwise waits up to
    `timeout` seconds; closing the fake releases a waiting one with []. A newer getUpdates terminates an
    older one still waiting: with 409 "Conflict: terminated by other getUpdates request; ..." when its client
    still waits for the answer (two pollers at once: the time is added to `fake.poll_conflicts`), and
    silently (recorded with status 499) when its client hung up, as a killed or stopped poller does.
    Message ids follow one sequence per chat, shared by user and bot messages.
    getFile refuses files over `download_limit` (20 MB) with 400 "Bad Request: file is too big"; uploads
    over `upload_limit` (50 MB) get 413. parse_mode=HTML is rendered (tags stripped, entities unescaped)
    and malformed HTML, including a bare "<", fails with "Bad Request: can't parse entities: ...";
    other parse modes are stored verbatim. Texts over 4096 / captions over 1024 UTF-16 units, empty
    texts, callback_data over 64 bytes, unknown chats and messages fail like the real API. Editing to
    identical content fails with "Bad Request: message is not modified: ...". An edit without
    reply_markup removes the inline keyboard, as on Telegram.

Faults and limits
    `FakeTelegram(port=N)` listens on that port (default: a free one), e.g. where a client already tries to
    connect, for tests of a platform that comes up late.
    `fail_next(method, status=429, retry_after=2, times=1, description=None)`: the next `times` calls fail
    without side effects; 429 carries `parameters.retry_after` (python-telegram-bot raises RetryAfter).
    `delay_next(method, seconds, times=1)`: answer late, for client timeouts; the request is still carried
    out after the delay, as Telegram does when a client gives up waiting.
    `fake.other_instance = True` plays a second bot process polling with the same token: every getUpdates
    is then terminated at once with 409 "Conflict: terminated by other getUpdates request; make sure that only
    one bot instance is running", as Telegram answers while two instances poll; False ends it.
    `FakeTelegram(edit_limit_per_minute=N)` answers 429 to edits beyond N per chat in a rolling minute;
    `edits_per_minute(chat_id)` counts accepted edits in the last minute either way. Pass `clock=` to
    control that minute in tests.

Inspecting
    `fake.calls`: every request except getUpdates, in completion order, as `Call(method, params, files,
    time, status, response, fault)`; getUpdates requests are in `fake.polls`. `calls_to(method, chat_id=None)`.
    `unknown_methods` lists unanswered method names and `server_errors` any crash inside the fake (answered
    500): assert both are empty at the end of a test.
    `chat_messages(chat_id)` / `bot_messages(chat_id)`: current state of each message (text, caption,
    reply_markup, photo/document/video/animation as `StoredFile` with `.data`), with `history` holding
    every revision. `message(chat_id, message_id)`, `chat_actions(chat_id)`, `commands(language_code="",
    scope=None)`, `callback_queries`, `downloads`, `pending_updates`, `waiting_polls` (getUpdates requests
    now long-polling).
    `await fake.wait_for(predicate, timeout=5.0)` re-checks the predicate after every change and returns its
    first truthy value; `await fake.wait_for_call(method, where=None, after=0, timeout=5.0)`.

How python-telegram-bot 22 surfaces these answers
    400 -> BadRequest, 403 -> Forbidden, 429 -> RetryAfter, 404 -> InvalidToken (EndPointNotFound from
    `bot.do_api_request`), 500/413 -> NetworkError, a late answer past `read_timeout` -> TimedOut. PTB drops
    the "Bad Request: " prefix and applies str.capitalize() ("BUTTON_DATA_INVALID" reads
    "Button_data_invalid"), so match error texts case-insensitively. Reading `RetryAfter.retry_after` gives
    an int plus a deprecation warning unless PTB_TIMEDELTA=true, which makes it a timedelta.
"""

from __future__ import annotations

import asyncio
import contextvars
import html
import io
import itertools
import json
import math
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
CALLBACK_DATA_LIMIT = 64
DOWNLOAD_LIMIT = 20 * 1024 * 1024
UPLOAD_LIMIT = 50 * 1024 * 1024
CONFLICT = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
SECRET_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_SET_SECRET: Any = object()   # post_update's default: the secret token of the webhook that is set
_request: contextvars.ContextVar[web.Request | None] = contextvars.ContextVar("fake_telegram_request", default=None)
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a content and reply markup of the current message"
)
# Free-text fields stay strings; every other form value is JSON-decoded when it parses.
TEXT_FIELDS = frozenset(
    {
        "text",
        "caption",
        "callback_query_id",
        "file_id",
        "parse_mode",
        "action",
        "language_code",
        "url",
        "inline_message_id",
        "title",
        "description",
        "short_description",
        "name",
        "question",
        "emoji",
        "business_connection_id",
        "message_effect_id",
        "filename",
        "secret_token",
        "ip_address",
    }
)
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
HTML_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    }
)
COMMAND_RE = re.compile(r"(?<![\w/])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/@])")
BOT_COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")
LANGUAGE_RE = re.compile(r"^([a-z]{2})?$")
PHOTO_SIDES = (90, 320, 800, 1280)
EDIT_WINDOW_S = 60.0


class ApiError(Exception):
    """An error answer: HTTP status, description and optional ResponseParameters."""

    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(reason: str) -> ApiError:
    return ApiError(400, f"Bad Request: {reason}")


# ---------------------------------------------------------------------------------------------- records


@dataclass
class User:
    id: int
    first_name: str
    username: str | None = None
    language_code: str | None = None
    is_bot: bool = False

    def to_api(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.username:
            data["username"] = self.username
        if self.language_code:
            data["language_code"] = self.language_code
        return data


@dataclass
class Chat:
    id: int
    type: str
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    blocked: bool = False

    def to_api(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "type": self.type}
        for key in ("title", "username", "first_name"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        return data


@dataclass
class StoredFile:
    """A file the server can hand out: `file_size` may be declared larger than the stored `data`."""

    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int
    mime_type: str | None = None
    file_name: str | None = None
    width: int = 0
    height: int = 0
    duration: int = 0

    def photo_size(self) -> dict[str, Any]:
        return {**self._ids(), "width": self.width, "height": self.height, "file_size": self.file_size}

    def document(self) -> dict[str, Any]:
        data = {**self._ids(), "file_size": self.file_size}
        if self.file_name:
            data["file_name"] = self.file_name
        if self.mime_type:
            data["mime_type"] = self.mime_type
        return data

    def video(self) -> dict[str, Any]:
        return {**self.document(), "width": self.width, "height": self.height, "duration": self.duration}

    def file(self) -> dict[str, Any]:
        return {**self._ids(), "file_size": self.file_size, "file_path": self.file_path}

    def _ids(self) -> dict[str, Any]:
        return {"file_id": self.file_id, "file_unique_id": self.file_unique_id}


@dataclass
class Revision:
    """One state of a message: the original send or an edit."""

    method: str
    time: float
    text: str | None
    caption: str | None
    reply_markup: dict[str, Any] | None


@dataclass
class ChatMessage:
    """A message in a chat, user-sent or bot-sent, in its current state."""

    chat: Chat
    message_id: int
    sender: User
    date: int
    text: str | None = None
    text_source: str | None = None
    entities: list[dict[str, Any]] = field(default_factory=list)
    caption: str | None = None
    caption_source: str | None = None
    caption_entities: list[dict[str, Any]] = field(default_factory=list)
    photo: list[StoredFile] = field(default_factory=list)
    document: StoredFile | None = None
    video: StoredFile | None = None
    animation: StoredFile | None = None
    reply_markup: dict[str, Any] | None = None
    has_spoiler: bool = False
    reply_to: ChatMessage | None = None
    media_group_id: str | None = None
    forward_origin: dict[str, Any] | None = None
    edit_date: int | None = None
    deleted: bool = False
    update_id: int | None = None
    history: list[Revision] = field(default_factory=list)

    @property
    def chat_id(self) -> int:
        return self.chat.id

    @property
    def from_bot(self) -> bool:
        return self.sender.is_bot

    @property
    def has_media(self) -> bool:
        return bool(self.photo or self.document or self.video or self.animation)

    @property
    def edits(self) -> list[Revision]:
        return self.history[1:]

    def buttons(self) -> list[list[dict[str, Any]]]:
        """Rows of inline keyboard buttons, [] without an inline keyboard."""
        return (self.reply_markup or {}).get("inline_keyboard", [])

    def callback_data(self) -> list[str]:
        return [b["callback_data"] for row in self.buttons() for b in row if "callback_data" in b]

    def to_api(self, with_reply: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "date": self.date,
            "chat": self.chat.to_api(),
            "from": self.sender.to_api(),
        }
        self._add_content(data)
        if with_reply and self.reply_to is not None:
            data["reply_to_message"] = self.reply_to.to_api(with_reply=False)
        for key in ("media_group_id", "forward_origin", "edit_date"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.reply_markup and "inline_keyboard" in self.reply_markup:
            data["reply_markup"] = self.reply_markup
        return data

    def _add_content(self, data: dict[str, Any]) -> None:
        if self.text is not None:
            data["text"] = self.text
            if self.entities:
                data["entities"] = self.entities
        if self.caption is not None:
            data["caption"] = self.caption
            if self.caption_entities:
                data["caption_entities"] = self.caption_entities
        if self.photo:
            data["photo"] = [size.photo_size() for size in self.photo]
        if self.has_spoiler:
            data["has_media_spoiler"] = True
        if self.document is not None:
            data["document"] = self.document.document()
        if self.video is not None:
            data["video"] = self.video.video()
        if self.animation is not None:
            data["animation"] = self.animation.video()
            data["document"] = self.animation.document()

    def snapshot(self, method: str, at: float) -> Revision:
        return Revision(method, at, self.text, self.caption, self.reply_markup)


@dataclass
class CallbackQuery:
    id: str
    update_id: int
    user: User
    message: ChatMessage
    data: str
    answer: dict[str, Any] | None = None

    @property
    def answered(self) -> bool:
        return self.answer is not None


@dataclass
class UploadedFile:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, UploadedFile]
    time: float
    status: int = 200
    response: dict[str, Any] | None = None
    fault: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def result(self) -> Any:
        return (self.response or {}).get("result")


@dataclass
class _Fault:
    status: int = 0
    retry_after: int | None = None
    description: str | None = None
    delay: float = 0.0


# ---------------------------------------------------------------------------------------------- helpers


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def command_entities(text: str) -> list[dict[str, Any]]:
    """bot_command entities for every /command (optionally /command@bot) in `text`, in UTF-16 units."""
    return [
        {"type": "bot_command", "offset": utf16_len(text[: m.start()]), "length": utf16_len(m.group())}
        for m in COMMAND_RE.finditer(text)
    ]


def render_html(source: str) -> str:
    """Plain text of a Bot API HTML message, failing on malformed markup like Telegram's parser does."""
    out: list[str] = []
    stack: list[str] = []
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char == "&":
            i = _render_entity(source, i, out)
        elif char != "<":
            out.append(char)
            i += 1
        elif i + 1 < n and source[i + 1] == "/":
            i = _close_tag(source, i, stack)
        else:
            i = _open_tag(source, i, stack)
    if stack:
        raise bad_request(
            f"can't parse entities: Can't find end tag corresponding to start tag \"{stack[-1]}\""
        )
    return "".join(out)


def _byte_offset(source: str, index: int) -> int:
    return len(source[:index].encode())


def _render_entity(source: str, start: int, out: list[str]) -> int:
    end = source.find(";", start, start + 12)
    if end != -1:
        decoded = html.unescape(source[start : end + 1])
        if decoded != source[start : end + 1]:
            out.append(decoded)
            return end + 1
    out.append("&")
    return start + 1


def _open_tag(source: str, start: int, stack: list[str]) -> int:
    j = start + 1
    while j < len(source) and not source[j].isspace() and source[j] != ">":
        j += 1
    tag = source[start + 1 : j].lower()
    if j >= len(source):
        raise bad_request(
            f"can't parse entities: Unclosed start tag at byte offset {_byte_offset(source, start)}"
        )
    if tag not in HTML_TAGS:
        raise bad_request(
            f'can\'t parse entities: Unsupported start tag "{tag}" at byte offset {_byte_offset(source, start)}'
        )
    end = _tag_end(source, j)
    if end < 0:
        raise bad_request(
            f"can't parse entities: Unclosed start tag at byte offset {_byte_offset(source, start)}"
        )
    if tag == "span" and "tg-spoiler" not in source[j:end]:
        raise bad_request('can\'t parse entities: Tag "span" must have class "tg-spoiler"')
    stack.append(tag)
    return end + 1


def _tag_end(source: str, index: int) -> int:
    quote = None
    while index < len(source):
        char = source[index]
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == ">":
            return index
        index += 1
    return -1


def _close_tag(source: str, start: int, stack: list[str]) -> int:
    end = source.find(">", start)
    if end < 0:
        raise bad_request(
            f"can't parse entities: Unclosed end tag at byte offset {_byte_offset(source, start)}"
        )
    tag = source[start + 2 : end].strip().lower()
    if not stack:
        raise bad_request(
            f"can't parse entities: Unexpected end tag at byte offset {_byte_offset(source, start)}"
        )
    if tag and tag != stack[-1]:
        raise bad_request(
            f"can't parse entities: Unmatched end tag at byte offset {_byte_offset(source, start)}, "
            f'expected "</{stack[-1]}>", found "</{tag}>"'
        )
    stack.pop()
    return end + 1


def render(source: str, parse_mode: str | None) -> str:
    return render_html(source) if (parse_mode or "").upper() == "HTML" else source


def decode_params(raw: dict[str, Any]) -> dict[str, Any]:
    """Form values are strings: JSON-decode all but free-text fields, keeping strings that do not parse."""
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and key not in TEXT_FIELDS:
            try:
                value = json.loads(value)
            except ValueError:
                pass
        params[key] = value
    return params


def photo_dimensions(data: bytes) -> tuple[Any, int, int] | None:
    """(Pillow image, width, height), or None when the bytes are not an image Pillow can decode."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return image, image.width, image.height


def thumbnail_sides(longest: int) -> list[int]:
    """Longest sides of the smaller PhotoSizes: Telegram's steps below the original, at least two."""
    sides = [side for side in PHOTO_SIDES if side < longest]
    if len(sides) < 2:
        sides = sorted({max(1, longest // 4), max(1, longest // 2), *sides} - {longest})
    return sides


def jpeg_thumbnail(image: Any, side: int) -> tuple[bytes, int, int]:
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue(), thumb.width, thumb.height


# ---------------------------------------------------------------------------------------------- server


class FakeTelegram:
    """Fake Bot API server; see the module docstring for the full surface."""

    def __init__(
        self,
        *,
        token: str = "123456:TEST-token",
        bot_username: str = "animabot",
        bot_name: str = "Anima Bot",
        download_limit: int = DOWNLOAD_LIMIT,
        upload_limit: int = UPLOAD_LIMIT,
        edit_limit_per_minute: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        port: int = 0,
    ):
        self.token = token
        self.bot = User(int(token.split(":", 1)[0]), bot_name, username=bot_username, is_bot=True)
        self.download_limit = download_limit
        self.upload_limit = upload_limit
        self.edit_limit_per_minute = edit_limit_per_minute
        self.clock = clock
        self.calls: list[Call] = []
        self.polls: list[Call] = []
        self.unknown_methods: list[str] = []
        self.server_errors: list[str] = []
        self.downloads: list[str] = []
        self.callback_queries: dict[str, CallbackQuery] = {}
        self.files: dict[str, StoredFile] = {}
        self._files_by_path: dict[str, StoredFile] = {}
        self._chats: dict[int, Chat] = {}
        self._messages: dict[int, list[ChatMessage]] = {}
        self._next_message_id: dict[int, int] = {}
        self._updates: list[dict[str, Any]] = []
        self._commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._edit_times: dict[int, list[float]] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._ids = itertools.count(1)
        self._user_ids = itertools.count(1_000_001)
        self._users: dict[int, User] = {}
        self._admins: dict[int, dict[int, str]] = {}   # chat id -> user id -> "administrator" | "creator"
        self._group_ids = itertools.count(1)
        self._update_ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._poll_generation = 0
        self._live_polls: dict[int, tuple[web.Request | None, list[str]]] = {}   # generation -> (request, verdict)
        self.waiting_polls = 0
        self.poll_conflicts: list[float] = []
        self.other_instance = False
        self.webhook: dict[str, Any] | None = None
        self.webhook_posts: list[tuple[str, int, int]] = []
        self._runner: web.AppRunner | None = None
        self.port = port

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    @property
    def api_url(self) -> str:
        """Method URLs are `api_url + "/" + method`."""
        return self.base_url + self.token

    async def start(self) -> FakeTelegram:
        # Headroom over the upload limit so oversized uploads reach the handler and get a JSON 413.
        app = web.Application(client_max_size=self.upload_limit + 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_download)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, shutdown_timeout=2.0).start()
        return self

    async def close(self) -> None:
        """Release waiting long polls and delayed answers, then stop the server."""
        self._closing.set()
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ people and chats

    def user(
        self, first_name: str = "Alice", *, language_code: str | None = None, username: str | None = None
    ) -> User:
        user = User(next(self._user_ids), first_name, username=username, language_code=language_code)
        self._users[user.id] = user
        return user

    def make_admin(self, chat: Chat, user: User, *, creator: bool = False) -> None:
        """``user`` administers (or created) group ``chat``: what getChatMember answers for them."""
        self._admins.setdefault(chat.id, {})[user.id] = "creator" if creator else "administrator"

    def private_chat(self, user: User) -> Chat:
        return self._add_chat(Chat(user.id, "private", username=user.username, first_name=user.first_name))

    def group_chat(
        self, title: str = "Test group", *, supergroup: bool = False, username: str | None = None
    ) -> Chat:
        number = next(self._group_ids)
        chat_id = -(1_001_000_000_000 + number) if supergroup else -(4_000_000_000 + number)
        return self._add_chat(
            Chat(chat_id, "supergroup" if supergroup else "group", title=title, username=username)
        )

    def block_bot(self, chat: Chat, blocked: bool = True) -> None:
        chat.blocked = blocked

    def _add_chat(self, chat: Chat) -> Chat:
        self._chats.setdefault(chat.id, chat)
        self._messages.setdefault(chat.id, [])
        self._next_message_id.setdefault(chat.id, 1)
        return self._chats[chat.id]

    # ------------------------------------------------------------------ files

    def add_file(
        self,
        data: bytes,
        *,
        kind: str = "documents",
        file_name: str | None = None,
        mime_type: str | None = None,
        file_size: int | None = None,
        width: int = 0,
        height: int = 0,
        duration: int = 0,
    ) -> StoredFile:
        """Store bytes under a new file_id; `file_size` may declare more bytes than `data` holds."""
        number = next(self._ids)
        suffix = _suffix(file_name, kind)
        stored = StoredFile(
            file_id=f"FILE{number:06d}-{kind}",
            file_unique_id=f"U{number:06d}",
            file_path=f"{kind}/file_{number}{suffix}",
            data=bytes(data),
            file_size=len(data) if file_size is None else file_size,
            mime_type=mime_type,
            file_name=file_name,
            width=width,
            height=height,
            duration=duration,
        )
        self.files[stored.file_id] = stored
        self._files_by_path[stored.file_path] = stored
        return stored

    def _photo_sizes(
        self, data: bytes, file_size: int | None, width: int | None, height: int | None
    ) -> list[StoredFile]:
        decoded = photo_dimensions(data)
        if decoded is None:
            w, h = width or 1280, height or 1280
            thumbs = [(data, max(1, w // 4), max(1, h // 4)), (data, max(1, w // 2), max(1, h // 2))]
        else:
            image, w, h = decoded
            thumbs = [jpeg_thumbnail(image, side) for side in thumbnail_sides(max(w, h))]
        sizes = [self.add_file(b, kind="photos", width=tw, height=th) for b, tw, th in thumbs]
        sizes.append(self.add_file(data, kind="photos", file_size=file_size, width=w, height=h))
        return sizes

    # ------------------------------------------------------------------ injecting updates

    def send_text(
        self, chat: Chat, user: User, text: str, reply_to: ChatMessage | int | None = None
    ) -> ChatMessage:
        message = self._new_message(chat, user, reply_to)
        message.text = message.text_source = text
        message.entities = command_entities(text)
        return self._deliver(message, "sendMessage")

    def send_photo(
        self,
        chat: Chat,
        user: User,
        image_bytes: bytes,
        caption: str | None = None,
        reply_to: ChatMessage | int | None = None,
        media_group_id: str | None = None,
        forward_from: User | Chat | None = None,
        *,
        file_size: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> ChatMessage:
        message = self._new_message(chat, user, reply_to)
        message.photo = self._photo_sizes(image_bytes, file_size, width, height)
        self._set_caption(message, caption)
        message.media_group_id = media_group_id
        message.forward_origin = self._forward_origin(forward_from)
        return self._deliver(message, "sendPhoto")

    def send_document(
        self,
        chat: Chat,
        user: User,
        data: bytes,
        filename: str,
        mime_type: str,
        caption: str | None = None,
        reply_to: ChatMessage | int | None = None,
        *,
        file_size: int | None = None,
    ) -> ChatMessage:
        message = self._new_message(chat, user, reply_to)
        message.document = self.add_file(data, file_name=filename, mime_type=mime_type, file_size=file_size)
        self._set_caption(message, caption)
        return self._deliver(message, "sendDocument")

    def send_album(
        self, chat: Chat, user: User, images: list[bytes], caption: str | None = None
    ) -> list[ChatMessage]:
        group_id = f"album{next(self._ids)}"
        return [
            self.send_photo(chat, user, image, caption if index == 0 else None, media_group_id=group_id)
            for index, image in enumerate(images)
        ]

    def press_button(
        self, chat: Chat, user: User, message: ChatMessage | int, callback_data: str
    ) -> CallbackQuery:
        target = self._find_message(chat.id, message if isinstance(message, int) else message.message_id)
        if target is None or target.deleted:
            raise ValueError(f"no message {message!r} in chat {chat.id} to press a button on")
        if callback_data not in target.callback_data():
            raise ValueError(
                f"message {target.message_id} has no button {callback_data!r}: {target.callback_data()}"
            )
        query_id = str(next(self._ids) * 1_000_003)
        payload = {
            "id": query_id,
            "from": user.to_api(),
            "message": target.to_api(),
            "chat_instance": str(abs(chat.id) * 7 + 11),
            "data": callback_data,
        }
        update_id = self.inject_update({"callback_query": payload})
        query = CallbackQuery(query_id, update_id, user, target, callback_data)
        self.callback_queries[query_id] = query
        return query

    def inject_update(self, payload: dict[str, Any]) -> int:
        """Queue an update (without update_id) and return the update_id it got."""
        update_id = next(self._update_ids)
        self._updates.append({"update_id": update_id, **payload})
        self._notify()
        return update_id

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        return list(self._updates)

    def update(self, which: ChatMessage | CallbackQuery | int) -> dict[str, Any]:
        """The update (as getUpdates gives it) of a message or button press injected here, or of an update id;
        KeyError once it was confirmed or delivered."""
        update_id = which if isinstance(which, int) else which.update_id
        for update in self._updates:
            if update["update_id"] == update_id:
                return update
        raise KeyError(f"update {update_id} is not pending")

    async def post_update(
        self,
        url: str,
        which: ChatMessage | CallbackQuery | int | dict[str, Any],
        secret_token: Any = _SET_SECRET,
        timeout: float = 10.0,
    ) -> int:
        """Post an update to a webhook server as Telegram does (JSON body, the secret token header) and return
        the HTTP status; on 200 the update counts as delivered and is no longer pending. `secret_token`: that
        of the webhook set (default), another string, or None for no header. A server that cannot be reached
        raises aiohttp.ClientError (a load balancer would try the next one). The fake never posts by itself:
        the test plays Telegram and the load balancer."""
        update = which if isinstance(which, dict) else self.update(which)
        if secret_token is _SET_SECRET:
            secret_token = (self.webhook or {}).get("secret_token")
        headers = {SECRET_HEADER: secret_token} if secret_token is not None else {}
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                    session.post(url, json=update, headers=headers) as response):
            await response.read()
            status = response.status
        self.webhook_posts.append((url, update["update_id"], status))
        if status == 200:
            self._updates = [u for u in self._updates if u["update_id"] != update["update_id"]]
        self._notify()
        return status

    def _new_message(self, chat: Chat, sender: User, reply_to: ChatMessage | int | None) -> ChatMessage:
        chat = self._add_chat(chat)
        message_id = self._next_message_id[chat.id]
        self._next_message_id[chat.id] += 1
        message = ChatMessage(chat, message_id, sender, int(time.time()))
        if reply_to is not None:
            reply_id = reply_to if isinstance(reply_to, int) else reply_to.message_id
            message.reply_to = self._find_message(chat.id, reply_id)
        return message

    def _set_caption(self, message: ChatMessage, caption: str | None) -> None:
        message.caption = message.caption_source = caption
        message.caption_entities = command_entities(caption) if caption else []

    def _forward_origin(self, origin: User | Chat | None) -> dict[str, Any] | None:
        if origin is None:
            return None
        date = int(time.time()) - 60
        if isinstance(origin, User):
            return {"type": "user", "date": date, "sender_user": origin.to_api()}
        if origin.type == "channel":
            return {"type": "channel", "date": date, "chat": origin.to_api(), "message_id": 1}
        return {"type": "chat", "date": date, "sender_chat": origin.to_api()}

    def _deliver(self, message: ChatMessage, method: str) -> ChatMessage:
        self._store(message, method)
        message.update_id = self.inject_update({"message": message.to_api()})
        return message

    def _store(self, message: ChatMessage, method: str) -> None:
        message.history.append(message.snapshot(method, self.clock()))
        self._messages[message.chat_id].append(message)

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        method: str,
        status: int = 429,
        retry_after: int = 2,
        times: int = 1,
        description: str | None = None,
    ) -> None:
        """Fail the next `times` calls of `method` before they take effect."""
        fault = _Fault(
            status=status, retry_after=retry_after if status == 429 else None, description=description
        )
        self._faults.setdefault(method.lower(), []).extend(fault for _ in range(times))

    def delay_next(self, method: str, seconds: float, times: int = 1) -> None:
        """Answer the next `times` calls of `method` after `seconds`; they still take effect."""
        self._faults.setdefault(method.lower(), []).extend(_Fault(delay=seconds) for _ in range(times))

    def edits_per_minute(self, chat_id: int) -> int:
        return len(self._recent_edits(chat_id))

    def _recent_edits(self, chat_id: int) -> list[float]:
        cutoff = self.clock() - EDIT_WINDOW_S
        times = [t for t in self._edit_times.get(chat_id, []) if t > cutoff]
        self._edit_times[chat_id] = times
        return times

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method.lower())
        return queue.pop(0) if queue else None

    # ------------------------------------------------------------------ inspecting

    def chat_messages(self, chat_id: int, *, include_deleted: bool = False) -> list[ChatMessage]:
        return [m for m in self._messages.get(chat_id, []) if include_deleted or not m.deleted]

    def bot_messages(self, chat_id: int, *, include_deleted: bool = False) -> list[ChatMessage]:
        return [m for m in self.chat_messages(chat_id, include_deleted=include_deleted) if m.from_bot]

    def message(self, chat_id: int, message_id: int) -> ChatMessage | None:
        return self._find_message(chat_id, message_id)

    def calls_to(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method.lower() == method.lower() and (chat_id is None or c.params.get("chat_id") == chat_id)
        ]

    def chat_actions(self, chat_id: int) -> list[str]:
        return [c.params["action"] for c in self.calls_to("sendChatAction", chat_id) if c.ok]

    def commands(self, language_code: str = "", scope: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self._commands.get((_scope_key(scope), language_code), []))

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Return the predicate's first truthy value, re-checking after every change to the fake."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            changed = self._changed
            value = predicate()
            if value:
                return value
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                recent = [f"{c.method} {c.status}" for c in self.calls[-10:]]
                raise TimeoutError(f"condition not met within {timeout}s; last calls: {recent}")
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_for_call(
        self,
        method: str,
        *,
        where: Callable[[Call], bool] | None = None,
        after: int = 0,
        timeout: float = 5.0,
    ) -> Call:
        """First call of `method` at index >= `after` in `calls` (and matching `where`)."""

        def match() -> Call | None:
            for call in self.calls[after:]:
                if call.method.lower() == method.lower() and (where is None or where(call)):
                    return call
            return None

        return await self.wait_for(match, timeout)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _find_message(self, chat_id: int, message_id: int) -> ChatMessage | None:
        for message in self._messages.get(chat_id, []):
            if message.message_id == message_id:
                return message
        return None

    # ------------------------------------------------------------------ HTTP layer

    async def _handle_method(self, request: web.Request) -> web.Response:
        received = self.clock()
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return _json_response(ApiError(401, "Unauthorized").payload(), 401)
        call = Call(method, {}, {}, received)
        _request.set(request)
        try:
            call.params, call.files = await _read_params(request)
            await self._apply_fault(call)
            result = await self._dispatch(method, call)
            call.response = {"ok": True, "result": result}
        except ApiError as error:
            call.status, call.response = error.status, error.payload()
        except web.HTTPRequestEntityTooLarge:
            call.status, call.response = 413, ApiError(413, "Request Entity Too Large").payload()
        except ConnectionResetError:   # the client hung up mid-request (a cancelled call): nothing to answer
            call.status, call.response = 499, {"ok": False, "description": "client closed the request"}
        except Exception as exc:  # a bug in the fake must fail the test, not hang the client
            self.server_errors.append(f"{method}: {exc!r}")
            call.status, call.response = 500, ApiError(500, f"Internal Server Error: {exc!r}").payload()
        (self.polls if method.lower() == "getupdates" else self.calls).append(call)
        self._notify()
        return _json_response(call.response, call.status)

    async def _apply_fault(self, call: Call) -> None:
        fault = self._take_fault(call.method)
        if fault is None:
            return
        if fault.delay:
            call.fault = f"delay {fault.delay}s"
            await self._sleep(fault.delay)
            return
        call.fault = f"fail {fault.status}"
        if fault.status == 429:
            raise ApiError(
                429, f"Too Many Requests: retry after {fault.retry_after}", {"retry_after": fault.retry_after}
            )
        raise ApiError(fault.status, fault.description or _default_description(fault.status))

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            pass

    async def _dispatch(self, method: str, call: Call) -> Any:
        handler = getattr(self, f"_api_{method.lower()}", None)
        if handler is None:
            self.unknown_methods.append(method)
            raise ApiError(404, f"Not Found: method {method}")
        return await handler(call.params, call.files)

    async def _handle_download(self, request: web.Request) -> web.Response:
        stored = self._files_by_path.get(request.match_info["path"])
        if request.match_info["token"] != self.token or stored is None:
            return _json_response(ApiError(404, "Not Found").payload(), 404)
        self.downloads.append(stored.file_path)
        self._notify()
        return web.Response(body=stored.data, content_type=stored.mime_type or "application/octet-stream")

    # ------------------------------------------------------------------ Bot API methods

    async def _api_getme(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        return {
            **self.bot.to_api(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _api_deletewebhook(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = None
        return True

    async def _api_setwebhook(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        url = str(params.get("url") or "")
        if not url:   # an empty url removes the webhook, as deleteWebhook does
            return await self._api_deletewebhook(params, files)
        if not url.startswith(("https://", "http://")):   # Telegram wants https; the fake takes local http too
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not SECRET_TOKEN_RE.match(str(secret)):
            raise bad_request("secret token contains unallowed characters")
        allowed = params.get("allowed_updates")
        if allowed is not None and not isinstance(allowed, list):
            raise bad_request("can't parse allowed updates")
        max_connections = int(params.get("max_connections") or 40)
        if not 1 <= max_connections <= 100:
            raise bad_request("bad webhook: max_connections must be between 1 and 100")
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = {"url": url, "secret_token": secret, "allowed_updates": allowed,
                        "max_connections": max_connections, "ip_address": params.get("ip_address")}
        self._notify()   # a waiting long poll is now in conflict with the webhook
        return True

    async def _api_getwebhookinfo(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        hook = self.webhook
        info: dict[str, Any] = {"url": hook["url"] if hook else "", "has_custom_certificate": False,
                                "pending_update_count": len(self._updates)}
        if hook:
            info["max_connections"] = hook["max_connections"]
            if hook["allowed_updates"] is not None:
                info["allowed_updates"] = hook["allowed_updates"]
            if hook["ip_address"]:
                info["ip_address"] = hook["ip_address"]
        return info

    async def _api_getupdates(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(409, WEBHOOK_CONFLICT)
        if self.other_instance:
            raise ApiError(409, CONFLICT)
        generation = self._start_poll()
        try:
            return await self._poll(params, generation)
        finally:
            self._live_polls.pop(generation, None)

    def _start_poll(self) -> int:
        """Register a getUpdates; an older one still in flight is terminated (`_poll`)."""
        self._poll_generation += 1
        generation = self._poll_generation
        for _, verdict in self._live_polls.values():
            verdict.append("superseded")
        self._live_polls[generation] = (_request.get(), [])
        return generation

    async def _poll(self, params: dict[str, Any], generation: int) -> list[dict[str, Any]]:
        verdict = self._live_polls[generation][1]
        offset = params.get("offset")
        if isinstance(offset, int):
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        allowed = params.get("allowed_updates") or None
        self._notify()  # releases an older long poll that is still waiting
        deadline = asyncio.get_running_loop().time() + timeout
        waiting = False
        try:
            while True:
                changed = self._changed
                if verdict:
                    # Terminated by a newer getUpdates, as Telegram does: 409 when its client still waits (two
                    # pollers at once); nothing when the client hung up (a poller killed or stopped), which
                    # may take a moment to show.
                    await self._sleep(0.1)
                    if _client_there(self._live_polls[generation][0]):
                        self.poll_conflicts.append(self.clock())
                        raise ApiError(409, CONFLICT)
                    raise ApiError(499, "client closed the request")
                if self.webhook is not None:
                    raise ApiError(409, WEBHOOK_CONFLICT)
                batch = [u for u in self._updates if allowed is None or _update_type(u) in allowed][:limit]
                remaining = deadline - asyncio.get_running_loop().time()
                if batch or remaining <= 0 or self._closing.is_set():
                    return batch
                if not waiting:
                    # Announced once, then looked at again: the announcement sets the event just captured, and
                    # waiting on that one would return at once, again and again, for the whole long poll.
                    waiting = True
                    self.waiting_polls += 1
                    self._notify()
                    continue
                await self._wait_in_poll(changed, remaining)
        finally:
            if waiting:
                self.waiting_polls -= 1

    async def _wait_in_poll(self, changed: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(changed.wait(), seconds)
        except TimeoutError:
            pass

    async def _api_getfile(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        stored = self.files.get(str(params.get("file_id", "")))
        if stored is None:
            raise bad_request("invalid file_id")
        if stored.file_size > self.download_limit:
            raise bad_request("file is too big")
        return stored.file()

    async def _api_sendmessage(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        chat = self._target_chat(params)
        source = str(params.get("text", ""))
        text = render(source, params.get("parse_mode"))
        _check_text(text)
        markup = _reply_markup(params)
        message = self._new_bot_message(chat, params)
        message.text, message.text_source, message.reply_markup = text, source, markup
        self._store(message, "sendMessage")
        return message.to_api()

    async def _api_sendvideo(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        return self._send_media("video", "videos", params, files)

    async def _api_sendanimation(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        return self._send_media("animation", "animations", params, files)

    async def _api_senddocument(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        return self._send_media("document", "documents", params, files)

    async def _api_sendphoto(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        return self._send_media("photo", "photos", params, files)

    async def _api_editmessagetext(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        message = self._editable_message(params)
        if message.text is None:
            raise bad_request("there is no text in the message to edit")
        source = str(params.get("text", ""))
        text = render(source, params.get("parse_mode"))
        _check_text(text)
        markup = _reply_markup(params)
        if (text, source, markup) == (message.text, message.text_source, message.reply_markup):
            raise ApiError(400, NOT_MODIFIED)
        self._check_edit_rate(message.chat_id)
        message.text, message.text_source, message.reply_markup = text, source, markup
        return self._record_edit(message, "editMessageText")

    async def _api_editmessagecaption(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        message = self._editable_message(params)
        if not message.has_media:
            raise bad_request("there is no caption in the message to edit")
        source = params.get("caption")
        caption = None if source is None else render(str(source), params.get("parse_mode"))
        _check_caption(caption)
        markup = _reply_markup(params)
        if (caption, source, markup) == (message.caption, message.caption_source, message.reply_markup):
            raise ApiError(400, NOT_MODIFIED)
        self._check_edit_rate(message.chat_id)
        message.caption, message.caption_source, message.reply_markup = caption, source, markup
        return self._record_edit(message, "editMessageCaption")

    async def _api_editmessagemedia(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        """Replace a media message's photo/video/animation/document (a photo may become an animation)."""
        message = self._editable_message(params)
        if not message.has_media:
            raise bad_request("there is no media in the message to edit")
        media = params.get("media")
        if isinstance(media, str):
            media = json.loads(media)
        if not isinstance(media, dict) or media.get("type") not in ("photo", "video", "animation", "document"):
            raise bad_request("can't parse InputMedia: media type is invalid")
        kind = media["type"]
        upload = media.get("media")
        if isinstance(upload, str) and upload.startswith("attach://"):
            upload = files.get(upload[9:])
        stored = self._media_file(kind, kind + "s", {kind: upload, **media}, {})
        source = media.get("caption")
        caption = None if source is None else render(str(source), media.get("parse_mode"))
        _check_caption(caption)
        self._check_edit_rate(message.chat_id)
        message.photo, message.video, message.animation, message.document = [], None, None, None
        if kind == "photo":
            message.photo = [stored]
        else:
            setattr(message, kind, stored)
        message.caption, message.caption_source = caption, source
        message.has_spoiler = bool(media.get("has_spoiler"))
        message.reply_markup = _reply_markup(params)
        return self._record_edit(message, "editMessageMedia")

    async def _api_editmessagereplymarkup(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        message = self._editable_message(params)
        markup = _reply_markup(params)
        if markup == message.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        self._check_edit_rate(message.chat_id)
        message.reply_markup = markup
        return self._record_edit(message, "editMessageReplyMarkup")

    async def _api_deletemessage(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        chat = self._known_chat(params)
        message = self._find_message(chat.id, _int_param(params, "message_id"))
        if message is None or message.deleted:
            raise bad_request("message to delete not found")
        message.deleted = True
        return True

    async def _api_answercallbackquery(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        query = self.callback_queries.get(str(params.get("callback_query_id", "")))
        if query is None or query.answered:
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        query.answer = {k: v for k, v in params.items() if k != "callback_query_id"}
        return True

    async def _api_sendchataction(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        self._target_chat(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    async def _api_setmycommands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("can't parse commands JSON object")
        for command in commands:
            if not BOT_COMMAND_RE.match(str(command.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", "")).strip()) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        self._commands[self._commands_key(params)] = commands
        return True

    async def _api_getmycommands(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> list[dict[str, Any]]:
        return list(self._commands.get(self._commands_key(params), []))

    async def _api_deletemycommands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        self._commands.pop(self._commands_key(params), None)
        return True

    # ------------------------------------------------------------------ method helpers

    def _known_chat(self, params: dict[str, Any]) -> Chat:
        chat_id = params.get("chat_id")
        if chat_id in (None, ""):
            raise bad_request("chat_id is empty")
        for chat in self._chats.values():
            if chat_id == chat.id or (chat.username and chat_id == f"@{chat.username}"):
                return chat
        raise bad_request("chat not found")

    async def _api_getchatmember(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        chat = self._known_chat(params)
        user = self._users.get(int(params["user_id"]))
        if user is None:
            raise ApiError(400, "Bad Request: user not found")
        status = "member" if chat.type == "private" else self._admins.get(chat.id, {}).get(user.id, "member")
        member: dict[str, Any] = {"status": status, "user": user.to_api()}
        if status == "creator":
            member.update(is_anonymous=False)
        elif status == "administrator":
            member.update(can_be_edited=False, is_anonymous=False, can_manage_chat=True, can_delete_messages=True,
                          can_manage_video_chats=True, can_restrict_members=True, can_promote_members=False,
                          can_change_info=True, can_invite_users=True, can_post_stories=False,
                          can_edit_stories=False, can_delete_stories=False)
        return member

    def _target_chat(self, params: dict[str, Any]) -> Chat:
        chat = self._known_chat(params)
        if chat.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _new_bot_message(self, chat: Chat, params: dict[str, Any]) -> ChatMessage:
        return self._new_message(chat, self.bot, self._reply_target(chat, params))

    def _reply_target(self, chat: Chat, params: dict[str, Any]) -> ChatMessage | None:
        reply = params.get("reply_parameters") or {}
        reply_id = reply.get("message_id", params.get("reply_to_message_id"))
        if reply_id is None:
            return None
        target = self._find_message(chat.id, int(reply_id))
        if target is not None and not target.deleted:
            return target
        if reply.get("allow_sending_without_reply", params.get("allow_sending_without_reply")):
            return None
        raise bad_request("message to be replied not found")

    def _send_media(
        self, field_name: str, kind: str, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        chat = self._target_chat(params)
        source = params.get("caption")
        caption = None if source is None else render(str(source), params.get("parse_mode"))
        _check_caption(caption)
        markup = _reply_markup(params)
        stored = self._media_file(field_name, kind, params, files)
        message = self._new_bot_message(chat, params)
        if field_name == "photo":
            message.photo = [stored]
        else:
            setattr(message, field_name, stored)
        message.caption, message.caption_source, message.reply_markup = caption, source, markup
        message.has_spoiler = str(params.get("has_spoiler", "")).lower() == "true"
        self._store(message, f"send{field_name.capitalize()}")
        return message.to_api()

    def _media_file(
        self, field_name: str, kind: str, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> StoredFile:
        upload = files.get(field_name) or params.get(field_name)
        if isinstance(upload, str):
            if upload in self.files:
                return self.files[upload]
            raise bad_request("wrong file identifier/HTTP URL specified")
        if not isinstance(upload, UploadedFile):
            raise bad_request(f"there is no {field_name} in the request")
        if len(upload.data) > self.upload_limit:
            raise ApiError(413, "Request Entity Too Large")
        return self.add_file(
            upload.data,
            kind=kind,
            file_name=upload.filename,
            mime_type=upload.content_type,
            width=int(params.get("width") or 0),
            height=int(params.get("height") or 0),
            duration=int(params.get("duration") or 0),
        )

    def _editable_message(self, params: dict[str, Any]) -> ChatMessage:
        if params.get("inline_message_id"):
            raise bad_request("inline messages are not supported by this server")
        chat = self._target_chat(params)
        message = self._find_message(chat.id, _int_param(params, "message_id"))
        if message is None or message.deleted:
            raise bad_request("message to edit not found")
        if not message.from_bot:
            raise bad_request("message can't be edited")
        return message

    def _check_edit_rate(self, chat_id: int) -> None:
        recent = self._recent_edits(chat_id)
        if self.edit_limit_per_minute is not None and len(recent) >= self.edit_limit_per_minute:
            retry_after = max(1, math.ceil(recent[0] + EDIT_WINDOW_S - self.clock()))
            raise ApiError(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})

    def _record_edit(self, message: ChatMessage, method: str) -> dict[str, Any]:
        now = self.clock()
        self._edit_times.setdefault(message.chat_id, []).append(now)
        message.edit_date = int(time.time())
        message.history.append(message.snapshot(method, now))
        return message.to_api()

    def _commands_key(self, params: dict[str, Any]) -> tuple[str, str]:
        language = str(params.get("language_code") or "")
        if not LANGUAGE_RE.match(language):
            raise bad_request("LANG_CODE_INVALID")
        return _scope_key(params.get("scope")), language


# ---------------------------------------------------------------------------------------------- module helpers


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
    raw: dict[str, Any] = dict(request.query)
    files: dict[str, UploadedFile] = {}
    if request.content_type == "application/json":
        try:
            raw.update(await request.json())
        except ValueError:
            raise bad_request("can't parse JSON body") from None
    elif request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                files[key] = UploadedFile(key, value.filename, value.content_type, value.file.read())
            else:
                raw[key] = value
    params = decode_params(raw)
    for key, value in list(params.items()):
        if isinstance(value, str) and value.startswith("attach://") and value[9:] in files:
            files[key] = files[value[9:]]
            del params[key]
    return params, files


def _json_response(payload: dict[str, Any] | None, status: int) -> web.Response:
    return web.json_response(payload, status=status)


def _default_description(status: int) -> str:
    return {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden: bot was blocked by the user",
        404: "Not Found",
        409: "Conflict: terminated by other getUpdates request",
        500: "Internal Server Error",
        502: "Bad Gateway",
    }.get(status, "Error")


def _client_there(request: web.Request | None) -> bool:
    """Whether the client of a request still waits for its answer (its connection is open)."""
    transport = request.transport if request is not None else None
    return transport is not None and not transport.is_closing()


def _update_type(update: dict[str, Any]) -> str:
    return next(key for key in update if key != "update_id")


def _scope_key(scope: dict[str, Any] | None) -> str:
    return json.dumps(scope or {"type": "default"}, sort_keys=True)


def _int_param(params: dict[str, Any], name: str) -> int:
    try:
        return int(params[name])
    except (KeyError, TypeError, ValueError):
        raise bad_request(f"{name} is empty") from None


def _check_text(text: str) -> None:
    if not text.strip():
        raise bad_request("message text is empty")
    if utf16_len(text) > TEXT_LIMIT:
        raise bad_request("message is too long")


def _check_caption(caption: str | None) -> None:
    if caption is not None and utf16_len(caption) > CAPTION_LIMIT:
        raise bad_request("message caption is too long")


def _reply_markup(params: dict[str, Any]) -> dict[str, Any] | None:
    markup = params.get("reply_markup")
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    for row in markup.get("inline_keyboard", []):
        for button in row:
            if len(str(button.get("callback_data", "")).encode()) > CALLBACK_DATA_LIMIT:
                raise bad_request("BUTTON_DATA_INVALID")
    return markup


def _suffix(file_name: str | None, kind: str) -> str:
    if file_name and "." in file_name:
        return "." + file_name.rsplit(".", 1)[1].lower()
    return {"photos": ".jpg", "videos": ".mp4", "animations": ".mp4"}.get(kind, "")
