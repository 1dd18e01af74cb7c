"""The app commands (slash commands and the "Animate this image" message context menu), what they do, where
they may be used, and when their definitions are synced to Discord.

Flow of a render command: refuse a bad upload from the interaction payload alone (ephemeral), defer within
Discord's 3 s window, download the image from an allowed host with a size cap, submit through the core, and
follow the job in its status message.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import Range, locale_str

from bot.core import JobRequest
from bot.discord.api import PLATFORM, _is_image, answer_deferred, reply, safety_rule
from bot.discord.components import PromptModal
from bot.texts import error_text, lang, t
from engine.errors import UserError
from engine.prompts import CAMERAS, SPEEDS

if TYPE_CHECKING:
    from bot.discord.app import DiscordFrontEnd

log = logging.getLogger("bot.discord")

MAX_SEED = 2**31 - 1
COMMANDS_HASH_KEY = "discord_commands_hash"   # setting: digest of the last synced command definitions


def text(key: str) -> locale_str:
    """A command text by its key in templates/messages ([discord] section): English is the definition's own
    text, other languages come from the translator."""
    return locale_str(t("en", f"discord.{key}"), key=f"discord.{key}")


class CommandTranslator(app_commands.Translator):
    """Names and descriptions in the client's language (Chinese for zh-CN and zh-TW); others see English."""

    async def translate(self, string: locale_str, locale: discord.Locale, context: Any) -> str | None:
        key = string.extras.get("key")
        if key is None or lang(str(locale)) == "en":
            return None
        translated = t(str(locale), key)
        return translated if translated != string.message else None


