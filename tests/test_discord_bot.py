"""The Discord front end end to end: the real discord.py client against the local fake Discord, the real bot
core and job service on a SQLite file, and a worker rendering with the tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import discord
import pytest
from PIL import Image

from bot.discord.app import DiscordFrontEnd
from bot.startup import TokenRefused
from bot.texts import t
from engine.config import Config
from engine.jobs import JobState
from engine.media.video import probe_mp4
from tests.fakes.discord_server import (
    CALLBACK_DEFERRED_MESSAGE,
    CALLBACK_MODAL,
    CALLBACK_UPDATE_MESSAGE,
    FLAG_EPHEMERAL,
    FakeDiscord,
    InteractionRecord,
    StoredMessage,
)
from tests.harness import Stack, make_config, photo_bytes, running_stack

pytestmark = pytest.mark.timeout(60)

PROMPT = "a cat turning its head"
ORIGINAL = r"/webhooks/\d+/[^/]+/messages/(@original|\d+)$"
FOLLOWUP = r"/webhooks/\d+/[^/]+$"


def bot_config(tmp_path: Path, fake: FakeDiscord, discord_section: dict | None = None, **sections) -> Config:
    """Config pointing the bot at the fake (REST, gateway, CDN host), with the owner as the admin."""
    settings = {
        "api_base_url": fake.api_base, "gateway_url": fake.gateway_url, "attachment_hosts": ["127.0.0.1"],
        "admins": [fake.owner_id], "guild_ready_timeout_s": 0.05, **(discord_section or {}),
    }
    return make_config(tmp_path, discord=settings, **sections)


@dataclass
class Bot:
    stack: Stack
    front: DiscordFrontEnd


@contextlib.asynccontextmanager
async def running_bot(config: Config, fake: FakeDiscord, tiny_parts=None, with_worker: bool = True
                      ) -> AsyncIterator[Bot]:
    async with running_stack(config, tiny_parts, with_worker=with_worker) as stack:
        front = DiscordFrontEnd(stack.core, config, fake.token)
        await front.start()
        try:
            yield Bot(stack, front)
        finally:
            await settle(stack)
            await stack.core.close()   # stop following before the client goes
            await front.close()


async def settle(stack: Stack, timeout: float = 5.0) -> None:
    """Let followers record the deliveries they are making before the core cancels them: a store write
    cancelled halfway can leave the SQLite file locked for the worker's last writes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while [j for j in await stack.service.undelivered("discord") if j.state.final]:
                await asyncio.sleep(0.02)


async def animate(fake: FakeDiscord, prompt: str = PROMPT, *, command: str = "animate", data: bytes | None = None,
                  filename: str = "photo.png", content_type: str | None = "image/png", user_id: int | None = None,
                  locale: str = "en-US", **options) -> InteractionRecord:
    image = fake.add_attachment(filename, photo_bytes() if data is None else data, content_type)
    opts = [{"name": "image", "value": image}, {"name": "prompt", "value": prompt}]
    opts += [{"name": k, "value": v} for k, v in options.items()]
    return await fake.slash_command(command, opts, user_id=user_id, locale=locale)


def has_video(message: StoredMessage | None) -> bool:
    return message is not None and not message.deleted and any(
        a["filename"].endswith(".mp4") for a in message.attachments)


def result_message(fake: FakeDiscord, interaction: InteractionRecord) -> StoredMessage | None:
    """A job's result: a new message with the MP4 (a followup, or a channel message once the token is gone),
    or the status message itself where the channel refused the bot."""
    followups = [fake.messages[i] for i in interaction.followup_ids if i in fake.messages]
    status = interaction.original_message
    job_ids = {c.split(":")[2] for m in ([status] if status else []) for c in m.custom_ids_ever()}
    posted = [m for m in fake.messages.values() if m.nonce and m.nonce[:-1] in job_ids and m.nonce.endswith("v")]
    return next((m for m in followups + posted + [status] if has_video(m)), None)


async def result_of(fake: FakeDiscord, interaction: InteractionRecord, timeout: float = 30) -> StoredMessage:
    return await fake.wait_for(lambda: result_message(fake, interaction), timeout)


def shows(interaction: InteractionRecord, prefix: str) -> bool:
    message = interaction.original_message
    return message is not None and message.content.startswith(prefix)


