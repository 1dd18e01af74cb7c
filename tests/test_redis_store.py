"""RedisStore against a real redis-server: the SQLite store's behaviour, plus what several workers need
(atomic fair claims and limits across connections, lease expiry, cross-process cancel), and /metrics."""

import asyncio
import random
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.errors import UserError
from engine.jobs import Job, JobState
from engine.queue.backends import open_store
from engine.queue.metrics import Metrics, start_metrics_server
from engine.queue.redis_store import RedisStore
from engine.queue.sqlite_store import SQLiteStore
from engine.queue.store import STEP_SAMPLES, Limits, fair_order
from tests import redis_server as real_redis
from tests.redis_server import free_port

# The real redis-server fixtures (session server, empty database per test).
redis_server, redis_url = real_redis.redis_server, real_redis.redis_url


def make_job(user: str, n: int, t: float = 0.0, **fields) -> Job:
    return Job(id=f"{user}-{n}", user=user, prompt_raw="p", prompt="p", preset="quick", seed=1,
               image_path="x.png", created_at=1000 + t, total_steps=30, width=64, height=64, frames=4, **fields)


@pytest.fixture
async def store(redis_url):
    s = RedisStore(redis_url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def other(redis_url):
    """A second connection, as another worker or front end would hold."""
    s = RedisStore(redis_url)
    await s.open()
    yield s
    await s.close()


async def test_open_store_picks_redis_for_redis_urls(redis_url):
    s = open_store(redis_url + "?prefix=t1:")
    assert isinstance(s, RedisStore) and s.prefix == "t1:" and "prefix" not in s.url
    await s.open()
    await s.set_meta("x", 1)
    await s.close()


async def test_claims_follow_fair_order_across_three_users(store):
    limits = Limits(per_user=5, max_length=50)
    for i, (user, n) in enumerate([("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("c", 1)]):
        await store.submit(make_job(user, n, i), limits)
    assert [j.id for j in await store.queued()] == ["a-1", "b-1", "c-1", "a-2", "b-2", "a-3"]
    order = []
    while (job := await store.claim("w")) is not None:
        assert job.state == JobState.RUNNING and job.worker == "w" and job.attempts == 1
        order.append(job.id)
        await store.finish(job.id, JobState.DONE)
    assert order == ["a-1", "b-1", "c-1", "a-2", "b-2", "a-3"]


async def test_a_user_served_recently_waits_behind_the_others(store):
    limits = Limits(per_user=5)
    await store.submit(make_job("a", 1, 0), limits)
    await store.finish((await store.claim("w")).id, JobState.DONE)
    for i, (user, n) in enumerate([("a", 2), ("b", 1), ("c", 1)]):
        await store.submit(make_job(user, n, 10 + i), limits)
    assert set(await store.last_served()) == {"a"}
    assert [j.id for j in await store.queued()] == ["b-1", "c-1", "a-2"]
    assert (await store.claim("w")).id == "b-1"


async def test_concurrent_claims_from_many_connections_take_each_job_once_in_fair_order(redis_url, store):
    users = [f"u{i}" for i in range(5)]
    jobs = [make_job(u, n, n * 10 + i) for n in range(6) for i, u in enumerate(users)]
    for job in jobs:
        await store.submit(job, Limits(per_user=10, max_length=100))
    expected = [j.id for j in fair_order(jobs, {})]
    workers = [RedisStore(redis_url) for _ in range(4)]
    for w in workers:
        await w.open()

    async def drain(s: RedisStore, name: str) -> list[Job]:
        got = []
        while (job := await s.claim(name)) is not None:
            got.append(job)
        return got

    results = await asyncio.gather(*(drain(w, f"w{i}") for i, w in enumerate(workers)))
    for w in workers:
        await w.close()
    claimed = [j for got in results for j in got]
    assert sorted(j.id for j in claimed) == sorted(expected)  # each job exactly once
    # The store's clock stamps each claim inside the atomic script: start order is claim order.
    assert [j.id for j in sorted(claimed, key=lambda j: j.started_at)] == expected
    assert sum(1 for got in results if got) >= 2


@pytest.fixture
async def sqlite_store(tmp_path):
    s = SQLiteStore(tmp_path / "jobs.sqlite3")
    await s.open()
    yield s
    await s.close()


async def refusal(store, job: Job, limits: Limits) -> tuple[str, str, dict]:
    with pytest.raises(UserError) as exc:
        await store.submit(job, limits)
    return exc.value.key, str(exc.value), exc.value.params


async def test_limits_refuse_with_the_same_keys_and_words_as_sqlite(store, sqlite_store):
    small = Limits(per_user=2, max_length=3)
    refusals = []
    for s in (store, sqlite_store):
        await s.submit(make_job("a", 1), small)
        await s.submit(make_job("a", 2), small)
        user_limit = await refusal(s, make_job("a", 3), small)
        await s.submit(make_job("b", 1), small)
        queue_full = await refusal(s, make_job("c", 1), small)
        assert len(await s.queued()) == 3
        refusals.append((user_limit, queue_full))
    (user_limit, queue_full), sqlite_refusals = refusals
    assert refusals[0] == sqlite_refusals
    assert user_limit[0] == "user_limit" and "2 jobs" in user_limit[1] and user_limit[2] == {"limit": 2}
    assert queue_full[0] == "queue_full" and queue_full[2] == {"limit": 3}


async def test_hourly_rate_limit(store, sqlite_store):
    limits = Limits(per_user=10, max_length=50, jobs_per_hour=2)
    seen = []
    for s in (store, sqlite_store):
        for n in range(2):
            job = await s.submit(make_job("a", n), limits)
            await s.finish(job.id, JobState.DONE)
        seen.append(await refusal(s, make_job("a", 9), limits))
        await s.submit(make_job("b", 1), limits)  # other users are not limited
    assert seen[0] == seen[1]
    key, message, params = seen[0]
    assert key == "rate_limited" and "2 videos per hour" in message and params == {"limit": 2, "minutes": 60}


async def test_limits_hold_under_concurrent_submits_from_several_connections(redis_url, store):
    clients = [RedisStore(redis_url) for _ in range(4)]
    for c in clients:
        await c.open()
    limits = Limits(per_user=3, max_length=50)

    async def try_submit(client, n):
        try:
            return await client.submit(make_job("a", n, n), limits)
        except UserError as exc:
            return exc.key

    outcomes = await asyncio.gather(*(try_submit(clients[n % 4], n) for n in range(20)))
    for c in clients:
        await c.close()
    assert sum(isinstance(o, Job) for o in outcomes) == 3
    assert outcomes.count("user_limit") == 17
    assert len(await store.queued()) == 3


async def test_cancel_queued_leaves_queue_and_running_is_flagged_for_any_connection(store, other):
    limits = Limits(per_user=5)
    await store.submit(make_job("a", 1), limits)
    await store.submit(make_job("a", 2), limits)
    running = await store.claim("w")
    assert running.id == "a-1"
    queued = await other.cancel("a-2")
    assert queued.state == JobState.CANCELLED and queued.finished_at and await store.queued() == []
    flagged = await other.cancel("a-1")
    assert flagged.state == JobState.RUNNING and flagged.cancel_requested
    assert (await store.get("a-1")).cancel_requested  # what the worker holding it polls
    # Cancelled jobs no longer count against the user's limit.
    await store.finish("a-1", JobState.CANCELLED)
    for n in (3, 4):
        await store.submit(make_job("a", n), Limits(per_user=2))
    with pytest.raises(KeyError):
        await store.cancel("nope")


async def test_finish_is_once_only(store):
    await store.submit(make_job("a", 1), Limits())
    job = await store.claim("w")
    await store.finish(job.id, JobState.DONE, result_path="r.mp4")
    again = await store.finish(job.id, JobState.FAILED, error="late")
    assert again.state == JobState.DONE and again.error == "" and again.result_path == "r.mp4"
    assert await store.running() == []
    with pytest.raises(KeyError):
        await store.finish("nope", JobState.DONE)


async def test_update_changes_fields_and_a_requeue_returns_to_the_queue(store):
    await store.submit(make_job("a", 1, options={"hints": [], "camera": "pan"}), Limits())
    job = await store.claim("w")
    job = await store.update(job.id, step=7, options={"hints": [], "note": "é ✓"})
    assert job.step == 7 and job.options == {"hints": [], "note": "é ✓"}
    # A stopping worker puts its job back (worker.py does this on SIGTERM).
    back = await store.update(job.id, state=JobState.QUEUED, worker="", step=0, attempts=0)
    assert back.state == JobState.QUEUED and [j.id for j in await store.queued()] == ["a-1"]
    assert await store.running() == []
    with pytest.raises(KeyError):
        await store.update("nope", step=1)
    with pytest.raises(AttributeError):
        await store.update("a-1", no_such_field=1)


async def test_recover_retries_once_then_fails(store):
    await store.submit(make_job("a", 1), Limits())
    await store.claim("w1")  # w1 holds no lease: dead
    (job,) = await store.recover()
    assert job.state == JobState.QUEUED and job.retried and job.worker == ""
    await store.claim("w2")
    (job,) = await store.recover()
    assert job.state == JobState.FAILED and "stopped twice" in job.error
    assert await store.recover() == []


async def test_recover_cancels_a_flagged_job_of_a_dead_worker(store):
    await store.submit(make_job("a", 1), Limits())
    await store.claim("w1")
    await store.cancel("a-1")
    (job,) = await store.recover(dead_worker="w1")
    assert job.state == JobState.CANCELLED


async def test_recover_touches_only_jobs_of_expired_leases(redis_url):
    store = RedisStore(redis_url, lease_ttl_s=0.6)
    await store.open()
    limits = Limits(per_user=5)
    for user in ("a", "b"):
        await store.submit(make_job(user, 1), limits)
    assert await store.acquire_lease("live", 1) and await store.acquire_lease("dying", 2)
    assert (await store.claim("live")).id == "a-1"
    assert (await store.claim("dying")).id == "b-1"
    assert await store.recover() == []  # both leases fresh
    for _ in range(4):
        await asyncio.sleep(0.25)
        await store.heartbeat("live", "busy")
    (job,) = await store.recover()
    assert job.id == "b-1" and job.state == JobState.QUEUED
    assert (await store.get("a-1")).state == JobState.RUNNING
    # Naming a worker recovers its jobs whatever its lease says (a worker restarting under the same name).
    (job,) = await store.recover(dead_worker="live")
    assert job.id == "a-1" and job.state == JobState.QUEUED
    await store.close()


async def test_recover_takes_back_a_job_its_live_worker_no_longer_holds(store):
    # A claim whose reply was lost and retried leaves the first job running for a worker that moved on.
    limits = Limits(per_user=5)
    await store.submit(make_job("a", 1, 0), limits)
    await store.submit(make_job("a", 2, 1), limits)
    assert await store.acquire_lease("w", 1)
    first, second = await store.claim("w"), await store.claim("w")
    (job,) = await store.recover()
    assert job.id == first.id and job.state == JobState.QUEUED
    assert (await store.get(second.id)).state == JobState.RUNNING


async def test_leases_several_workers_and_exclusive(store):
    assert await store.acquire_lease("w1", 11, exclusive=False)
    assert await store.acquire_lease("w2", 22)
    assert not await store.acquire_lease("w3", 33, exclusive=True)
    await store.heartbeat("w2", "busy")
    workers = {w.owner: w for w in await store.workers()}
    assert set(workers) == {"w1", "w2"} and workers["w2"].state == "busy" and workers["w1"].pid == 11
    assert all(w.alive for w in workers.values())
    await store.release_lease("w1")
    await store.release_lease("w2")
    await store.heartbeat("w1", "ready")  # a released lease is not revived
    assert await store.workers() == []
    assert await store.acquire_lease("w3", 33, exclusive=True)


async def test_pause_stops_claims(store):
    await store.submit(make_job("a", 1), Limits())
    await store.set_meta("paused", True)
    assert await store.claim("w") is None and await store.get_meta("paused") is True
    await store.set_meta("paused", False)
    assert (await store.claim("w")).id == "a-1"


async def test_changes_since_sees_every_write(store, other):
    _, seq0 = await store.changes_since(0)
    await store.submit(make_job("a", 1), Limits())
    await other.update("a-1", step=3)
    jobs, seq1 = await store.changes_since(seq0)
    assert [j.id for j in jobs] == ["a-1"] and jobs[0].step == 3 and seq1 > seq0
    assert seq1 == jobs[0].seq == await store.get_meta("seq")  # where JobService starts following
    assert (await store.changes_since(seq1))[0] == []
    await other.set_meta("paused", True)
    assert await store.get_meta("seq") == seq1 + 1


async def test_step_time_median(store):
    for s in (1.0, 1.2, 5.0):
        await store.record_step_time("quick:64x64x4", s, 0.5)
    assert await store.step_times() == {"quick:64x64x4": (1.2, 0.5)}
    for _ in range(STEP_SAMPLES):
        await store.record_step_time("quick:64x64x4", 2.0, 1.0)
    assert await store.step_times() == {"quick:64x64x4": (2.0, 1.0)}


async def test_jobs_listing_and_delete(store):
    limits = Limits(per_user=5)
    for i, (user, n) in enumerate([("a", 1), ("b", 1), ("a", 2)]):
        await store.submit(make_job(user, n, i), limits)
    await store.finish((await store.claim("w")).id, JobState.DONE)
    assert [j.id for j in await store.jobs()] == ["a-1", "b-1", "a-2"]
    assert [j.id for j in await store.jobs(user="a", states=[JobState.QUEUED])] == ["a-2"]
    assert [j.id for j in await store.jobs(limit=1)] == ["a-1"]
    await store.delete_jobs(["a-1", "a-2", "missing"])
    assert await store.get("a-2") is None and [j.id for j in await store.queued()] == ["b-1"]
    assert [j.id for j in await store.jobs()] == ["b-1"]
    for n in (3, 4, 5, 6, 7):  # the deleted jobs no longer count against a's limit
        await store.submit(make_job("a", n, n), limits)


async def test_prefixes_keep_stores_apart(redis_url):
    one, two = RedisStore(redis_url, prefix="one:"), RedisStore(redis_url + "?prefix=two:")
    await one.open()
    await two.open()
    await one.submit(make_job("a", 1), Limits())
    assert await two.queued() == [] and await two.get("a-1") is None
    assert [j.id for j in await one.queued()] == ["a-1"]
    await one.close()
    await two.close()


async def test_notifications_publish_each_write(store, other):
    seen = []

    async def listen():
        async for note in other.notifications():
            seen.append(note)
            if note["state"] == "done":
                return

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.2)  # subscribed
    await store.submit(make_job("a", 1), Limits())
    await store.claim("w")
    await store.update("a-1", step=2)
    await store.finish("a-1", JobState.DONE)
    await asyncio.wait_for(task, 5)
    assert [(n["state"], n["step"]) for n in seen] == [("queued", 0), ("running", 0), ("running", 2), ("done", 2)]
    assert all(n["id"] == "a-1" for n in seen) and [n["seq"] for n in seen] == sorted(n["seq"] for n in seen)


# ---- the same operations on both stores give the same outcome ----

async def drive(store, rng: random.Random) -> list:
    """A seeded random mix of submits, claims, progress, cancels, finishes and recoveries; returns a trace."""
    trace = []
    limits = Limits(per_user=3, max_length=12, jobs_per_hour=0)
    users = ["a", "b", "c", "d"]
    running: list[str] = []
    for n in range(150):
        op = rng.choice(["submit", "submit", "claim", "claim", "step", "finish", "cancel", "recover"])
        if op == "submit":
            try:
                job = await store.submit(make_job(rng.choice(users), n, n), limits)
                trace.append(("submit", job.id))
            except UserError as exc:
                trace.append(("refused", exc.key))
        elif op == "claim":
            job = await store.claim("w")
            trace.append(("claim", job and job.id))
            if job:
                running.append(job.id)
        elif op == "step" and running:
            job = await store.update(rng.choice(running), step=rng.randrange(30))
            trace.append(("step", job.id, job.state, job.step))
        elif op == "finish" and running:
            job_id = running.pop(rng.randrange(len(running)))
            job = await store.finish(job_id, rng.choice([JobState.DONE, JobState.FAILED]))
            trace.append(("finish", job.id, job.state))
        elif op == "cancel":
            ids = [j.id for j in await store.jobs()]
            if ids:
                job = await store.cancel(rng.choice(ids))
                trace.append(("cancel", job.id, job.state, job.cancel_requested))
        elif op == "recover":
            touched = await store.recover(dead_worker="w")
            trace.append(("recover", sorted((j.id, j.state) for j in touched)))
            running = [j.id for j in await store.running()]
        trace.append(("queue", [j.id for j in await store.queued()]))
    trace.append(("final", [(j.id, j.state, j.attempts, j.cancel_requested) for j in await store.jobs()]))
    return trace


async def test_same_outcomes_as_sqlite_for_a_random_mix_of_operations(store, tmp_path):
    for seed in range(3):
        await store.redis.flushdb()
        sqlite_store = SQLiteStore(tmp_path / f"{seed}.sqlite3")
        await sqlite_store.open()
        redis_trace = await drive(store, random.Random(seed))
        sqlite_trace = await drive(sqlite_store, random.Random(seed))
        await sqlite_store.close()
        assert redis_trace == sqlite_trace
        assert any(t[0] == "refused" for t in redis_trace) and any(t[0] == "recover" and t[1] for t in redis_trace)


# ---- metrics ----

def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_are_served_and_parse(store):
    metrics = Metrics()
    assert start_metrics_server(0, metrics.registry) is None  # port 0: off
    limits = Limits(per_user=5)
    for n in range(3):
        await store.submit(make_job("a", n, time.time() - 2000), limits)  # created 1000 s ago
    await metrics.sample_store(store)
    job = await store.claim("w")
    done = await store.finish(job.id, JobState.DONE, fell_back="lite")
    cancelled = await store.cancel("a-2")
    assert metrics.observe_job(done) and metrics.observe_job(cancelled)
    assert not metrics.observe_job(done) and not metrics.observe_job(await store.get("a-1"))
    metrics.edits.labels(platform="telegram").inc(3)
    metrics.retries.labels(platform="discord").inc()
    metrics.gpu_memory_peak.set(2**30)
    server = start_metrics_server(free_port(), metrics.registry, addr="127.0.0.1")
    try:
        samples = await asyncio.to_thread(scrape, server.port)
    finally:
        server.stop()
    assert samples[("animabot_queue_depth", ())] == 3
    assert samples[("animabot_jobs_total", (("state", "done"),))] == 1
    assert samples[("animabot_jobs_total", (("state", "cancelled"),))] == 1
    assert samples[("animabot_fallbacks_total", (("preset", "lite"),))] == 1
    assert samples[("animabot_job_duration_seconds_count", (("preset", "quick"),))] == 1
    # Submitted 1000 s before the claim; the cancelled job never started, so it has no wait.
    assert samples[("animabot_job_wait_seconds_count", (("preset", "quick"),))] == 1
    assert 1000 <= samples[("animabot_job_wait_seconds_sum", (("preset", "quick"),))] < 1010
    assert samples[("animabot_message_edits_total", (("platform", "telegram"),))] == 3
    assert samples[("animabot_request_retries_total", (("platform", "discord"),))] == 1
    assert samples[("animabot_gpu_memory_peak_bytes", ())] == 2**30


async def test_previews_are_stored_only_while_rendering_and_removed_with_the_job(store):
    job = await store.submit(make_job("p", 1), Limits())
    await store.put_preview(job.id, 2, b"GIF89a\x00queued")
    assert await store.get_preview(job.id) is None
    await store.claim("w")
    data = bytes(range(256)) * 4   # binary, not text
    await store.put_preview(job.id, 4, data)
    assert await store.get_preview(job.id) == (4, data)
    changed, _ = await store.changes_since(job.seq)
    assert [j.preview_step for j in changed if j.id == job.id] == [4]   # followers hear of it
    await store.drop_preview(job.id)
    assert await store.get_preview(job.id) is None
    await store.put_preview(job.id, 5, data)
    await store.delete_jobs([job.id])
    assert await store.get_preview(job.id) is None


async def test_a_recorded_refusal_is_kept_outside_the_queue_on_both_backends(store, sqlite_store):
    for s in (store, sqlite_store):
        _, seq = await s.changes_since(0)
        refused = make_job("a", 1)
        refused.state, refused.error_key, refused.verdict, refused.nsfw_score = (
            JobState.FAILED, "nsfw_input", "flagged", 0.91)
        kept = await s.record(refused)
        assert kept.state == JobState.FAILED and kept.seq > seq
        assert await s.queued() == [] and await s.claim("w") is None
        [listed] = await s.jobs(user="a")
        assert (listed.error_key, listed.verdict, listed.nsfw_score) == ("nsfw_input", "flagged", 0.91)
        changed, _ = await s.changes_since(seq)
        assert [j.id for j in changed] == [kept.id]
        # A refusal takes no place among the user's active jobs.
        await s.submit(make_job("a", 2), Limits(per_user=1))


async def test_hour_usage_counts_a_users_submissions_on_both_backends(store, sqlite_store):
    for s in (store, sqlite_store):
        assert await s.hour_usage("a") == (0, None)
        before = time.time()
        await s.submit(make_job("a", 1), Limits())
        await s.submit(make_job("a", 2), Limits())
        count, oldest = await s.hour_usage("a")
        assert count == 2 and before - 1 <= oldest <= time.time()


async def test_wait_for_change_wakes_on_another_connections_write_on_both_backends(redis_url, store, tmp_path):
    sqlite_a, sqlite_b = SQLiteStore(tmp_path / "w.sqlite3"), SQLiteStore(tmp_path / "w.sqlite3")
    await sqlite_a.open()
    await sqlite_b.open()
    redis_b = RedisStore(redis_url)
    await redis_b.open()
    try:
        for waiter, writer in ((sqlite_a, sqlite_b), (store, redis_b)):
            await waiter.wait_for_change(0.05)   # the first call subscribes / reads the version it starts from
            assert await waiter.wait_for_change(0.2) is False            # nothing written: the whole timeout
            wait = asyncio.create_task(waiter.wait_for_change(10))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await writer.submit(make_job("w", 1), Limits())
            assert await asyncio.wait_for(wait, 5) is True
            assert time.monotonic() - t0 < 1.0   # woken by the write, not by the 10 s timeout
    finally:
        await sqlite_a.close()
        await sqlite_b.close()
        await redis_b.close()


async def test_an_idle_worker_starts_a_job_on_the_submit_not_at_its_next_poll(tmp_path, tiny_parts, monkeypatch):
    import engine.queue.worker as worker_module
    from tests.harness import make_config, running_stack
    from tests.tiny_model import make_photo

    monkeypatch.setattr(worker_module, "IDLE_POLL_S", 30.0)   # a poll would come far too late
    async with running_stack(make_config(tmp_path), tiny_parts) as stack:
        while await stack.service.worker_state() != "ready":
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)   # the worker is waiting now
        job = await stack.service.submit(user="u", image=make_photo(), prompt_raw="waves")
        t0 = time.monotonic()
        while (await stack.service.get(job.id)).state == JobState.QUEUED:
            assert time.monotonic() - t0 < 5, "the idle worker did not wake on the submit"
            await asyncio.sleep(0.01)