class Commands:
    """Registers the app commands on the front end's tree and answers them."""

    def __init__(self, front: DiscordFrontEnd, tree: app_commands.CommandTree):
        self.front = front
        self.tree = tree
        self._register()

    # ---- definitions ----

    def _register(self) -> None:
        commands, front, tree = self, self.front, self.tree

        options = ("image", "prompt", "seed", "negative", "camera", "speed", "subject", "environment", "smooth",
                   "loop", "preset")

        @app_commands.rename(**{o: text(f"opt_{o}") for o in options})
        @app_commands.describe(**{o: text(f"optdesc_{o}") for o in options})
        @app_commands.choices(
            camera=[app_commands.Choice(name=text(f"choice_{c}"), value=c) for c in CAMERAS],
            speed=[app_commands.Choice(name=text(f"choice_{s}"), value=s) for s in SPEEDS],
            # Every configured preset (choices are fixed when commands sync); one that no worker serves right now
            # is refused at submit with the presets that are.
            preset=[app_commands.Choice(name=p, value=p) for p in sorted(front.config.presets)],
        )
        async def render_command(interaction: discord.Interaction, image: discord.Attachment, prompt: str,
                                 seed: Range[int, 0, MAX_SEED] | None = None, negative: str | None = None,
                                 camera: str | None = None, speed: str | None = None,
                                 subject: Range[str, 1, 200] | None = None,
                                 environment: Range[str, 1, 200] | None = None, smooth: bool | None = None,
                                 loop: bool | None = None, preset: str | None = None) -> None:
            if preset is None:
                preset = "hq" if interaction.command and interaction.command.name == "hq" else "quick"
            await commands.render(interaction, image, prompt, preset, seed=seed, negative=negative or "",
                                  camera=camera, speed=speed, subject=subject, environment=environment,
                                  smooth=smooth, loop=bool(loop))

        for name in ("animate", "hq"):
            tree.add_command(app_commands.Command(name=text(f"name_{name}"), description=text(f"desc_{name}"),
                                                  callback=render_command))

        @tree.command(name=text("name_cancel"), description=text("desc_cancel"))
        async def cancel(interaction: discord.Interaction) -> None:
            locale = str(interaction.locale)
            job = await front.core.cancel_latest(PLATFORM, str(interaction.user.id))
            await reply(interaction, t(locale, "status.cancelled" if job else "errors.cancel_none"))

        @tree.command(name=text("name_queue"), description=text("desc_queue"))
        async def queue(interaction: discord.Interaction) -> None:
            await reply(interaction, await front.core.queue_text(
                PLATFORM, str(interaction.user.id), str(interaction.locale),
                str(interaction.guild_id) if interaction.guild_id else None))

        @tree.command(name=text("name_help"), description=text("desc_help"))
        async def help_(interaction: discord.Interaction) -> None:
            await reply(interaction, t(str(interaction.locale), "help.text"))

        @tree.command(name=text("name_forget"), description=text("desc_forget"))
        async def forget(interaction: discord.Interaction) -> None:
            await reply(interaction, await front.core.forget(PLATFORM, str(interaction.user.id),
                                                             str(interaction.locale)))

        setting_options = ("preset", "smooth", "safety", "language", "jobs_per_hour", "moderation_channel",
                           "allow_channel", "remove_channel")

        @tree.command(name=text("name_settings"), description=text("desc_settings"))
        @app_commands.rename(**{o: text(f"sopt_{o}") for o in setting_options})
        @app_commands.describe(**{o: text(f"soptdesc_{o}") for o in setting_options})
        @app_commands.choices(
            preset=[app_commands.Choice(name=p, value=p) for p in sorted(front.config.presets)],
            smooth=[app_commands.Choice(name=text(f"choice_{v}"), value=v) for v in ("on", "off", "default")],
            safety=[app_commands.Choice(name=text(f"choice_{v}"), value=v) for v in ("standard", "strict")],
            language=[app_commands.Choice(name=text(f"choice_lang_{v}"), value=v) for v in ("en", "zh", "default")],
        )
        async def settings(interaction: discord.Interaction, preset: str | None = None, smooth: str | None = None,
                           safety: str | None = None, language: str | None = None,
                           jobs_per_hour: Range[int, 1, 10_000] | None = None,
                           moderation_channel: discord.TextChannel | None = None,
                           allow_channel: discord.TextChannel | None = None,
                           remove_channel: discord.TextChannel | None = None) -> None:
            changes = [(k, str(v)) for k, v in (("preset", preset), ("smooth", smooth), ("safety", safety),
                                                 ("language", language), ("jobs_per_hour", jobs_per_hour))
                       if v is not None]
            changes += [("moderation_channel", str(c.id)) for c in (moderation_channel,) if c]
            changes += [("channels", f"+{allow_channel.id}")] if allow_channel else []
            changes += [("channels", f"-{remove_channel.id}")] if remove_channel else []
            await commands.settings(interaction, changes)

        @tree.command(name=text("name_mine"), description=text("desc_mine"))
        async def mine(interaction: discord.Interaction) -> None:
            from bot.discord.components import show_mine

            await show_mine(front, interaction, 0)

        @tree.command(name=text("name_privacy"), description=text("desc_privacy"))
        async def privacy(interaction: discord.Interaction) -> None:
            await reply(interaction, front.core.privacy_text(str(interaction.locale)))

        async def admin_command(interaction: discord.Interaction) -> None:
            await commands._admin_command(interaction)

        for name in ("stats", "pause", "resume"):
            tree.add_command(app_commands.Command(name=text(f"name_{name}"), description=text(f"desc_{name}"),
                                                  callback=admin_command))

        @app_commands.rename(user=text("opt_user"))
        @app_commands.describe(user=text("optdesc_user"))
        async def ban_command(interaction: discord.Interaction, user: discord.User) -> None:
            await commands._admin_command(interaction, user)

        for name in ("ban", "unban"):
            tree.add_command(app_commands.Command(name=text(f"name_{name}"), description=text(f"desc_{name}"),
                                                  callback=ban_command))

        @tree.context_menu(name=text("menu_animate"))
        async def animate_message(interaction: discord.Interaction, message: discord.Message) -> None:
            await commands.open_prompt_modal(interaction, message)

    # ---- sync ----

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
        payloads = await self.command_payloads()
        material = {"application": self.front.client.application_id, "commands": payloads}
        digest = hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        service = self.front.core.service
        if await service.setting(COMMANDS_HASH_KEY) == digest:
            log.info("discord: commands unchanged, not syncing")
            return False
        await self.tree.sync()
        await service.save_setting(COMMANDS_HASH_KEY, digest)
        log.info("discord: synced %d commands", len(payloads))
        return True

    # ---- checks ----

    def refusal_here(self, interaction: discord.Interaction) -> UserError | None:
        cfg = self.front.config.discord
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

    # ---- handlers ----

    def is_moderator(self, interaction: discord.Interaction) -> bool:
        """Manage Server in this server, or one of the bot's admins."""
        return bool(interaction.guild_id and interaction.permissions.manage_guild) or \
            self.front.core.is_admin(PLATFORM, interaction.user.id)

    async def settings(self, interaction: discord.Interaction, changes: list[tuple[str, str]]) -> None:
        locale = str(interaction.locale)
        try:
            if interaction.guild_id is None:
                raise UserError("Use /settings in a server.", "settings_usage")
            text = await self.front.core.change_settings(
                PLATFORM, str(interaction.guild_id), changes, locale, self.is_moderator(interaction),
                channel_name=lambda c: f"<#{c}>")
        except UserError as exc:
            text = error_text(exc, locale)
        await reply(interaction, text)

    async def _admin_command(self, interaction: discord.Interaction, user: discord.User | None = None) -> None:
        locale = str(interaction.locale)
        command = interaction.command.name if interaction.command else ""
        try:
            text = await self.front.core.admin(PLATFORM, str(interaction.user.id), locale, command,
                                               str(user.id) if user else "")
        except UserError as exc:
            text = error_text(exc, locale)
        await reply(interaction, text)

    async def open_prompt_modal(self, interaction: discord.Interaction, message: discord.Message) -> None:
        locale = str(interaction.locale)
        attachment = next((a for a in message.attachments if _is_image(a)), None)
        try:
            if attachment is None:
                raise UserError("Please attach an image.", "no_image")
            self.front.core.check_attachment(attachment.content_type, attachment.size, attachment.filename)
        except UserError as exc:
            await reply(interaction, error_text(exc, locale))
            return
        await interaction.response.send_modal(PromptModal(self.front, attachment, locale))

    async def render(self, interaction: discord.Interaction, attachment: discord.Attachment, prompt: str,
                     preset: str, *, seed: int | None = None, negative: str = "", camera: str | None = None,
                     speed: str | None = None, subject: str | None = None, environment: str | None = None,
                     smooth: bool | None = None, loop: bool = False) -> None:
        """Check the upload from its metadata, defer, download, submit and follow."""
        front, core = self.front, self.front.core
        scope = str(interaction.guild_id) if interaction.guild_id else None
        settings = await core.service.server_settings(PLATFORM, scope)
        locale = settings.language or str(interaction.locale)
        try:
            if not settings.allows(interaction.channel_id):
                raise UserError("This server's moderators allow the bot only in some channels.",
                                "channel_not_allowed", channels=", ".join(f"<#{c}>" for c in settings.channels))
            core.check_attachment(attachment.content_type, attachment.size, attachment.filename)
            core.check_prompt(prompt, scope)
        except UserError as exc:
            await reply(interaction, error_text(exc, locale))
            return
        response = await interaction.response.defer(thinking=True)
        ref = front.status_ref(interaction, response)
        ref.locale = locale   # the server's language, when its moderators chose one
        try:
            image = await front.download(attachment)
            submitted = await core.submit(JobRequest(
                platform=PLATFORM, user_id=str(interaction.user.id), user_name=interaction.user.name,
                chat_id=str(interaction.channel_id), locale=locale, image=image, prompt=prompt, preset=preset,
                seed=seed, negative_prompt=negative, camera=camera, speed=speed, scope=scope,
                subject=subject, environment=environment,
                safety_rule=safety_rule(interaction, front.config.safety.allow_in_dms), smooth=smooth, loop=loop,
                settings=settings,
            ), status_ref=ref.dumps())
        except UserError as exc:
            await answer_deferred(interaction, error_text(exc, locale))
            return
        except Exception:
            log.exception("submitting a job failed")
            await answer_deferred(interaction, t(locale, "errors.generic"))
            return
        front.follow(submitted.job, ref, interaction, submitted.hints)
