"""Extend, Smooth and Loop end to end on both fakes: each delivers a new clip, works after a restart, and keeps to
the limits; the result's second row of buttons is behind More."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core import BotCore
from bot.texts import t
from engine.jobs import JobState
from engine.media.video import probe_mp4
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.telegram_server import FakeTelegram
from tests.harness import make_config, photo_bytes, running_stack
from tests.test_discord_bot import (
    animate,
    bot_config,
    ephemeral_reply,
    job_id_of,
    result_of,
    running_bot,
)
from tests.test_telegram_bot import settle, telegram_front

pytestmark = pytest.mark.timeout(120)



def mp4_of(data: bytes, tmp_path: Path, name: str) -> dict:
    path = tmp_path / f"{name}.mp4"
    path.write_bytes(data)
    return probe_mp4(path)


def discord_clip(fake: FakeDiscord, message, tmp_path: Path) -> dict:
    [attachment] = message.attachments
    return mp4_of(fake.read_attachment(attachment), tmp_path, str(message.id))


def ids(message) -> list[str]:
    return [c.split(":")[1] for c in message.component_custom_ids()]


async def test_discord_more_smooth_loop_and_extend_each_deliver_a_new_clip(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, queue={"max_extends": 1, "per_user": 5})
    async with running_bot(config, fake, tiny_parts) as bot:
        result = await result_of(fake, await animate(fake, seed=3))
        job_id = job_id_of(result)
        assert ids(result) == ["hq", "reroll", "extend", "more"]
        more = await fake.click_button(result.id, f"anim:more:{job_id}")
        await fake.wait_for(lambda: "smooth" in ids(fake.messages[result.id]))
        assert ids(fake.messages[result.id]) == ["hq", "reroll", "extend", "smooth", "loop", "report", "delete", "info"]
        assert more.response_type == 7   # the message itself, updated in place

        smoothed = await result_of(fake, await fake.click_button(result.id, f"anim:smooth:{job_id}"))
        info = discord_clip(fake, smoothed, tmp_path)
        assert (info["frames"], round(info["fps"])) == (10, 24)   # 4 frames at 8 fps -> 3*3+1 at 24
        assert "smooth" not in ids(smoothed) or "more" in ids(smoothed)

        extended = await result_of(fake, await fake.click_button(result.id, f"anim:extend:{job_id}"), timeout=60)
        assert discord_clip(fake, extended, tmp_path)["frames"] == 7   # 4 + 3, the shared frame once
        ext_job = await bot.stack.service.get(job_id_of(extended))
        assert (ext_job.extends, ext_job.extension, ext_job.seed) == (job_id, 1, 3)
        assert "extend" not in ids(extended)   # max_extends = 1: the chain is complete

    async with running_bot(config, fake, tiny_parts) as bot:   # after a restart: the old buttons still work
        looped = await result_of(fake, await fake.click_button(result.id, f"anim:loop:{job_id}"))
        assert discord_clip(fake, looped, tmp_path)["frames"] == 6   # 2*(4-1)
        press = await fake.click_button(extended.id, f"anim:more:{ext_job.id}")
        await fake.wait_for(lambda: "info" in ids(fake.messages[extended.id]))
        info_press = await fake.click_button(extended.id, f"anim:info:{ext_job.id}")
        assert f"Extension 1 of clip {job_id}" in await ephemeral_reply(fake, info_press)
        assert press.response_type == 7


def result_of_text(interaction) -> bool:
    message = interaction.original_message
    return message is not None and not message.loading and bool(message.content)


async def test_discord_extend_counts_in_the_per_user_limit(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, queue={"per_user": 1})
    async with running_bot(config, fake, tiny_parts) as bot:
        result = await result_of(fake, await animate(fake))
        await bot.stack.service.pause()   # the next job waits, so the user's one place is taken
        waiting = await animate(fake)
        await fake.wait_for(lambda: waiting.original_message and "⏳" in waiting.original_message.content)
        busy = await fake.click_button(result.id, f"anim:extend:{job_id_of(result)}")
        await fake.wait_for(lambda: result_of_text(busy))
        assert busy.original_message.content == t("en", "errors.user_limit", limit=1)
        assert len(await bot.stack.service.store.queued()) == 1
        await bot.stack.service.resume()


async def test_telegram_more_smooth_then_after_a_restart_loop_and_extend(tmp_path, tiny_parts):
    async with FakeTelegram() as fake:
        config = make_config(tmp_path, telegram={"api_base_url": fake.base_url, "file_base_url": fake.base_file_url},
                             queue={"max_extends": 1})
        async with running_stack(config, tiny_parts) as stack:
            alice = fake.user("Alice")
            chat = fake.private_chat(alice)

            async with telegram_front(stack, config, fake) as env:
                fake.send_photo(chat, alice, photo_bytes(), caption="/animate waves --seed 4")
                [upload] = await env.videos(timeout=60)
                result = fake.message(chat.id, upload.result["message_id"])
                job_id = result.callback_data()[0].split(":")[2]
                assert [d.split(":")[1] for d in result.callback_data()] == ["hq", "reroll", "extend", "more"]
                more = fake.press_button(chat, alice, result, f"anim:more:{job_id}")
                await fake.wait_for(lambda: more.answered)
                await fake.wait_for(lambda: len(fake.message(chat.id, result.message_id).callback_data()) == 8)
                press = fake.press_button(chat, alice, result, f"anim:smooth:{job_id}")
                [_, smoothed] = await env.videos(2, timeout=60)
                assert press.answered and mp4_of(smoothed.files["video"].data, tmp_path, "s")["frames"] == 10
                await settle(stack)

            core = BotCore(config, stack.service)   # a new bot process, the same store
            async with telegram_front(stack, config, fake, core) as env:
                fake.press_button(chat, alice, result, f"anim:loop:{job_id}")
                [*_, looped] = await env.videos(3, timeout=60)
                assert mp4_of(looped.files["video"].data, tmp_path, "l")["frames"] == 6
                ask = fake.send_text(chat, alice, "/extend", reply_to=result.message_id)
                [*_, extended] = await env.videos(4, timeout=90)
                assert mp4_of(extended.files["video"].data, tmp_path, "e")["frames"] == 7
                assert extended.params["reply_parameters"]["message_id"] == ask.message_id
                jobs = await stack.service.store.jobs()
                assert sorted(j.extension for j in jobs) == [0, 0, 0, 1] and all(
                    j.state == JobState.DONE for j in jobs)
                bare = fake.send_text(chat, alice, "/extend")
                [answer] = await env.replies(bare)
                assert answer.params["text"] == t("en", "errors.extend_usage")
                await settle(stack)   # the extension's result message is linked to its job once delivered
                last = fake.send_text(chat, alice, "/extend", reply_to=extended.result["message_id"])
                [answer] = await env.replies(last)   # the chain has its one extension
                assert answer.params["text"] == t("en", "errors.max_extends", limit=1)
                await settle(stack)
        assert fake.unknown_methods == [] and fake.server_errors == []
