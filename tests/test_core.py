"""The platform-neutral bot flow with a recording UI: status texts, throttled edits, delivery, buttons."""

import asyncio
import time
from pathlib import Path

import pytest

from bot.buttons import parse_custom_id
from bot.core import JobRequest
from bot.edits import EditScheduler, RetryLater
from bot.texts import StatusState, progress_bar, t
from engine.errors import UserError
from engine.jobs import JobState
from engine.media.video import probe_mp4
from tests.harness import make_config, photo_bytes, running_stack


class RecordingUI:
    def __init__(self, locale="en", interval=0.05, upload_limit=10_000_000):
        self.locale = locale
        self.min_edit_interval_s = interval
        self.upload_limit_bytes = upload_limit
        self.edits: list[tuple[float, str]] = []
        self.previews: list[bytes] = []
        self.delivered: list[tuple[Path, str, list]] = []
        self.finished: list[str] = []
        self.spoilers: list[bool] = []      # per preview shown, and the result's last
        self.hidden: list[str] = []         # texts left when the pictures came off
        self.done = asyncio.Event()

    async def edit_status(self, text, buttons, preview=None, spoiler=False):
        self.edits.append((time.monotonic(), text))
        if preview is not None:
            self.previews.append(preview)
            self.spoilers.append(spoiler)

    async def hide_preview(self, text, buttons):
        self.hidden.append(text)
        if not buttons:   # the job's final text
            self.finished.append(text)
            self.done.set()

    async def deliver(self, job, video, caption, buttons, spoiler=False):
        self.delivered.append((video, caption, [b.action for b in buttons]))
        self.spoilers.append(spoiler)
        self.done.set()

    async def finish(self, text):
        self.finished.append(text)
        self.done.set()


def request(prompt="a red ball slowly rolling", **kw):
    base = dict(platform="test", user_id="1", user_name="ann", chat_id="c", locale="en", image=photo_bytes(),
                prompt=prompt)
    base.update(kw)
    return JobRequest(**base)


def test_status_texts_in_both_languages():
    s = StatusState(phase="rendering", step=15, total=30, eta_s=12, elapsed_s=7)
    assert "Step 15/30" in s.render("en-US") and progress_bar(15, 30) in s.render("en")
    assert "第 15/30 步" in s.render("zh-CN")
    q = StatusState(phase="queued", position=3, eta_s=95, moved_back=True)
    assert "position 3" in q.render("en") and "1m 35s" in q.render("en") and "went ahead" in q.render("en")
    assert t("fr", "buttons.hq") == "HQ render" and t("zh-TW", "buttons.hq") == "高质量"


def test_custom_ids_round_trip():
    assert parse_custom_id("anim:hq:abc123") == ("hq", "abc123")
    assert parse_custom_id("other:hq:abc") is None and parse_custom_id("anim:bogus:x") is None


async def test_edit_scheduler_coalesces_throttles_and_waits_out_retry_after():
    sent = []
    fail_once = [True]

    async def send(payload):
        if payload == 3 and fail_once[0]:
            fail_once[0] = False
            raise RetryLater(0.2)
        sent.append((time.monotonic(), payload))

    ed = EditScheduler(send, min_interval_s=0.1)
    ed.update(1)
    await asyncio.sleep(0.02)   # 1 is sent; 2 and 3 arrive during the interval
    ed.update(2)
    ed.update(3)
    await ed.flush(5)
    # 1 went out at once, 2 was coalesced away, 3 was retried after the wait.
    assert [p for _, p in sent] == [1, 3]
    assert sent[1][0] - sent[0][0] >= 0.3 and ed.retries == 1
    ed.update(3)           # unchanged: no edit
    await ed.flush(1)
    assert len(sent) == 2
    await ed.close()


async def test_job_flows_from_submit_to_a_delivered_mp4(tmp_path, tiny_parts):
    config = make_config(tmp_path)
    async with running_stack(config, tiny_parts) as stack:
        ui = RecordingUI()
        sub = await stack.core.submit(request())
        await asyncio.wait_for(stack.core.follow(sub.job, ui, sub.hints), 60)
        (video, caption, actions) = ui.delivered[0]
        info = probe_mp4(video)
        assert info["frames"] == 4 and info["codec"] == "h264" and (info["width"], info["height"]) == (64, 64)
        assert "a red ball slowly rolling" in caption and "seed" in caption
        assert actions == ["hq", "reroll", "extend", "more"]
        assert ui.edits and all(b - a >= 0.04 for (a, _), (b, _) in zip(ui.edits, ui.edits[1:]))
        job = await stack.service.get(sub.job.id)
        assert job.state == JobState.DONE and job.delivered


