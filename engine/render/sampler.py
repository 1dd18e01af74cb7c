"""Our I2VGen-XL sampling loop. It computes what diffusers' I2VGenXLPipeline computes, step for step, and adds
what a render service needs: a progress callback, cancellation at step boundaries, explicit seeding, and a
hook before each UNet call."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Protocol

import numpy as np
import PIL.Image
import torch

from engine.presets import SCHEDULERS
from engine.render.model import ModelParts
from engine.render.preview import clean_estimate
from engine.render.turbo import StepPlan, deep_cache

OUTPUTS = ("np", "float", "latent")


class PreviewSink(Protocol):
    """Where previews go (engine.render.preview.PreviewTimer): asked once per step, so `due` must be cheap."""

    def due(self) -> bool: ...
    def offer(self, step: int, x0: torch.Tensor) -> None: ...
    def offer_frames(self, step: int, frames: np.ndarray) -> None: ...


class RenderCancelled(Exception):
    """The caller asked to stop; raised at a step boundary."""


@torch.no_grad()
def sample(
    parts: ModelParts,
    image: PIL.Image.Image,
    prompt: str,
    negative_prompt: str = "",
    *,
    steps: int,
    scheduler: str,
    guidance: float,
    frames: int,
    width: int,
    height: int,
    seed: int,
    fps: int = 8,
    on_step: Callable[[int, int, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    step_hook: Callable[[int], None] | None = None,
    latents: torch.Tensor | None = None,
    decode_chunk_size: int = 8,
    output: str = "np",
    image_latents_generator: torch.Generator | None = None,
    previews: PreviewSink | None = None,
    plan: StepPlan | None = None,
) -> np.ndarray:
    """Render `frames` frames of width x height from an image and a prompt.

    output "np": uint8 (frames, height, width, 3); "float": float32 in [0, 1], same shape; "latent": the final
    latents (1, channels, frames, height/8, width/8) as float32.
    Steps count from 1. step_hook(step) runs just before step's UNet call; on_step(step, total, elapsed_s) runs
    after it (elapsed from the first step's start). should_cancel() is asked before each step and after the
    last; True raises RenderCancelled.
    Randomness comes only from a generator seeded with `seed`: first the VAE's posterior sample, then the
    starting noise. `latents` replaces the starting noise; `image_latents_generator` replaces the generator for
    the VAE sample. `previews`, when given, is asked after each UNet call whether a preview is due, and then
    handed the step and the current estimate of the clean latents. `plan` (engine/render/turbo.py) may drop
    guidance after some steps and reuse deep UNet features on some; None renders exactly.
    """
    _check_args(parts, scheduler, output, width, height, frames, steps)
    plan = plan or StepPlan.exact(steps)
    if plan.steps != steps:
        raise ValueError(f"the step plan is for {plan.steps} steps, not {steps}")
    device = parts.device
    do_cfg = guidance > 1.0
    generator = torch.Generator("cpu").manual_seed(seed)

    # 1. Text: prompt embeddings, with the negative prompt's first so that CFG runs as one batch.
    with _on_device(parts, parts.text_encoder):
        text_embeds = encode_prompt(parts, prompt)
        if do_cfg:
            text_embeds = torch.cat([encode_prompt(parts, negative_prompt), text_embeds])

    # 2. Image embedding from the CLIP image encoder; zeros are the unconditional half.
    with _on_device(parts, parts.image_encoder):
        image_embeds = encode_image(parts, image, width)
    if do_cfg:
        image_embeds = torch.cat([torch.zeros_like(image_embeds), image_embeds])

    # 3. Image latents: the VAE-encoded first frame followed by one position mask per later frame.
    with _on_device(parts, parts.vae):
        image_latents = encode_image_latents(
            parts, image, width, height, frames, image_embeds.dtype, image_latents_generator or generator)
    if do_cfg:
        image_latents = torch.cat([image_latents] * 2)

    # 4. The frame rate is a micro-condition of the UNet.
    fps_tensor = torch.tensor([fps, fps] if do_cfg else [fps]).to(device)

    # 5. Scheduler and timesteps.
    sched = build_scheduler(parts.scheduler_config, scheduler)
    sched.set_timesteps(steps, device=device)
    timesteps = sched.timesteps

    # 6. Starting noise, drawn on the CPU so that a seed gives the same video on any device.
    shape = (1, parts.unet.config.in_channels, frames, height // vae_scale(parts), width // vae_scale(parts))
    if latents is None:
        latents = torch.randn(shape, generator=generator, dtype=torch.float32)
    latents = latents.to(device=device, dtype=text_embeds.dtype) * sched.init_noise_sigma

    # 7. Denoising loop. Unguided steps of a plan take the conditional half of each input (the second).
    guided_inputs = (text_embeds, fps_tensor, image_latents, image_embeds)
    cond_inputs = (text_embeds[-1:], fps_tensor[-1:], image_latents[-1:], image_embeds[-1:])
    cache = deep_cache(parts.unet, plan.branch) if plan.interval > 1 else None
    with _on_device(parts, parts.unet):
        start = time.perf_counter()
        for i, t in enumerate(timesteps):
            _check_cancel(should_cancel)
            if step_hook is not None:
                step_hook(i + 1)
            guided = do_cfg and plan.guided(i + 1)
            text, fps_now, image_now, embeds = guided_inputs if guided or not do_cfg else cond_inputs
            mode = "off" if cache is None else "reuse" if plan.reused(i + 1) else "store"
            with cache.step(mode) if cache is not None else nullcontext():
                noise_pred = predict_noise(parts, sched, latents, t, text, fps_now, image_now, embeds,
                                           guidance if guided else None)
            if previews is not None and previews.due():
                previews.offer(i + 1, clean_estimate(sched, latents, noise_pred, t))
            latents = scheduler_step(sched, noise_pred, t, latents)
            if on_step is not None:
                sync_device(device)
                on_step(i + 1, len(timesteps), time.perf_counter() - start)
        _check_cancel(should_cancel)

    if output == "latent":
        return latents.float().cpu().numpy()

    # 8. Decode the latents to frames, a few frames per VAE call to bound memory.
    with _on_device(parts, parts.vae):
        video = decode_latents(parts, latents, decode_chunk_size)

    # 9. (1, 3, F, H, W) in [-1, 1] -> (F, H, W, 3) in [0, 1] (uint8 for "np").
    video = (video[0].permute(1, 0, 2, 3) / 2 + 0.5).clamp(0, 1)
    video = video.cpu().permute(0, 2, 3, 1).float().numpy()
    if output == "float":
        return video
    return (video * 255).round().astype(np.uint8)


# ---------------------------------------------------------------- the steps


def encode_prompt(parts: ModelParts, text: str) -> torch.Tensor:
    """(1, 77, dim): the text encoder's penultimate hidden state through its final layer norm."""
    tokens = parts.tokenizer(
        [text], padding="max_length", max_length=parts.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )
    encoder = parts.text_encoder
    attention_mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(parts.device)
    out = encoder(tokens.input_ids.to(parts.device), attention_mask=attention_mask, output_hidden_states=True)
    # transformers < 5 nests the layers under .text_model
    final_layer_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    embeds = final_layer_norm(out.hidden_states[-2])
    return embeds.to(dtype=encoder.dtype, device=parts.device)


def encode_image(parts: ModelParts, image: PIL.Image.Image, width: int) -> torch.Tensor:
    """(1, 1, dim) CLIP image embedding of a width x width centre crop, as I2VGen-XL was trained."""
    crop = center_crop_wide(image, width, width)
    size = parts.feature_extractor.crop_size
    crop = crop.resize((size["width"], size["height"]), PIL.Image.Resampling.BILINEAR)
    pixels = parts.feature_extractor(
        images=_to_tensor(crop), do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False,
        return_tensors="pt",
    ).pixel_values
    encoder = parts.image_encoder
    pixels = pixels.to(device=parts.device, dtype=next(encoder.parameters()).dtype)
    return encoder(pixels).image_embeds.unsqueeze(1)


def encode_image_latents(parts: ModelParts, image: PIL.Image.Image, width: int, height: int, frames: int,
                         dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """(1, 4, frames, h, w): the image's latent, then masks rising from 1/(F-1) to 1 for the later frames."""
    crop = center_crop_wide(image, width, height)
    pixels = _to_tensor(crop)
    pixels = (2.0 * pixels - 1.0).to(device=parts.device, dtype=dtype)
    dist = parts.vae.encode(pixels).latent_dist
    # latent_dist.sample() would ignore a generator passed to encode: draw the noise ourselves.
    latent = dist.mean + dist.std * _randn(dist.mean.shape, generator, like=dist.mean)
    latent = (latent * parts.vae.config.scaling_factor).unsqueeze(2)
    masks = [torch.ones_like(latent[:, :, :1]) * ((i + 1) / (frames - 1)) for i in range(frames - 1)]
    latents = torch.cat([latent, *masks], dim=2) if masks else latent
    return latents.contiguous()


def build_scheduler(config: dict, name: str):
    """A fresh scheduler from the model's stored config (fresh: multistep solvers keep state)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "dpmpp_2m":
        cls, extra = DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}
    elif name == "ddim":
        cls, extra = DDIMScheduler, {}
    else:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, not {name!r}")
    # Keep only keys this class takes, so from_config does not log about the other scheduler's settings.
    accepted = set(inspect.signature(cls.__init__).parameters)
    config = {k: v for k, v in config.items() if k in accepted or k.startswith("_")}
    return cls.from_config(config, **extra)


def predict_noise(parts: ModelParts, sched, latents: torch.Tensor, t: torch.Tensor, text_embeds: torch.Tensor,
                  fps_tensor: torch.Tensor, image_latents: torch.Tensor, image_embeds: torch.Tensor,
                  guidance: float | None) -> torch.Tensor:
    """One UNet call; with guidance, conditional and unconditional halves in one batch, then CFG."""
    model_input = torch.cat([latents] * 2) if guidance is not None else latents
    model_input = sched.scale_model_input(model_input, t)
    pred = parts.unet(
        model_input, t, encoder_hidden_states=text_embeds, fps=fps_tensor, image_latents=image_latents,
        image_embeddings=image_embeds, return_dict=False,
    )[0]
    if guidance is None:
        return pred
    uncond, cond = pred.chunk(2)
    return uncond + guidance * (cond - uncond)


def scheduler_step(sched, noise_pred: torch.Tensor, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """x_t -> x_t-1. Schedulers work on images, so frames fold into the batch for the step."""
    b, c, f, h, w = latents.shape
    latents = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    noise_pred = noise_pred.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    latents = sched.step(noise_pred, t, latents).prev_sample
    return latents[None, :].reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def decode_latents(parts: ModelParts, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(1, 4, F, h, w) latents -> (1, 3, F, H, W) float32 pixels in about [-1, 1]."""
    latents = 1 / parts.vae.config.scaling_factor * latents
    b, c, f, h, w = latents.shape
    latents = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    chunk_size = max(1, chunk_size)
    images = torch.cat([parts.vae.decode(latents[i:i + chunk_size]).sample
                        for i in range(0, latents.shape[0], chunk_size)])
    video = images[None, :].reshape((b, f, -1) + images.shape[2:]).permute(0, 2, 1, 3, 4)
    return video.float()


# ---------------------------------------------------------------- helpers


def center_crop_wide(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Scale (box filter) so the image covers width x height, then cut the centre: I2VGen-XL's own transform."""
    image = image.convert("RGB") if image.mode != "RGB" else image
    scale = min(image.width / width, image.height / height)
    image = image.resize((round(image.width // scale), round(image.height // scale)),
                         resample=PIL.Image.Resampling.BOX)
    x1 = (image.width - width) // 2
    y1 = (image.height - height) // 2
    return image.crop((x1, y1, x1 + width, y1 + height))


def vae_scale(parts: ModelParts) -> int:
    return 2 ** (len(parts.vae.config.block_out_channels) - 1)


def _to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]: a channels-last view, the layout diffusers' image processor gives (the
    convolution algorithm, and so the last bits of the result, depend on it)."""
    array = np.array(image).astype(np.float32) / 255.0
    return torch.from_numpy(array[None]).permute(0, 3, 1, 2)


def _randn(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Normal noise shaped `shape` with like's device and dtype. A CPU generator draws float32 on the CPU (the
    same numbers on every device); a device generator draws in place, like diffusers does with the global RNG."""
    if generator.device.type == "cpu":
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)


def _check_args(parts: ModelParts, scheduler: str, output: str, width: int, height: int, frames: int,
                steps: int) -> None:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, not {scheduler!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    scale = vae_scale(parts)
    if width % scale or height % scale or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive multiples of {scale}, not {width}x{height}")
    if frames < 1 or steps < 1:
        raise ValueError(f"frames and steps must be at least 1, not {frames} and {steps}")


def _check_cancel(should_cancel: Callable[[], bool] | None) -> None:
    if should_cancel is not None and should_cancel():
        raise RenderCancelled()


def sync_device(device: torch.device) -> None:
    # CUDA runs ahead of Python; wait so that progress times are real.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _on_device(parts: ModelParts, module: torch.nn.Module) -> Iterator[None]:
    """With low_vram, bring one network to the GPU for the duration of a stage."""
    if not parts.low_vram:
        yield
        return
    module.to(parts.device)
    try:
        yield
    finally:
        module.to("cpu")
