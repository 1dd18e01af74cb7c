"""Latency of the Telegram front end while jobs render: several users send captioned photos at once.

Measures, with the real python-telegram-bot client against the local fake Bot API and the tiny model:
  * update -> status: from the moment the update is available to the bot (injected into the fake) until the
    status message's sendMessage has been answered (download, checks, submit and the send included);
  * done -> video: from the job's finished_at in the store until the sendVideo upload has been answered
    (the service's change polling included).
The worker runs as its own process (`python -m engine worker`), as in production; `--worker thread` runs it
inside the bot's process instead, as the tests do, where the render thread competes for the GIL.
One warm-up job runs first and is not measured.

    .venv/bin/python scripts/bench_telegram.py [--users 8] [--photos 3] [--spread 6] [--worker process|thread]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Before torch is imported: idle OpenMP threads spinning beside the bot's event loop distort the timings.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bot.telegram.app import TelegramFrontEnd  # noqa: E402
from scripts.measuring import percentile  # noqa: E402
from tests.fakes.telegram_server import FakeTelegram  # noqa: E402
from tests.harness import config_document, make_config, photo_bytes, running_stack, write_config  # noqa: E402


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"{name:<18} n={len(ms):<3} p50={percentile(ms, 0.5):7.1f} ms  p95={percentile(ms, 0.95):7.1f} ms  "
            f"max={max(ms):7.1f} ms")


class CallStamps:
    """Wall-clock time at which each fake API call was answered (the fake records arrival times only)."""

    def __init__(self, fake: FakeTelegram):
        self.fake = fake
        self.times: list[float] = []
        self._stopped = False
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        # Short waits and a flag: a cancellation swallowed by wait_for must not leave this loop running.
        while not self._stopped:
            with contextlib.suppress(TimeoutError):
                await self.fake.wait_for(lambda: len(self.fake.calls) > len(self.times), timeout=1.0)
            now = time.time()
            self.times.extend([now] * (len(self.fake.calls) - len(self.times)))

    async def close(self) -> None:
        self._stopped = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.contextmanager
def worker_process(config_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--config", str(config_path)],
                            cwd=ROOT, env=env)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_until(check, timeout: float, what: str, worker: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if worker is not None and worker.poll() is not None:
            raise SystemExit(f"the worker process exited (code {worker.returncode}) before {what} finished")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def measure(args, fake: FakeTelegram, stack, worker: subprocess.Popen | None = None
                  ) -> tuple[list[float], list[float], int, float]:
    front = TelegramFrontEnd(stack.core, stack.config, fake.token, poll_timeout=10)
    await front.start()
    stamps = CallStamps(fake)
    store = stack.service.store
    try:
        warm = fake.user("Warm-up")
        fake.send_photo(fake.private_chat(warm), warm, photo_bytes(), caption="/animate a cat --speed slow")
        await wait_until(lambda: _all_delivered(store, 1), args.timeout, "the warm-up job", worker)

        rng = random.Random(1)
        users = [fake.user(f"User{i}") for i in range(args.users)]
        chats = [fake.private_chat(u) for u in users]
        images = [photo_bytes(96 + 16 * (i % 3), 80, seed=i) for i in range(args.users)]
        plan = sorted((rng.uniform(0, args.spread), i) for i in range(args.users) for _ in range(args.photos))
        injected: list[tuple[int, int, float]] = []   # chat id, message id, time
        started = time.monotonic()
        for at, i in plan:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
            sent = fake.send_photo(chats[i], users[i], images[i], caption=f"/animate a cat number {i} --speed slow")
            injected.append((chats[i].id, sent.message_id, time.time()))
        await wait_until(lambda: _all_delivered(store, len(plan) + 1), args.timeout, "every job", worker)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.2)

        to_status = [stamps.times[_status_call(fake, chat_id, message_id)] - at
                     for chat_id, message_id, at in injected]
        to_video = []
        for job in (await store.jobs())[1:]:
            ref = json.loads(job.status_ref)
            to_video.append(stamps.times[_video_call(fake, ref["chat"], ref["result"])] - job.finished_at)
        return to_status, to_video, len(plan), elapsed
    finally:
        await stamps.close()
        await front.close()


async def _all_delivered(store, count: int) -> bool:
    jobs = await store.jobs()
    return len(jobs) == count and all(j.delivered for j in jobs)


def _status_call(fake: FakeTelegram, chat_id: int, message_id: int) -> int:
    return next(k for k, c in enumerate(fake.calls) if c.method == "sendMessage" and c.ok
                and c.params.get("chat_id") == chat_id
                and (c.params.get("reply_parameters") or {}).get("message_id") == message_id)


def _video_call(fake: FakeTelegram, chat_id: int, result_id: int) -> int:
    return next(k for k, c in enumerate(fake.calls) if c.method == "sendVideo" and c.ok
                and c.params.get("chat_id") == chat_id and c.result["message_id"] == result_id)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeTelegram() as fake:
            sections = dict(
                engine={"step_delay_s": args.step_delay},
                queue={"per_user": args.photos, "max_length": 500},
                telegram={"api_base_url": fake.base_url, "file_base_url": fake.base_file_url,
                          "edit_interval_private_s": 1.0, "edit_interval_group_s": 3.0})
            config = make_config(Path(tmp), **sections)
            if args.worker == "thread":
                import torch

                from engine.render.model import load_model

                torch.set_num_threads(1)
                async with running_stack(config, load_model("tiny", device="cpu")) as stack:
                    result = await measure(args, fake, stack)
            else:
                config_path = write_config(Path(tmp) / "config.toml", config_document(Path(tmp), **sections))
                async with running_stack(config, with_worker=False) as stack:
                    with worker_process(config_path) as worker:
                        result = await measure(args, fake, stack, worker)
    to_status, to_video, jobs, elapsed = result
    print(f"{args.users} users x {args.photos} photos arriving over {args.spread:.0f} s; tiny model, "
          f"{jobs} jobs rendered in {elapsed:.1f} s by one worker ({args.worker})")
    print(summary("update -> status", to_status))
    print(summary("done -> video", to_video))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--photos", type=int, default=3, help="photos per user")
    parser.add_argument("--spread", type=float, default=6.0, help="seconds over which the photos arrive")
    parser.add_argument("--step-delay", type=float, default=0.05, help="extra seconds per denoising step")
    parser.add_argument("--worker", choices=("process", "thread"), default="process")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