async def test_bad_inputs_are_refused_with_a_reason(tmp_path):
    config = make_config(tmp_path)
    async with running_stack(config, with_worker=False) as stack:
        with pytest.raises(UserError) as exc:
            await stack.core.submit(request(prompt="   "))
        assert exc.value.key == "empty_prompt"
        with pytest.raises(UserError) as exc:
            await stack.core.submit(request(image=b"hello"))
        assert exc.value.key == "not_an_image"
        with pytest.raises(UserError):
            await stack.core.submit(request(camera="sideways"))


async def test_buttons_cancel_hq_reroll_delete(tmp_path):
    config = make_config(tmp_path)
    async with running_stack(config, with_worker=False) as stack:
        core = stack.core
        sub = await core.submit(request(seed=7))
        with pytest.raises(UserError):
            await core.on_button("cancel", sub.job.id, "test", "2", "en")    # not the owner
        text, _ = await core.on_button("cancel", sub.job.id, "test", "1", "en")
        assert text == "🚫 Cancelled."
        _, hq = await core.on_button("hq", sub.job.id, "test", "2", "en")
        assert hq.preset == "hq" and hq.seed == 7 and hq.user == "test:2"
        _, again = await core.on_button("reroll", sub.job.id, "test", "1", "en")
        assert again.preset == "quick"
        info, _ = await core.on_button("info", sub.job.id, "test", "3", "en")
        assert "Seed: 7" in info
        text, _ = await core.on_button("delete", sub.job.id, "test", "1", "en")
        with pytest.raises(UserError) as exc:
            await core.on_button("hq", sub.job.id, "test", "1", "en")
        assert exc.value.key == "expired"


async def test_metrics_count_jobs_and_edits(tmp_path, tiny_parts):
    from engine.queue.metrics import Metrics

    config = make_config(tmp_path)
    async with running_stack(config, tiny_parts) as stack:
        stack.core.metrics = metrics = Metrics()
        sub = await stack.core.submit(request())
        await asyncio.wait_for(stack.core.follow(sub.job, RecordingUI()), 60)
        await metrics.sample_store(stack.service.store)
    value = metrics.registry.get_sample_value
    assert value("animabot_jobs_total", {"state": "done"}) == 1
    assert value("animabot_message_edits_total", {"platform": "test"}) >= 1
    assert value("animabot_job_duration_seconds_count", {"preset": "quick"}) == 1
    assert value("animabot_queue_depth") == 0


async def test_previews_reach_the_status_and_one_refused_by_flood_control_is_skipped(tmp_path, tiny_parts):
    config = make_config(tmp_path, engine={"step_delay_s": 0.25}, preview={"every_s": 0.3},
                         presets={"quick": {"steps": 10}})

    class Flooded(RecordingUI):
        """Refuses the first preview edit with a short retry-after, as Telegram's flood control would."""

        def __init__(self):
            super().__init__()
            self.sent: list[tuple[str, bool]] = []   # (text, carried a preview) of each edit that went out
            self.refused: str | None = None

        async def edit_status(self, text, buttons, preview=None, spoiler=False):
            if preview is not None and self.refused is None:
                self.refused = text
                raise RetryLater(0.4)
            self.sent.append((text, preview is not None))
            await super().edit_status(text, buttons, preview, spoiler)

    async with running_stack(config, tiny_parts) as stack:
        sub = await stack.core.submit(request())
        ui = Flooded()
        await asyncio.wait_for(stack.core.follow(sub.job, ui, sub.hints), 60)
        assert ui.refused is not None and ui.delivered
        assert ui.previews and all(p.startswith(b"GIF8") for p in ui.previews)
        # The refused state never went out again with its preview (skipped, not queued); newer previews did.
        assert (ui.refused, True) not in ui.sent
