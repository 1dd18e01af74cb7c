"""Start-up order with a compiled UNet (torch.compile's eager backend: the real graph capture, no code
generation): the worker serves once the default preset's first bucket is compiled, a job in a bucket not yet
compiled renders eagerly and its status says so, and the other buckets compile between jobs."""

import asyncio
import logging

import pytest

from engine.jobs import Cold, Done, JobState
from engine.queue.service import JobService
from engine.queue.worker import Worker
from tests.harness import make_config
from tests.tiny_model import make_photo


async def finished(service: JobService, job_id: str, timeout: float = 120.0):
    async def wait():
        events = []
        async for event in service.events(job_id):
            events.append(event)
            if isinstance(event, Done):
                return events
        return events
    return await asyncio.wait_for(wait(), timeout)


@pytest.mark.slow
async def test_worker_serves_after_the_first_bucket_and_compiles_the_rest_between_jobs(tmp_path, caplog):
    # 128x64 pixels: three buckets (64x64, 128x64, 64x128), each a graph of its own.
    config = make_config(tmp_path, engine={"compile": True, "compile_backend": "eager", "warm_presets": ["quick"]},
                         presets={"quick": {"pixels": 128 * 64}})
    service = JobService(config)
    await service.start()
    worker = Worker(config)
    caplog.set_level(logging.INFO, logger="engine")
    try:
        # Queued before the worker starts: a portrait photo lands in the last bucket to be compiled.
        portrait = await service.submit(user="u1", image=make_photo(60, 120), prompt_raw="a tower")
        run = asyncio.create_task(worker.run())
        events = await finished(service, portrait.id)
        assert any(isinstance(e, Cold) for e in events)
        job = await service.get(portrait.id)
        assert job.state == JobState.DONE and job.cold and (job.width, job.height) == (64, 128)

        messages = [r.getMessage() for r in caplog.records]
        started = next(i for i, m in enumerate(messages) if m.startswith(f"job {portrait.id} started"))
        warmed = [i for i, m in enumerate(messages) if m.startswith("warm-up quick")]
        # One bucket before the first job, the other two after it, between jobs.
        assert len([i for i in warmed if i < started]) == 1 and messages[warmed[0]].startswith("warm-up quick 1:1")

        async def all_warm():
            while not worker.renderer.warm_up.done:
                await asyncio.sleep(0.1)
        await asyncio.wait_for(all_warm(), 120)
        assert len([m for m in (r.getMessage() for r in caplog.records) if m.startswith("warm-up quick")]) == 3

        unet = worker.renderer.parts.unet
        eager_before = unet.calls["eager"]
        again = await service.submit(user="u1", image=make_photo(60, 120), prompt_raw="a tower", seed=1)
        events = await finished(service, again.id)
        assert not any(isinstance(e, Cold) for e in events)
        assert not (await service.get(again.id)).cold
        assert unet.calls["eager"] == eager_before   # every UNet call of it ran compiled
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)
        await service.close()
