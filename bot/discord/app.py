"""Discord front end (discord.py 2.x): slash commands, a message context menu, buttons that survive restarts,
and one status message per job that turns into the result video.

Flow of a render command: refuse a bad upload from the interaction payload alone (ephemeral), defer within
Discord's 3 s window, download the image from an allowed host with a size cap, submit through the core, and
follow the job. Progress edits go to the interaction response; once its token is about to expire (15 min) or
Discord says it is gone, the job continues in an ordinary channel message sent with the bot token.

Buttons carry `anim:<action>:<job id>` and are matched by a DynamicItem pattern, so no view lives in memory
and buttons of old results keep working after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.app_commands import Range, locale_str

from bot.core import BUTTON_ACTIONS, BotCore, Button, JobRequest, RetryLater, error_text, lang, shorten, t
from engine.config import Config
from engine.errors import UserError
from engine.jobs import Job
from engine.prompts import CAMERAS, SPEEDS

log = logging.getLogger("bot.discord")

PLATFORM = "discord"
MAX_SEED = 2**31 - 1
MAX_CONTENT = 2000
COMMANDS_HASH_KEY = "discord_commands_hash"
DOWNLOAD_CHUNK = 64 * 1024
NO_MENTIONS = discord.AllowedMentions.none()

# Chinese texts of the command definitions and the modal, keyed by their English text.
ZH = {
    "animate": "动画",
    "hq": "高质量",
    "cancel": "取消",
    "queue": "队列",
    "help": "帮助",
    "forget": "删除数据",
    "stats": "统计",
    "pause": "暂停",
    "resume": "恢复",
    "ban": "封禁",
    "unban": "解封",
    "image": "图片",
    "prompt": "提示词",
    "seed": "种子",
    "negative": "反向提示词",
    "camera": "镜头",
    "subject": "主体",
    "environment": "环境",
    "Who or what is in the photo (optional)": "照片里的人或物（可选）",
    "Where it happens (optional)": "发生的场景（可选）",
    "speed": "速度",
    "user": "用户",
    "Animate this image": "把这张图做成动画",
    "Turn a photo into a short video (quick)": "把照片变成短视频（快速）",
    "Turn a photo into a short video in high quality": "把照片变成高质量短视频",
    "Cancel your latest job": "取消你最近的任务",
    "Your jobs and their place in the queue": "你的任务及其排队位置",
    "How to use this bot": "使用说明",
    "Delete all your jobs, images and videos": "删除你的全部任务、图片和视频",
    "Admin: queue and worker numbers": "管理员：队列和渲染进程状态",
    "Admin: pause the queue": "管理员：暂停队列",
    "Admin: resume the queue": "管理员：恢复队列",
    "Admin: stop a user from using the bot": "管理员：禁止某用户使用机器人",
    "Admin: let a user use the bot again": "管理员：允许某用户再次使用机器人",
    "The photo to animate (JPEG, PNG, WebP or GIF)": "要做成动画的照片（JPEG、PNG、WebP 或 GIF）",
    "What should move, and how": "什么在动、怎么动",
    "Seed for a repeatable result": "种子（可复现结果）",
    "What the video should avoid": "视频中要避免的内容",
    "Camera movement": "镜头运动",
    "Speed of the motion": "运动速度",
    "The user": "用户",
    "e.g. a cat slowly turning its head": "例如：猫慢慢转头",
    "static": "静止",
    "zoom-in": "推近",
    "zoom-out": "拉远",
    "pan-left": "左摇",
    "pan-right": "右摇",
    "tilt-up": "上摇",
    "tilt-down": "下摇",
    "orbit": "环绕",
    "slow": "慢",
    "normal": "正常",
    "fast": "快",
}

BUTTON_STYLES = {
    "cancel": discord.ButtonStyle.danger,
    "hq": discord.ButtonStyle.primary,
    "reroll": discord.ButtonStyle.secondary,
    "delete": discord.ButtonStyle.secondary,
    "info": discord.ButtonStyle.secondary,
}


def ui_text(locale: str | None, english: str) -> str:
    return ZH.get(english, english) if lang(locale) == "zh" else english


class CommandTranslator(app_commands.Translator):
    """Chinese names and descriptions for zh-CN and zh-TW clients; others see English."""

    async def translate(self, string: locale_str, locale: discord.Locale, context: Any) -> str | None:
        return ZH.get(string.message) if str(locale).startswith("zh") else None


# ---------------------------------------------------------------- buttons


class JobButton(discord.ui.DynamicItem[discord.ui.Button],
                template=rf"anim:(?P<action>{'|'.join(BUTTON_ACTIONS)}):(?P<job_id>[\w-]{{1,64}})"):
    """A job's button, rebuilt from its custom id alone."""

    def __init__(self, action: str, job_id: str, label: str = ""):
        button = Button(action, job_id, label)
        super().__init__(discord.ui.Button(label=label or action, custom_id=button.custom_id,
                                           style=BUTTON_STYLES.get(action, discord.ButtonStyle.secondary)))
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: Any) -> JobButton:
        return cls(match["action"], match["job_id"], item.label or "")

    async def callback(self, interaction: discord.Interaction) -> None:
        front = getattr(interaction.client, "front_end", None)
        if front is not None:
            await front.on_button(interaction, self.action, self.job_id)


