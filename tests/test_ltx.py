"""The LTX-Video family on a tiny random model built in code: the same clip as diffusers' pipeline, loading
from a saved folder, cancel and previews, presets that fit the family, the CLI, and workers of two families
on one Redis store (each job to the right worker; a job for a family nobody serves refused)."""

import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import load_config
from engine.errors import UserError
from engine.families import I2VGEN_XL, LTX_VIDEO, family_of_model, served_key
from engine.jobs import JobState
from engine.media.video import probe_mp4
from engine.presets import Preset
from engine.queue.service import JobService
from engine.queue.worker import Worker
from engine.render.ltx import build_tiny_ltx, save_ltx
from engine.render.model import build_tiny, load_model, save_model
from engine.render.renderer import Renderer
from engine.render.sampler import RenderCancelled, center_crop_wide
from tests.harness import TINY_PRESETS, write_config
from tests.redis_server import running_redis
from tests.tiny_model import make_photo

ROOT = Path(__file__).resolve().parent.parent
FAST = Preset("fast", steps=4, pixels=128 * 64, frames=17, fps=24, guidance=1.0, family="ltx-video")


@pytest.fixture(scope="module")
def ltx_parts():
    return build_tiny_ltx()


class Previews:
    def __init__(self):
        self.sent = []

    def due(self):
        return True

    def offer_frames(self, step, frames):
        self.sent.append((step, frames))


def test_the_family_of_a_model_is_read_from_its_folder_or_name(tmp_path, ltx_parts):
    assert family_of_model("tiny") == family_of_model("random-full") == I2VGEN_XL
    assert family_of_model("tiny-ltx") == family_of_model("Lightricks/LTX-Video-0.9.8-13B-distilled") == LTX_VIDEO
    assert family_of_model("ali-vilab/i2vgen-xl") == I2VGEN_XL
    assert family_of_model(str(save_ltx(ltx_parts, tmp_path / "ltx"))) == LTX_VIDEO
    assert family_of_model(str(save_model(build_tiny(), tmp_path / "i2v"))) == I2VGEN_XL


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ours_equals_the_diffusers_pipeline_with_previews_and_progress_on(ltx_parts, guidance):
    preset = Preset("fast", steps=4, pixels=128 * 64, frames=17, fps=24, guidance=guidance, family="ltx-video")
    photo = make_photo(120, 60)
    previews, steps = Previews(), []
    result = Renderer(ltx_parts).render(photo, "a boat on a lake", "blurry", preset, 7, {"fast": preset},
                                        on_step=lambda s, n, e: steps.append((s, n)), previews=previews)
    assert (result.width, result.height) == (128, 64) and result.frames.shape == (17, 64, 128, 3)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # One preview frame per latent frame: (17 - 1) / 8 + 1.
    assert [s for s, _ in previews.sent] == [1, 2, 3, 4] and previews.sent[0][1].shape == (3, 64, 128, 3)
    # diffusers' pipeline, called as its documentation shows, with the same seed and crop.
    reference = ltx_parts.pipe(
        image=center_crop_wide(photo, 128, 64), prompt="a boat on a lake", negative_prompt="blurry", width=128,
        height=64, num_frames=17, frame_rate=24, num_inference_steps=4, guidance_scale=guidance,
        generator=torch.Generator().manual_seed(7), decode_timestep=0.05, decode_noise_scale=0.025,
        output_type="np").frames[0]
    assert np.array_equal(result.frames, (np.asarray(reference) * 255).round().astype(np.uint8))
    assert result.frames.std() > 1


def test_a_saved_tiny_ltx_loads_back_from_its_folder_and_renders_the_same(tmp_path, ltx_parts):
    folder = save_ltx(ltx_parts, tmp_path / "tiny-ltx")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "LTXImageToVideoPipeline"
    loaded = load_model(str(folder), device="cpu")
    assert loaded.family == LTX_VIDEO and loaded.parameter_count() == ltx_parts.parameter_count()
    photo = make_photo(96, 80)
    a = Renderer(ltx_parts).render(photo, "x", "", FAST, 1, {"fast": FAST}).frames
    b = Renderer(loaded).render(photo, "x", "", FAST, 1, {"fast": FAST}).frames
    assert np.array_equal(a, b)


def test_cancel_stops_at_a_step_boundary(ltx_parts):
    steps = []
    with pytest.raises(RenderCancelled):
        Renderer(ltx_parts).render(make_photo(), "x", "", FAST, 1, {"fast": FAST},
                                   on_step=lambda s, n, e: steps.append(s), should_cancel=lambda: len(steps) >= 2)
    assert steps == [1, 2]


def test_presets_fit_their_family(tmp_path):
    with pytest.raises(ValueError, match="8k\\+1 frames"):
        Preset("f", frames=16, family="ltx-video")
    with pytest.raises(ValueError, match="for I2VGen-XL presets only"):
        Preset("f", frames=17, family="ltx-video", cfg_fraction=0.5)
    path = write_config(tmp_path / "c.toml", {"presets": {"fast": {"fallback": "lite"}}})
    with pytest.raises(Exception, match="another model family"):
        load_config(path)
    with pytest.raises(ValueError, match="is for ltx-video; this model is i2vgen-xl"):
        Renderer(build_tiny()).render(make_photo(), "x", "", FAST, 1, {"fast": FAST})