async def ephemeral_reply(fake: FakeDiscord, interaction: InteractionRecord) -> str:
    await fake.wait_for(lambda: interaction.original_message and not interaction.original_message.loading)
    message = interaction.original_message
    assert message.ephemeral
    return message.content


async def delivered_job(stack: Stack, job_id: str, timeout: float = 5.0):
    """The job once the core has recorded its delivery (just after the final message went out)."""
    async with asyncio.timeout(timeout):
        while not (job := await stack.service.get(job_id)).delivered:
            await asyncio.sleep(0.02)
    return job


def check_mp4(fake: FakeDiscord, message: StoredMessage, tmp_path: Path, frames: int = 4) -> None:
    [attachment] = message.attachments
    path = tmp_path / attachment["filename"]
    path.write_bytes(fake.read_attachment(attachment))
    info = probe_mp4(path)
    assert (info["codec"], info["frames"], info["width"], info["height"]) == ("h264", frames, 64, 64)


def pinged(request) -> tuple[list[str], list[int]]:
    """(parse, users) of a recorded request's allowed_mentions: who the message may notify."""
    allowed = request.json["allowed_mentions"]
    return allowed["parse"], [int(u) for u in allowed.get("users", [])]


def job_id_of(message: StoredMessage) -> str:
    return message.component_custom_ids()[0].split(":")[2]


async def open_more(fake: FakeDiscord, message: StoredMessage, job_id: str) -> None:
    """Press a result's More button: its second row (Smooth, Loop, Delete, Info) joins the first, in place."""
    await fake.click_button(message.id, f"anim:more:{job_id}")
    await fake.wait_for(lambda: f"anim:info:{job_id}" in fake.messages[message.id].component_custom_ids())


def channel_status_id(fake: FakeDiscord, job_id: str) -> int:
    """The channel status message the bot posted for a job once its interaction token was gone."""
    return next(m.id for m in fake.messages.values() if m.nonce == f"{job_id}s0")


async def test_animate_defers_edits_progress_and_delivers_an_mp4(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, {"edit_interval_s": 0.15}, engine={"step_delay_s": 0.15})
    async with running_bot(config, fake, tiny_parts) as bot:
        interaction = await animate(fake, "@everyone " + PROMPT)
        result = await result_of(fake, interaction)

        assert interaction.response_type == CALLBACK_DEFERRED_MESSAGE
        assert interaction.callbacks[0]["time"] - interaction.created_at < 1.0
        check_mp4(fake, result, tmp_path)
        job = await delivered_job(bot.stack, job_id_of(result))
        assert job.state == JobState.DONE and job.user == f"discord:{fake.user_id}"

        progress = fake.requests_matching("PATCH", ORIGINAL)
        [upload] = fake.requests_matching("POST", FOLLOWUP)
        assert len(progress) >= 3 and upload.files and all(not r.files for r in progress)
        # The result is a new message (an edit would notify nobody); the status message is then deleted.
        assert result.id != interaction.original_message_id and result.id in interaction.followup_ids
        await fake.wait_for(lambda: interaction.original_message.deleted)
        assert any("Step 1/2" in r.json["content"] or "Step 2/2" in r.json["content"] for r in progress)
        # Progress edits are throttled to the configured interval and carry the Cancel button.
        assert all(b.time - a.time >= 0.14 for a, b in zip(progress, progress[1:]))
        assert all(pinged(r) == ([], []) for r in progress)
        status = interaction.original_message
        assert status.component_custom_ids() == [f"anim:cancel:{job.id}"]

        # The result mentions its owner and nobody else, even with @everyone in the prompt.
        assert result.content.startswith(f"🎞️ <@{fake.user_id}>") and "@everyone" in result.content
        assert pinged(upload) == ([], [fake.user_id])
        assert result.component_custom_ids() == [f"anim:{a}:{job.id}" for a in ("hq", "reroll", "extend", "more")]
        await open_more(fake, result, job.id)
        assert result.component_custom_ids() == [f"anim:{a}:{job.id}" for a in (
            "hq", "reroll", "extend", "smooth", "loop", "report", "delete", "info")]
        assert [r["components"][0]["custom_id"] for r in result.components] == [
            f"anim:hq:{job.id}", f"anim:smooth:{job.id}"]   # two rows


