"""Queue latency as a front end sees it, with a real worker process and the tiny model.

Prints p50/p95 of submit-to-start with an idle worker, of step-to-event (the worker finishing a step to the
front end's event), and the longest stall of the front end's event loop while jobs render.

    .venv/bin/python scripts/bench_queue.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import load_config  # noqa: E402
from engine.jobs import Started, Step  # noqa: E402
from engine.queue.service import JobService  # noqa: E402
from scripts.measuring import percentile, stall_monitor  # noqa: E402
from tests.harness import TINY_PRESETS, write_config  # noqa: E402
from tests.tiny_model import make_photo  # noqa: E402


async def main(jobs: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    presets = {k: dict(v) for k, v in TINY_PRESETS.items()}
    presets["quick"]["steps"] = 8
    cfg = write_config(tmp / "config.toml", {
        "engine": {"model": "tiny", "device": "cpu", "step_delay_s": 0.05},
        "presets": presets,
        "queue": {"per_user": 100, "max_length": 1000, "jobs_per_hour": 0},
        "storage": {"url": str(tmp / "jobs.sqlite3"), "data_dir": str(tmp / "data")},
    })
    worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--config", str(cfg)], cwd=ROOT,
                              stderr=subprocess.DEVNULL, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    submit_to_start, step_to_event, stalls = [], [], []
    try:
        async with JobService(load_config(cfg)) as service:
            while await service.worker_state() != "ready":
                await asyncio.sleep(0.1)
            stop = asyncio.Event()
            monitor = asyncio.create_task(stall_monitor(stop, stalls, tick_s=0.005))
            photo = make_photo(96, 80)
            for i in range(jobs):   # one at a time: the worker is idle at each submit
                t0 = time.time()
                job = await service.submit(user=f"u{i % 5}", image=photo, prompt_raw="waves rolling")
                async for event in service.events(job.id):
                    now = time.time()
                    if isinstance(event, Started):
                        submit_to_start.append(now - t0)
                    elif isinstance(event, Step) and event.at:
                        step_to_event.append(now - event.at)
            stop.set()
            await monitor
    finally:
        worker.terminate()
        worker.wait(30)
    ms = lambda v: f"{v * 1000:7.1f} ms"  # noqa: E731
    print(f"jobs: {jobs}, tiny model, 8 steps of >= 50 ms, worker in its own process, SQLite store")
    print(f"submit -> started (idle worker)   p50 {ms(percentile(submit_to_start, .5))}   p95 {ms(percentile(submit_to_start, .95))}"
          f"   (n={len(submit_to_start)})")
    print(f"step done -> front-end event      p50 {ms(percentile(step_to_event, .5))}   p95 {ms(percentile(step_to_event, .95))}"
          f"   (n={len(step_to_event)})")
    print(f"front-end event loop stall        max {ms(max(stalls))}   p99 {ms(percentile(stalls, .99))}"
          f"   mean {ms(statistics.mean(stalls))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    asyncio.run(main(parser.parse_args().jobs))
