"""The SQLite store: fair order, limits, claims, cancel, recovery, leases, ETA samples. Real SQLite files."""

import asyncio
import sqlite3

import pytest

from engine.errors import UserError
from engine.jobs import Job, JobState
from engine.queue.sqlite_store import SQLiteStore
from engine.queue.store import Limits, fair_order


def make_job(user: str, n: int, t: float = 0.0) -> Job:
    return Job(
        id=f"{user}-{n}",
        user=user,
        prompt_raw="p",
        prompt="p",
        preset="quick",
        seed=1,
        image_path="x.png",
        created_at=1000 + t,
        total_steps=30,
        width=64,
        height=64,
        frames=4,
    )


@pytest.fixture
async def store(tmp_path):
    s = SQLiteStore(tmp_path / "jobs.sqlite3")
    await s.open()
    yield s
    await s.close()


def test_fair_order_round_robin_and_fifo_per_user():
    jobs = [
        make_job("a", 1, 0),
        make_job("a", 2, 1),
        make_job("a", 3, 2),
        make_job("b", 1, 3),
        make_job("c", 1, 4),
        make_job("c", 2, 5),
    ]
    assert [j.id for j in fair_order(jobs, {})] == ["a-1", "b-1", "c-1", "a-2", "c-2", "a-3"]
    # a was just served: b and c go first.
    assert [j.id for j in fair_order(jobs[1:], {"a": 5000})][:3] == ["b-1", "c-1", "a-2"]


async def test_claims_follow_fair_order_across_three_users(store):
    limits = Limits(per_user=5, max_length=50)
    for i, (user, n) in enumerate([("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("c", 1)]):
        await store.submit(make_job(user, n, i), limits)
    order = []
    while (job := await store.claim("w")) is not None:
        order.append(job.id)
        await store.finish(job.id, JobState.DONE)
    assert order == ["a-1", "b-1", "c-1", "a-2", "b-2", "a-3"]


async def test_limits_refuse_with_a_reason(store):
    await store.submit(make_job("a", 1), Limits(per_user=2, max_length=3))
    await store.submit(make_job("a", 2), Limits(per_user=2, max_length=3))
    with pytest.raises(UserError) as exc:
        await store.submit(make_job("a", 3), Limits(per_user=2, max_length=3))
    assert exc.value.key == "user_limit" and "2 jobs" in str(exc.value)
    await store.submit(make_job("b", 1), Limits(per_user=2, max_length=3))
    with pytest.raises(UserError) as exc:
        await store.submit(make_job("c", 1), Limits(per_user=2, max_length=3))
    assert exc.value.key == "queue_full"
    assert len(await store.queued()) == 3


async def test_hourly_rate_limit(store):
    limits = Limits(per_user=10, max_length=50, jobs_per_hour=2)
    for n in range(2):
        job = await store.submit(make_job("a", n), limits)
        await store.finish(job.id, JobState.DONE)
    with pytest.raises(UserError) as exc:
        await store.submit(make_job("a", 9), limits)
    assert exc.value.key == "rate_limited" and "per hour" in str(exc.value)


async def test_cancel_queued_leaves_queue_and_running_is_flagged(store):
    limits = Limits(per_user=5)
    await store.submit(make_job("a", 1), limits)
    await store.submit(make_job("a", 2), limits)
    running = await store.claim("w")
    assert running.id == "a-1"
    queued = await store.cancel("a-2")
    assert queued.state == JobState.CANCELLED and await store.queued() == []
    flagged = await store.cancel("a-1")
    assert flagged.state == JobState.RUNNING and flagged.cancel_requested


async def test_finish_is_once_only(store):
    await store.submit(make_job("a", 1), Limits())
    job = await store.claim("w")
    await store.finish(job.id, JobState.DONE, result_path="r.mp4")
    again = await store.finish(job.id, JobState.FAILED, error="late")
    assert again.state == JobState.DONE and again.error == ""


async def test_recover_retries_once_then_fails(store):
    await store.submit(make_job("a", 1), Limits())
    await store.claim("w1")
    (job,) = await store.recover()
    assert job.state == JobState.QUEUED and job.retried
    await store.claim("w2")
    (job,) = await store.recover()
    assert job.state == JobState.FAILED and "stopped twice" in job.error


async def test_second_exclusive_lease_is_refused_until_the_first_goes_stale(store, monkeypatch):
    assert await store.acquire_lease("w1", 1, exclusive=True)
    assert not await store.acquire_lease("w2", 2, exclusive=True)
    await store.release_lease("w1")
    assert await store.acquire_lease("w2", 2, exclusive=True)


async def test_changes_since_sees_every_write(store):
    _, seq0 = await store.changes_since(0)
    await store.submit(make_job("a", 1), Limits())
    await store.update("a-1", step=3)
    jobs, seq1 = await store.changes_since(seq0)
    assert [j.id for j in jobs] == ["a-1"] and jobs[0].step == 3 and seq1 > seq0
    assert (await store.changes_since(seq1))[0] == []


async def test_step_time_median(store):
    for s in (1.0, 1.2, 5.0):
        await store.record_step_time("quick:64x64x4", s, 0.5)
    assert await store.step_times() == {"quick:64x64x4": (1.2, 0.5)}


async def test_writes_retry_while_another_process_holds_the_lock(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = SQLiteStore(path, busy_timeout_s=0.05)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    task = asyncio.create_task(store.submit(make_job("a", 1), Limits()))
    await asyncio.sleep(0.4)
    assert not task.done()  # waiting, not failed
    other.execute("COMMIT")
    other.close()
    job = await asyncio.wait_for(task, 10)
    assert job.state == JobState.QUEUED
    await store.close()


async def test_file_is_private(tmp_path):
    store = SQLiteStore(tmp_path / "d" / "jobs.sqlite3")
    await store.open()
    assert (tmp_path / "d" / "jobs.sqlite3").stat().st_mode & 0o077 == 0
    await store.close()


def test_a_job_stored_with_lifecycle_flags_in_its_options_reads_them_as_fields():
    from engine.jobs import Job

    stored = Job(id="j", user="u", prompt_raw="p", prompt="p", preset="quick", seed=1, image_path="x").to_dict()
    for key in ("expired", "retried", "parent", "step_at", "gpu_peak_bytes", "render_s"):
        del stored[key]   # as a job written before these were fields
    stored["options"] = {"camera": "zoom-in", "expired": True, "retried": True, "parent": "a", "step_at": 5.0}
    job = Job.from_dict(stored)
    assert (job.expired, job.retried, job.parent, job.step_at) == (True, True, "a", 5.0)
    assert job.options == {"camera": "zoom-in"}
