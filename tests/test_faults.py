"""Faults inside the engine, injected for real: CUDA out of memory (a real torch.OutOfMemoryError), a full disk
(a tiny tmpfs), and a crashed render. Each job ends in exactly one final state and its follower hears it."""

import asyncio
import os
import subprocess

import pytest

from engine.jobs import Done, Failed, FellBack, JobState
from engine.media.video import probe_mp4
from tests.harness import make_config, running_stack
from tests.tiny_model import make_photo


async def follow(service, job_id, timeout=60):
    async def collect():
        return [e async for e in service.events(job_id)]
    return await asyncio.wait_for(collect(), timeout)


async def test_out_of_memory_falls_back_to_lite_and_says_so(tmp_path, tiny_parts):
    config = make_config(tmp_path, engine={"simulate_oom_at_step": 1})
    async with running_stack(config, tiny_parts) as stack:
        job = await stack.service.submit(user="u", image=make_photo(), prompt_raw="waves")
        events = await follow(stack.service, job.id)
        assert any(isinstance(e, FellBack) and e.preset == "lite" for e in events)
        done = events[-1]
        assert isinstance(done, Done) and done.job.fell_back == "lite"
        assert probe_mp4(done.job.result_path)["frames"] == 2   # the lite preset's frames


@pytest.fixture
def full_results_dir(tmp_path):
    """data/results on a 256 KiB tmpfs, filled to the brim: writing a video raises ENOSPC for real."""
    results = tmp_path / "data" / "results"
    results.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(results)],
                             capture_output=True).returncode == 0
    if not mounted:
        if os.environ.get("CI"):
            pytest.fail("cannot mount a tmpfs to simulate a full disk")
        pytest.skip("cannot mount a tmpfs here (needs root) to simulate a full disk")
    filler = results / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    yield filler
    subprocess.run(["umount", "-l", str(results)], check=False)


async def test_a_full_disk_fails_the_job_clearly_and_the_next_one_works(tmp_path, tiny_parts, full_results_dir):
    config = make_config(tmp_path)
    async with running_stack(config, tiny_parts) as stack:
        job = await stack.service.submit(user="u", image=make_photo(), prompt_raw="waves")
        events = await follow(stack.service, job.id)
        failed = events[-1]
        assert isinstance(failed, Failed) and "disk space" in failed.reason
        assert not [p for p in full_results_dir.parent.iterdir() if p.name.endswith(".part")]
        full_results_dir.unlink()   # space again: the worker keeps serving
        job2 = await stack.service.submit(user="u", image=make_photo(), prompt_raw="waves")
        assert isinstance((await follow(stack.service, job2.id))[-1], Done)
        assert (await stack.service.get(job.id)).state == JobState.FAILED


async def test_data_folder_files_are_not_world_readable(tmp_path, tiny_parts):
    config = make_config(tmp_path)
    async with running_stack(config, tiny_parts) as stack:
        job = await stack.service.submit(user="u", image=make_photo(), prompt_raw="waves")
        await follow(stack.service, job.id)
    data = tmp_path / "data"
    paths = [data, *data.rglob("*")]
    assert len(paths) >= 4
    for path in paths:
        assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))


async def test_delete_pressed_during_a_render_survives_the_workers_last_write(tmp_path, tiny_parts):
    """The worker writes only the fields it owns: a Delete landing after the last step (too late to cancel)
    keeps its flag when the job completes, and the finished video is not left behind."""
    config = make_config(tmp_path)
    async with running_stack(config, tiny_parts) as stack:
        write_result = stack.worker._write_result
        pressed = []

        def write_then_delete(job, result, base):
            out = write_result(job, result, base)
            # The owner presses Delete while the MP4 is being saved: the render can no longer stop.
            future = asyncio.run_coroutine_threadsafe(stack.service.delete(job.id, by_user="u"), loop)
            pressed.append(future.result(timeout=10))
            return out

        loop = asyncio.get_running_loop()
        stack.worker._write_result = write_then_delete
        job = await stack.service.submit(user="u", image=make_photo(), prompt_raw="waves")
        events = await follow(stack.service, job.id)
        final = await stack.service.get(job.id)
        assert pressed and pressed[0].expired
        assert final.state == JobState.DONE and isinstance(events[-1], Done)
        assert final.expired and final.delivered and final.gpu_peak_bytes == 0 and final.render_s > 0
        assert final.result_path and not os.path.exists(final.result_path)
