"""JobService: submit, follow, cancel and manage jobs, with the store driven as a worker would drive it."""

import asyncio
import os

import pytest
from PIL import Image

from engine.config import parse_config
from engine.errors import UserError
from engine.jobs import Cancelled, Done, Failed, JobState, Queued, Started, Step
from engine.queue.service import JobService


def photo(w=96, h=64):
    return Image.new("RGB", (w, h), (120, 80, 40))


@pytest.fixture
async def service(tmp_path):
    config = parse_config(
        {
            "storage": {"url": str(tmp_path / "jobs.sqlite3"), "data_dir": str(tmp_path / "data")},
            "queue": {"per_user": 3, "max_length": 10, "jobs_per_hour": 0},
        }
    )
    async with JobService(config, poll_interval_s=0.02) as svc:
        yield svc


async def next_event(it, timeout=5.0):
    return await asyncio.wait_for(it.__anext__(), timeout)


async def test_submit_saves_a_private_image_and_sizes_the_job(service):
    job = await service.submit(user="t:1", image=photo(1200, 900), prompt_raw="a cat")
    assert job.state == JobState.QUEUED and (job.width, job.height) == (576, 448)
    assert job.total_steps == 30 and job.frames == 16
    assert os.stat(job.image_path).st_mode & 0o077 == 0


async def test_events_follow_a_job_to_done(service):
    job = await service.submit(user="t:1", image=photo(), prompt_raw="a cat")
    events = service.events(job.id)
    first = await next_event(events)
    assert isinstance(first, Queued) and first.position == 1 and first.eta_s > 0
    store = service.store
    claimed = await store.claim("w")
    assert claimed.id == job.id
    assert isinstance(await next_event(events), Started)
    await store.update(job.id, step=10)
    step = await next_event(events)
    assert isinstance(step, Step) and (step.step, step.total) == (10, 30)
    await store.finish(job.id, JobState.DONE, result_path="r.mp4")
    done = await next_event(events)
    assert isinstance(done, Done) and done.job.result_path == "r.mp4"
    with pytest.raises(StopAsyncIteration):
        await next_event(events)


async def test_position_moves_back_when_another_user_goes_ahead(service):
    a1 = await service.submit(user="t:a", image=photo(), prompt_raw="one")
    a2 = await service.submit(user="t:a", image=photo(), prompt_raw="two")
    events = service.events(a2.id)
    assert (await next_event(events)).position == 2
    await service.submit(
        user="t:b", image=photo(), prompt_raw="three"
    )  # b's first job goes ahead of a's second
    moved = await next_event(events)
    assert isinstance(moved, Queued) and moved.position == 3 and moved.moved == 1
    await service.store.claim("w")  # a1 starts: a2 moves up
    up = await next_event(events)
    assert up.position == 2 and up.moved == -1
    assert a1.id != a2.id


async def test_cancel_rules(service):
    job = await service.submit(user="t:a", image=photo(), prompt_raw="x")
    with pytest.raises(UserError) as exc:
        await service.cancel(job.id, by_user="t:b")
    assert exc.value.key == "not_owner"
    events = service.events(job.id)
    await next_event(events)
    cancelled = await service.cancel(job.id, by_user="t:b", is_admin=True)
    assert cancelled.state == JobState.CANCELLED
    assert isinstance(await next_event(events), Cancelled)


async def test_failed_event_carries_the_reason(service):
    job = await service.submit(user="t:a", image=photo(), prompt_raw="x")
    await service.store.claim("w")
    events = service.events(job.id)
    assert isinstance(await next_event(events), Started)
    await service.store.finish(job.id, JobState.FAILED, error="Out of disk.")
    failed = await next_event(events)
    assert isinstance(failed, Failed) and failed.reason == "Out of disk."


async def test_resubmit_keeps_seed_for_hq_and_rerolls_new_seed(service):
    job = await service.submit(user="t:a", image=photo(), prompt_raw="x", seed=42)
    hq = await service.resubmit(job, user="t:b", preset="hq")
    assert hq.seed == 42 and hq.preset == "hq" and hq.user == "t:b" and hq.parent == job.id
    assert hq.image_path != job.image_path and os.path.exists(hq.image_path)
    reroll = await service.resubmit(job, user="t:a", new_seed=True)
    assert reroll.preset == "quick"


async def test_pause_stops_claims_and_resume_restarts(service):
    await service.submit(user="t:a", image=photo(), prompt_raw="x")
    await service.pause()
    assert await service.store.claim("w") is None and (await service.stats())["paused"]
    await service.resume()
    assert (await service.store.claim("w")) is not None


async def test_followers_of_queued_jobs_hear_of_a_pause_and_a_resume(service):
    job = await service.submit(user="t:a", image=photo(), prompt_raw="x")
    events = service.events(job.id)
    first = await next_event(events)
    assert isinstance(first, Queued) and not first.paused
    await service.pause()
    paused = await next_event(events)
    assert isinstance(paused, Queued) and paused.paused and paused.position == first.position
    await service.resume()
    resumed = await next_event(events)
    assert isinstance(resumed, Queued) and not resumed.paused
    await events.aclose()


async def test_ban_refuses_and_unban_allows(service):
    await service.ban("t:a")
    with pytest.raises(UserError) as exc:
        await service.submit(user="t:a", image=photo(), prompt_raw="x")
    assert exc.value.key == "banned"
    await service.unban("t:a")
    await service.submit(user="t:a", image=photo(), prompt_raw="x")


async def test_forget_deletes_jobs_and_files(service):
    job = await service.submit(user="t:a", image=photo(), prompt_raw="x")
    other = await service.submit(user="t:b", image=photo(), prompt_raw="y")
    assert await service.forget("t:a") == 1
    assert await service.get(job.id) is None and not os.path.exists(job.image_path)
    assert await service.get(other.id) is not None


async def test_old_results_expire_and_buttons_say_so(service):
    job = await service.submit(user="t:a", image=photo(), prompt_raw="x")
    await service.store.claim("w")
    await service.store.finish(job.id, JobState.DONE)
    assert await service.expire_old(now=job.created_at + 8 * 86400) == 1
    with pytest.raises(UserError) as exc:
        await service.resubmit(job.id, user="t:a")
    assert exc.value.key == "expired"
