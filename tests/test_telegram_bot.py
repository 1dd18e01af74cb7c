"""The Telegram front end end to end: the real python-telegram-bot client against the fake Bot API on
127.0.0.1, the real job service and SQLite store, and a worker rendering with the tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.core import BotCore
from bot.telegram import commands as telegram_commands
from bot.telegram.app import TelegramFrontEnd
from bot.texts import t
from engine.jobs import Job, JobState
from engine.media.video import probe_mp4, write_mp4
from engine.prompts import load_templates
from tests.fakes.telegram_server import Call, FakeTelegram
from tests.harness import Stack, eventually, make_config, photo_bytes, running_stack

torch.set_num_threads(1)
MB = 1024 * 1024


@dataclass
class Env:
    fake: FakeTelegram
    stack: Stack
    front: TelegramFrontEnd

    async def jobs(self) -> list[Job]:
        return await self.stack.service.store.jobs()

    async def videos(self, count: int = 1, timeout: float = 30) -> list[Call]:
        """The first `count` successful sendVideo calls, waiting for them."""
        return await self.fake.wait_for(lambda: _enough(self.fake.calls_to("sendVideo"), count), timeout)

    async def replies(self, message, count: int = 1, timeout: float = 10) -> list[Call]:
        """Successful sendMessage and sendPhoto (a job's status) calls that reply to `message`, in order."""
        def found():
            calls = [c for c in self.fake.calls if c.method in ("sendMessage", "sendPhoto")
                     and str(c.params.get("chat_id")) == str(message.chat_id)
                     and (c.params.get("reply_parameters") or {}).get("message_id") == message.message_id]
            return _enough(calls, count)
        return await self.fake.wait_for(found, timeout)

    def status_edits(self, chat_id: int) -> list[Call]:
        """Edits of status messages (photos: caption edits and preview media edits), in order."""
        return [c for c in self.fake.calls if c.method in STATUS_EDITS and str(c.params.get("chat_id")) == str(chat_id)]


STATUS_EDITS = ("editMessageCaption", "editMessageMedia")


@contextlib.asynccontextmanager
async def telegram_front(stack: Stack, config, fake: FakeTelegram, core: BotCore | None = None
                         ) -> AsyncIterator[Env]:
    """A Telegram front end on `stack`'s store, closed after; with `core`, as a restarted bot process."""
    front = TelegramFrontEnd(core or stack.core, config, fake.token, poll_timeout=1)
    await front.start()
    try:
        yield Env(fake, stack, front)
    finally:
        await front.close()
        if core is not None:
            await core.close()


async def open_more(env: Env, chat, user, result) -> None:
    """Press a result's More button: its second row (Smooth, Loop, Delete, Info) joins the first, in place."""
    [more] = [d for d in result.callback_data() if d.startswith("anim:more:")]
    press = env.fake.press_button(chat, user, result, more)
    await env.fake.wait_for(lambda: press.answered and any(
        d.startswith("anim:info:") for d in env.fake.message(chat.id, result.message_id).callback_data()))


def shown(call: Call) -> str:
    """The text a sent or edited message shows: its text, or a media message's caption (for a media edit, the
    new media's)."""
    media = call.params.get("media")
    if isinstance(media, dict):
        return media.get("caption") or ""
    return call.params.get("text") or call.params.get("caption") or ""


def text_of(message) -> str | None:
    return message.text if message.text is not None else message.caption


async def settle(stack: Stack, timeout: float = 10.0) -> None:
    """Wait until every finished job's outcome is posted, so closing cancels no follower mid-write."""
    async def settled() -> bool:
        return all(j.delivered for j in await stack.service.store.jobs() if j.state.final)
    await eventually(settled, timeout, every=0.02)


def _enough(calls: list[Call], count: int) -> list[Call] | None:
    ok = [c for c in calls if c.ok]
    return ok if len(ok) >= count else None


async def _delivered(env: Env, job_id: str) -> Job | None:
    job = await env.stack.service.get(job_id)
    return job if job.delivered else None


def replied_to(call: Call) -> int | None:
    return (call.params.get("reply_parameters") or {}).get("message_id")


@contextlib.asynccontextmanager
async def telegram_bot(tmp_path: Path, tiny_parts, *, with_worker: bool = True, telegram: dict | None = None,
                       front_options: dict | None = None, settle_jobs: bool = True,
                       **sections) -> AsyncIterator[Env]:
    async with FakeTelegram() as fake:
        tg = {"api_base_url": fake.base_url, "file_base_url": fake.base_file_url, **(telegram or {})}
        config = make_config(tmp_path, telegram=tg, **sections)
        async with running_stack(config, tiny_parts, with_worker=with_worker) as stack:
            front = TelegramFrontEnd(stack.core, config, fake.token, poll_timeout=1, **(front_options or {}))
            await front.start()
            try:
                yield Env(fake, stack, front)
                if settle_jobs:
                    await settle(stack)
            finally:
                await front.close()
        assert fake.unknown_methods == [] and fake.server_errors == []


# ---------------------------------------------------------------- starting jobs


async def test_captioned_photo_becomes_a_video_reply_in_the_users_language(tmp_path, tiny_parts, caplog):
    caplog.set_level(logging.DEBUG)
    async with telegram_bot(tmp_path, tiny_parts) as env:
        fake = env.fake
        assert [c["command"] for c in fake.commands()][:2] == ["animate", "hq"]
        assert fake.commands("zh")[0]["description"].startswith("把照片变成视频")
        alice = fake.user("Alice", language_code="zh-hans")
        chat = fake.private_chat(alice)
        image = photo_bytes()
        sent = fake.send_photo(chat, alice, image, caption="/animate 一只猫慢慢转头")

        [upload] = await env.videos()
        [status_call] = await env.replies(sent)
        [job] = await env.jobs()
        assert "下一个就是你" in shown(status_call) or "排队中" in shown(status_call)
        assert status_call.params["reply_markup"]["inline_keyboard"] == [
            [{"text": "取消", "callback_data": f"anim:cancel:{job.id}"}]]
        assert fake.downloads == [sent.photo[-1].file_path]   # the largest size, downloaded once

        p = upload.params
        assert replied_to(upload) == sent.message_id and p["supports_streaming"] is True
        assert (p["width"], p["height"], p["duration"]) == (64, 64, 1)
        assert "Alice" in p["caption"] and "一只猫慢慢转头" in p["caption"] and "种子" in p["caption"]
        assert "parse_mode" not in p
        markup = p["reply_markup"]["inline_keyboard"]
        assert [b["text"] for row in markup for b in row] == ["高质量", "重新生成", "延长", "更多 ▾"]
        assert [b["callback_data"] for row in markup for b in row] == [
            f"anim:{a}:{job.id}" for a in ("hq", "reroll", "extend", "more")]
        video = tmp_path / "sent.mp4"
        video.write_bytes(upload.files["video"].data)
        info = probe_mp4(video)
        assert (info["codec"], info["frames"], info["width"]) == ("h264", 4, 64)

        # The result replaces the status message; the store knows where the result is.
        await fake.wait_for(lambda: fake.message(chat.id, status_call.result["message_id"]).deleted)
        job = await eventually(lambda: _delivered(env, job.id), 10, every=0.02)
        assert job.state == JobState.DONE and job.user == f"telegram:{alice.id}"
        assert json.loads(job.status_ref)["result"] == upload.result["message_id"]
    assert fake.token not in caplog.text and fake.token.split(":")[1] not in caplog.text


@pytest.mark.parametrize("kind", ["reply", "document", "forwarded"])
async def test_other_ways_to_give_the_image(tmp_path, tiny_parts, kind):
    async with telegram_bot(tmp_path, tiny_parts) as env:
        fake = env.fake
        bob, carol = fake.user("Bob"), fake.user("Carol")
        group = fake.group_chat("Artists")
        image = photo_bytes(seed=3)
        if kind == "reply":
            photo = fake.send_photo(group, carol, image)
            command = fake.send_text(group, bob, "/animate@animabot a cat turning its head", reply_to=photo)
            expected = photo.photo[-1].file_path
        elif kind == "document":
            command = fake.send_document(group, bob, image, "cat.png", "image/png", caption="/animate a cat")
            expected = command.document.file_path
        else:
            command = fake.send_photo(group, bob, image, caption="/animate a cat", forward_from=carol)
            expected = command.photo[-1].file_path
        [upload] = await env.videos()
        assert replied_to(upload) == command.message_id
        assert fake.downloads == [expected]
        [job] = await env.jobs()
        assert job.user == f"telegram:{bob.id}" and job.chat == str(group.id)


async def test_album_animates_the_first_photo_and_says_so(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts) as env:
        fake = env.fake
        alice = fake.user("Alice")
        chat = fake.private_chat(alice)
        album = fake.send_album(chat, alice, [photo_bytes(seed=s) for s in range(3)], caption="/animate waves")
        [upload] = await env.videos()
        assert replied_to(upload) == album[0].message_id
        replies = await env.replies(album[0], count=2)
        assert t("en", "errors.album") in [shown(c) for c in replies]
        assert fake.downloads == [album[0].photo[-1].file_path]
        assert len(await env.jobs()) == 1


async def test_prompt_then_photo_in_a_group_through_force_reply(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts) as env:
        fake = env.fake
        bob, dan = fake.user("Bob"), fake.user("Dan")
        group = fake.group_chat("Artists", supergroup=True)
        fake.send_text(group, bob, "/animate@otherbot not for us")
        command = fake.send_text(group, bob, "/animate@animabot a dog running --speed fast")
        [ask] = await env.replies(command)
        assert ask.params["text"] == t("en", "errors.ask_image")
        assert ask.params["reply_markup"]["force_reply"] is True
        fake.send_photo(group, dan, photo_bytes(seed=1), reply_to=ask.result["message_id"])   # not Bob's
        photo = fake.send_photo(group, bob, photo_bytes(seed=2), reply_to=ask.result["message_id"])
        [upload] = await env.videos()
        assert replied_to(upload) == photo.message_id
        [job] = await env.jobs()
        assert job.user == f"telegram:{bob.id}" and job.options["speed"] == "fast"
        # The ask and the video remain (the status is deleted); nothing for the other user's photo.
        await fake.wait_for(lambda: len(fake.bot_messages(group.id)) == 2)


async def test_a_pending_ask_expires(tmp_path, tiny_parts, monkeypatch):
    monkeypatch.setattr(telegram_commands, "PENDING_ASK_S", 0.3)
    async with telegram_bot(tmp_path, tiny_parts, with_worker=False) as env:
        fake = env.fake
        bob = fake.user("Bob")
        group = fake.group_chat("Artists")
        command = fake.send_text(group, bob, "/animate a dog running")
        [ask] = await env.replies(command)
        await asyncio.sleep(0.5)
        late = fake.send_photo(group, bob, photo_bytes(), reply_to=ask.result["message_id"])
        await fake.wait_for(lambda: late.update_id not in [u["update_id"] for u in fake.pending_updates])
        await asyncio.sleep(0.3)
        assert fake.downloads == [] and await env.jobs() == []


# ---------------------------------------------------------------- refusals


async def test_refusals_are_clear_replies_before_any_download(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts, with_worker=False,
                            telegram={"download_limit_bytes": 20_000_000}) as env:
        fake = env.fake
        li, ann = fake.user("Li", language_code="zh"), fake.user("Ann", language_code="en")
        chat_li, chat_ann = fake.private_chat(li), fake.private_chat(ann)
        pdf = fake.send_document(chat_li, li, b"%PDF-1.4 hello", "notes.pdf", "application/pdf",
                                 caption="/animate a cat")
        big = fake.send_photo(chat_ann, ann, photo_bytes(), caption="/animate a cat", file_size=25 * MB)
        flag = fake.send_photo(chat_ann, ann, photo_bytes(), caption="/animate a cat --wobble 3")
        camera = fake.send_photo(chat_ann, ann, photo_bytes(), caption="/hq a cat —camera sideways")
        [pdf_reply] = await env.replies(pdf)
        [big_reply] = await env.replies(big)
        [flag_reply] = await env.replies(flag)
        [camera_reply] = await env.replies(camera)
        assert "不支持这种格式" in pdf_reply.params["text"]
        assert "over the 20 MB limit" in big_reply.params["text"]
        assert "--wobble" in flag_reply.params["text"]
        assert "sideways" in camera_reply.params["text"] and "zoom-in" in camera_reply.params["text"]
        assert fake.downloads == [] and fake.calls_to("getFile") == []
        assert await env.jobs() == []


# ---------------------------------------------------------------- buttons


async def test_cancel_button_answers_everyone_and_stops_the_job(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts, engine={"step_delay_s": 0.3},
                            presets={"quick": {"steps": 8}}) as env:
        fake = env.fake
        alice, bob = fake.user("Alice"), fake.user("Bob")
        group = fake.group_chat("Artists")
        sent = fake.send_photo(group, alice, photo_bytes(), caption="/animate a cat")
        [status_call] = await env.replies(sent)
        status = fake.message(group.id, status_call.result["message_id"])
        await fake.wait_for(lambda: "Step" in (text_of(status) or ""), timeout=20)
        [data] = status.callback_data()

        stranger = fake.press_button(group, bob, status, data)
        await fake.wait_for(lambda: stranger.answered)
        assert stranger.answer["show_alert"] is True and "Only the person" in stranger.answer["text"]
        owner = fake.press_button(group, alice, status, data)
        await fake.wait_for(lambda: owner.answered)
        assert owner.answer["text"] == "🚫 Cancelled."
        await fake.wait_for(lambda: text_of(status) == "🚫 Cancelled." and not status.buttons(), timeout=10)
        [job] = await env.jobs()
        assert job.state == JobState.CANCELLED and fake.calls_to("sendVideo") == []


async def test_result_buttons_hq_info_reroll_delete_work_from_callback_data(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts) as env:
        fake = env.fake
        alice, bob = fake.user("Alice"), fake.user("Bob", language_code="en")
        group = fake.group_chat("Artists")
        sent = fake.send_photo(group, alice, photo_bytes(), caption="/animate a red ball rolling")
        [first] = await env.videos()
        [original] = await env.jobs()
        result = fake.message(group.id, first.result["message_id"])
        await open_more(env, group, alice, result)
        data = {d.split(":")[1]: d for d in result.callback_data()}

        hq = fake.press_button(group, bob, result, data["hq"])
        await fake.wait_for(lambda: hq.answered)
        second = (await env.videos(2))[1]
        hq_job = next(j for j in await env.jobs() if j.id != original.id)
        assert (hq_job.preset, hq_job.seed, hq_job.total_steps) == ("hq", original.seed, 4)
        assert original.total_steps == 2 and hq_job.user == f"telegram:{bob.id}"
        assert replied_to(second) == result.message_id and "Bob" in second.params["caption"]
        hq_buttons = fake.message(group.id, second.result["message_id"]).callback_data()
        assert not any(d.startswith("anim:hq:") for d in hq_buttons)   # already HQ

        info = fake.press_button(group, bob, result, data["info"])
        await fake.wait_for(lambda: info.answered)
        assert info.answer["show_alert"] is True and f"Seed: {original.seed}" in info.answer["text"]

        reroll = fake.press_button(group, alice, result, data["reroll"])
        await fake.wait_for(lambda: reroll.answered)
        await env.videos(3)
        rerolled = [j for j in await env.jobs() if j.id not in (original.id, hq_job.id)][0]
        assert rerolled.preset == "quick" and rerolled.seed != original.seed

        denied = fake.press_button(group, bob, result, data["delete"])
        await fake.wait_for(lambda: denied.answered)
        assert denied.answer["show_alert"] is True and not result.deleted
        deleted = fake.press_button(group, alice, result, data["delete"])
        await fake.wait_for(lambda: deleted.answered and result.deleted)
        assert deleted.answer["text"] == "🗑️ Deleted."
        assert not Path((await env.stack.service.get(original.id)).result_path).exists()
        assert sent.message_id < result.message_id


# ---------------------------------------------------------------- flags, /info and commands


async def test_subject_and_environment_flags_fill_their_template_slots(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts) as env:
        fake = env.fake
        alice = fake.user("Alice")
        fake.send_photo(fake.private_chat(alice), alice, photo_bytes(),
                        caption="/animate turning slowly --subject a lighthouse lamp --env at dusk")
        await env.videos()
        [job] = await env.jobs()
        assert job.prompt == "[Subject: a lighthouse lamp] [Action: turning slowly] [Environment: at dusk]"
        assert job.prompt_raw == "a lighthouse lamp turning slowly at dusk"


async def test_caption_flags_reach_the_built_prompt_and_info_shows_them(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts) as env:
        fake = env.fake
        alice = fake.user("Alice")
        chat = fake.private_chat(alice)
        fake.send_photo(chat, alice, photo_bytes(),
                        caption="/animate a red ball rolling --camera zoom-in —speed slow --seed 42")
        [upload] = await env.videos()
        [job] = await env.jobs()
        templates = load_templates()
        assert job.seed == 42 and job.prompt_raw == "a red ball rolling"
        assert templates.camera_phrase("zoom-in") in job.prompt
        assert (job.options["camera"], job.options["speed"]) == ("zoom-in", "slow")

        result_id = upload.result["message_id"]
        await settle(env.stack)
        ask = fake.send_text(chat, alice, "/info", reply_to=result_id)
        [reply] = await env.replies(ask)
        text = reply.params["text"]
        assert "Seed: 42" in text and job.prompt in text and "quick" in text and "dpmpp_2m" in text
        lost = fake.send_text(chat, alice, "/info")
        [usage] = await env.replies(lost)
        assert "/info" in usage.params["text"]


async def test_commands_queue_cancel_help_admin_and_allow_list(tmp_path, tiny_parts):
    async with FakeTelegram() as fake:
        admin, user = fake.user("Root"), fake.user("Li", language_code="zh")
        team, elsewhere = fake.group_chat("Team"), fake.group_chat("Elsewhere")
        tg = {"api_base_url": fake.base_url, "file_base_url": fake.base_file_url, "admins": [admin.id],
              "chats": [team.id]}
        config = make_config(tmp_path, telegram=tg)
        async with running_stack(config, with_worker=False) as stack:
            front = TelegramFrontEnd(stack.core, config, fake.token, poll_timeout=1)
            await front.start()
            env = Env(fake, stack, front)
            try:
                async def say(chat, who, text: str) -> str:
                    message = fake.send_text(chat, who, text)
                    return (await env.replies(message))[0].params["text"]

                assert await say(team, user, "/help") == t("zh", "help.text")
                queue = await say(team, user, "/queue")   # nothing waiting, and the quota
                assert queue.startswith(t("zh", "queue.empty")) and "0/2" in queue
                assert await say(team, user, "/cancel") == t("zh", "errors.cancel_none")
                assert await say(team, user, "/stats") == t("zh", "admin.not_admin")
                assert await say(elsewhere, user, "/animate a cat") == t("zh", "errors.not_allowed_here")
                assert "0 waiting" in await say(team, admin, "/stats")
                assert await say(team, admin, "/pause") == t("en", "admin.paused")
                assert await stack.service.paused()
                photo = fake.send_photo(team, user, photo_bytes(), caption="/animate a cat")
                [status] = await env.replies(photo)
                assert t("zh", "status.paused") in shown(status)
                assert "渲染中，第" not in await say(team, user, "/queue")   # paused: waiting, not rendering
                assert await say(team, user, "/cancel") == t("zh", "status.cancelled")
                assert await say(team, admin, "/resume") == t("en", "admin.resumed")
                assert await say(team, admin, f"/ban {user.id}") == t("en", "admin.banned", user=user.id)
                refused = fake.send_photo(team, user, photo_bytes(), caption="/animate a cat")
                assert (await env.replies(refused))[0].params["text"] == t("zh", "errors.banned")
                assert await say(team, admin, f"/unban@animabot {user.id}") == t("en", "admin.unbanned",
                                                                                 user=user.id)
                assert await say(team, user, "/forget") == t("zh", "admin.forgot", count=1)
                await settle(stack)
            finally:
                await front.close()
        assert fake.unknown_methods == [] and fake.server_errors == []


# ---------------------------------------------------------------- uploads


@pytest.mark.parametrize("send_as, limit", [("animation", 50_000_000), ("video", 300)])
async def test_animation_uploads_and_videos_too_big_to_send(tmp_path, tiny_parts, send_as, limit):
    async with telegram_bot(tmp_path, tiny_parts, telegram={"send_as": send_as, "upload_limit_bytes": limit}) as env:
        fake = env.fake
        alice = fake.user("Alice")
        chat = fake.private_chat(alice)
        sent = fake.send_photo(chat, alice, photo_bytes(), caption="/animate a cat")
        [status_call] = await env.replies(sent)
        status = fake.message(chat.id, status_call.result["message_id"])
        if send_as == "animation":
            [upload] = await fake.wait_for(lambda: _enough(fake.calls_to("sendAnimation"), 1), 30)
            p = upload.params
            assert (p["width"], p["height"], p["duration"]) == (64, 64, 1) and "Alice" in p["caption"]
            assert replied_to(upload) == sent.message_id and fake.calls_to("sendVideo") == []
        else:
            await fake.wait_for(lambda: text_of(status) == t("en", "status.too_big"), 30)
            assert fake.calls_to("sendVideo") == [] and not status.buttons()


async def test_a_shrunk_video_is_sent_with_its_own_size(tmp_path):
    frames = np.zeros((8, 48, 80, 3), dtype=np.uint8)
    frames[:, :, :40] = 200
    shrunk = write_mp4(frames, tmp_path / "x.fit.mp4", fps=8)
    job = Job(id="j", user="telegram:1", prompt_raw="p", prompt="p", preset="quick", seed=1, image_path="",
              result_path=str(tmp_path / "x.mp4"), width=64, height=64, frames=4)
    front = TelegramFrontEnd(None, make_config(tmp_path), "1:x")
    assert await front.video_shape(job, Path(job.result_path)) == (64, 64, 1)
    assert await front.video_shape(job, shrunk) == (80, 48, 1)


async def test_uploads_are_retried_with_at_most_one_duplicate(tmp_path, tiny_parts):
    # The last job stays undelivered on purpose: its follower gave up after two ambiguous timeouts.
    async with telegram_bot(tmp_path, tiny_parts, front_options={"upload_timeout_s": 0.25},
                            settle_jobs=False) as env:
        fake = env.fake
        alice = fake.user("Alice")
        chat = fake.private_chat(alice)

        fake.fail_next("sendVideo", status=500)          # a server error: retried, one video
        fake.send_photo(chat, alice, photo_bytes(), caption="/animate a cat")
        await env.videos(1)
        await settle(env.stack)
        assert [c.status for c in fake.calls_to("sendVideo")] == [500, 200]

        fake.delay_next("sendVideo", 0.4)                # times out but arrives: one duplicate at most
        fake.send_photo(chat, alice, photo_bytes(seed=1), caption="/animate a dog")
        await env.videos(3)
        await settle(env.stack)
        assert [c.status for c in fake.calls_to("sendVideo")] == [500, 200, 200, 200]

        fake.delay_next("sendVideo", 0.8, times=3)       # two ambiguous timeouts: no third copy
        third = fake.send_photo(chat, alice, photo_bytes(seed=2), caption="/animate a bird")
        await env.videos(5, timeout=30)   # both copies arrive late
        [status_call] = await env.replies(third)
        status = fake.message(chat.id, status_call.result["message_id"])
        await fake.wait_for(lambda: text_of(status) == t("en", "status.delivering"), 10)
        await asyncio.sleep(0.5)
        assert [c.status for c in fake.calls_to("sendVideo")] == [500] + [200] * 5
        jobs = sorted(await env.jobs(), key=lambda j: j.created_at)
        assert [j.delivered for j in jobs] == [True, True, False]


# ---------------------------------------------------------------- flood control and pacing


async def test_flood_wait_on_an_edit_is_waited_out(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts, engine={"step_delay_s": 0.3},
                            presets={"quick": {"steps": 6}}) as env:
        fake = env.fake
        alice = fake.user("Alice")
        chat = fake.private_chat(alice)
        fake.fail_next("editMessageCaption", status=429, retry_after=1)
        fake.send_photo(chat, alice, photo_bytes(), caption="/animate a cat")
        await env.videos()
        edits = env.status_edits(chat.id)
        assert edits[0].status == 429
        after = [c for c in edits[1:] if c.ok]
        assert after and after[0].time - edits[0].time >= 1.0
        [job] = await env.jobs()
        assert await eventually(lambda: _delivered(env, job.id), 10, every=0.02)


async def test_edits_in_a_group_stay_apart_across_jobs(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts, engine={"step_delay_s": 0.3}, presets={"quick": {"steps": 4}},
                            queue={"per_user": 3}, telegram={"edit_interval_group_s": 1.0}) as env:
        fake = env.fake
        group = fake.group_chat("Busy group")
        for name in ("Ann", "Ben", "Cy"):
            fake.send_photo(group, fake.user(name), photo_bytes(), caption=f"/animate {name}'s cat")
        await env.videos(3, timeout=60)
        times = sorted(c.time for c in env.status_edits(group.id))
        assert len(times) >= 3
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert min(gaps) >= 1.0, gaps


# ---------------------------------------------------------------- restart


async def test_a_restarted_bot_delivers_jobs_it_was_following(tmp_path, tiny_parts):
    from engine.queue.worker import Worker
    from engine.render.renderer import Renderer

    async with FakeTelegram() as fake:
        config = make_config(tmp_path, telegram={"api_base_url": fake.base_url,
                                                 "file_base_url": fake.base_file_url})
        async with running_stack(config, with_worker=False) as stack:
            first = TelegramFrontEnd(stack.core, config, fake.token, poll_timeout=1)
            await first.start()
            alice = fake.user("Alice")
            chat = fake.private_chat(alice)
            sent = fake.send_photo(chat, alice, photo_bytes(), caption="/animate a cat")
            [status] = await Env(fake, stack, first).replies(sent)
            await first.close()
            assert (await stack.service.store.jobs())[0].state == JobState.QUEUED
            tips = t("en", "status.hints_title")
            assert tips in shown(status)   # "a cat" says nothing of motion
            edits_before = len(fake.calls)

            core = BotCore(config, stack.service)
            second = TelegramFrontEnd(core, config, fake.token, poll_timeout=1)
            await second.start()
            worker = Worker(config, renderer=Renderer(tiny_parts))
            task = asyncio.create_task(worker.run())
            try:
                [upload] = await Env(fake, stack, second).videos()
                assert replied_to(upload) == sent.message_id and "Alice" in upload.params["caption"]
                edits = [c for c in fake.calls[edits_before:] if c.method in STATUS_EDITS]
                assert edits and all(tips in shown(c) for c in edits)   # the tips survive the restart
                await fake.wait_for(lambda: fake.message(chat.id, status.result["message_id"]).deleted)
                await settle(stack)
                result = fake.message(chat.id, upload.result["message_id"])
                await open_more(Env(fake, stack, second), chat, alice, result)
                info = fake.press_button(chat, alice, result, result.callback_data()[-1])
                await fake.wait_for(lambda: info.answered)
                assert "Seed:" in info.answer["text"]
            finally:
                await second.close()
                worker.stop()
                await asyncio.wait_for(task, 30)
        assert fake.unknown_methods == [] and fake.server_errors == []


# ---------------------------------------------------------------- previews


def preview_edits(env: Env, chat_id: int) -> list[Call]:
    return [c for c in env.status_edits(chat_id) if c.method == "editMessageMedia"]


async def test_the_status_starts_as_the_photo_and_previews_replace_it_while_rendering(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts, engine={"step_delay_s": 0.2}, presets={"quick": {"steps": 6}},
                            preview={"every_s": 0.4}) as env:
        fake = env.fake
        alice = fake.user("Alice")
        chat = fake.private_chat(alice)
        sent = fake.send_document(chat, alice, photo_bytes(900, 600), "photo.png", mime_type="image/png",
                                  caption="/animate a cat turning its head")
        [upload] = await env.videos(timeout=60)
        [status_call] = await env.replies(sent)
        # The first status is the bot's own small copy of the photo (sent as a document here), captioned.
        assert status_call.method == "sendPhoto" and shown(status_call).startswith("⏳")
        photo = status_call.files["photo"]
        with Image.open(io.BytesIO(photo.data)) as im:
            assert im.format == "JPEG" and im.size == (512, 341)
        previews = [c for c in preview_edits(env, chat.id) if c.ok]
        assert len(previews) >= 2
        for call in previews:
            media = call.params["media"]
            assert media["type"] == "animation" and media["caption"].startswith("🎬")   # the status text
            gif = next(iter(call.files.values())).data
            with Image.open(io.BytesIO(gif)) as im:
                assert im.format == "GIF" and im.n_frames == 4 and max(im.size) == 256
        status = fake.message(chat.id, status_call.result["message_id"])
        assert status.animation is not None   # the photo became the latest preview
        # The result is a new video replying to the user's message; the status is then deleted.
        assert replied_to(upload) == sent.message_id
        await fake.wait_for(lambda: fake.message(chat.id, status_call.result["message_id"]).deleted)


async def test_previews_under_flood_control_are_skipped_and_the_video_is_not_delayed(tmp_path, tiny_parts):
    async with telegram_bot(tmp_path, tiny_parts, engine={"step_delay_s": 0.2}, presets={"quick": {"steps": 6}},
                            preview={"every_s": 0.3}) as env:
        fake = env.fake
        alice = fake.user("Alice")
        chat = fake.private_chat(alice)
        # Told to wait two minutes: longer than this test may take, so a video queued behind it would fail.
        fake.fail_next("editMessageMedia", status=429, retry_after=120, times=50)
        fake.send_photo(chat, alice, photo_bytes(), caption="/animate a cat")
        [upload] = await env.videos(timeout=50)
        [job] = await env.jobs()
        refused = preview_edits(env, chat.id)
        assert len(refused) == 1 and refused[0].status == 429   # skipped while told to wait, not queued
        assert upload.time - refused[0].time < 60
        assert replied_to(upload) is not None
        assert await eventually(lambda: _delivered(env, job.id), 10, every=0.02)