def test_generate_with_tiny_ltx_and_the_fast_preset_writes_a_portrait_mp4(tmp_path):
    photo = tmp_path / "photo.jpg"
    make_photo(90, 160).save(photo)
    config = write_config(tmp_path / "config.toml", {"presets": {"fast": {"pixels": 128 * 128}},
                                                     "storage": {"data_dir": str(tmp_path / "data")}})
    out = tmp_path / "clip.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "generate", str(photo), "--prompt", "a tower in the wind", "--model",
         "tiny-ltx", "--preset", "fast", "--config", str(config), "--out", str(out), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["preset"] == "fast" and summary["frames"] == 49 and summary["fps"] == 24
    info = probe_mp4(out)
    assert info["frames"] == 49 and info["height"] > info["width"]   # portrait in, portrait out
    wrong = subprocess.run([sys.executable, "-m", "engine", "generate", str(photo), "--prompt", "x", "--model",
                            "tiny", "--preset", "fast", "--config", str(config)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode == 2 and "needs an ltx-video model; tiny is i2vgen-xl" in wrong.stderr


@pytest.mark.slow
async def test_two_families_on_one_redis_store_each_job_to_its_worker_and_unserved_refused(tmp_path):
    with running_redis() as server:
        url = server.url + "?prefix=families:"
        presets = {k: dict(v) for k, v in TINY_PRESETS.items()}
        presets["fast"] = {"steps": 3, "pixels": 128 * 64, "frames": 9, "fps": 24, "guidance": 1.0}
        config_path = write_config(tmp_path / "config.toml", {
            "engine": {"model": "tiny", "device": "cpu"}, "presets": presets,
            "queue": {"per_user": 10, "max_length": 50, "jobs_per_hour": 0},
            "storage": {"url": url, "data_dir": str(tmp_path / "data")}, "safety": {"classifier": "off"},
            "preview": {"every_s": 0}})
        config = load_config(config_path)
        i2v = Worker(config, renderer=Renderer(build_tiny()), worker_id="w-i2v")
        ltx = Worker(config, model="tiny-ltx", renderer=Renderer(build_tiny_ltx()), worker_id="w-ltx")
        assert (i2v.presets, ltx.presets) == (["hq", "lite", "quick", "turbo"], ["fast"])
        async with JobService(config, poll_interval_s=0.05) as service:
            # Queued before the workers start, interleaved, from two users: each worker takes only its own.
            jobs = []
            for i in range(6):
                jobs.append(await service.submit(user=f"u{i % 3}", image=make_photo(seed=i), prompt_raw="x",
                                                 preset="fast" if i % 2 else "quick"))
            tasks = [asyncio.create_task(w.run()) for w in (i2v, ltx)]
            try:
                deadline = time.monotonic() + 120
                while not all(job.state.final for job in [await service.get(j.id) for j in jobs]):
                    assert time.monotonic() < deadline, "jobs did not finish"
                    await asyncio.sleep(0.1)
                for job in jobs:
                    done = await service.get(job.id)
                    assert done.state == JobState.DONE
                    assert done.worker == ("w-ltx" if job.preset == "fast" else "w-i2v")
                    assert probe_mp4(done.result_path)["frames"] == (9 if job.preset == "fast" else 4)
                assert await service.served_families() == {I2VGEN_XL, LTX_VIDEO}
            finally:
                ltx.stop()
                await asyncio.wait_for(tasks[1], 30)
            # The LTX-Video worker went away more than a few minutes ago: its presets are refused, not queued.
            await service.store.set_meta(served_key(LTX_VIDEO), time.time() - 3600)
            with pytest.raises(UserError) as refused:
                await service.submit(user="u9", image=make_photo(), prompt_raw="x", preset="fast")
            assert refused.value.key == "preset_unserved" and "hq, lite, quick, turbo" in str(refused.value)
            assert len(await service.store.queued()) == 0
            i2v.stop()
            await asyncio.wait_for(tasks[0], 30)


async def test_telegram_caption_chooses_the_fast_preset_and_gets_progress_previews_and_a_clip(tmp_path):
    from PIL import Image

    from tests.harness import photo_bytes
    from tests.test_telegram_bot import preview_edits, shown, telegram_bot

    async with telegram_bot(tmp_path, build_tiny_ltx(), engine={"model": "tiny-ltx", "step_delay_s": 0.25},
                            presets={"fast": {"steps": 6, "pixels": 128 * 64, "frames": 17}},
                            preview={"every_s": 0.4}) as env:
        fake = env.fake
        alice = fake.user("Alice")
        chat = fake.private_chat(alice)
        fake.send_photo(chat, alice, photo_bytes(900, 600), caption="/animate --preset fast a boat on a lake")
        [upload] = await env.videos(timeout=60)
        [job] = await env.jobs()
        assert job.preset == "fast" and job.frames == 17 and job.state == JobState.DONE
        progress = [shown(c) for c in env.status_edits(chat.id) if "Step" in shown(c)]
        assert progress and any("/6" in text for text in progress)
        previews = [c for c in preview_edits(env, chat.id) if c.ok]
        assert previews
        gif = next(iter(previews[-1].files.values())).data
        with Image.open(io.BytesIO(gif)) as im:
            assert im.format == "GIF" and im.n_frames == 3   # one per latent frame of the 17
        video = next(iter(upload.files.values())).data
        clip = tmp_path / "clip.mp4"
        clip.write_bytes(video)
        info = probe_mp4(clip)
        assert info["frames"] == 17 and info["fps"] == 24
