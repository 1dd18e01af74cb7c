"""The NSFW gate end to end on both fakes, with the real clients and nudenet: threshold 0 flags everything, so
what happens depends only on where the content is going."""

from __future__ import annotations

import pytest

from engine.jobs import JobState
from tests.fakes.discord_server import FakeDiscord
from tests.harness import eventually, photo_bytes
from tests.test_discord_bot import ORIGINAL, bot_config, has_video, result_of, running_bot
from tests.test_telegram_bot import _delivered, preview_edits, telegram_bot

pytestmark = pytest.mark.timeout(90)

FLAG_ALL = {"classifier": "nudenet", "threshold": 0.0}
PROMPT = "a cat turning its head"



async def animate_in(fake: FakeDiscord, channel_id: int | None):
    image = fake.add_attachment("photo.png", photo_bytes(), "image/png")
    return await fake.slash_command("animate", [{"name": "image", "value": image}, {"name": "prompt", "value": PROMPT}],
                                    channel_id=channel_id)


async def final_text(fake: FakeDiscord, interaction, start: str) -> str:
    await fake.wait_for(lambda: interaction.original_message and interaction.original_message.content.startswith(
        start), 30)
    return interaction.original_message.content


# ---------------------------------------------------------------- Discord


async def test_discord_refuses_a_flagged_upload_in_an_ordinary_channel_and_delivers_it_in_an_nsfw_one(
        tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, safety=FLAG_ALL)
    async with running_bot(config, fake, tiny_parts) as bot:
        ordinary = await animate_in(fake, None)
        text = await final_text(fake, ordinary, "This image looks like adult content")
        assert "not allowed here" in text and not has_video(ordinary.original_message)
        [refused] = await bot.stack.service.audit()
        assert (refused.state, refused.error_key, refused.server) == (JobState.FAILED, "nsfw_input",
                                                                      str(fake.guild_id))

        nsfw = fake.add_channel("after-dark", nsfw=True)
        allowed = await animate_in(fake, nsfw)
        result = await result_of(fake, allowed, timeout=60)
        assert result.channel_id == nsfw and not result.attachments[0]["filename"].startswith("SPOILER_")
        job = next(j for j in await bot.stack.service.audit() if j.state == JobState.DONE)
        assert (job.verdict, job.safety_rule, job.chat) == ("flagged", "allow", str(nsfw))


async def test_discord_withholds_a_flagged_result(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, safety={**FLAG_ALL, "check_input": False})
    async with running_bot(config, fake, tiny_parts) as bot:
        interaction = await animate_in(fake, None)
        text = await final_text(fake, interaction, "❌")
        assert "not posted" in text
        assert not any(has_video(m) for m in fake.messages.values())
        [job] = await bot.stack.service.audit()
        assert (job.state, job.error_key, job.flagged_at) == (JobState.FAILED, "nsfw_output", "output")


async def test_discord_stops_previews_when_one_is_flagged(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, {"edit_interval_s": 0.1}, safety={**FLAG_ALL, "check_input": False},
                        engine={"step_delay_s": 0.25}, presets={"quick": {"steps": 6}}, preview={"every_s": 0.3})
    async with running_bot(config, fake, tiny_parts) as bot:
        interaction = await animate_in(fake, None)
        await final_text(fake, interaction, "❌")
        edits = fake.requests_matching("PATCH", ORIGINAL)
        assert not any(r.files for r in edits)               # no preview was ever shown
        assert edits[-1].json["attachments"] == []          # and the status carries no picture
        assert interaction.original_message.attachments == []
        [job] = await bot.stack.service.audit()
        assert job.flagged_at == "preview" and job.preview_step > 0   # the worker did make previews


async def test_discord_refuses_flagged_content_in_direct_messages_unless_allowed(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, safety=FLAG_ALL)
    async with running_bot(config, fake, tiny_parts, with_worker=False):
        image = fake.add_attachment("photo.png", photo_bytes(), "image/png")
        dm = await fake.slash_command("animate", [{"name": "image", "value": image},
                                                  {"name": "prompt", "value": PROMPT}], guild_id=None)
        assert "adult content" in await final_text(fake, dm, "This image")


# ---------------------------------------------------------------- Telegram


async def test_telegram_spoiler_chat_gets_spoilers_on_the_status_and_the_video(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts, safety={**FLAG_ALL, "telegram": "spoiler"}) as env:
        fake = env.fake
        alice = fake.user("Alice")
        chat = fake.group_chat("Artists")
        fake.send_photo(chat, alice, photo_bytes(), caption=f"/animate {PROMPT}")
        [upload] = await env.videos(timeout=60)
        assert upload.params["has_spoiler"] is True
        [status] = [c for c in fake.calls if c.method == "sendPhoto" and c.ok]
        assert str(status.params["has_spoiler"]).lower() == "true"
        assert fake.message(chat.id, upload.result["message_id"]).has_spoiler
        [job] = await env.jobs()
        job = await eventually(lambda: _delivered(env, job.id), 10, every=0.02)
        assert job.verdict == "flagged" and job.safety_rule == "spoiler"


async def test_telegram_withholds_by_default(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts, safety=FLAG_ALL) as env:
        fake = env.fake
        alice = fake.user("Alice", language_code="zh-hans")
        chat = fake.private_chat(alice)
        sent = fake.send_photo(chat, alice, photo_bytes(), caption=f"/animate {PROMPT}")
        [answer] = await env.replies(sent)
        assert answer.method == "sendMessage" and "成人内容" in answer.params["text"]
        assert not fake.calls_to("sendVideo") and not preview_edits(env, chat.id)
