"""Speed of our sampler against diffusers' I2VGenXLPipeline on the same model, inputs and noise.

Each measurement is a function setup -> (seconds, frames); run_bench warms each up once, then runs them in
turn, `repeat` rounds, so that drifts of the machine (heat, other load) hit all of them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.errors import ModelError
from engine.model import ModelParts, load_model
from engine.sampler import encode_prompt, sample, vae_scale

PROMPT = "a red ball rolls across a wooden table, soft light"
NEGATIVE = "distorted, blurry, static"
IMAGE_NOISE_SEED = 1234  # seeds the VAE posterior sample, for ours and (through the global RNG) the reference


@dataclass
class BenchSetup:
    parts: ModelParts
    image: Any  # PIL.Image.Image
    width: int
    height: int
    frames: int
    steps: int
    scheduler: str
    guidance: float
    fps: int
    decode_chunk_size: int
    latents: torch.Tensor  # starting noise, shared by every measurement
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor
    pipeline: Any = None  # the reference pipeline, built once


Measurement = Callable[[BenchSetup], tuple[float, np.ndarray]]


def run_bench(model: str = "tiny", repeat: int = 3, device: str = "auto", steps: int | None = None,
              size: int | tuple[int, int] | str | None = None) -> str:
    """A printable report: median and spread of `repeat` renders per measurement, and ours/reference."""
    setup = prepare(model, device, steps, size)
    measurements = default_measurements()
    outputs = {name: fn(setup)[1] for name, fn in measurements.items()}  # warm-up, and outputs to compare
    times: dict[str, list[float]] = {name: [] for name in measurements}
    for _ in range(max(1, repeat)):
        for name, fn in measurements.items():
            times[name].append(fn(setup)[0])
    return format_report(setup, times, outputs)


def default_measurements() -> dict[str, Measurement]:
    return {"ours": time_ours, "reference": time_reference}


# ---------------------------------------------------------------- setup


def prepare(model: str, device: str, steps: int | None, size: int | tuple[int, int] | str | None) -> BenchSetup:
    torch_device = _bench_device(model, device)
    parts = load_model(model, device=str(torch_device))
    small = parts.name == "tiny"
    width, height = parse_size(size) if size is not None else ((64, 64) if small else (512, 512))
    frames, steps = 16, steps or 30
    image = _bench_image(width, height)
    scale = vae_scale(parts)
    latent_shape = (1, parts.unet.config.in_channels, frames, height // scale, width // scale)
    latents = torch.randn(latent_shape, generator=torch.Generator("cpu").manual_seed(0))
    with torch.no_grad():
        prompt_embeds = encode_prompt(parts, PROMPT)
        negative_embeds = encode_prompt(parts, NEGATIVE)
    return BenchSetup(
        parts=parts, image=image, width=width, height=height, frames=frames, steps=steps,
        scheduler="dpmpp_2m", guidance=9.0, fps=8, decode_chunk_size=8,
        latents=latents.to(parts.device, parts.dtype), prompt_embeds=prompt_embeds,
        negative_embeds=negative_embeds, pipeline=reference_pipeline(parts, "dpmpp_2m"),
    )


def _bench_device(model: str, device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if model != "tiny" and resolved.type != "cuda":
        raise ModelError(f"Benchmarking {model} needs a CUDA GPU; on the CPU use the tiny model.")
    return resolved


def parse_size(size: int | tuple[int, int] | str) -> tuple[int, int]:
    """64 -> (64, 64); "512x320" -> (512, 320); (w, h) as is."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, str):
        w, _, h = size.lower().partition("x")
        return int(w), int(h or w)
    return int(size[0]), int(size[1])


def _bench_image(width: int, height: int):
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                       128 + 100 * np.sin((x + y) / 7.0)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def reference_pipeline(parts: ModelParts, scheduler: str):
    from diffusers import I2VGenXLPipeline

    from engine.sampler import build_scheduler

    pipe = I2VGenXLPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
        image_encoder=parts.image_encoder, feature_extractor=parts.feature_extractor, unet=parts.unet,
        scheduler=build_scheduler(parts.scheduler_config, scheduler),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------- measurements


def time_ours(setup: BenchSetup) -> tuple[float, np.ndarray]:
    generator = torch.Generator(setup.parts.device).manual_seed(IMAGE_NOISE_SEED)
    return _timed(setup, lambda: sample(
        setup.parts, setup.image, PROMPT, NEGATIVE, steps=setup.steps, scheduler=setup.scheduler,
        guidance=setup.guidance, frames=setup.frames, width=setup.width, height=setup.height, seed=0,
        fps=setup.fps, latents=setup.latents, decode_chunk_size=setup.decode_chunk_size, output="float",
        image_latents_generator=generator,
    ))


def time_reference(setup: BenchSetup) -> tuple[float, np.ndarray]:
    def run() -> np.ndarray:
        torch.manual_seed(IMAGE_NOISE_SEED)  # the pipeline samples the VAE posterior from the global RNG
        return setup.pipeline(
            image=setup.image, prompt_embeds=setup.prompt_embeds, negative_prompt_embeds=setup.negative_embeds,
            height=setup.height, width=setup.width, target_fps=setup.fps, num_frames=setup.frames,
            num_inference_steps=setup.steps, guidance_scale=setup.guidance, latents=setup.latents,
            decode_chunk_size=setup.decode_chunk_size, output_type="np",
        ).frames[0]

    return _timed(setup, run)


def _timed(setup: BenchSetup, run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    _sync(setup.parts.device)
    start = time.perf_counter()
    out = run()
    _sync(setup.parts.device)
    return time.perf_counter() - start, out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- report


def format_report(setup: BenchSetup, times: dict[str, list[float]], outputs: dict[str, np.ndarray]) -> str:
    import diffusers

    parts = setup.parts
    runs = len(next(iter(times.values())))
    lines = [
        f"bench  model={parts.name} ({parts.parameter_count() / 1e6:.1f}M params)  device={_device_name(parts)}"
        f"  dtype={str(parts.dtype).removeprefix('torch.')}  threads={torch.get_num_threads()}",
        f"       torch {torch.__version__}, diffusers {diffusers.__version__}",
        f"render {setup.width}x{setup.height}, {setup.frames} frames, {setup.steps} steps {setup.scheduler}, "
        f"guidance {setup.guidance}, decode chunk {setup.decode_chunk_size}; "
        f"{runs} runs each after 1 warm-up, interleaved",
        "",
        f"{'':<12}{'median s':>10}{'min s':>10}{'max s':>10}{'stdev s':>10}{'ms/step':>10}",
    ]
    for name, values in times.items():
        med = statistics.median(values)
        stdev = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"{name:<12}{med:>10.3f}{min(values):>10.3f}{max(values):>10.3f}{stdev:>10.3f}"
                     f"{1000 * med / setup.steps:>10.1f}")
    if "ours" in times and "reference" in times:
        ratio = statistics.median(times["ours"]) / statistics.median(times["reference"])
        diff = float(np.abs(outputs["ours"].astype(np.float32) - outputs["reference"].astype(np.float32)).max())
        lines += ["", f"ours/reference (medians): {ratio:.3f}",
                  f"max |ours - reference| on frames in [0, 1], same noise: {diff:.2e}"]
    return "\n".join(lines)


def _device_name(parts: ModelParts) -> str:
    if parts.device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(parts.device)})"
    return "cpu"
