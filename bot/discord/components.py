"""Message components: the job buttons, the prompt modal of the "Animate this image" context menu, and what a
button press does.

Buttons carry `anim:<action>:<job id>` and are matched by a DynamicItem pattern, so no view lives in memory
and buttons of old results keep working after a restart.

The Chinese texts of the command definitions and of the modal (`ZH`) live here, beside the modal, so that
commands.py can import them together with the modal without the two modules importing each other.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord

from bot.core import BUTTON_ACTIONS, Button, error_text, lang
from bot.discord.api import NO_MENTIONS, PLATFORM, reply
from engine.errors import UserError
from engine.jobs import Job

if TYPE_CHECKING:
    from bot.discord.app import DiscordFrontEnd

log = logging.getLogger("bot.discord")

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
            await on_button(front, interaction, self.action, self.job_id)


def job_view(buttons: list[Button]) -> discord.ui.View | None:
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for b in buttons:
        view.add_item(JobButton(b.action, b.job_id, b.label))
    return view


async def on_button(front: DiscordFrontEnd, interaction: discord.Interaction, action: str, job_id: str) -> None:
    """A press on a job's button: the core decides; the answer edits the message, starts a job or replies."""
    locale = str(interaction.locale)
    if not await front.commands.allowed_here(interaction):
        return
    try:
        text, new_job = await front.core.on_button(action, job_id, PLATFORM, str(interaction.user.id), locale)
    except UserError as exc:
        await reply(interaction, error_text(exc, locale))
        return
    if action == "delete":
        await interaction.response.edit_message(content=text, attachments=[], view=None,
                                                allowed_mentions=NO_MENTIONS)
    elif new_job is not None:
        await _follow_new_job(front, interaction, new_job)
    elif text:
        await reply(interaction, text)
    else:
        await interaction.response.defer()


async def _follow_new_job(front: DiscordFrontEnd, interaction: discord.Interaction, job: Job) -> None:
    """An HQ render or re-roll: its own status message, owned by whoever pressed the button."""
    try:
        response = await interaction.response.defer(thinking=True)
        ref = front.status_ref(interaction, response)
    except discord.HTTPException as exc:   # too late to answer: use a channel message from the start
        log.warning("could not answer a button press (%s); posting in the channel", exc.status)
        ref = front.status_ref(interaction, None)
        ref.token = ""
    await front.core.service.set_status_ref(job.id, ref.dumps())
    front.follow(job, ref, interaction if ref.token else None)


# ---------------------------------------------------------------- the prompt modal


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
        await self.front.commands.render(interaction, self.attachment, self.prompt.value, "quick")
