"""Report and Remove end to end on both fakes: the reporter is thanked privately, the moderation channel (or
the admins by direct message) gets the clip's link, prompt, owner and verdict, and Remove deletes the message and
the files, with the moderator in the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.texts import t
from engine.jobs import JobState
from tests.fakes.discord_server import ALL_PERMISSIONS, FakeDiscord
from tests.fakes.telegram_server import FakeTelegram
from tests.harness import make_config, photo_bytes, running_stack
from tests.test_discord_bot import (
    animate,
    bot_config,
    ephemeral_reply,
    job_id_of,
    open_more,
    result_of,
    running_bot,
)
from tests.test_server_settings import settings_reply
from tests.test_telegram_bot import open_more as open_more_telegram
from tests.test_telegram_bot import settle, telegram_front

pytestmark = pytest.mark.timeout(120)



def posted_in(fake: FakeDiscord, channel_id: int) -> list:
    return [m for m in fake.messages.values() if m.channel_id == channel_id and not m.deleted]


async def test_discord_report_reaches_the_moderation_channel_and_remove_deletes_the_clip(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, {"admins": []}, safety={"classifier": "nudenet"})
    mod = fake.add_member("mod", permissions=ALL_PERMISSIONS)
    mods = fake.add_channel("mods")
    async with running_bot(config, fake, tiny_parts) as bot:
        await settings_reply(fake, mod, moderation_channel=str(mods))
        result = await result_of(fake, await animate(fake, "a lighthouse at night"))
        job_id = job_id_of(result)
        await open_more(fake, result, job_id)
        report = await fake.click_button(result.id, f"anim:report:{job_id}", user_id=fake.other_user_id)
        assert await ephemeral_reply(fake, report) == t("en", "report.thanks")
        [notice] = await fake.wait_for(lambda: posted_in(fake, mods) or None)
        assert notice.content.startswith(f"🚩 A clip was reported by <@{fake.other_user_id}>")
        assert f"/channels/{fake.guild_id}/{result.channel_id}/{result.id}" in notice.content   # the clip's link
        assert "“a lighthouse at night”" in notice.content and "passed, score 0.000" in notice.content
        assert notice.component_custom_ids() == [f"anim:remove:{job_id}"]

        denied = await fake.click_button(notice.id, f"anim:remove:{job_id}")   # alice is no moderator
        assert await ephemeral_reply(fake, denied) == t("en", "report.not_moderator")
        assert not fake.messages[result.id].deleted
        await fake.click_button(notice.id, f"anim:remove:{job_id}", user_id=mod)
        await fake.wait_for(lambda: fake.messages[result.id].deleted)
        await fake.wait_for(lambda: "Removed by" in fake.messages[notice.id].content)
        assert fake.messages[notice.id].component_custom_ids() == []
        job = await bot.stack.service.get(job_id)
        assert (job.expired, job.removed_by, job.reports) == (True, f"discord:{mod}", 1)
        assert not Path(job.result_path).exists() and not Path(job.image_path).exists()
        [line] = [a for a in await bot.stack.service.audit() if a.id == job_id]
        assert line.removed_by == f"discord:{mod}"


async def test_discord_report_goes_to_the_admins_by_dm_without_a_moderation_channel(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake)   # the owner is the bot's admin
    async with running_bot(config, fake, tiny_parts):
        result = await result_of(fake, await animate(fake))
        job_id = job_id_of(result)
        await open_more(fake, result, job_id)
        await fake.click_button(result.id, f"anim:report:{job_id}", user_id=fake.other_user_id)
        dm = fake.dm_channel(fake.owner_id)
        [notice] = await fake.wait_for(lambda: posted_in(fake, dm) or None)
        assert "🚩" in notice.content and notice.component_custom_ids() == [f"anim:remove:{job_id}"]
        await fake.click_button(notice.id, f"anim:remove:{job_id}", user_id=fake.owner_id, )
        await fake.wait_for(lambda: fake.messages[result.id].deleted)


async def test_telegram_report_reaches_the_moderation_chat_and_remove_deletes_the_clip(tmp_path, tiny_parts):
    async with FakeTelegram() as fake:
        config = make_config(tmp_path, telegram={"api_base_url": fake.base_url, "file_base_url": fake.base_file_url})
        alice, bob, olga = fake.user("Alice"), fake.user("Bob", username="bob"), fake.user("Olga")
        group, mods = fake.group_chat("Artists", supergroup=True), fake.group_chat("Mods")
        fake.make_admin(group, olga, creator=True)
        fake.make_admin(mods, olga)
        async with running_stack(config, tiny_parts) as stack, telegram_front(stack, config, fake) as env:
            await env.replies(fake.send_text(group, olga, f"/settings moderation_channel {mods.id}"))
            fake.send_photo(group, alice, photo_bytes(), caption="/animate a lighthouse at night")
            [upload] = await env.videos(timeout=60)
            await settle(stack)
            result = fake.message(group.id, upload.result["message_id"])
            await open_more_telegram(env, group, bob, result)
            [report] = [d for d in result.callback_data() if d.startswith("anim:report:")]
            press = fake.press_button(group, bob, result, report)
            await fake.wait_for(lambda: press.answered)
            assert press.answer["text"] == t("en", "report.thanks") and press.answer["show_alert"] is True
            [notice] = await fake.wait_for(lambda: fake.calls_to("sendMessage", mods.id) or None)
            text = notice.params["text"]
            assert text.startswith("🚩 A clip was reported by Bob (@bob)") and "a lighthouse at night" in text
            assert f"https://t.me/c/{str(group.id)[4:]}/{result.message_id}" in text
            notice_message = fake.message(mods.id, notice.result["message_id"])
            job_id = report.split(":")[2]
            denied = fake.press_button(mods, bob, notice_message, f"anim:remove:{job_id}")
            await fake.wait_for(lambda: denied.answered)
            assert denied.answer["text"] == t("en", "report.not_moderator") and not result.deleted
            removed = fake.press_button(mods, olga, notice_message, f"anim:remove:{job_id}")
            await fake.wait_for(lambda: removed.answered and fake.message(group.id, result.message_id).deleted)
            job = await stack.service.get(job_id)
            assert (job.removed_by, job.expired, job.state) == (f"telegram:{olga.id}", True, JobState.DONE)
            assert "Removed by Olga" in fake.message(mods.id, notice_message.message_id).text
        assert fake.unknown_methods == [] and fake.server_errors == []