async def test_hq_with_camera_and_speed_then_buttons(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake)
    async with running_bot(config, fake, tiny_parts) as bot:
        interaction = await animate(fake, command="hq", seed=42, camera="zoom-in", speed="slow")
        result = await result_of(fake, interaction)
        check_mp4(fake, result, tmp_path)
        job = await bot.stack.service.get(job_id_of(result))
        assert (job.preset, job.total_steps, job.step, job.seed) == ("hq", 4, 4, 42)
        assert "slow zoom in" in job.prompt and "slow motion" in job.prompt
        assert "4 steps" in result.content and "anim:hq:" not in str(result.components)

        await open_more(fake, result, job.id)
        info = await fake.click_button(result.id, f"anim:info:{job.id}", user_id=fake.other_user_id)
        text = await ephemeral_reply(fake, info)
        assert job.prompt in text and "Seed: 42" in text and "hq · 4 steps · dpmpp_2m" in text

        # Re-roll by someone else: a new job of theirs with a new seed, in a new status message.
        reroll = await fake.click_button(result.id, f"anim:reroll:{job.id}", user_id=fake.other_user_id)
        again = await result_of(fake, reroll)
        new = await bot.stack.service.get(job_id_of(again))
        assert reroll.response_type == CALLBACK_DEFERRED_MESSAGE and new.id != job.id
        assert new.user == f"discord:{fake.other_user_id}" and new.seed != 42 and new.preset == "hq"
        assert again.content.startswith(f"🎞️ <@{fake.other_user_id}>")


async def test_subject_and_environment_options_fill_their_template_slots(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake)
    async with running_bot(config, fake, tiny_parts) as bot:
        interaction = await animate(fake, "turning its head", subject="a tabby cat", environment="on a windowsill")
        job = await bot.stack.service.get(job_id_of(await result_of(fake, interaction)))
        assert job.prompt.startswith("[Subject: a tabby cat] [Action: turning its head")
        assert job.prompt.endswith("[Environment: on a windowsill]")
        assert job.prompt_raw == "a tabby cat turning its head on a windowsill"
        assert (job.options["subject"], job.options["environment"]) == ("a tabby cat", "on a windowsill")


async def test_hq_button_renders_the_same_seed_and_delete_removes_the_video(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake)
    async with running_bot(config, fake, tiny_parts) as bot:
        result = await result_of(fake, await animate(fake, seed=7))
        job = await bot.stack.service.get(job_id_of(result))

        hq = await fake.click_button(result.id, f"anim:hq:{job.id}", user_id=fake.other_user_id)
        hq_result = await result_of(fake, hq)
        hq_job = await bot.stack.service.get(job_id_of(hq_result))
        assert (hq_job.preset, hq_job.seed, hq_job.prompt) == ("hq", 7, job.prompt)
        assert hq_job.user == f"discord:{fake.other_user_id}"
        assert hq.original_message.id != result.id and len(result.attachments) == 1

        await open_more(fake, result, job.id)
        refused = await fake.click_button(result.id, f"anim:delete:{job.id}", user_id=fake.other_user_id)
        assert "Only the person who asked" in await ephemeral_reply(fake, refused)
        delete = await fake.click_button(result.id, f"anim:delete:{job.id}")
        await fake.wait_for(lambda: delete.responded)
        assert delete.response_type == CALLBACK_UPDATE_MESSAGE
        assert (result.content, result.attachments, result.components) == ("🗑️ Deleted.", [], [])
        assert not Path(job.result_path).exists()


async def test_cancel_button_cancels_a_waiting_job(tmp_path, fake):
    config = bot_config(tmp_path, fake)
    async with running_bot(config, fake, with_worker=False) as bot:
        interaction = await animate(fake)
        await fake.wait_for(lambda: shows(interaction, "⏳") and interaction.original_message.components)
        status = interaction.original_message
        assert status.content.startswith("⏳")
        [cancel_id] = status.component_custom_ids()

        other = await fake.click_button(status.id, cancel_id, user_id=fake.other_user_id)
        assert "Only the person who asked" in await ephemeral_reply(fake, other)
        click = await fake.click_button(status.id, cancel_id)
        assert await ephemeral_reply(fake, click) == "🚫 Cancelled."
        await fake.wait_for(lambda: status.content == "🚫 Cancelled." and not status.components)
        job = await delivered_job(bot.stack, cancel_id.split(":")[2])
        assert job.state == JobState.CANCELLED


