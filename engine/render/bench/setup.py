"""What every measurement shares: the model, the input photo, the starting noise, the prompts' embeddings and
the reference diffusers pipeline, built once by `prepare`, so that each row differs only in the engine that
renders. A fresh-process measurement rebuilds the same setup from the same seeds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from engine.config import EngineConfig
from engine.errors import ModelError
from engine.presets import Scheduler
from engine.render.fastpath import decode_chunk_policy
from engine.render.model import ModelParts, load_model, resolve_device
from engine.render.sampler import build_scheduler, encode_prompt, vae_scale
from engine.render.startup import warm_image

PROMPT = "a red ball rolls across a wooden table, soft light"
NEGATIVE = "distorted, blurry, static"
IMAGE_NOISE_SEED = 1234  # seeds the VAE posterior sample, for ours and (through the global RNG) the reference
MODEL_SEED = 0           # random full-size weights: the same in every process of one run


@dataclass
class BenchSetup:
    parts: ModelParts
    image: Any  # PIL.Image.Image
    width: int
    height: int
    frames: int
    steps: int
    scheduler: Scheduler
    guidance: float
    fps: int
    decode_chunk_size: int
    latents: torch.Tensor  # starting noise, shared by every measurement
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor
    pipeline: Any = None  # the reference pipeline, built once


def prepare(model: str, device: str, steps: int | None, size: int | tuple[int, int] | str | None) -> BenchSetup:
    """The shared inputs; the photo is the picture the worker's compile warm-up renders."""
    torch_device = resolve_device(device)
    # A real-size model on the CPU would take hours per row; the CPU suite is for the tiny one.
    if model != "tiny" and torch_device.type != "cuda":
        raise ModelError(f"Benchmarking {model} needs a CUDA GPU; on the CPU use the tiny model.")
    if model != "tiny":
        torch.manual_seed(MODEL_SEED)
    parts = load_model(model, device=str(torch_device))
    if not isinstance(parts, ModelParts):
        raise ModelError(f"The bench's suites are for I2VGen-XL; {model} is LTX-Video (its figures come with "
                         "the full suite, from random-full-ltx).")
    small = parts.name == "tiny"
    width, height = parse_size(size) if size is not None else ((64, 64) if small else (512, 512))
    frames, steps = 16, steps or 30
    image = warm_image(width, height)
    scale = vae_scale(parts)
    latent_shape = (1, parts.unet.config.in_channels, frames, height // scale, width // scale)
    latents = torch.randn(latent_shape, generator=torch.Generator("cpu").manual_seed(0))
    with torch.no_grad():
        prompt_embeds = encode_prompt(parts, PROMPT)
        negative_embeds = encode_prompt(parts, NEGATIVE)
    return BenchSetup(
        parts=parts, image=image, width=width, height=height, frames=frames, steps=steps,
        scheduler="dpmpp_2m", guidance=9.0, fps=8,
        decode_chunk_size=production_decode_chunk(parts, width, height, frames),
        latents=latents.to(parts.device, parts.dtype), prompt_embeds=prompt_embeds,
        negative_embeds=negative_embeds, pipeline=reference_pipeline(parts, "dpmpp_2m"),
    )


def production_decode_chunk(parts: ModelParts, width: int, height: int, frames: int) -> int:
    """The decode chunk the worker would use with the default config (the memory budget on CUDA)."""
    policy = decode_chunk_policy(parts, EngineConfig())
    return policy(width, height, frames) if policy else EngineConfig().decode_chunk_size


def parse_size(size: int | tuple[int, int] | str) -> tuple[int, int]:
    """64 -> (64, 64); "512x320" -> (512, 320); (w, h) as is."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, str):
        w, _, h = size.lower().partition("x")
        return int(w), int(h or w)
    return int(size[0]), int(size[1])


def reference_pipeline(parts: ModelParts, scheduler: str):
    from diffusers import I2VGenXLPipeline

    pipe = I2VGenXLPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
        image_encoder=parts.image_encoder, feature_extractor=parts.feature_extractor, unet=parts.unet,
        scheduler=build_scheduler(parts.scheduler_config, scheduler),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resized(setup: BenchSetup, width: int, height: int) -> BenchSetup:
    """The same model, prompt and settings at another size (its own photo and starting noise)."""
    parts = setup.parts
    scale = vae_scale(parts)
    shape = (1, parts.unet.config.in_channels, setup.frames, height // scale, width // scale)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(0))
    return dataclasses.replace(setup, width=width, height=height, image=warm_image(width, height),
                               latents=latents.to(parts.device, parts.dtype),
                               decode_chunk_size=production_decode_chunk(parts, width, height, setup.frames))
