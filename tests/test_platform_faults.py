"""The chat platforms dropping the bot during renders, with the real clients against the local fakes:

- Discord: the gateway closes the websocket with a close code that allows RESUME (4000), or cuts the TCP
  connection without a close frame, or ends the session (op 9 INVALID_SESSION, d=false). discord.py resumes
  (RESUME -> the missed events -> RESUMED) or identifies anew; an interaction sent after the reconnect, and one
  sent while the bot was away on a resumable session, are answered, and each job in flight gets one result.
- Telegram: getUpdates answered with 409 Conflict while another instance polls with the same token: one clear
  log line, backoff instead of a flood of polls, and polling again when the other one stops; nothing sent
  meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from engine.jobs import JobState
from tests.fakes.discord_server import FakeDiscord, InteractionRecord
from tests.fakes.telegram_server import CONFLICT, FakeTelegram
from tests.harness import eventually, make_config, photo_bytes, running_stack
from tests.test_discord_bot import animate, bot_config, has_video, result_of, running_bot
from tests.test_telegram_bot import telegram_front

pytestmark = pytest.mark.timeout(60)

RENDER = {"engine": {"step_delay_s": 0.2}, "presets": {"quick": {"steps": 8}}}   # about 2 s a job


async def answered(fake: FakeDiscord, interaction: InteractionRecord, text: str) -> None:
    await fake.wait_for(lambda: interaction.original_message and text in interaction.original_message.content, 15)


# ---------------------------------------------------------------- Discord


@pytest.mark.parametrize("drop", ["close-4000", "cut", "invalid-session"])
async def test_discord_gateway_dropped_during_renders_reconnects_and_misses_nothing(tmp_path, fake, tiny_parts,
                                                                                      drop):
    config = bot_config(tmp_path, fake, **RENDER)
    async with running_bot(config, fake, tiny_parts) as bot:
        jobs = [await animate(fake, "a cat turning its head"),
                await animate(fake, "waves rolling", user_id=fake.other_user_id)]

        async def rendering():
            return [j for j in await bot.stack.service.store.running() if j.step >= 1]
        await eventually(rendering)
        [session] = fake.gateway_sessions.values()
        identifies, resumes = fake.identifies, session.resumes

        if drop == "invalid-session":
            await fake.invalidate_sessions()
            await fake.wait_for(lambda: fake.identifies == identifies + 1, 15)   # a new session: IDENTIFY
            assert session.id not in fake.gateway_sessions and session.resumes == resumes
        else:
            # The gateway refuses connections for half a second: discord.py's next try comes up to 2 s later (its
            # random backoff), so the 3 s acknowledgement window is widened here; that is not what is tested.
            fake.interaction_ack_timeout_s = 8.0
            await fake.drop_gateway(4000 if drop == "close-4000" else None, hold_s=0.5)
            # Sent while the bot is away: Discord keeps it in the session and replays it on RESUME.
            away = await fake.slash_command("help")
            await fake.wait_for(lambda: session.resumes == resumes + 1, 15)      # the same session: RESUME
            assert fake.identifies == identifies
            replayed = next(e["s"] for e in session.log if e["d"] is away.payload)
            assert [e["s"] for e in session.log if e["t"] == "RESUMED"][-1] > replayed
            await answered(fake, away, "Send a photo")
        await fake.wait_until_connected(timeout=15)

        after = await fake.slash_command("help")
        await answered(fake, after, "Send a photo")
        results = [await result_of(fake, interaction, timeout=30) for interaction in jobs]
        done = await eventually(lambda: _all_delivered(bot.stack))
    assert [j.state for j in done] == [JobState.DONE, JobState.DONE]
    videos = [m for m in fake.messages.values() if has_video(m)]
    assert sorted(m.id for m in videos) == sorted(m.id for m in results)   # one result each, no more


async def _all_delivered(stack):
    jobs = await stack.service.store.jobs()
    return jobs if jobs and all(j.state.final and j.delivered for j in jobs) else None


# ---------------------------------------------------------------- Telegram


CONFLICT_S = 6.0


async def test_telegram_409_conflict_is_one_line_backs_off_and_polls_again_when_it_ends(tmp_path, tiny_parts,
                                                                                         caplog):
    caplog.set_level(logging.INFO)
    async with FakeTelegram() as fake:
        config = make_config(tmp_path, telegram={"api_base_url": fake.base_url,
                                                 "file_base_url": fake.base_file_url}, **RENDER)
        async with running_stack(config, tiny_parts) as stack, telegram_front(stack, config, fake):
            alice, bob = fake.user("Alice", language_code="en"), fake.user("Bob", language_code="en")
            a_chat, b_chat = fake.private_chat(alice), fake.private_chat(bob)
            fake.send_photo(a_chat, alice, photo_bytes(), caption="/animate a cat turning its head")

            async def rendering():
                return [j for j in await stack.service.store.running() if j.step >= 1]
            await eventually(rendering)

            fake.other_instance = True   # another process polls with the same token from now on
            polls_before = len(fake.polls)
            await fake.wait_for(lambda: [p for p in fake.polls[polls_before:] if p.status == 409], 10)
            fake.send_text(b_chat, bob, "/help")   # waits at Telegram while the conflict lasts
            # The job in flight is delivered meanwhile: sending is not polling.
            await fake.wait_for(lambda: [c for c in fake.calls_to("sendVideo", chat_id=a_chat.id) if c.ok], 30)
            await asyncio.sleep(max(0.0, CONFLICT_S - (time.monotonic() - _first_409(fake, polls_before))))
            during = [p for p in fake.polls[polls_before:] if p.status == 409]
            fake.other_instance = False

            await fake.wait_for(lambda: fake.calls_to("sendMessage", chat_id=b_chat.id), 40)
    # PTB's backoff: 1 s, then 1.5 times longer each time (0, 1, 2.5, 4.75 s into six seconds), not a flood.
    assert 2 <= len(during) <= 6, [round(p.time, 2) for p in during]
    assert all(CONFLICT in p.response["description"] for p in during)
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.telegram"]
    conflict = [line for line in lines if "another instance" in line]
    assert len(conflict) == 1 and "TELEGRAM_TOKEN" in conflict[0], lines
    assert len([line for line in lines if "polling for updates again" in line]) == 1, lines
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert len([c for c in fake.calls_to("sendVideo", chat_id=a_chat.id) if c.ok]) == 1


def _first_409(fake: FakeTelegram, since: int) -> float:
    """When the first conflicting poll was answered, on this process's monotonic clock (the fake's)."""
    return next(p.time for p in fake.polls[since:] if p.status == 409)