async def test_bad_uploads_are_refused_before_deferring(tmp_path, fake):
    config = bot_config(tmp_path, fake, limits={"max_image_bytes": 30_000})
    async with running_bot(config, fake, with_worker=False) as bot:
        text = await animate(fake, data=b"just some notes", filename="notes.txt", content_type="text/plain")
        empty = await animate(fake, data=b"", filename="empty.png")
        big = await animate(fake, data=b"\x89PNG" + bytes(40_000), filename="big.png")
        chinese = await animate(fake, "   ", locale="zh-CN")
        assert "not an image" in await ephemeral_reply(fake, text)
        assert "The file is empty" in await ephemeral_reply(fake, empty)
        assert "40 KB, over the 30 KB limit" in await ephemeral_reply(fake, big)
        assert await ephemeral_reply(fake, chinese) == t("zh-CN", "errors.empty_prompt")
        assert all(r.callbacks[0]["data"]["flags"] & FLAG_EPHEMERAL for r in (text, empty, big, chinese))
        # Refused from the payload alone: nothing was downloaded.
        assert not fake.requests_matching("GET", r"^/attachments/")

        # A payload that understates the size: the streamed download stops at the cap.
        liar = fake.add_attachment("liar.png", b"\x89PNG" + bytes(40_000), "image/png")
        fake.attachment_payloads[int(liar["id"])]["size"] = 1000
        interaction = await fake.slash_command("animate", [{"name": "image", "value": liar},
                                                           {"name": "prompt", "value": PROMPT}])
        await fake.wait_for(lambda: interaction.original_message and not interaction.original_message.loading)
        assert interaction.response_type == CALLBACK_DEFERRED_MESSAGE
        assert "over the 30 KB limit" in interaction.original_message.content
        assert await bot.stack.service.store.jobs() == []


async def test_message_menu_asks_for_a_prompt_in_a_modal(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake)
    async with running_bot(config, fake, tiny_parts):
        words = await fake.user_message("no picture here")
        refused = await fake.message_command("Animate this image", words.id)
        assert "attach an image" in await ephemeral_reply(fake, refused)

        photo = fake.add_attachment("cat.png", photo_bytes(), "image/png")
        posted = await fake.user_message("my cat", attachments=[photo])
        opener = await fake.message_command("Animate this image", posted.id)
        await fake.wait_for(lambda: opener.responded)
        assert opener.response_type == CALLBACK_MODAL and opener.modal["title"] == "Animate this image"
        submit = await fake.submit_modal(opener.modal["custom_id"], {"prompt": PROMPT})
        result = await result_of(fake, submit)
        check_mp4(fake, result, tmp_path)
        assert PROMPT in result.content


async def test_rate_limited_edits_are_waited_out(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake)
    async with running_bot(config, fake, tiny_parts) as bot:
        await bot.stack.service.pause()   # the job waits, so the status edit is not superseded by the result
        fake.fail_next("PATCH", ORIGINAL, status=429, retry_after=0.3)
        interaction = await animate(fake)
        await fake.wait_for(lambda: shows(interaction, "⏳"))
        limited, retried = fake.requests_matching("PATCH", ORIGINAL)
        assert (limited.status, retried.status) == (429, 200) and retried.time - limited.time >= 0.3
        await bot.stack.service.resume()
        check_mp4(fake, await result_of(fake, interaction), tmp_path)


