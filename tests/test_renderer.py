"""Renderer: sizing to the preset's bucket, and the one retry with the fall-back preset on out-of-memory."""

import numpy as np
import pytest
import torch

from engine.presets import Preset
from engine.render.renderer import Renderer
from engine.render.sampler import RenderCancelled, center_crop_wide, sample
from tests.tiny_model import make_photo, tiny_presets

torch.set_num_threads(1)

MAIN = Preset(
    "t", steps=3, scheduler="dpmpp_2m", pixels=128 * 64, frames=4, fps=10, guidance=7.5, fallback="t_lite"
)
LITE = Preset("t_lite", steps=2, scheduler="ddim", pixels=64 * 64, frames=2, fps=6, guidance=5.0, fallback="")
PRESETS = {"t": MAIN, "t_lite": LITE}


@pytest.fixture(scope="module")
def renderer(tiny_parts):
    return Renderer(tiny_parts, decode_chunk_size=3)


def oom_on_first_attempt(at_step):
    state = {"raised": 0, "calls": []}

    def hook(step):
        state["calls"].append(step)
        if step == at_step and not state["raised"]:
            state["raised"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory (test)")

    return hook, state


def test_render_sizes_the_photo_to_the_bucket(renderer, tiny_parts):
    photo = make_photo(160, 84)  # wide: the 16:9 or 2:1-ish bucket of 128x64 pixels
    steps_seen = []
    result = renderer.render(
        photo, "a kite", "", MAIN, 4, PRESETS, on_step=lambda *a: steps_seen.append(a[:2])
    )
    width, height = MAIN.size_for(160, 84)
    assert (result.width, result.height) == (width, height) == (128, 64)
    assert result.frames.shape == (4, 64, 128, 3) and result.frames.dtype == np.uint8
    assert not result.fell_back and result.preset == MAIN
    assert (result.fps, result.steps) == (10, 3)
    assert steps_seen == [(1, 3), (2, 3), (3, 3)]
    assert len(result.step_seconds) == 3 and all(s > 0 for s in result.step_seconds)
    assert result.seconds >= sum(result.step_seconds)
    direct = sample(
        tiny_parts,
        center_crop_wide(photo, 128, 64),
        "a kite",
        "",
        steps=3,
        scheduler="dpmpp_2m",
        guidance=7.5,
        frames=4,
        width=128,
        height=64,
        seed=4,
        fps=10,
        decode_chunk_size=3,
    )
    assert np.array_equal(result.frames, direct)


def test_out_of_memory_falls_back_once_to_the_lite_preset(renderer):
    photo = make_photo(90, 70)
    hook, state = oom_on_first_attempt(at_step=2)
    fallbacks = []
    result = renderer.render(
        photo, "a kite", "dull", MAIN, 9, PRESETS, step_hook=hook, on_fallback=fallbacks.append
    )
    assert fallbacks == [LITE]
    assert result.fell_back and result.preset == LITE
    assert state["calls"] == [1, 2, 1, 2]  # two steps of the first attempt, then the lite preset's two
    assert result.frames.shape == (2, 64, 64, 3)
    assert (result.fps, result.steps, len(result.step_seconds)) == (6, 2, 2)
    plain = renderer.render(photo, "a kite", "dull", LITE, 9, PRESETS)
    assert np.array_equal(result.frames, plain.frames)


def test_cuda_out_of_memory_error_also_falls_back(renderer):
    def hook(step):
        if not calls:
            calls.append(step)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    calls = []
    result = renderer.render(make_photo(64, 64), "x", "", MAIN, 1, PRESETS, step_hook=hook)
    assert result.fell_back


def test_out_of_memory_without_fallback_is_raised(renderer):
    hook, state = oom_on_first_attempt(at_step=1)
    fallbacks = []
    with pytest.raises(torch.OutOfMemoryError):
        renderer.render(
            make_photo(64, 64), "x", "", LITE, 1, PRESETS, step_hook=hook, on_fallback=fallbacks.append
        )
    assert fallbacks == [] and state["calls"] == [1]


def test_out_of_memory_again_after_fallback_is_raised(renderer):
    calls = []

    def always_oom(step):
        calls.append(step)
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    with pytest.raises(torch.OutOfMemoryError):
        renderer.render(make_photo(64, 64), "x", "", MAIN, 1, PRESETS, step_hook=always_oom)
    assert calls == [1, 1]  # one retry, not more


def test_cancel_passes_through(renderer):
    with pytest.raises(RenderCancelled):
        renderer.render(make_photo(64, 64), "x", "", MAIN, 1, PRESETS, should_cancel=lambda: True)


def test_shared_tiny_presets_render(renderer):
    presets = tiny_presets()
    result = renderer.render(make_photo(70, 90), "x", "", presets["quick"], 0, presets)
    assert result.frames.shape == (4, 64, 64, 3) and presets[presets["quick"].fallback] == presets["lite"]