def job_view(buttons: list[Button]) -> discord.ui.View | None:
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for b in buttons:
        view.add_item(JobButton(b.action, b.job_id, b.label))
    return view


# ---------------------------------------------------------------- the status message of one job


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


class TokenGone(Exception):
    """The interaction token can no longer edit its message (expired, or the message is gone)."""


def _owner_of(job: Job) -> int:
    return int(job.user.split(":", 1)[1])


class DiscordStatus:
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
        owner = _owner_of(job)
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
            with rate_limits():
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
        with rate_limits():
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
        with rate_limits():
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


def _retrieve(task: asyncio.Future) -> None:
    """Take a shielded task's outcome, so one whose waiter was cancelled logs nothing at exit."""
    if not task.cancelled():
        task.exception()


@contextlib.contextmanager
def rate_limits() -> Iterator[None]:
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


# ---------------------------------------------------------------- client, tree, modal


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


class _Tree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await self.client.front_end.allowed_here(interaction)

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


class PromptModal(discord.ui.Modal):
    """Asks for the prompt after "Animate this image" on a message."""

    def __init__(self, front: DiscordFrontEnd, attachment: discord.Attachment, locale: str):
        super().__init__(title=ui_text(locale, "Animate this image"), timeout=600)
        self.front, self.attachment = front, attachment
        self.prompt = discord.ui.TextInput(
            label=ui_text(locale, "What should move, and how"), custom_id="prompt",
            placeholder=ui_text(locale, "e.g. a cat slowly turning its head"),
            style=discord.TextStyle.paragraph, max_length=min(4000, front.config.limits.max_prompt_chars))
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.front.render(interaction, self.attachment, self.prompt.value, "quick")