async def test_a_rate_limit_longer_than_the_client_waits_becomes_retry_later(tmp_path, fake):
    config = bot_config(tmp_path, fake, {"interaction_ttl_s": 0})
    async with running_bot(config, fake, with_worker=False) as bot:
        bot.front.client.http.max_ratelimit_timeout = 0.1   # discord.py raises RateLimited past this
        interaction = await animate(fake)
        post = await fake.wait_for_request("POST", rf"^/channels/{fake.channel_id}/messages$")
        status = fake.messages[max(fake.messages)]
        assert post.json["enforce_nonce"] is True and status.component_custom_ids()
        fake.fail_next("PATCH", rf"/messages/{status.id}$", status=429, retry_after=0.3)
        await fake.click_button(status.id, status.component_custom_ids()[0])
        await fake.wait_for(lambda: status.content == "🚫 Cancelled.")
        limited, retried = fake.requests_matching("PATCH", rf"/messages/{status.id}$")
        assert (limited.status, retried.status) == (429, 200) and retried.time - limited.time >= 0.3
        assert interaction.original_message.loading   # the token was never used past the deferral


async def test_expired_interaction_token_moves_to_a_channel_message(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake)
    async with running_bot(config, fake, tiny_parts) as bot:
        await bot.stack.service.pause()
        interaction = await animate(fake)
        await fake.wait_for_request("PATCH", ORIGINAL)
        fake.expire_interaction_token(interaction.token)
        await bot.stack.service.resume()

        channel = rf"^/channels/{fake.channel_id}/messages$"
        await fake.wait_for(lambda: len(fake.requests_matching("POST", channel)) == 2, 30)
        status_post, result_post = fake.requests_matching("POST", channel)
        job = await bot.stack.service.get(job_id_of(interaction.original_message))
        assert (status_post.json["nonce"], result_post.json["nonce"]) == (f"{job.id}s0", f"{job.id}v")
        assert pinged(result_post) == ([], [fake.user_id])
        await fake.wait_for(lambda: fake.messages[channel_status_id(fake, job.id)].deleted)
        [result] = [m for m in fake.messages.values() if m.attachments and not m.deleted]
        check_mp4(fake, result, tmp_path)
        assert result.content.startswith(f"🎞️ <@{fake.user_id}>")
        assert any(r.status == 401 for r in fake.requests_matching("PATCH", ORIGINAL))
        await delivered_job(bot.stack, job.id)


async def test_server_errors_on_the_result_upload_deliver_it_once(tmp_path, fake, tiny_parts):
    # A long edit interval leaves one status edit before the upload, so the fault hits the upload itself.
    config = bot_config(tmp_path, fake, {"edit_interval_s": 30})
    async with running_bot(config, fake, tiny_parts) as bot:
        await bot.stack.service.pause()
        interaction = await animate(fake)
        await fake.wait_for_request("PATCH", ORIGINAL)
        fake.fail_next("POST", FOLLOWUP, status=500)
        await bot.stack.service.resume()
        result = await result_of(fake, interaction)
        failed, uploaded = fake.requests_matching("POST", FOLLOWUP)
        assert (failed.status, uploaded.status) == (500, 200) and failed.files == uploaded.files
        assert len(result.attachments) == 1 and len(fake.files) == 2   # the photo and one video

    # After the token: the retried channel post carries the same nonce, so no second message appears.
    config = bot_config(tmp_path / "b", fake, {"interaction_ttl_s": 0})
    async with running_bot(config, fake, tiny_parts) as bot:
        await bot.stack.service.pause()
        await animate(fake)
        channel = rf"^/channels/{fake.channel_id}/messages$"
        await fake.wait_for_request("POST", channel)
        fake.fail_next("POST", channel, status=500)
        await bot.stack.service.resume()
        await fake.wait_for(lambda: any(r.status == 200 and r.files for r in fake.requests_matching("POST", channel)),
                            30)
        failed, posted = [r for r in fake.requests_matching("POST", channel) if r.files]
        assert failed.status == 500 and failed.json["nonce"] == posted.json["nonce"]
        videos = [m for m in fake.messages.values() if m.attachments and m.interaction_id is None
                  and not m.deleted and m.author["id"] == str(fake.bot_user_id)]
        assert len(videos) == 1


async def test_a_full_queue_is_refused_politely(tmp_path, fake):
    config = bot_config(tmp_path, fake, queue={"max_length": 1})
    async with running_bot(config, fake, with_worker=False):
        first = await animate(fake)
        await fake.wait_for(lambda: shows(first, "⏳"))
        second = await animate(fake, user_id=fake.other_user_id)
        await fake.wait_for(lambda: second.original_message and not second.original_message.loading)
        assert second.original_message.content == t("en", "errors.queue_full", limit=1)
        assert not second.original_message.components


