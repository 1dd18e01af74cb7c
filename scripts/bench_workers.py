"""Jobs per minute with 1, 2 and 3 workers sharing a real redis-server.

By default each worker's renderer only sleeps `[engine] step_delay_s` per step (no model), so the figures
show the cost of coordination (claims, progress writes, cancel polls, MP4 writes, finishes) apart from how
many CPU cores this machine has. `--renderer tiny` runs the tiny random-weight model instead.

    .venv/bin/python scripts/bench_workers.py [--jobs 30] [--steps 10] [--step-delay 0.05] [--workers 1 2 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import load_config  # noqa: E402
from engine.jobs import JobState  # noqa: E402
from engine.queue.redis_store import RedisStore  # noqa: E402
from engine.queue.service import JobService  # noqa: E402
from tests.harness import write_config  # noqa: E402


def bench_config(url: str, data: Path, step_delay: float, steps: int) -> dict:
    return {
        "engine": {"model": "tiny", "device": "cpu", "step_delay_s": step_delay},
        "presets": {"quick": {"steps": steps, "pixels": 4096, "frames": 4, "fps": 8, "fallback": ""}},
        "queue": {"per_user": 1000, "max_length": 10000, "jobs_per_hour": 0},
        "storage": {"url": url, "data_dir": str(data)},
    }


# ---- the worker side: a real Worker whose renderer sleeps instead of sampling ----

class SleepingRenderer:
    """Steps through a preset calling the worker's hooks (step_hook sleeps step_delay_s); no model."""

    def render(self, image, prompt, negative_prompt, preset, seed, presets, on_step=None, should_cancel=None,
               step_hook=None, on_fallback=None):
        import numpy as np

        from engine.render.renderer import RenderResult
        from engine.render.sampler import RenderCancelled

        width, height = preset.size_for(image.width, image.height)
        start = time.perf_counter()
        step_seconds = []
        for step in range(1, preset.steps + 1):
            if should_cancel is not None and should_cancel():
                raise RenderCancelled()
            t0 = time.perf_counter()
            if step_hook is not None:
                step_hook(step)
            step_seconds.append(time.perf_counter() - t0)
            if on_step is not None:
                on_step(step, preset.steps, time.perf_counter() - start)
        frames = np.full((preset.frames, height, width, 3), seed % 256, dtype=np.uint8)
        return RenderResult(frames=frames, fps=preset.fps, preset=preset, fell_back=False, width=width,
                            height=height, steps=preset.steps, seconds=time.perf_counter() - start,
                            step_seconds=step_seconds)


async def serve_sleeping(config_path: str) -> None:
    from engine.queue.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    class SleepingWorker(Worker):
        async def _load_model(self) -> None:
            # What a model load would import anyway (torch), so the first job does not pay for it.
            await asyncio.to_thread(importlib.import_module, "engine.render.renderer")
            self.renderer = SleepingRenderer()
            self.state = "ready"
            await self.store.heartbeat(self.id, self.state)

    worker = SleepingWorker(load_config(config_path))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()


# ---- the driver ----

def start_workers(n: int, renderer: str, config_path: Path, url: str, logs: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if renderer == "sleep":
        cmd = [sys.executable, __file__, "serve", "--config", str(config_path)]
    else:
        cmd = [sys.executable, "-m", "engine", "worker", "--store", url, "--model", "tiny",
               "--config", str(config_path)]
    procs = []
    for i in range(n):
        with open(logs / f"worker{n}-{i}.log", "wb") as out:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def wait_ready(store: RedisStore, n: int, procs: list[subprocess.Popen], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited while starting; see its log")
        if sum(1 for w in await store.workers() if w.alive and w.state == "ready") >= n:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("workers did not become ready")


async def measure(n: int, args, url: str, tmp: Path) -> dict:
    """Queue `args.jobs` jobs while paused, start the clock at resume, stop it when the last one is final."""
    from tests.tiny_model import make_photo

    run_url = f"{url}?prefix=bench{n}:"
    config_path = tmp / f"config{n}.toml"
    write_config(config_path, bench_config(run_url, tmp / "data", args.step_delay, args.steps))
    procs = start_workers(n, args.renderer, config_path, run_url, tmp)
    try:
        async with JobService(load_config(config_path)) as service:
            await wait_ready(service.store, n, procs)
            await service.pause()
            image = make_photo(96, 80)
            ids = [(await service.submit(user=f"b:{i % 5}", image=image, prompt_raw="bench")).id
                   for i in range(args.jobs)]
            t0 = time.perf_counter()
            await service.resume()
            while True:
                jobs = [await service.store.get(i) for i in ids]
                if all(j.state.final for j in jobs):
                    break
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - t0
    finally:
        stop_workers(procs)
    done = sum(j.state == JobState.DONE for j in jobs)
    in_job_s = sum(j.finished_at - j.started_at for j in jobs) / len(jobs)  # claim to finish, in the worker
    per_job_s = seconds * n / args.jobs  # worker time per job, idle gaps included
    return {"workers": n, "jobs": args.jobs, "done": done, "seconds": seconds,
            "jobs_per_min": 60 * args.jobs / seconds, "per_job_s": per_job_s, "in_job_s": in_job_s,
            "gap_s": per_job_s - in_job_s, "busy_workers": len({j.worker for j in jobs})}


async def bench(args) -> None:
    from tests.redis_server import running_redis

    sleep_s = args.steps * args.step_delay
    print(f"renderer={args.renderer} jobs={args.jobs} steps={args.steps} step_delay_s={args.step_delay} "
          f"(sleep per job {sleep_s:.2f} s; ideal {60 / sleep_s:.0f} jobs/min per worker) cpus={os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp, contextlib.ExitStack() as stack:
        url = args.redis or stack.enter_context(running_redis()).url
        rows = [await measure(n, args, url, Path(tmp)) for n in args.workers]
    base = rows[0]["jobs_per_min"] / rows[0]["workers"]
    print(f"{'workers':>7} {'done':>5} {'seconds':>8} {'jobs/min':>9} {'ideal':>6} {'speed-up':>8} "
          f"{'in-job s':>9} {'of which sleep':>14} {'gap s':>7}")
    for r in rows:
        ideal = r["workers"] * 60 / sleep_s
        print(f"{r['workers']:>7} {r['done']:>5} {r['seconds']:>8.2f} {r['jobs_per_min']:>9.1f} {ideal:>6.0f} "
              f"{r['jobs_per_min'] / base:>7.2f}x {r['in_job_s']:>9.3f} {sleep_s:>14.3f} {r['gap_s']:>7.3f}")
    print("in-job s: claim to finish per job (sleep, progress writes, image read, MP4 write, memory release); "
          "gap s: worker time per job outside jobs (claim latency, idle, start/end of the run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="(internal) run one sleeping worker")
    serve.add_argument("--config", required=True)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-delay", type=float, default=0.05)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--renderer", choices=["sleep", "tiny"], default="sleep")
    parser.add_argument("--redis", default=None, help="an existing redis:// URL (default: start a throwaway one)")
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(serve_sleeping(args.config))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
