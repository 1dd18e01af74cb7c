"""Previews of the clip as it forms: the clean-latent estimate, its colours, the GIF, the timing, the store and
the worker. The tiny model's colours mean nothing; sizes, frame counts, formats and timing do."""

import asyncio
import io
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.jobs import Done, JobState, Preview
from engine.media.preview import preview_gif, status_photo
from engine.render.preview import LATENT_RGB_FACTORS, PreviewTimer, latents_to_rgb
from engine.render.sampler import sample
from tests.harness import make_config, running_stack
from tests.tiny_model import make_photo

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
FAST = dict(steps=4, guidance=9.0, frames=4, width=64, height=64, seed=7)


class Every:
    """A sink that takes a preview at every step."""

    def __init__(self):
        self.seen: list[tuple[int, torch.Tensor]] = []

    def due(self) -> bool:
        return True

    def offer(self, step: int, x0: torch.Tensor) -> None:
        self.seen.append((step, x0.clone()))


def gif_frames(data: bytes) -> tuple[tuple[int, int], int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "GIF"
        return im.size, im.n_frames, im.info["duration"]


def test_the_last_steps_estimate_is_the_clean_result(tiny_parts):
    """With DDIM the last step lands on its own x0 estimate: a wrong formula could not match."""
    sink = Every()
    final = sample(tiny_parts, make_photo(), "waves", scheduler="ddim", output="latent", previews=sink, **FAST)
    steps = [s for s, _ in sink.seen]
    assert steps == [1, 2, 3, 4]
    last = sink.seen[-1][1].cpu().numpy()
    assert last.shape == final.shape == (1, 4, 4, 8, 8)
    assert np.abs(last - final).max() < 1e-4
    first = sink.seen[0][1].cpu().numpy()
    assert np.abs(first - final).max() > 1e-3   # early estimates differ: the test compares something


def test_previews_do_not_change_the_render(tiny_parts):
    plain = sample(tiny_parts, make_photo(), "waves", scheduler="dpmpp_2m", **FAST)
    watched = sample(tiny_parts, make_photo(), "waves", scheduler="dpmpp_2m", previews=Every(), **FAST)
    assert np.array_equal(plain, watched)


def test_latents_map_to_colours_by_the_published_factors():
    x0 = torch.zeros(1, 4, 3, 2, 5)
    x0[0, 0] = 1.0   # only the first latent channel: its row of factors, read as [-1, 1]
    rgb = latents_to_rgb(x0)
    assert rgb.shape == (3, 2, 5, 3) and rgb.dtype == np.uint8
    expected = np.clip((np.array(LATENT_RGB_FACTORS[0]) + 1) * 127.5, 0, 255).astype(np.uint8)
    assert (rgb == expected).all()


def test_the_preview_gif_has_every_frame_about_256px_and_the_clips_rate():
    frames = (np.random.default_rng(0).random((16, 36, 64, 3)) * 255).astype(np.uint8)   # a 16:9 latent grid
    size, count, duration = gif_frames(preview_gif(frames, fps=8))
    assert size == (256, 144) and count == 16 and duration == 120   # GIF keeps centiseconds: 125 ms -> 12


def test_the_status_photo_is_a_small_jpeg_copy(tmp_path):
    path = tmp_path / "photo.png"
    make_photo(1200, 900).save(path)
    with Image.open(io.BytesIO(status_photo(path))) as im:
        assert im.format == "JPEG" and im.size == (512, 384)
    make_photo(300, 200).save(path)
    with Image.open(io.BytesIO(status_photo(path))) as im:
        assert im.size == (300, 200)   # never enlarged


def test_the_timer_asks_every_every_s_and_never_while_encoding():
    now = [0.0]
    delivered: list[int] = []
    gate = threading.Event()   # holds the encoder busy

    def deliver(step, frames):
        gate.wait(5)
        delivered.append(step)

    timer = PreviewTimer(3.0, deliver, clock=lambda: now[0])
    x0 = torch.zeros(1, 4, 2, 2, 2)
    assert not timer.due()
    now[0] = 3.0
    assert timer.due()
    timer.offer(5, x0)
    now[0] = 7.0
    assert not timer.due()          # the last one is still being encoded: skipped, not queued
    gate.set()
    timer.close()
    assert delivered == [5]
    assert PreviewTimer(0, deliver).due() is False   # every_s = 0: off


async def test_a_rendering_jobs_previews_reach_its_follower_through_the_store(tmp_path, tiny_parts):
    config = make_config(tmp_path, engine={"step_delay_s": 0.25}, preview={"every_s": 0.3},
                         presets={"quick": {"steps": 6}})
    async with running_stack(config, tiny_parts) as stack:
        job = await stack.service.submit(user="u", image=make_photo(), prompt_raw="waves")
        events, gifs = [], []
        async for event in stack.service.events(job.id):
            events.append(event)
            if isinstance(event, Preview):
                gifs.append(await stack.service.preview(job.id))
        previews = [e for e in events if isinstance(e, Preview)]
        assert len(previews) >= 2 and isinstance(events[-1], Done)
        assert [p.step for p in previews] == sorted({p.step for p in previews})
        size, count, duration = gif_frames(next(g for g in gifs if g))
        assert count == 4 and max(size) == 256 and duration == 120
        await asyncio.sleep(0.2)
        assert await stack.service.preview(job.id) is None   # dropped once the job has its outcome
        final = await stack.service.get(job.id)
        assert final.state == JobState.DONE and final.preview_step >= previews[-1].step   # a last one may land with Done


async def test_a_preview_for_a_job_that_is_no_longer_rendering_is_refused(tmp_path):
    from engine.queue.service import JobService

    config = make_config(tmp_path)
    async with JobService(config) as service:
        job = await service.submit(user="u", image=make_photo(), prompt_raw="waves")
        await service.store.put_preview(job.id, 3, b"GIF89a")
        assert await service.preview(job.id) is None and (await service.get(job.id)).preview_step == 0
        claimed = await service.store.claim("w")
        await service.store.put_preview(claimed.id, 3, b"GIF89a")
        assert await service.preview(job.id) == b"GIF89a"
        assert (await service.get(job.id)).preview_step == 3
        await service.store.drop_preview(job.id)
        assert await service.preview(job.id) is None


@pytest.mark.slow
def test_generate_writes_previews_to_a_folder(tmp_path):
    photo = tmp_path / "photo.jpg"
    make_photo(160, 120).save(photo)
    cfg = tmp_path / "config.toml"
    cfg.write_text('[engine]\nmodel = "tiny"\ndevice = "cpu"\n[preview]\nevery_s = 0.05\n'
                   f'[storage]\nurl = "{tmp_path / "jobs.sqlite3"}"\ndata_dir = "{tmp_path / "data"}"\n'
                   '[presets.lite]\nsteps = 12\npixels = 49152\nframes = 4\n')
    out = subprocess.run([sys.executable, "-m", "engine", "generate", str(photo), "--prompt", "waves", "--preset",
                          "lite", "--config", str(cfg), "--out", str(tmp_path / "out.mp4"), "--preview-dir",
                          str(tmp_path / "previews"), "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=180, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                           "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    files = sorted((tmp_path / "previews").glob("preview-*.gif"))
    assert len(files) >= 2
    size, count, _ = gif_frames(files[-1].read_bytes())
    assert count == 4 and size == (256, 192)   # the photo's 4:3 orientation kept
    assert '"preview"' in out.stdout


def test_a_picture_turned_into_latents_by_the_inverse_projection_comes_back_upright():
    """Orientation and colour order: latents made from a photo through the factors' pseudo-inverse project back
    to that photo (a swapped axis or channel would not)."""
    photo = np.asarray(make_photo(64, 48)).astype(np.float32)
    latents = (photo.reshape(-1, 3) / 127.5 - 1) @ np.linalg.pinv(np.array(LATENT_RGB_FACTORS))
    x0 = torch.tensor(latents.reshape(48, 64, 4).transpose(2, 0, 1)[None, :, None]).float()   # (1, 4, 1, h, w)
    back = latents_to_rgb(x0)[0].astype(np.float32)
    assert back.shape == photo.shape and np.abs(back - photo).mean() < 1.0