async def test_restart_keeps_buttons_resumes_jobs_and_syncs_only_on_change(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake)
    async with running_bot(config, fake, tiny_parts) as bot:
        assert bot.front.synced and fake.command_syncs == 1
        animate_cmd = fake.find_command("animate")
        assert animate_cmd["name_localizations"]["zh-CN"] == "动画"
        assert animate_cmd["description_localizations"]["zh-CN"] == "把照片变成短视频（快速）"
        assert fake.find_command("Animate this image", 3)["name_localizations"]["zh-CN"] == "把这张图做成动画"
        result = await result_of(fake, await animate(fake, seed=5))
        job_id = job_id_of(result)
        await bot.stack.service.pause()
        waiting = await animate(fake)
        await fake.wait_for(lambda: shows(waiting, "⏳"))

    async with running_bot(config, fake, tiny_parts) as bot:
        assert not bot.front.synced and fake.command_syncs == 1
        await open_more(fake, result, job_id)
        info = await fake.click_button(result.id, f"anim:info:{job_id}")
        assert "Seed: 5" in await ephemeral_reply(fake, info)
        # The job that waited through the restart is followed again in its original message.
        await bot.stack.service.resume()
        resumed = await result_of(fake, waiting)
        check_mp4(fake, resumed, tmp_path)

    config = bot_config(tmp_path, fake, {"dms": False})   # a definition changed: sync again
    async with running_bot(config, fake, with_worker=False) as bot:
        assert bot.front.synced and fake.command_syncs == 2


async def test_where_and_who(tmp_path, fake):
    config = bot_config(tmp_path, fake, {"guilds": [1234], "dms": False})
    async with running_bot(config, fake, with_worker=False):
        here = await fake.slash_command("help")
        assert await ephemeral_reply(fake, here) == t("en", "errors.not_allowed_here")
        dm = await fake.slash_command("help", guild_id=None)
        assert await ephemeral_reply(fake, dm) == t("en", "errors.dms_off")
        assert not here.followup_ids and not dm.followup_ids and len(here.callbacks) == 1

    config = bot_config(tmp_path / "b", fake)
    async with running_bot(config, fake, with_worker=False) as bot:
        assert "Send a photo" in await ephemeral_reply(fake, await fake.slash_command("help"))
        zh = await fake.slash_command("help", locale="zh-CN")
        assert "发送一张图片" in await ephemeral_reply(fake, zh)
        assert await ephemeral_reply(fake, await fake.slash_command("stats")) == t("en", "admin.not_admin")
        stats = await fake.slash_command("stats", user_id=fake.owner_id)
        assert (await ephemeral_reply(fake, stats)).startswith("Queue: 0 waiting")
        ban = await fake.slash_command("ban", [{"name": "user", "value": str(fake.other_user_id)}],
                                       user_id=fake.owner_id)
        assert str(fake.other_user_id) in await ephemeral_reply(fake, ban)
        banned = await animate(fake, user_id=fake.other_user_id)
        await fake.wait_for(lambda: banned.original_message and not banned.original_message.loading)
        assert banned.original_message.content == t("en", "errors.banned")

        waiting = await animate(fake)
        await fake.wait_for(lambda: shows(waiting, "⏳"))
        queue = await ephemeral_reply(fake, await fake.slash_command("queue"))
        assert PROMPT in queue and "position 1" in queue
        job_id = job_id_of(waiting.original_message)
        assert await ephemeral_reply(fake, await fake.slash_command("cancel")) == "🚫 Cancelled."
        assert (await delivered_job(bot.stack, job_id)).state == JobState.CANCELLED
        forget = await ephemeral_reply(fake, await fake.slash_command("forget"))
        assert forget == t("en", "admin.forgot", count=1)


async def test_the_bot_token_stays_out_of_the_logs_and_a_bad_one_fails_start(tmp_path, fake, caplog):
    caplog.set_level(logging.DEBUG)
    config = bot_config(tmp_path, fake)
    async with running_bot(config, fake, with_worker=False):
        interaction = await animate(fake)
        await fake.wait_for(lambda: shows(interaction, "⏳"))
    async with running_stack(config, with_worker=False) as stack:
        front = DiscordFrontEnd(stack.core, config, "not-the-token")
        with pytest.raises(TokenRefused) as refused:   # discord.LoginFailure, which retrying cannot help
            await front.start()
        assert isinstance(refused.value.__cause__, discord.LoginFailure)
    assert "Shard ID None has connected" in caplog.text   # discord.py's DEBUG/INFO lines were captured
    assert fake.token not in caplog.text and "not-the-token" not in caplog.text


