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
    # Two compiled shapes, each a graph of its own: quick's 64x64 (its only bucket at this pixel budget) first,
    # then hq's, which has other frames.
    config = make_config(tmp_path, engine={"compile": True, "compile_backend": "eager",
                                           "warm_presets": ["quick", "hq"]},
                         presets={"hq": {"frames": 2, "steps": 2}})
    service = JobService(config)
    await service.start()
    worker = Worker(config)
    caplog.set_level(logging.INFO, logger="engine")
    try:
        # Queued before the worker starts: an hq job, whose shape is compiled second.
        portrait = await service.submit(user="u1", image=make_photo(60, 120), prompt_raw="a tower", preset="hq")
        run = asyncio.create_task(worker.run())
        events = await finished(service, portrait.id)
        assert any(isinstance(e, Cold) for e in events)
        job = await service.get(portrait.id)
        assert job.state == JobState.DONE and job.cold and job.frames == 2

        messages = [r.getMessage() for r in caplog.records]
        started = next(i for i, m in enumerate(messages) if m.startswith(f"job {portrait.id} started"))
        warmed = [i for i, m in enumerate(messages) if m.startswith("warm-up ")]
        # One shape before the first job, the other after it, between jobs.
        assert [i for i in warmed if i < started] == warmed[:1] and messages[warmed[0]].startswith("warm-up quick 1:1")

        async def all_warm():
            while not worker.renderer.warm_up.done:
                await asyncio.sleep(0.1)
        await asyncio.wait_for(all_warm(), 120)
        assert [m.split(" 1:1")[0] for m in (r.getMessage() for r in caplog.records)
                if m.startswith("warm-up ")] == ["warm-up quick", "warm-up hq"]

        unet = worker.renderer.parts.unet
        eager_before = unet.calls["eager"]
        again = await service.submit(user="u1", image=make_photo(60, 120), prompt_raw="a tower", seed=1,
                                     preset="hq")
        events = await finished(service, again.id)
        assert not any(isinstance(e, Cold) for e in events)
        assert not (await service.get(again.id)).cold
        assert unet.calls["eager"] == eager_before   # every UNet call of it ran compiled
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)
        await service.close()
