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

from bot.core import JobRequest, error_text, t
from bot.discord.api import PLATFORM, _is_image, answer_deferred, reply
from bot.discord.components import ZH, PromptModal
from engine.errors import UserError
from engine.prompts import CAMERAS, SPEEDS

if TYPE_CHECKING:
    from bot.discord.app import DiscordFrontEnd

log = logging.getLogger("bot.discord")

MAX_SEED = 2**31 - 1
COMMANDS_HASH_KEY = "discord_commands_hash"   # setting: digest of the last synced command definitions


class CommandTranslator(app_commands.Translator):
    """Chinese names and descriptions for zh-CN and zh-TW clients; others see English."""

    async def translate(self, string: locale_str, locale: discord.Locale, context: Any) -> str | None:
        return ZH.get(string.message) if str(locale).startswith("zh") else None


class Commands:
    """Registers the app commands on the front end's tree and answers them."""

    def __init__(self, front: DiscordFrontEnd, tree: app_commands.CommandTree):
        self.front = front
        self.tree = tree
        self._register()

    # ---- definitions ----

    def _register(self) -> None:
        commands, front, tree = self, self.front, self.tree

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
            await commands.render(interaction, image, prompt, preset, seed=seed, negative=negative or "",
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
            await commands._admin_command(interaction)

        for name, description in (("stats", "Admin: queue and worker numbers"),
                                  ("pause", "Admin: pause the queue"),
                                  ("resume", "Admin: resume the queue")):
            tree.add_command(app_commands.Command(name=locale_str(name), description=locale_str(description),
                                                  callback=admin_command))

        @app_commands.describe(user=locale_str("The user"))
        async def ban_command(interaction: discord.Interaction, user: discord.User) -> None:
            await commands._admin_command(interaction, user)

        for name, description in (("ban", "Admin: stop a user from using the bot"),
                                  ("unban", "Admin: let a user use the bot again")):
            tree.add_command(app_commands.Command(name=locale_str(name), description=locale_str(description),
                                                  callback=ban_command))

        @tree.context_menu(name=locale_str("Animate this image"))
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
        material = {"application": self.front.client.application_id, "commands": await self.command_payloads()}
        digest = hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        service = self.front.core.service
        if await service.setting(COMMANDS_HASH_KEY) == digest:
            log.info("discord: commands unchanged, not syncing")
            return False
        await self.tree.sync()
        await service.save_setting(COMMANDS_HASH_KEY, digest)
        log.info("discord: synced %d commands", len(material["commands"]))
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
                     speed: str | None = None, subject: str | None = None, environment: str | None = None) -> None:
        """Check the upload from its metadata, defer, download, submit and follow."""
        front, core = self.front, self.front.core
        locale = str(interaction.locale)
        scope = str(interaction.guild_id) if interaction.guild_id else None
        try:
            core.check_attachment(attachment.content_type, attachment.size, attachment.filename)
            core.check_prompt(prompt, scope)
        except UserError as exc:
            await reply(interaction, error_text(exc, locale))
            return
        response = await interaction.response.defer(thinking=True)
        ref = front.status_ref(interaction, response)
        try:
            image = await front.download(attachment)
            submitted = await core.submit(JobRequest(
                platform=PLATFORM, user_id=str(interaction.user.id), user_name=interaction.user.name,
                chat_id=str(interaction.channel_id), locale=locale, image=image, prompt=prompt, preset=preset,
                seed=seed, negative_prompt=negative, camera=camera, speed=speed, scope=scope,
                subject=subject, environment=environment,
            ), status_ref=ref.dumps())
        except UserError as exc:
            await answer_deferred(interaction, error_text(exc, locale))
            return
        except Exception:
            log.exception("submitting a job failed")
            await answer_deferred(interaction, t(locale, "errors.generic"))
            return
        front.follow(submitted.job, ref, interaction, submitted.hints)