# ---------------------------------------------------------------- previews and the result's notification


async def test_previews_replace_the_status_attachment_while_the_clip_forms(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, {"edit_interval_s": 0.2}, engine={"step_delay_s": 0.3},
                        presets={"quick": {"steps": 10}}, preview={"every_s": 0.5})
    async with running_bot(config, fake, tiny_parts) as bot:
        interaction = await animate(fake)
        result = await result_of(fake, interaction)
        with_preview = [r for r in fake.requests_matching("PATCH", ORIGINAL) if r.files]
        assert len(with_preview) >= 2
        for request in with_preview:
            [(_, gif)] = request.files
            assert [a["filename"] for a in request.json["attachments"]] == ["preview.gif"]
            with Image.open(io.BytesIO(gif)) as im:
                assert im.format == "GIF" and im.n_frames == 4 and max(im.size) == 256
        # Each preview replaced the last one in place: the status carried one attachment at a time.
        revisions = interaction.original_message.history
        assert max(len(r["attachments"]) for r in revisions) == 1
        assert has_video(result) and result.id != interaction.original_message_id
        await delivered_job(bot.stack, job_id_of(result))


async def test_a_channel_that_refuses_the_bot_gets_the_result_in_the_status_message(tmp_path, fake, tiny_parts,
                                                                                    caplog):
    config = bot_config(tmp_path, fake, {"interaction_ttl_s": 0})   # results go to the channel
    async with running_bot(config, fake, tiny_parts) as bot:
        await bot.stack.service.pause()
        await animate(fake)
        channel = rf"^/channels/{fake.channel_id}/messages$"
        await fake.wait_for_request("POST", channel)   # the status message
        fake.fail_next("POST", channel, status=403, times=10)   # no Send Messages / Attach Files any more
        await bot.stack.service.resume()
        status = await fake.wait_for(lambda: next((m for m in fake.messages.values()
                                                   if m.nonce and m.nonce.endswith("s0") and has_video(m)), None), 30)
        check_mp4(fake, status, tmp_path)
        assert status.content.startswith(f"🎞️ <@{fake.user_id}>") and not status.deleted
        job = await delivered_job(bot.stack, job_id_of(status))
        assert job.state == JobState.DONE
        refusals = [r for r in caplog.records if "refuses the bot" in r.getMessage()]
        assert len(refusals) == 1


async def test_a_result_post_that_was_never_confirmed_is_found_in_the_channel_not_posted_again(tmp_path, fake,
                                                                                              tiny_parts):
    """A replica that died between posting a result and saving that it did: whoever delivers next finds the
    video among the channel's recent messages; where nothing was posted, it posts."""
    from bot.discord.status import StatusMessage, StatusRef

    async with running_bot(bot_config(tmp_path, fake), fake, tiny_parts) as bot:
        interaction = await animate(fake)
        result = await result_of(fake, interaction)
        job = await delivered_job(bot.stack, job_id_of(result))
        unconfirmed = StatusRef.loads(job.status_ref)
        assert unconfirmed is not None and unconfirmed.result == result.id
        unconfirmed.result, unconfirmed.posting = 0, True
        posts = len(fake.requests_matching("POST", r"^/webhooks/"))
        again = StatusMessage(bot.front, job.id, unconfirmed)
        await again.deliver(job, Path(job.result_path), "", [])
        assert again.ref.result == result.id and len(fake.requests_matching("POST", r"^/webhooks/")) == posts
        # Never posted (the replica died before the post went out): it is posted now, once.
        result.deleted = True
        again.ref.result = 0
        await again.deliver(job, Path(job.result_path), "", [])
        assert len(fake.requests_matching("POST", r"^/webhooks/")) == posts + 1
        assert again.ref.result not in (0, result.id) and has_video(fake.messages[again.ref.result])
