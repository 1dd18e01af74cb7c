"""The NSFW gate through the bot core, the service and the worker (a recording UI, no platform): refusals,
withheld results, spoilers, previews, re-renders, the audit log and retention. Real classifiers: nudenet in
the bot process, a tiny saved Hugging Face classifier in the worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.texts import t
from engine.__main__ import main as engine_main
from engine.errors import UserError
from engine.jobs import JobState
from tests.harness import make_config, running_stack, write_config
from tests.test_core import RecordingUI, request
from tests.test_safety import save_tiny_classifier

FLAG_ALL = {"classifier": "nudenet", "threshold": 0.0}


async def follow(stack, sub, ui, timeout=60):
    await asyncio.wait_for(stack.core.follow(sub.job, ui, sub.hints), timeout)
    return await stack.service.get(sub.job.id)


async def test_a_flagged_upload_is_refused_before_the_queue_and_kept_for_the_audit(tmp_path):
    config = make_config(tmp_path, safety=FLAG_ALL)
    async with running_stack(config, with_worker=False) as stack:
        with pytest.raises(UserError) as exc:
            await stack.core.submit(request(scope="guild-1", safety_rule="withhold"))
        assert exc.value.key == "nsfw_input"
        assert "adult content" in str(exc.value) and "成人内容" in t("zh", "errors.nsfw_input")
        assert await stack.service.store.queued() == []
        (job,) = await stack.service.audit(server="guild-1")
        assert (job.state, job.verdict, job.nsfw_score, job.flagged_at, job.error_key) == (
            JobState.FAILED, "flagged", 0.0, "input", "nsfw_input")
        assert job.image_path == "" and not list((tmp_path / "data").rglob("*.png"))
        # In an age-restricted channel the same upload is queued, flagged.
        sub = await stack.core.submit(request(scope="guild-1", safety_rule="allow"))
        assert sub.job.state == JobState.QUEUED and sub.job.verdict == "flagged"


async def test_a_flagged_result_is_withheld_and_deleted(tmp_path, tiny_parts):
    config = make_config(tmp_path, safety={**FLAG_ALL, "check_input": False})
    async with running_stack(config, tiny_parts) as stack:
        ui = RecordingUI()
        job = await follow(stack, await stack.core.submit(request(safety_rule="withhold")), ui)
        assert ui.delivered == [] and len(ui.finished) == 1 and "not posted" in ui.finished[0]
        assert ui.hidden == ui.finished   # the pictures came off the status with the final text
        assert (job.state, job.error_key, job.flagged_at, job.result_path) == (
            JobState.FAILED, "nsfw_output", "output", "")
        assert not list((tmp_path / "data" / "results").glob("*.mp4"))


async def test_a_flagged_result_in_a_spoiler_chat_is_sent_as_a_spoiler(tmp_path, tiny_parts):
    config = make_config(tmp_path, safety={**FLAG_ALL, "check_input": False})
    async with running_stack(config, tiny_parts) as stack:
        ui = RecordingUI()
        job = await follow(stack, await stack.core.submit(request(safety_rule="spoiler")), ui)
        assert len(ui.delivered) == 1 and ui.spoilers[-1] is True
        assert job.state == JobState.DONE and job.verdict == "flagged"


async def test_an_ordinary_photo_passes_every_check(tmp_path, tiny_parts):
    config = make_config(tmp_path, safety={"classifier": "nudenet"})
    async with running_stack(config, tiny_parts) as stack:
        ui = RecordingUI()
        job = await follow(stack, await stack.core.submit(request(safety_rule="withhold")), ui)
        assert len(ui.delivered) == 1 and ui.spoilers == [False]
        # Passed at every stage; the tiny model's noise frames may score a little, never up to the threshold.
        assert job.verdict == "passed" and 0.0 <= job.nsfw_score < config.safety.threshold


async def test_a_flagged_preview_stops_the_previews_and_takes_them_off(tmp_path, tiny_parts):
    # Input not checked, so the first preview is the first thing the gate sees.
    config = make_config(tmp_path, safety={**FLAG_ALL, "check_input": False}, engine={"step_delay_s": 0.25},
                         preview={"every_s": 0.3}, presets={"quick": {"steps": 6}})
    async with running_stack(config, tiny_parts) as stack:
        ui = RecordingUI(interval=0.01)
        job = await follow(stack, await stack.core.submit(request(safety_rule="withhold")), ui)
        assert ui.previews == []            # the flagged one was never shown, and none came after
        assert len(ui.hidden) >= 2          # taken off at once, and again with the final text
        assert (job.flagged_at, job.error_key) == ("preview", "nsfw_output")


async def test_previews_of_a_flagged_job_in_a_spoiler_chat_are_spoilers(tmp_path, tiny_parts):
    config = make_config(tmp_path, safety=FLAG_ALL, engine={"step_delay_s": 0.25}, preview={"every_s": 0.3},
                         presets={"quick": {"steps": 6}})
    async with running_stack(config, tiny_parts) as stack:
        ui = RecordingUI(interval=0.01)
        await follow(stack, await stack.core.submit(request(safety_rule="spoiler")), ui)
        assert ui.previews and ui.spoilers == [True] * (len(ui.previews) + 1)   # each preview, and the result


async def test_the_workers_classifier_refuses_an_input_and_spoilers_in_a_spoiler_chat(tmp_path, tiny_parts):
    folder = save_tiny_classifier(tmp_path / "nsfw")
    config = make_config(tmp_path, safety={"classifier": folder, "threshold": 0.0})
    async with running_stack(config, tiny_parts) as stack:
        assert stack.core.gate.classifier is None   # the bot process has no torch classifier
        ui = RecordingUI()
        job = await follow(stack, await stack.core.submit(request(safety_rule="withhold")), ui)
        assert (job.state, job.error_key, job.flagged_at) == (JobState.FAILED, "nsfw_input", "input")
        assert ui.delivered == [] and "adult content" in ui.finished[0] and ui.hidden
        ui = RecordingUI()
        job = await follow(stack, await stack.core.submit(request(user_id="2", safety_rule="spoiler")), ui)
        assert job.state == JobState.DONE and job.verdict == "flagged" and ui.spoilers[-1] is True
        assert 0 <= job.nsfw_score <= 1


async def test_a_re_roll_is_checked_again_under_the_rule_where_it_was_pressed(tmp_path, tiny_parts):
    config = make_config(tmp_path, safety=FLAG_ALL)
    async with running_stack(config, tiny_parts) as stack:
        ui = RecordingUI()
        job = await follow(stack, await stack.core.submit(request(safety_rule="allow")), ui)
        assert job.state == JobState.DONE and len(ui.delivered) == 1
        with pytest.raises(UserError) as exc:   # the same clip's button, in an ordinary channel
            await stack.core.on_button("reroll", job.id, "test", "1", "en", "withhold")
        assert exc.value.key == "nsfw_input"
        _, new = await stack.core.on_button("hq", job.id, "test", "1", "en", "allow")
        assert new is not None and new.verdict == "flagged" and new.safety_rule == "allow"


async def test_the_audit_log_lists_jobs_and_retention_deletes_them(tmp_path, capsys):
    config = make_config(tmp_path, safety=FLAG_ALL)
    async with running_stack(config, with_worker=False) as stack:
        for user, scope in (("1", "g1"), ("2", "g1"), ("3", "g2")):
            with pytest.raises(UserError):
                await stack.core.submit(request(user_id=user, scope=scope, prompt=f"cat {user}"))
        jobs = await stack.service.audit()
        cutoff = max(j.created_at for j in jobs) + config.storage.retention_days * 86400 + 1
    cfg = write_config(tmp_path / "config.toml", {"storage": {"url": config.storage.url,
                                                              "data_dir": config.storage.data_dir}})

    async def audit(*args: str) -> int:   # the CLI runs its own event loop: in a thread beside this one
        return await asyncio.to_thread(engine_main, ["audit", "--config", str(cfg), *args])

    assert await audit("--server", "g1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("verdict=flagged score=0.000" in line for line in lines)
    assert "outcome=failed:nsfw_input" in lines[0] and 'prompt="cat 1"' in lines[0] and "user=test:1" in lines[0]
    assert await audit("--user", "3") == 0
    assert "server=g2" in capsys.readouterr().out
    assert await audit("--since", "2999-01-01") == 0
    assert capsys.readouterr().out == ""
    assert await audit("--since", "yesterday") == 2
    async with running_stack(config, with_worker=False) as stack:
        assert await stack.service.expire_old(now=cutoff) == 3
        assert await stack.service.audit() == []


def test_privacy_text_names_the_retention_and_forget(tmp_path):
    from bot.core import BotCore

    config = make_config(tmp_path, storage={"retention_days": 3})
    core = BotCore(config, service=None)  # type: ignore[arg-type]
    assert "3 days" in core.privacy_text("en") and "/forget" in core.privacy_text("en")
    assert "3 天" in core.privacy_text("zh-CN")
    assert Path("README.md").read_text().count("/privacy") >= 1
