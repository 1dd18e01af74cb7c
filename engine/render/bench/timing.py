"""How the bench measures: timed renders (ours and the reference pipeline, same inputs and noise), timed UNet
calls, peak GPU memory, FLOPs counted by torch, the matmul roofline, and deviations between outputs.

Every timer waits for the GPU before reading the clock: CUDA runs ahead of Python."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from engine.render.bench.setup import IMAGE_NOISE_SEED, NEGATIVE, PROMPT, BenchSetup
from engine.render.model import ModelParts, full_configs
from engine.render.sampler import PreviewSink, sample, sync_device
from engine.render.turbo import StepPlan

UNET_SAMPLE_CALLS = 5

# One end-to-end measurement: setup -> (seconds, frames).
Measurement = Callable[[BenchSetup], tuple[float, np.ndarray]]


# ---------------------------------------------------------------- end-to-end renders


def time_ours(setup: BenchSetup, steps: int | None = None, previews: PreviewSink | None = None,
              plan: StepPlan | None = None) -> tuple[float, np.ndarray]:
    generator = torch.Generator("cpu").manual_seed(IMAGE_NOISE_SEED)
    return _timed(setup, lambda: sample(
        setup.parts, setup.image, PROMPT, NEGATIVE, steps=steps or setup.steps, scheduler=setup.scheduler,
        guidance=setup.guidance, frames=setup.frames, width=setup.width, height=setup.height, seed=0,
        fps=setup.fps, latents=setup.latents, decode_chunk_size=setup.decode_chunk_size, output="float",
        image_latents_generator=generator, previews=previews, plan=plan,
    ))


def time_reference(setup: BenchSetup, steps: int | None = None) -> tuple[float, np.ndarray]:
    def run() -> np.ndarray:
        torch.manual_seed(IMAGE_NOISE_SEED)  # the pipeline samples the VAE posterior from the global RNG
        return setup.pipeline(
            image=setup.image, prompt_embeds=setup.prompt_embeds, negative_prompt_embeds=setup.negative_embeds,
            height=setup.height, width=setup.width, target_fps=setup.fps, num_frames=setup.frames,
            num_inference_steps=steps or setup.steps, guidance_scale=setup.guidance, latents=setup.latents,
            decode_chunk_size=setup.decode_chunk_size, output_type="np",
        ).frames[0]

    return _timed(setup, run)


def _timed(setup: BenchSetup, run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    sync_device(setup.parts.device)
    start = time.perf_counter()
    out = run()
    sync_device(setup.parts.device)
    return time.perf_counter() - start, out


def per_step_slope(long_s: float, long_steps: int, short_s: float, short_steps: int) -> float:
    """Seconds each extra step adds, from two renders that differ only in steps."""
    if long_steps <= short_steps:
        return long_s / max(1, long_steps)
    return max(0.0, (long_s - short_s) / (long_steps - short_steps))


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """{"gib": peak GiB allocated within the block} on CUDA; None on the CPU. Unlike the worker's
    memory.gpu_peak_bytes it is for one given device and waits for the GPU at both ends, so that the peak
    belongs to the block."""
    result: dict[str, float | None] = {"gib": None}
    if device.type == "cuda":
        sync_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield result
    if device.type == "cuda":
        sync_device(device)
        result["gib"] = torch.cuda.max_memory_allocated(device) / 2**30


# ---------------------------------------------------------------- one UNet call


def capture_unet_inputs(setup: BenchSetup, parts: ModelParts | None = None) -> tuple[tuple, dict[str, Any]]:
    """The exact arguments of one UNet call of a render of this setup (CFG batch), from a 1-step render."""
    parts = parts or setup.parts
    captured: list[tuple[tuple, dict[str, Any]]] = []
    handle = parts.unet.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append((args, dict(kwargs))), with_kwargs=True)
    try:
        sample(parts, setup.image, PROMPT, NEGATIVE, steps=1, scheduler=setup.scheduler,
               guidance=setup.guidance, frames=setup.frames, width=setup.width, height=setup.height, seed=0,
               fps=setup.fps, latents=setup.latents, output="latent")
    finally:
        handle.remove()
    return captured[0]


def unet_call_flops(unet: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> float:
    """FLOPs of one UNet call, counted by torch's FlopCounterMode (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(*args, **kwargs)
    return float(counter.get_total_flops())


def full_size_unet_flops(width: int = 512, height: int = 512, frames: int = 16) -> float:
    """FLOPs of one full-size I2VGen-XL UNet call with CFG (batch 2), counted on the meta device (no memory,
    no GPU): what the GPU run's TFLOP/s figures divide."""
    from diffusers import I2VGenXLUNet

    with torch.device("meta"):
        unet = I2VGenXLUNet(**full_configs()["unet"]).to(torch.float16)
        latents = torch.empty(2, 4, frames, height // 8, width // 8, dtype=torch.float16)
        kwargs = dict(encoder_hidden_states=torch.empty(2, 77, 1024, dtype=torch.float16),
                      fps=torch.tensor([8, 8]), image_latents=torch.empty_like(latents),
                      image_embeddings=torch.empty(2, 1, 1024, dtype=torch.float16), return_dict=False)
        return unet_call_flops(unet, (latents, torch.tensor(999)), kwargs)


def time_unet_calls(unet: torch.nn.Module, args: tuple, kwargs: dict[str, Any], calls: int = UNET_SAMPLE_CALLS,
                    device: torch.device | None = None) -> tuple[float, torch.Tensor]:
    """(ms per call over `calls` calls after one warm-up call, the last output)."""
    device = device or args[0].device
    with torch.no_grad():
        out = unet(*args, **kwargs)[0]
        sync_device(device)
        start = time.perf_counter()
        for _ in range(calls):
            out = unet(*args, **kwargs)[0]
        sync_device(device)
    return 1000 * (time.perf_counter() - start) / calls, out


def matmul_tflops(device: torch.device) -> tuple[str, float]:
    """(label, TFLOP/s) of a large square matmul: bf16 8192^3 on CUDA (timed with CUDA events), float32
    1024^3 on the CPU: the roofline the UNet's TFLOP/s is compared with."""
    if device.type == "cuda":
        n, dtype, iters = 8192, torch.bfloat16, 20
    else:
        n, dtype, iters = 1024, torch.float32, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync_device(device)
        begin.record()
        for _ in range(iters):
            a @ b
        end.record()
        sync_device(device)
        seconds = begin.elapsed_time(end) / 1000
    else:
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        seconds = time.perf_counter() - start
    label = f"{str(dtype).removeprefix('torch.')} matmul {n}^3"
    return label, 2 * n**3 * iters / seconds / 1e12


def relative_deviation(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in float32."""
    ref = ref.float()
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


def time_with_previews(setup: BenchSetup, every_s: float) -> tuple[float, int]:
    """One render as `time_ours`, with the worker's previews every `every_s` s (projected on the sampling
    thread, encoded to GIF on the preview thread, as the worker does; only the store write is left out).
    Returns (seconds, previews made)."""
    from engine.media.preview import preview_gif
    from engine.render.preview import PreviewTimer

    made: list[int] = []
    timer = PreviewTimer(every_s, lambda step, frames: made.append(len(preview_gif(frames, setup.fps))))
    seconds, _ = time_ours(setup, previews=timer)
    timer.close()
    return seconds, len(made)