async def reply(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer, whether or not the interaction was answered already."""
    text = shorten(text, MAX_CONTENT)
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


def _is_image(attachment: discord.Attachment) -> bool:
    if attachment.content_type:
        return attachment.content_type.lower().startswith("image/")
    return attachment.filename.lower().rsplit(".", 1)[-1] in ("jpg", "jpeg", "png", "webp", "gif")


# ---------------------------------------------------------------- the front end


class DiscordFrontEnd:
    """The Discord bot over a BotCore. `start()` returns once connected; `close()` disconnects (the core's
    followers belong to the core: close it separately)."""

    def __init__(self, core: BotCore, config: Config, token: str):
        self.core = core
        self.config = config
        self._token = token
        extra = config.raw.get("discord", {}) if isinstance(config.raw, dict) else {}
        # Seconds after which a job stops using its interaction token (Discord's limit is 900 s).
        self.interaction_ttl_s = float(extra.get("interaction_ttl_s", 840))
        self._ready_timeout_s = float(extra.get("ready_timeout_s", 120))
        self._hosts = {h.lower() for h in config.discord.attachment_hosts}
        self.client = _Client(
            self,
            intents=discord.Intents(guilds=True),
            allowed_mentions=NO_MENTIONS,
            max_ratelimit_timeout=float(extra.get("max_ratelimit_timeout_s", 30)),
            guild_ready_timeout=float(extra.get("guild_ready_timeout_s", 2.0)),
        )
        self.tree = _Tree(self.client, allowed_contexts=app_commands.AppCommandContext(
            guild=True, dm_channel=config.discord.dms, private_channel=False))
        self._register_commands()
        self._runner: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None
        self._saved_urls: tuple[str, yarl.URL] | None = None
        self.synced = False

    # ---- lifecycle ----

    async def start(self) -> None:
        self._point_at_configured_urls()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, sock_read=20))
        self._runner = asyncio.create_task(self.client.start(self._token), name="discord-client")
        ready = asyncio.create_task(self.client.ready_event.wait())
        await asyncio.wait({self._runner, ready}, timeout=self._ready_timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            stopped = self._runner.done()
            await self.close()
            if stopped:
                self._runner.result()   # raises the login/connection error
            raise TimeoutError(f"Discord did not get ready within {self._ready_timeout_s:.0f} s")
        log.info("discord: connected as %s (%s)", self.client.user, self.client.user.id)
        self.synced = await self.sync_commands()
        resumed = await self.core.resume_following(PLATFORM, self.status_for_stored_job)
        if resumed:
            log.info("discord: following %d unfinished jobs again", len(resumed))

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
        cfg = self.config.discord
        if not (cfg.api_base_url or cfg.gateway_url):
            return
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

    # ---- commands ----

    def _register_commands(self) -> None:
        front, tree = self, self.tree

        @app_commands.describe(
            image=locale_str("The photo to animate (JPEG, PNG, WebP or GIF)"),
            prompt=locale_str("What should move, and how"),
            seed=locale_str("Seed for a repeatable result"),
            negative=locale_str("What the video should avoid"),
            camera=locale_str("Camera movement"),
            speed=locale_str("Speed of the motion"),
            subject=locale_str("Who or what is in the photo (optional)"),
            environment=locale_str("Where it happens (optional)"),
        )
        @app_commands.choices(
            camera=[app_commands.Choice(name=locale_str(c), value=c) for c in CAMERAS],
            speed=[app_commands.Choice(name=locale_str(s), value=s) for s in SPEEDS],
        )
        async def render_command(interaction: discord.Interaction, image: discord.Attachment, prompt: str,
                                 seed: Range[int, 0, MAX_SEED] | None = None, negative: str | None = None,
                                 camera: str | None = None, speed: str | None = None,
                                 subject: Range[str, 1, 200] | None = None,
                                 environment: Range[str, 1, 200] | None = None) -> None:
            preset = "hq" if interaction.command and interaction.command.name == "hq" else "quick"
            await front.render(interaction, image, prompt, preset, seed=seed, negative=negative or "",
                               camera=camera, speed=speed, subject=subject, environment=environment)

        for name, description in (("animate", "Turn a photo into a short video (quick)"),
                                  ("hq", "Turn a photo into a short video in high quality")):
            tree.add_command(app_commands.Command(name=locale_str(name), description=locale_str(description),
                                                  callback=render_command))

        @tree.command(name=locale_str("cancel"), description=locale_str("Cancel your latest job"))
        async def cancel(interaction: discord.Interaction) -> None:
            locale = str(interaction.locale)
            job = await front.core.cancel_latest(PLATFORM, str(interaction.user.id))
            await reply(interaction, t(locale, "status.cancelled" if job else "errors.cancel_none"))

        @tree.command(name=locale_str("queue"), description=locale_str("Your jobs and their place in the queue"))
        async def queue(interaction: discord.Interaction) -> None:
            await reply(interaction, await front.core.queue_text(PLATFORM, str(interaction.user.id),
                                                                 str(interaction.locale)))

        @tree.command(name=locale_str("help"), description=locale_str("How to use this bot"))
        async def help_(interaction: discord.Interaction) -> None:
            await reply(interaction, t(str(interaction.locale), "help.text"))

        @tree.command(name=locale_str("forget"), description=locale_str("Delete all your jobs, images and videos"))
        async def forget(interaction: discord.Interaction) -> None:
            await reply(interaction, await front.core.forget(PLATFORM, str(interaction.user.id),
                                                             str(interaction.locale)))

        async def admin_command(interaction: discord.Interaction) -> None:
            await front._admin_command(interaction)

        for name, description in (("stats", "Admin: queue and worker numbers"),
                                  ("pause", "Admin: pause the queue"),
                                  ("resume", "Admin: resume the queue")):
            tree.add_command(app_commands.Command(name=locale_str(name), description=locale_str(description),
                                                  callback=admin_command))

        @app_commands.describe(user=locale_str("The user"))
        async def ban_command(interaction: discord.Interaction, user: discord.User) -> None:
            await front._admin_command(interaction, user)

        for name, description in (("ban", "Admin: stop a user from using the bot"),
                                  ("unban", "Admin: let a user use the bot again")):
            tree.add_command(app_commands.Command(name=locale_str(name), description=locale_str(description),
                                                  callback=ban_command))

        @tree.context_menu(name=locale_str("Animate this image"))
        async def animate_message(interaction: discord.Interaction, message: discord.Message) -> None:
            await front.open_prompt_modal(interaction, message)

    async def _admin_command(self, interaction: discord.Interaction, user: discord.User | None = None) -> None:
        locale = str(interaction.locale)
        command = interaction.command.name if interaction.command else ""
        try:
            text = await self.core.admin(PLATFORM, str(interaction.user.id), locale, command,
                                         str(user.id) if user else "")
        except UserError as exc:
            text = error_text(exc, locale)
        await reply(interaction, text)

    async def command_payloads(self) -> list[dict[str, Any]]:
        """The global command definitions exactly as a sync sends them (translations included)."""
        translator = self.tree.translator
        payloads = []
        for command in self.tree._get_all_commands(guild=None):
            payloads.append(await command.get_translated_payload(self.tree, translator) if translator
                            else command.to_dict(self.tree))
        return sorted(payloads, key=lambda p: (p.get("type", 1), p["name"]))

    async def sync_commands(self) -> bool:
        """Sync the global commands when their definitions (or the application) changed since the last sync."""
        material = {"application": self.client.application_id, "commands": await self.command_payloads()}
        digest = hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        service = self.core.service
        if await service.setting(COMMANDS_HASH_KEY) == digest:
            log.info("discord: commands unchanged, not syncing")
            return False
        await self.tree.sync()
        await service.save_setting(COMMANDS_HASH_KEY, digest)
        log.info("discord: synced %d commands", len(material["commands"]))
        return True

    # ---- checks ----

    def refusal_here(self, interaction: discord.Interaction) -> UserError | None:
        cfg = self.config.discord
        if interaction.guild_id is None:
            if not cfg.dms:
                return UserError("This bot does not work in direct messages.", "dms_off")
        elif cfg.guilds and interaction.guild_id not in {int(g) for g in cfg.guilds}:
            return UserError("This bot is not enabled here.", "not_allowed_here")
        return None

    async def allowed_here(self, interaction: discord.Interaction) -> bool:
        refusal = self.refusal_here(interaction)
        if refusal is not None:
            await reply(interaction, error_text(refusal, str(interaction.locale)))
        return refusal is None

    def upload_limit(self, interaction: discord.Interaction) -> int:
        limit = self.config.discord.upload_limit_bytes
        granted = getattr(interaction, "filesize_limit", None)
        return min(limit, granted) if granted else limit

    # ---- render requests ----

    async def open_prompt_modal(self, interaction: discord.Interaction, message: discord.Message) -> None:
        locale = str(interaction.locale)
        attachment = next((a for a in message.attachments if _is_image(a)), None)
        try:
            if attachment is None:
                raise UserError("Please attach an image.", "no_image")
            self.core.check_attachment(attachment.content_type, attachment.size, attachment.filename)
        except UserError as exc:
            await reply(interaction, error_text(exc, locale))
            return
        await interaction.response.send_modal(PromptModal(self, attachment, locale))

    async def render(self, interaction: discord.Interaction, attachment: discord.Attachment, prompt: str,
                     preset: str, *, seed: int | None = None, negative: str = "", camera: str | None = None,
                     speed: str | None = None, subject: str | None = None, environment: str | None = None) -> None:
        """Check the upload from its metadata, defer, download, submit and follow."""
        locale = str(interaction.locale)
        scope = str(interaction.guild_id) if interaction.guild_id else None
        try:
            self.core.check_attachment(attachment.content_type, attachment.size, attachment.filename)
            self.core.check_prompt(prompt, scope)
        except UserError as exc:
            await reply(interaction, error_text(exc, locale))
            return
        response = await interaction.response.defer(thinking=True)
        ref = self._ref_for(interaction, response)
        try:
            image = await self.download(attachment)
            submitted = await self.core.submit(JobRequest(
                platform=PLATFORM, user_id=str(interaction.user.id), user_name=interaction.user.name,
                chat_id=str(interaction.channel_id), locale=locale, image=image, prompt=prompt, preset=preset,
                seed=seed, negative_prompt=negative, camera=camera, speed=speed, scope=scope,
                subject=subject, environment=environment,
            ), status_ref=ref.dumps())
        except UserError as exc:
            await self._answer_deferred(interaction, error_text(exc, locale))
            return
        except Exception:
            log.exception("submitting a job failed")
            await self._answer_deferred(interaction, t(locale, "errors.generic"))
            return
        self.core.follow(submitted.job, DiscordStatus(self, submitted.job.id, ref, interaction), submitted.hints)

    def _ref_for(self, interaction: discord.Interaction, response: Any) -> StatusRef:
        return StatusRef(
            channel=interaction.channel_id or 0, owner=interaction.user.id, locale=str(interaction.locale),
            guild=interaction.guild_id, app=interaction.application_id, token=interaction.token,
            message=getattr(response, "message_id", None) or 0, at=interaction.created_at.timestamp(),
            limit=self.upload_limit(interaction),
        )

    async def _answer_deferred(self, interaction: discord.Interaction, text: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(content=shorten(text, MAX_CONTENT),
                                                     allowed_mentions=NO_MENTIONS)

    async def download(self, attachment: discord.Attachment) -> bytes:
        """The attachment's bytes from an allowed host, streamed and cut off past the image size limit."""
        from engine.media.validate import read_capped

        failed = UserError("I could not download your image; please send it again.", "download_failed")
        parts = urlsplit(attachment.url)
        if parts.scheme not in ("http", "https") or (parts.hostname or "").lower() not in self._hosts:
            log.warning("refused an attachment URL on host %s", parts.hostname)
            raise failed
        assert self._http is not None
        try:
            async with self._http.get(attachment.url, allow_redirects=False) as resp:
                if resp.status != 200:
                    log.warning("attachment download answered HTTP %s", resp.status)
                    raise failed
                return await read_capped(resp.content.iter_chunked(DOWNLOAD_CHUNK),
                                         self.config.limits.max_image_bytes)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("attachment download failed: %s", type(exc).__name__)
            raise failed from None

    # ---- buttons ----

    async def on_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        locale = str(interaction.locale)
        if not await self.allowed_here(interaction):
            return
        try:
            text, new_job = await self.core.on_button(action, job_id, PLATFORM, str(interaction.user.id), locale)
        except UserError as exc:
            await reply(interaction, error_text(exc, locale))
            return
        if action == "delete":
            await interaction.response.edit_message(content=text, attachments=[], view=None,
                                                    allowed_mentions=NO_MENTIONS)
        elif new_job is not None:
            await self._follow_new_job(interaction, new_job)
        elif text:
            await reply(interaction, text)
        else:
            await interaction.response.defer()

    async def _follow_new_job(self, interaction: discord.Interaction, job: Job) -> None:
        """An HQ render or re-roll: its own status message, owned by whoever pressed the button."""
        try:
            response = await interaction.response.defer(thinking=True)
            ref = self._ref_for(interaction, response)
        except discord.HTTPException as exc:   # too late to answer: use a channel message from the start
            log.warning("could not answer a button press (%s); posting in the channel", exc.status)
            ref = self._ref_for(interaction, None)
            ref.token = ""
        await self.core.service.set_status_ref(job.id, ref.dumps())
        self.core.follow(job, DiscordStatus(self, job.id, ref, interaction if ref.token else None))

    # ---- restart ----

    def status_for_stored_job(self, job: Job) -> DiscordStatus | None:
        ref = StatusRef.loads(job.status_ref) if job.status_ref else None
        if ref is None:
            if not job.chat.isdigit():
                return None
            ref = StatusRef(channel=int(job.chat), owner=_owner_of(job), locale=job.locale,
                            limit=self.config.discord.upload_limit_bytes)
        return DiscordStatus(self, job.id, ref)
