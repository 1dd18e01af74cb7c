"""/settings per server and the quota in /queue, end to end on both fakes: moderators change settings, they
apply to the next job at once, survive a restart, and are refused to everyone else."""

from __future__ import annotations

import pytest

from bot.core import BotCore
from bot.texts import t
from engine.errors import UserError
from engine.servers import ServerSettings, change
from tests.fakes.discord_server import ALL_PERMISSIONS, FakeDiscord
from tests.fakes.telegram_server import FakeTelegram
from tests.harness import make_config, photo_bytes, running_stack
from tests.test_discord_bot import (
    bot_config,
    ephemeral_reply,
    job_id_of,
    result_of,
    running_bot,
    shows,
)
from tests.test_telegram_bot import settle, telegram_front

pytestmark = pytest.mark.timeout(120)
PRESETS = ["hq", "lite", "quick"]



def test_changes_are_validated_with_clear_refusals():
    s = change(ServerSettings(), "preset", "HQ", presets=PRESETS, max_jobs_per_hour=20)
    s = change(s, "smooth", "off", presets=PRESETS, max_jobs_per_hour=20)
    s = change(s, "channels", "+123", presets=PRESETS, max_jobs_per_hour=20)
    s = change(s, "channels", "+456", presets=PRESETS, max_jobs_per_hour=20)
    s = change(s, "channels", "-123", presets=PRESETS, max_jobs_per_hour=20)
    assert (s.preset, s.smooth, s.channels) == ("hq", False, ["456"])
    assert change(s, "preset", "default", presets=PRESETS, max_jobs_per_hour=20).preset is None
    for key, value, error in (("preset", "ultra", "bad_setting"), ("jobs_per_hour", "50", "bad_setting"),
                              ("jobs_per_hour", "0", "bad_setting"), ("safety", "lax", "bad_setting"),
                              ("language", "fr", "bad_setting"), ("colour", "red", "unknown_setting")):
        with pytest.raises(UserError) as exc:
            change(s, key, value, presets=PRESETS, max_jobs_per_hour=20)
        assert exc.value.key == error
    assert "from 1 to 20" in t("en", "errors.bad_setting", setting="jobs_per_hour", value="50",
                               expected="a number from 1 to 20")


async def settings_reply(fake: FakeDiscord, user_id: int | None = None, **options) -> str:
    opts = [{"name": k, "value": v} for k, v in options.items()]
    return await ephemeral_reply(fake, await fake.slash_command("settings", opts, user_id=user_id))


async def animate_in(fake: FakeDiscord, channel_id: int | None = None, **options):
    image = fake.add_attachment("photo.png", photo_bytes(), "image/png")
    opts = [{"name": "image", "value": image}, {"name": "prompt", "value": "waves"}]
    opts += [{"name": k, "value": v} for k, v in options.items()]
    return await fake.slash_command("animate", opts, channel_id=channel_id)


async def test_discord_settings_apply_at_once_survive_a_restart_and_are_refused_to_members(
        tmp_path, fake, tiny_parts):
    config = bot_config(tmp_path, fake, {"admins": []}, queue={"jobs_per_hour": 20})
    mod = fake.add_member("mod", permissions=ALL_PERMISSIONS)
    art = fake.add_channel("art")
    async with running_bot(config, fake, tiny_parts) as bot:
        refused = await settings_reply(fake, preset="hq")   # alice is an ordinary member
        assert refused == t("en", "errors.not_moderator")
        saved = await settings_reply(fake, mod, preset="hq", smooth="on", jobs_per_hour=1, language="zh",
                                     allow_channel=str(art))
        assert saved.startswith(t("en", "settings.saved")) and f"<#{art}>" in saved and "中文" in saved

        elsewhere = await animate_in(fake)
        await fake.wait_for(lambda: shows(elsewhere, "") and not elsewhere.original_message.loading)
        assert t("zh", "errors.channel_not_allowed", channels=f"<#{art}>") in elsewhere.original_message.content

        result = await result_of(fake, await animate_in(fake, art), timeout=60)
        job = await bot.stack.service.get(job_id_of(result))
        assert job.preset == "hq" and job.options["smooth"] is True and job.locale == "zh"
        assert "种子" in result.content   # the server's language
        again = await animate_in(fake, art)
        await fake.wait_for(lambda: again.original_message and not again.original_message.loading)
        assert "每小时" in again.original_message.content   # the server's hourly limit of 1
        quota = await ephemeral_reply(fake, await fake.slash_command("queue"))
        assert "1 of 1 started this hour" in quota and "The next one frees up in" in quota

    async with running_bot(config, fake, with_worker=False):   # a restart: the settings are in the store
        shown = await settings_reply(fake)   # anyone may look
        assert "Default preset (preset): hq" in shown and f"<#{art}>" in shown
        reset = await settings_reply(fake, mod, preset="quick", language="default")
        assert "Default preset (preset): quick" in reset and t("en", "settings.own") in reset


async def test_telegram_group_settings_by_its_administrators(tmp_path, tiny_parts):
    async with FakeTelegram() as fake:
        config = make_config(tmp_path, telegram={"api_base_url": fake.base_url, "file_base_url": fake.base_file_url},
                             queue={"jobs_per_hour": 20, "per_user": 2})
        alice, owner = fake.user("Alice"), fake.user("Olga")
        group = fake.group_chat("Artists")
        fake.make_admin(group, owner, creator=True)
        async with running_stack(config, tiny_parts) as stack:
            async with telegram_front(stack, config, fake) as env:
                denied = fake.send_text(group, alice, "/settings preset hq")
                [answer] = await env.replies(denied)
                assert answer.params["text"] == t("en", "errors.not_moderator")
                ok = fake.send_text(group, owner, "/settings safety strict")
                [answer] = await env.replies(ok)
                assert answer.params["text"].startswith(t("en", "settings.saved")) and "strict" in answer.params["text"]
                bad = fake.send_text(group, owner, "/settings preset ultra")
                [answer] = await env.replies(bad)
                assert "preset cannot be “ultra”" in answer.params["text"]
                await env.replies(fake.send_text(group, owner, "/settings preset hq"))
                fake.send_photo(group, alice, photo_bytes(), caption="/animate waves")
                [upload] = await env.videos(timeout=60)
                [job] = await stack.service.store.jobs()
                assert job.preset == "hq" and job.safety_rule == "withhold"
                await settle(stack)
                quota = fake.send_text(group, alice, "/queue")
                [answer] = await env.replies(quota)
                assert "0 of 2 jobs waiting or rendering · 1 of 20 started this hour" in answer.params["text"]

            core = BotCore(config, stack.service)
            async with telegram_front(stack, config, fake, core) as env:
                shown = fake.send_text(group, alice, "/settings")
                [answer] = await env.replies(shown)
                assert "Default preset (preset): hq" in answer.params["text"] and "strict" in answer.params["text"]
                private = fake.send_text(fake.private_chat(alice), alice, "/settings")
                [answer] = await env.replies(private)
                assert answer.params["text"] == t("en", "errors.settings_usage")
        assert fake.unknown_methods == [] and fake.server_errors == []
