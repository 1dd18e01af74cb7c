"""Turbo on the tiny model: guidance for the first steps only (the UNet batch drops from 2 to 1), deep features
reused on alternate steps (the deep blocks do not run), the exact presets untouched by either, and compiled
turbo equal to eager turbo."""

import logging

import numpy as np
import pytest
import torch

from engine.config import EngineConfig
from engine.presets import Preset
from engine.render.fastpath import WarmCompiled
from engine.render.model import build_tiny
from engine.render.renderer import Renderer
from engine.render.sampler import sample
from engine.render.startup import build_renderer, warm_plan
from engine.render.turbo import DeepCache, StepPlan, deep_cache
from tests.tiny_model import make_photo

torch.set_num_threads(1)

QUICK = Preset("quick", steps=6, pixels=64 * 64, frames=4, guidance=9.0)
TURBO = Preset("turbo", steps=6, pixels=64 * 64, frames=4, guidance=9.0, cfg_fraction=0.5, deep_cache_interval=2,
               deep_cache_branch=1)
PRESETS = {"quick": QUICK, "turbo": TURBO}


@pytest.fixture(scope="module")
def parts():
    return build_tiny()   # its own copy: the deep cache stays installed on it


@pytest.fixture(scope="module")
def photo():
    return make_photo(96, 80)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_the_plan_guides_the_first_steps_and_reuses_every_other_one():
    plan = StepPlan.for_preset(Preset("t", steps=10, cfg_fraction=0.4, deep_cache_interval=2))
    assert [s for s in range(1, 11) if plan.guided(s)] == [1, 2, 3, 4]
    # Odd steps run in full; so does step 5, the first without guidance (its batch differs from step 4's).
    assert [s for s in range(1, 11) if plan.reused(s)] == [2, 4, 6, 8, 10]
    assert StepPlan.for_preset(Preset("q", steps=10)).is_exact
    assert StepPlan.for_preset(Preset("t", steps=30, cfg_fraction=0.4)).cfg_steps == 12
    three = StepPlan.for_preset(Preset("t", steps=9, cfg_fraction=1.0, deep_cache_interval=3))
    assert [s for s in range(1, 10) if three.reused(s)] == [2, 3, 5, 6, 8, 9]


def test_turbo_unet_calls_per_step_batch_and_skipped_deep_blocks(parts, photo):
    unet = parts.unet
    step, batches, deep = [0], [], []
    hooks = [unet.register_forward_pre_hook(lambda m, a, k: batches.append((step[0], a[0].shape[0])),
                                            with_kwargs=True),
             unet.mid_block.resnets[0].register_forward_hook(lambda m, i, o: deep.append(step[0])),
             unet.down_blocks[-1].resnets[0].register_forward_hook(lambda m, i, o: deep.append(step[0]))]
    try:
        result = Renderer(parts).render(photo, "a boat", "", TURBO, 3, PRESETS,
                                        step_hook=lambda s: step.__setitem__(0, s))
    finally:
        for h in hooks:
            h.remove()
    assert result.frames.shape == (4, 64, 64, 3) and result.frames.std() > 1
    # One UNet call a step; guided steps carry the unconditional and conditional halves.
    assert batches == [(1, 2), (2, 2), (3, 2), (4, 1), (5, 1), (6, 1)]
    # The deep blocks (mid block, last down block) run only on full steps: 1, 3, 4 (guidance just stopped), 5.
    assert sorted(set(deep)) == [1, 3, 4, 5] and len(deep) == 2 * 4


def test_exact_presets_are_untouched_by_an_installed_deep_cache(photo):
    fresh = build_tiny()
    before = Renderer(fresh).render(photo, "a boat", "", QUICK, 3, PRESETS).frames
    turbo = Renderer(fresh).render(photo, "a boat", "", TURBO, 3, PRESETS).frames   # installs the cache
    assert isinstance(fresh.unet.__dict__["_deep_cache"], DeepCache)
    after = Renderer(fresh).render(photo, "a boat", "", QUICK, 3, PRESETS).frames
    assert np.array_equal(before, after)
    # Turbo changes the output, but stays a render of the same photo and noise.
    assert not np.array_equal(before, turbo)
    assert 20 < psnr(before, turbo) < 80


def test_a_cache_branch_deeper_than_the_unet_is_refused_at_start(tmp_path):
    deep = {"turbo": Preset("turbo", steps=4, pixels=64 * 64, frames=4, deep_cache_interval=2,
                            deep_cache_branch=5)}
    with pytest.raises(ValueError, match="deep_cache_branch must be from 1 to 1"):
        build_renderer(build_tiny(), EngineConfig(), deep, tmp_path)
    unet = build_tiny().unet
    deep_cache(unet, 1)
    with pytest.raises(ValueError, match="presets must agree"):
        deep_cache(unet, 2)


def test_fp8_presets_render_without_fp8_off_a_float8_card(tmp_path, photo, caplog):
    fp8 = {"turbo": Preset("turbo", steps=2, pixels=64 * 64, frames=4, fp8=True)}
    with caplog.at_level(logging.WARNING, logger="engine.render.startup"):
        renderer = build_renderer(build_tiny(), EngineConfig(), fp8, tmp_path)
    assert renderer.fp8_parts is None
    assert any("asks for fp8: fp8 needs a CUDA card" in r.message for r in caplog.records)
    assert renderer.render(photo, "x", "", fp8["turbo"], 0, fp8).frames.shape == (4, 64, 64, 3)


def test_the_warm_up_plan_goes_through_every_kind_of_turbo_step():
    steps, plan = warm_plan(TURBO)
    assert steps == 4 and plan is not None
    assert plan.kinds() == StepPlan.for_preset(TURBO).kinds() == {
        (True, False), (True, True), (False, False), (False, True)}
    assert warm_plan(QUICK) == (2, None)
    only_cfg = Preset("t", steps=8, cfg_fraction=0.5)
    assert warm_plan(only_cfg)[1].kinds() == StepPlan.for_preset(only_cfg).kinds()


def test_compiled_reuse_runs_compiled_after_warm_up_and_equals_eager_reuse(tmp_path, photo):
    """The eager backend captures the graphs inductor would compile: a reused step is a graph of its own (the
    cache's mode is guarded), never the full step's graph with the deep blocks baked in. Guidance on every
    step, so two graphs are traced, not four (about 10 s each here)."""
    reuse = Preset("reuse", steps=4, pixels=64 * 64, frames=2, deep_cache_interval=2)
    kw = dict(steps=4, scheduler="dpmpp_2m", guidance=9.0, frames=2, width=64, height=64, seed=2, output="float",
              plan=StepPlan.for_preset(reuse))
    eager = sample(build_tiny(), photo, "a boat", "", **kw)
    cfg = EngineConfig(compile=True, compile_backend="eager")
    renderer = build_renderer(build_tiny(), cfg, {"reuse": reuse}, tmp_path)
    unet = renderer.parts.unet
    assert isinstance(unet, WarmCompiled) and renderer.warm_up.done
    compiled = sample(renderer.parts, photo, "a boat", "", **kw)
    assert unet.calls["eager"] == 0
    assert np.abs(compiled - eager).max() <= 1e-5
