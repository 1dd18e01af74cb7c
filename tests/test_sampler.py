"""Our sampling loop: equal to diffusers' I2VGenXLPipeline, seeded, cancellable, and reporting progress."""

import numpy as np
import pytest
import torch

from engine.render.model import build_tiny
from engine.render.sampler import RenderCancelled, build_scheduler, encode_prompt, sample
from tests.tiny_model import make_photo

torch.set_num_threads(1)

FAST = dict(steps=3, scheduler="dpmpp_2m", guidance=9.0, frames=4, width=64, height=64)


@pytest.fixture(scope="module")
def photo():
    return make_photo(96, 80)


def unet_call_counter(parts):
    calls = []
    handle = parts.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def reference_frames(parts, image, prompt_embeds, negative_embeds, scheduler, latents, vae_seed, **kw):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, I2VGenXLPipeline

    if scheduler == "dpmpp_2m":
        sched = DPMSolverMultistepScheduler.from_config(
            parts.scheduler_config, algorithm_type="dpmsolver++", solver_order=2
        )
    else:
        sched = DDIMScheduler.from_config(parts.scheduler_config)
    pipe = I2VGenXLPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        image_encoder=parts.image_encoder,
        feature_extractor=parts.feature_extractor,
        unet=parts.unet,
        scheduler=sched,
    )
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(vae_seed)  # the pipeline samples the VAE posterior from the global RNG
    return pipe(
        image=image,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        latents=latents,
        output_type="np",
        **kw,
    ).frames[0]


@pytest.mark.parametrize(("scheduler", "guidance"), [("dpmpp_2m", 9.0), ("ddim", 9.0), ("ddim", 1.0)])
def test_matches_the_reference_pipeline(tiny_parts, photo, scheduler, guidance):
    width, height, frames, steps = 64, 48, 5, 6
    start = torch.randn((1, 4, frames, height // 8, width // 8), generator=torch.Generator().manual_seed(11))
    ours = sample(
        tiny_parts,
        photo,
        "a squirrel eats a burger",
        "blurry",
        steps=steps,
        scheduler=scheduler,
        guidance=guidance,
        frames=frames,
        width=width,
        height=height,
        seed=0,
        fps=8,
        latents=start,
        decode_chunk_size=2,
        output="float",
        image_latents_generator=torch.Generator().manual_seed(77),
    )
    with torch.no_grad():
        prompt_embeds = encode_prompt(tiny_parts, "a squirrel eats a burger")
        negative_embeds = encode_prompt(tiny_parts, "blurry")
    ref = reference_frames(
        tiny_parts,
        photo,
        prompt_embeds,
        negative_embeds,
        scheduler,
        start,
        77,
        height=height,
        width=width,
        target_fps=8,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        decode_chunk_size=2,
    )
    assert ours.shape == ref.shape == (frames, height, width, 3)
    assert ours.std() > 0.01  # a real picture, not a constant
    assert np.abs(ours - ref).max() <= 1e-5


def test_prompt_embedding_is_penultimate_layer_through_final_norm(photo):
    parts = build_tiny()  # modified below: not the shared model
    with torch.no_grad():
        before = encode_prompt(parts, "a red kite")
        last_before = parts.text_encoder(
            parts.tokenizer(["a red kite"], padding="max_length", return_tensors="pt").input_ids
        ).last_hidden_state
        for p in parts.text_encoder.encoder.layers[-1].parameters():  # the last layer must not matter
            p.add_(torch.randn_like(p))
        after_last_layer = encode_prompt(parts, "a red kite")
        last_after = parts.text_encoder(
            parts.tokenizer(["a red kite"], padding="max_length", return_tensors="pt").input_ids
        ).last_hidden_state
        parts.text_encoder.final_layer_norm.weight.mul_(2.0)  # the final layer norm must apply
        after_norm = encode_prompt(parts, "a red kite")
    assert before.shape == (1, 77, 4)
    assert torch.equal(before, after_last_layer)
    assert not torch.allclose(last_before, last_after)
    bias = parts.text_encoder.final_layer_norm.bias
    assert torch.allclose(after_norm - bias, 2 * (before - bias), atol=1e-6)


def test_same_seed_same_frames_and_seeds_differ(tiny_parts, photo):
    a = sample(tiny_parts, photo, "waves", seed=1, **FAST)
    b = sample(tiny_parts, photo, "waves", seed=1, **FAST)
    c = sample(tiny_parts, photo, "waves", seed=2, **FAST)
    assert a.dtype == np.uint8 and a.shape == (4, 64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_global_rng_is_not_used(tiny_parts, photo):
    torch.manual_seed(0)
    first = sample(tiny_parts, photo, "waves", seed=3, **FAST)
    draw_after = torch.rand(4)
    torch.manual_seed(999)
    second = sample(tiny_parts, photo, "waves", seed=3, **FAST)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(4), draw_after)
    assert np.array_equal(first, second)


def test_on_step_reports_every_step_in_order(tiny_parts, photo):
    seen = []
    sample(tiny_parts, photo, "rain", seed=0, on_step=lambda *a: seen.append(a), **{**FAST, "steps": 4})
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    elapsed = [s[2] for s in seen]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0


def test_cancel_stops_within_one_step(tiny_parts, photo):
    steps_done = []
    calls, handle = unet_call_counter(tiny_parts)
    try:
        with pytest.raises(RenderCancelled):
            sample(
                tiny_parts,
                photo,
                "rain",
                seed=0,
                on_step=lambda s, t, e: steps_done.append(s),
                should_cancel=lambda: len(steps_done) >= 2,
                **{**FAST, "steps": 6},
            )
        assert len(calls) == 2
        calls.clear()
        with pytest.raises(RenderCancelled):
            sample(tiny_parts, photo, "rain", seed=0, should_cancel=lambda: True, **FAST)
        assert calls == []
    finally:
        handle.remove()


def test_step_hook_runs_before_each_unet_call_and_its_errors_propagate(tiny_parts, photo):
    log = []
    calls, handle = unet_call_counter(tiny_parts)

    def hook(step):
        log.append((step, len(calls)))
        if step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")

    try:
        with pytest.raises(torch.OutOfMemoryError):
            sample(tiny_parts, photo, "rain", seed=0, step_hook=hook, **FAST)
    finally:
        handle.remove()
    assert log == [(1, 0), (2, 1)]
    assert len(calls) == 1


def test_bad_arguments_are_refused(tiny_parts, photo):
    with pytest.raises(ValueError, match="scheduler"):
        sample(tiny_parts, photo, "x", seed=0, **{**FAST, "scheduler": "euler"})
    with pytest.raises(ValueError, match="multiples of 8"):
        sample(tiny_parts, photo, "x", seed=0, **{**FAST, "width": 60})
    with pytest.raises(ValueError, match="scheduler"):
        build_scheduler(tiny_parts.scheduler_config, "pndm")


def test_dpm_solver_is_second_order_multistep_from_the_stored_config(tiny_parts):
    sched = build_scheduler(tiny_parts.scheduler_config, "dpmpp_2m")
    assert type(sched).__name__ == "DPMSolverMultistepScheduler"
    assert sched.config.algorithm_type == "dpmsolver++" and sched.config.solver_order == 2
    assert sched.config.prediction_type == "v_prediction" and sched.config.rescale_betas_zero_snr
    ddim = build_scheduler(tiny_parts.scheduler_config, "ddim")
    assert ddim.config.timestep_spacing == "leading" and ddim.config.steps_offset == 1

