"""Latency of the Discord front end while jobs render: INTERACTION_CREATE -> deferral, and job done -> video
posted. Several users send /animate at once against the local fake Discord; a worker renders with the tiny
model in this process, so the bot's event loop shares the machine with a busy renderer.

    .venv/bin/python scripts/bench_discord.py [--users 6] [--jobs 4] [--spacing 0.15]

The job service polls the store at its default interval (0.1 s, `--poll`), so the done -> posted figure
includes the wait until the bot notices a finished job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

from bot.core import BotCore  # noqa: E402
from bot.discord.app import DiscordFrontEnd  # noqa: E402
from engine.queue.service import JobService  # noqa: E402
from engine.queue.worker import Worker  # noqa: E402
from scripts.measuring import percentile  # noqa: E402
from tests.fakes.discord_server import FakeDiscord, InteractionRecord  # noqa: E402
from tests.harness import make_config, photo_bytes  # noqa: E402


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return "no samples"
    p50, p95 = percentile(ms, 0.5), percentile(ms, 0.95)
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   max {ms[-1]:7.1f} ms   (n={len(ms)})"


async def submit_all(fake: FakeDiscord, users: list[int], jobs: int, spacing: float) -> list[InteractionRecord]:
    """Each user sends `jobs` commands; users run concurrently, each pausing ~`spacing` s between sends."""
    photo = photo_bytes()

    async def one_user(user_id: int) -> list[InteractionRecord]:
        sent = []
        for i in range(jobs):
            await asyncio.sleep(random.uniform(0, 2 * spacing))
            image = fake.add_attachment(f"photo{i}.png", photo, "image/png")
            sent.append(await fake.slash_command(
                "animate", [{"name": "image", "value": image},
                            {"name": "prompt", "value": f"a cat turning its head, take {i}"}], user_id=user_id))
        return sent

    return [r for batch in await asyncio.gather(*(one_user(u) for u in users)) for r in batch]


def upload_time(fake: FakeDiscord, interaction: InteractionRecord) -> float | None:
    """Arrival (monotonic, body fully received) of the successful request that carried the video."""
    for request in fake.requests:
        if interaction.token in request.path and request.files and request.status == 200:
            return request.time
    return None


async def bench(args: argparse.Namespace) -> None:
    import torch

    from engine.render.model import load_model
    from engine.render.renderer import Renderer

    torch.set_num_threads(args.threads)
    parts = load_model("tiny", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeDiscord() as fake:
            users = [fake.add_member(f"user{i}") for i in range(args.users)]
            config = make_config(
                Path(tmp),
                queue={"per_user": args.jobs, "max_length": 1000},
                discord={"api_base_url": fake.api_base, "gateway_url": fake.gateway_url,
                         "attachment_hosts": ["127.0.0.1"], "edit_interval_s": 1.0, "guild_ready_timeout_s": 0.05},
            )
            service = JobService(config, poll_interval_s=args.poll)
            await service.start()
            core = BotCore(config, service)
            worker = Worker(config, renderer=Renderer(parts))
            worker_task = asyncio.create_task(worker.run())
            front = DiscordFrontEnd(core, config, fake.token)
            await front.start()
            wall_offset = time.time() - time.monotonic()
            try:
                started = time.monotonic()
                sent = await submit_all(fake, users, args.jobs, args.spacing)
                await fake.wait_for(lambda: all(upload_time(fake, r) for r in sent), timeout=600)
                elapsed = time.monotonic() - started
                defers = [r.callbacks[0]["time"] - r.created_at for r in sent]
                posts = []
                for r in sent:
                    job_id = r.original_message.component_custom_ids()[0].split(":")[2]
                    job = await service.get(job_id)
                    posts.append(upload_time(fake, r) + wall_offset - job.finished_at)
            finally:
                await core.close()
                await front.close()
                worker.stop()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(worker_task, 30)
                await service.close()
    print(f"{len(sent)} jobs from {args.users} users rendered and posted in {elapsed:.1f} s "
          f"(tiny model, torch threads={args.threads}, {os.cpu_count()} CPUs, store poll {args.poll} s)")
    print(f"INTERACTION_CREATE -> deferral : {percentiles(defers)}")
    print(f"job done -> video posted       : {percentiles(posts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=4, help="jobs per user")
    parser.add_argument("--spacing", type=float, default=0.15, help="mean seconds between one user's commands")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the renderer")
    parser.add_argument("--poll", type=float, default=0.1, help="store poll interval of the job service (s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("discord").setLevel(logging.ERROR)   # voice support notices
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
