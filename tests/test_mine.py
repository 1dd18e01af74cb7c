"""/mine end to end on both fakes: lists a user's clips newest first, five a page, turns pages, posts a clip
again (under the safety rule of the chat it goes to) and deletes one, after a restart too."""

from __future__ import annotations

import asyncio

import pytest

from bot.core import BotCore
from bot.texts import t
from engine.jobs import JobState
from tests.fakes.telegram_server import FakeTelegram
from tests.harness import make_config, running_stack
from tests.test_discord_bot import bot_config, ephemeral_reply, running_bot
from tests.test_telegram_bot import settle, telegram_front
from tests.tiny_model import make_photo

pytestmark = pytest.mark.timeout(150)



async def make_clips(stack, user: str, count: int) -> list:
    """`count` finished clips of `user`, oldest first, rendered by the worker."""
    jobs = []
    for n in range(count):
        job = await stack.service.submit(user=user, image=make_photo(seed=n), prompt_raw=f"clip number {n}",
                                         platform=user.split(":")[0])
        async for _ in stack.service.events(job.id):
            pass
        jobs.append(await stack.service.mark_delivered(job.id))   # as if the bot had posted it
        await asyncio.sleep(0.01)   # distinct creation times: the order is by them
    assert all(j.state == JobState.DONE for j in jobs)
    return jobs


def custom_ids(message) -> list[str]:
    return message.component_custom_ids()


async def test_discord_mine_lists_pages_posts_again_and_deletes(tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, queue={"per_user": 10})
    alice = fake.user_id
    async with running_bot(config, fake, tiny_parts) as bot:
        clips = await make_clips(bot.stack, f"discord:{alice}", 6)
        listing = await fake.slash_command("mine")
        await fake.wait_for(lambda: listing.original_message and not listing.original_message.loading)
        first = listing.original_message
        assert first.ephemeral and first.content == t("en", "mine.title", count=6, page=1, pages=2)
        assert [e["description"].split(". ", 1)[1].split(" · ")[0] for e in first.embeds] == [
            f"“clip number {n}”" for n in (5, 4, 3, 2, 1)]   # newest first, five a page
        assert [e["thumbnail"]["url"] for e in first.embeds] == [f"attachment://clip{n}.jpg" for n in range(5)]
        assert sorted(a["filename"] for a in first.attachments) == [f"clip{n}.jpg" for n in range(5)]
        assert custom_ids(first)[-1] == f"anim:page:{alice}-1"
        assert [len(r["components"]) for r in first.components] == [5, 5, 1]   # Post x5, Delete x5, next

        await fake.click_button(first.id, f"anim:page:{alice}-1")
        await fake.wait_for(lambda: "page 2 of 2" in fake.messages[first.id].content)
        oldest = clips[0]
        assert custom_ids(fake.messages[first.id]) == [f"anim:post:{oldest.id}", f"anim:drop:{oldest.id}",
                                                       f"anim:page:{alice}-0"]
        assert [len(r["components"]) for r in fake.messages[first.id].components] == [1, 1, 1]

    async with running_bot(config, fake, tiny_parts) as bot:   # after a restart, the same buttons work
        posted = await fake.click_button(first.id, f"anim:post:{oldest.id}")
        await fake.wait_for(lambda: posted.original_message and posted.original_message.attachments)
        clip = posted.original_message
        assert not clip.ephemeral and clip.attachments[0]["filename"] == f"{oldest.id}.mp4"
        assert "clip number 0" in clip.content and f"anim:more:{oldest.id}" in custom_ids(clip)

        await fake.click_button(first.id, f"anim:drop:{oldest.id}")
        await fake.wait_for(lambda: "expired" in fake.messages[first.id].embeds[-1]["description"])
        assert "page 2 of 2" in fake.messages[first.id].content   # the page that lists it, now saying so
        assert (await bot.stack.service.get(oldest.id)).expired
        assert f"anim:post:{oldest.id}" not in custom_ids(fake.messages[first.id])

        # A clip flagged by the NSFW gate (its first channel allowed it) is not posted again in an ordinary one.
        flagged = clips[1]
        await bot.stack.service.store.update(flagged.id, verdict="flagged", nsfw_score=0.9)
        fresh = await fake.slash_command("mine")
        await fake.wait_for(lambda: fresh.original_message and not fresh.original_message.loading)
        refused = await fake.click_button(fresh.original_message.id, f"anim:post:{flagged.id}")
        assert await ephemeral_reply(fake, refused) == t("en", "errors.nsfw_repost")


async def test_telegram_mine_lists_pages_posts_again_and_deletes(tmp_path, tiny_parts):
    async with FakeTelegram() as fake:
        config = make_config(tmp_path, telegram={"api_base_url": fake.base_url, "file_base_url": fake.base_file_url},
                             queue={"per_user": 10})
        alice, bob = fake.user("Alice"), fake.user("Bob")
        group = fake.group_chat("Artists")
        async with running_stack(config, tiny_parts) as stack:
            clips = await make_clips(stack, f"telegram:{alice.id}", 6)
            async with telegram_front(stack, config, fake) as env:
                [answer] = await env.replies(fake.send_text(group, alice, "/mine"))
                text = answer.params["text"]
                assert text.startswith(t("en", "mine.title", count=6, page=1, pages=2))
                assert text.index("clip number 5") < text.index("clip number 1") and "clip number 0" not in text
                listing = fake.message(group.id, answer.result["message_id"])
                assert listing.callback_data()[-1] == f"anim:page:{alice.id}-1"
                stolen = fake.press_button(group, bob, listing, f"anim:page:{alice.id}-1")
                await fake.wait_for(lambda: stolen.answered)
                assert stolen.answer["show_alert"] and "Only the person" in stolen.answer["text"]
                turned = fake.press_button(group, alice, listing, f"anim:page:{alice.id}-1")
                await fake.wait_for(lambda: turned.answered and "page 2 of 2" in fake.message(
                    group.id, listing.message_id).text)

            core = BotCore(config, stack.service)
            async with telegram_front(stack, config, fake, core) as env:
                listing = fake.message(group.id, listing.message_id)
                oldest = clips[0]
                fake.press_button(group, alice, listing, f"anim:post:{oldest.id}")
                [video] = await env.videos(timeout=30)
                assert "clip number 0" in video.params["caption"] and video.params["has_spoiler"] is False
                dropped = fake.press_button(group, alice, listing, f"anim:drop:{oldest.id}")
                await fake.wait_for(lambda: dropped.answered)
                await fake.wait_for(lambda: "“clip number 0”" in fake.message(group.id, listing.message_id).text
                                    and "expired" in fake.message(group.id, listing.message_id).text)
                assert (await stack.service.get(oldest.id)).expired
                await settle(stack)
        assert fake.unknown_methods == [] and fake.server_errors == []
