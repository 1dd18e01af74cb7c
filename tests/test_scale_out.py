"""Three real worker processes (`python -m engine worker`, tiny model) sharing one real redis-server.

Jobs go in through JobService from this process, as a bot would submit them. The workers share one data
folder because they run on one machine here; on several machines it would be a shared volume.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import load_config
from engine.jobs import Cancelled, JobState
from engine.media.video import read_mp4_frames
from engine.queue.redis_store import RedisStore
from engine.queue.service import JobService
from engine.queue.store import LEASE_TTL_S, fair_order
from tests.harness import write_config
from tests.redis_server import running_redis
from tests.tiny_model import make_photo

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 3
STEP_DELAY_S = 0.05
LONG_STEPS = 60

def scale_config(url: str, data: Path) -> dict:
    preset = {"pixels": 4096, "frames": 4, "fps": 8, "fallback": "", "smooth": False}
    return {
        "engine": {"model": "tiny", "device": "cpu", "step_delay_s": STEP_DELAY_S},
        "presets": {"quick": {"steps": 2, **preset}, "long": {"steps": LONG_STEPS, **preset}},
        "queue": {"per_user": 10, "max_length": 100, "jobs_per_hour": 0},
        "storage": {"url": url, "data_dir": str(data)},
    }


class Cluster:
    def __init__(self, url: str, config_path: Path, tmp: Path):
        self.url, self.config_path, self.tmp = url, config_path, tmp
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start_worker(self) -> None:
        log = self.tmp / f"worker{len(self.procs)}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "engine", "worker", "--store", self.url, "--model", "tiny",
                 "--config", str(self.config_path)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        self.logs.append(log)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs)

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if all("ready: model tiny" in log.read_text(errors="replace") for log in self.logs):
                return
            time.sleep(0.1)
        raise TimeoutError("workers did not load the model in time:\n" + self.log_text()[-3000:])

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale_out")
    with running_redis() as server:
        url = server.url + "?prefix=scale:"
        config_path = tmp / "config.toml"
        write_config(config_path, scale_config(url, tmp / "data"))
        c = Cluster(url, config_path, tmp)
        try:
            for _ in range(WORKERS):
                c.start_worker()
            c.wait_ready()
            yield c
        finally:
            c.stop()


@pytest.fixture
async def service(cluster):
    async with JobService(load_config(cluster.config_path), poll_interval_s=0.05) as svc:
        yield svc


async def wait_for(check, timeout_s: float, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(every_s)
    raise TimeoutError("condition not met in time")


async def all_final(store, ids):
    jobs = [await store.get(i) for i in ids]
    return jobs if all(j.state.final for j in jobs) else None


async def test_sixty_jobs_from_ten_users_finish_exactly_once_in_fair_order(cluster, service):
    store = service.store
    await service.pause()  # queue everything first, so the claim order shows the fairness rule alone
    submitted = []
    for u in range(10):  # user by user: a first-come order would serve u0 six times before u1
        for n in range(6):
            submitted.append(await service.submit(user=f"t:{u}", image=make_photo(96, 80, seed=u * 6 + n),
                                                  prompt_raw=f"clip {n}", preset="quick"))
    await service.resume()
    jobs = await wait_for(lambda: all_final(store, [j.id for j in submitted]), 60, every_s=0.2)

    assert [j.state for j in jobs] == [JobState.DONE] * 60
    assert all(j.attempts == 1 for j in jobs)
    assert len({j.worker for j in jobs}) == WORKERS  # every worker took a share
    logs = cluster.log_text()
    for job in jobs:
        assert logs.count(f"job {job.id} started") == 1 and logs.count(f"job {job.id} done") == 1
        assert Path(job.result_path).stat().st_size > 0
    for worker in {j.worker for j in jobs}:  # one decoded video per worker
        sample = next(j for j in jobs if j.worker == worker)
        assert read_mp4_frames(sample.result_path).shape == (4, 64, 64, 3)
    # Claims are stamped by the store's clock inside the atomic claim: start order is claim order.
    started = [j.user for j in sorted(jobs, key=lambda j: j.started_at)]
    assert started == [j.user for j in fair_order(submitted, {})]
    assert started[:10] == [f"t:{u}" for u in range(10)]


async def test_cancel_from_another_process_stops_the_worker_within_steps(cluster, service):
    job = await service.submit(user="t:cancel", image=make_photo(), prompt_raw="long", preset="long")
    events = service.events(job.id)
    running = await wait_for(lambda: _at_step(service.store, job.id, 3), 30)
    t0 = time.monotonic()
    await service.cancel(job.id, by_user="t:cancel")
    async for event in events:
        if isinstance(event, Cancelled):
            break
    stopped_s = time.monotonic() - t0
    final = await service.get(job.id)
    assert final.state == JobState.CANCELLED and final.worker == running.worker
    # The worker polls the flag four times a second and stops at the next step boundary.
    assert stopped_s < 2.0 and final.step < LONG_STEPS
    assert f"job {job.id} cancelled at step" in cluster.log_text()
    assert not Path(final.result_path or "/nonexistent").exists()


async def _at_step(store, job_id, step):
    job = await store.get(job_id)
    return job if job.state == JobState.RUNNING and job.step >= step else None


async def reclaim_loop(store: RedisStore, touched: list, every_s: float = 0.5) -> None:
    """What each worker does periodically with a Redis store: take back jobs of workers whose lease expired."""
    while True:
        touched.extend(await store.recover())
        await asyncio.sleep(every_s)


async def test_a_worker_killed_mid_job_loses_nothing(cluster, service):
    store = service.store
    jobs = [await service.submit(user=f"t:kill{i}", image=make_photo(seed=i), prompt_raw="long", preset="long")
            for i in range(3)]
    victim_job = await wait_for(lambda: _at_step(store, jobs[0].id, 2), 30)
    victim_pid = int(victim_job.worker.split(":")[1])
    victim = next(p for p in cluster.procs if p.pid == victim_pid)
    janitor = RedisStore(cluster.url)
    await janitor.open()
    touched: list = []
    reclaim = asyncio.create_task(reclaim_loop(janitor, touched))
    try:
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        done = await wait_for(lambda: all_final(store, [j.id for j in jobs]), LEASE_TTL_S + 40, every_s=0.2)
    finally:
        reclaim.cancel()
        await asyncio.gather(reclaim, return_exceptions=True)
        await janitor.close()

    assert [j.state for j in done] == [JobState.DONE] * 3
    rescued = done[0]
    assert rescued.worker != victim_job.worker and rescued.attempts == 2 and rescued.retried
    assert all(j.attempts == 1 for j in done[1:])  # jobs of live workers were never taken back
    assert {j.id for j in touched} <= {rescued.id}
    victim_log = cluster.logs[cluster.procs.index(victim)].read_text()
    assert f"job {rescued.id} started (attempt 1)" in victim_log and f"job {rescued.id} done" not in victim_log
    rescuer_log = cluster.logs[[p.pid for p in cluster.procs].index(int(rescued.worker.split(":")[1]))].read_text()
    assert f"job {rescued.id} started (attempt 2)" in rescuer_log
    assert cluster.log_text().count(f"job {rescued.id} done") == 1
    assert read_mp4_frames(rescued.result_path).shape == (4, 64, 64, 3)
