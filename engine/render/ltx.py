"""The LTX-Video family: loading (a folder or hub id, a tiny random model for tests, a random full-size one for
GPU benchmarks) and sampling through diffusers' LTXImageToVideoPipeline.

We drive diffusers' own pipeline rather than a loop of ours: its `callback_on_step_end` gives progress,
previews and cancellation (an exception raised there leaves the loop at a step boundary, before the VAE
decode), so a render is the pipeline's output exactly. LTX's VAE compresses 32x in space and 8x in time: sides
are multiples of 32, clips have 8k+1 frames, and a preview has one frame per latent frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch

from engine.errors import ModelError, first_line
from engine.families import LTX_VIDEO

SPATIAL = 32     # the VAE's spatial compression (and so the side multiple)
TEMPORAL = 8     # its temporal compression: frames are 8k + 1
# The distilled checkpoints are decoded with a little noise at this timestep (diffusers' LTX examples); a VAE
# without timestep conditioning ignores both.
DECODE_TIMESTEP = 0.05
DECODE_NOISE_SCALE = 0.025
MAX_PROMPT_TOKENS = 128

# The scheduler config stored with Lightricks/LTX-Video (scheduler/scheduler_config.json).
LTX_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 1024, "base_shift": 0.95, "max_image_seq_len": 4096, "max_shift": 2.05,
    "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.1, "use_dynamic_shifting": True,
}


@dataclass
class LTXParts:
    pipe: Any                     # diffusers.LTXImageToVideoPipeline
    device: torch.device
    dtype: torch.dtype
    name: str
    low_vram: bool = False
    family: ClassVar[str] = LTX_VIDEO

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.pipe.transformer, "vae": self.pipe.vae, "text_encoder": self.pipe.text_encoder}

    def parameter_count(self) -> int:
        return sum(p.numel() for m in self.modules().values() for p in m.parameters())


# ---------------------------------------------------------------- building


def tiny_ltx_configs() -> dict[str, Any]:
    """A test-size LTX-Video: the real VAE's compression (patch 4, three space-time downsamplings: 32x, 8x)
    with 8 channels, a one-layer transformer, a two-layer T5."""
    from transformers import T5Config

    return {
        "transformer": dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
                            attention_head_dim=8, cross_attention_dim=16, num_layers=1, caption_channels=16),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
                    decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                    decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
                    decoder_spatio_temporal_scaling=(True, True, True, False),
                    decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
                    timestep_conditioning=False, patch_size=4, patch_size_t=1, encoder_causal=True,
                    decoder_causal=False),
        "text_encoder": T5Config(vocab_size=len(_byte_vocab()), d_model=16, d_ff=32, d_kv=8, num_layers=2,
                                 num_heads=2, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0),
    }


def full_ltx_configs() -> dict[str, Any]:
    """LTX-Video 2B (0.9.x): a 28-layer transformer, the 128-channel video VAE, T5-XXL's encoder."""
    from transformers import T5Config

    return {
        "transformer": dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1,
                            num_attention_heads=32, attention_head_dim=64, cross_attention_dim=2048, num_layers=28,
                            caption_channels=4096),
        "vae": dict(latent_channels=128, block_out_channels=(128, 256, 512, 512),
                    decoder_block_out_channels=(128, 256, 512, 512), layers_per_block=(4, 3, 3, 3, 4),
                    decoder_layers_per_block=(4, 3, 3, 3, 4), spatio_temporal_scaling=(True, True, True, False),
                    decoder_spatio_temporal_scaling=(True, True, True, False), timestep_conditioning=True,
                    patch_size=4, patch_size_t=1),
        "text_encoder": T5Config(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
                                 feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0),
    }


def _byte_vocab() -> dict[str, int]:
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    return vocab


def byte_level_t5_tokenizer():
    """An offline stand-in for T5's tokenizer: one token per byte-level character, '</s>' at the end, '<pad>'
    after, so any text encodes (the real sentencepiece model is a download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab=_byte_vocab(), merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=MAX_PROMPT_TOKENS)


def _pipeline(configs: dict[str, Any]):
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5EncoderModel

    pipe = LTXImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER_CONFIG),
        vae=AutoencoderKLLTXVideo(**configs["vae"]),
        text_encoder=T5EncoderModel(configs["text_encoder"]),
        tokenizer=byte_level_t5_tokenizer(),
        transformer=LTXVideoTransformer3DModel(**configs["transformer"]),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_ltx(seed: int = 0) -> LTXParts:
    """A random-weight LTX-Video for tests: the same seed always gives the same weights. fp32 on the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _pipeline(tiny_ltx_configs())
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.eval()   # T5's dropout would make every render different
    return LTXParts(pipe, torch.device("cpu"), torch.float32, "tiny-ltx")


def build_random_full_ltx(device: str | torch.device = "cuda") -> LTXParts:
    """Full-size LTX-Video with random weights in bf16, for GPU benchmarks without the download. Built on the
    meta device and materialised on the GPU: initialising a T5-XXL on a CPU takes minutes."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ModelError("The random full-size LTX-Video needs a CUDA GPU (about 20 GB of weights in bf16).")
    with torch.device("meta"):
        pipe = _pipeline(full_ltx_configs())
    generator = torch.Generator(device).manual_seed(0)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.to_empty(device=device)
        _random_init(module, generator)
        module.to(torch.bfloat16).eval()
    pipe.vae.register_buffer("latents_mean", torch.zeros(128, device=device), persistent=False)
    pipe.vae.register_buffer("latents_std", torch.ones(128, device=device), persistent=False)
    return LTXParts(pipe, device, torch.bfloat16, "random-full-ltx")


@torch.no_grad()
def _random_init(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Finite activations from random weights: norms' scales 1, biases 0, the rest small normal noise."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.dim() <= 1:
            tensor.fill_(0.0 if name.endswith("bias") or "mean" in name else 1.0)
        else:
            tensor.normal_(0.0, 0.02, generator=generator)


# ---------------------------------------------------------------- saving and loading


def save_ltx(parts: LTXParts, folder: str | Path) -> Path:
    """diffusers' LTX-Video layout (model_index.json names LTXImageToVideoPipeline)."""
    folder = Path(folder)
    parts.pipe.save_pretrained(folder)
    return folder


def load_ltx(spec: str, device: torch.device, hub: dict[str, Any]) -> LTXParts:
    """A folder or hub id holding any LTX-Video pipeline layout (text-to-video, image-to-video or condition:
    the networks are the same). bf16 on CUDA, as LTX-Video is trained; fp32 on the CPU."""
    from diffusers import LTXImageToVideoPipeline

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        pipe = LTXImageToVideoPipeline.from_pretrained(spec, torch_dtype=dtype, **hub)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"Cannot load LTX-Video model {spec}: {first_line(exc)}") from None
    pipe.set_progress_bar_config(disable=True)
    return LTXParts(pipe, torch.device("cpu"), dtype, spec)


def place_ltx(parts: LTXParts, device: torch.device, low_vram: bool = False) -> LTXParts:
    """Move to the device; with low_vram, diffusers' model offload brings each network over when it runs."""
    if low_vram:
        parts.pipe.enable_model_cpu_offload(device=device)
    else:
        parts.pipe.to(device)
    parts.device, parts.low_vram = device, low_vram
    return parts


# ---------------------------------------------------------------- sampling


def check_ltx_size(width: int, height: int, frames: int) -> None:
    if width % SPATIAL or height % SPATIAL or width <= 0 or height <= 0:
        raise ValueError(f"LTX-Video sides must be positive multiples of {SPATIAL}, not {width}x{height}")
    if frames < 1 or (frames - 1) % TEMPORAL:
        raise ValueError(f"LTX-Video clips have 8k+1 frames (9, 17, 25, ...), not {frames}")


def pipeline_kwargs(image: PIL.Image.Image, prompt: str, negative_prompt: str, *, steps: int, guidance: float,
                    frames: int, width: int, height: int, seed: int, fps: int) -> dict[str, Any]:
    """The pipeline call that renders this request: the same arguments give the same clip."""
    return dict(image=image, prompt=prompt, negative_prompt=negative_prompt or None, width=width, height=height,
                num_frames=frames, frame_rate=fps, num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(seed), decode_timestep=DECODE_TIMESTEP,
                decode_noise_scale=DECODE_NOISE_SCALE, max_sequence_length=MAX_PROMPT_TOKENS, output_type="np")


@torch.no_grad()
def sample_ltx(
    parts: LTXParts,
    image: PIL.Image.Image,
    prompt: str,
    negative_prompt: str = "",
    *,
    steps: int,
    guidance: float,
    frames: int,
    width: int,
    height: int,
    seed: int,
    fps: int = 24,
    on_step: Callable[[int, int, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    step_hook: Callable[[int], None] | None = None,
    previews: Any = None,
    output: str = "np",
    **_ignored: Any,
) -> np.ndarray:
    """Render like engine.render.sampler.sample does for I2VGen-XL (the same hooks, steps from 1), through
    diffusers' pipeline. output "np": uint8 (frames, height, width, 3); "float": float32 in [0, 1]."""
    from engine.render.sampler import RenderCancelled, sync_device

    check_ltx_size(width, height, frames)
    if output not in ("np", "float"):
        raise ValueError(f"output must be np or float for LTX-Video, not {output!r}")
    pipe = parts.pipe
    if should_cancel is not None and should_cancel():
        raise RenderCancelled()
    velocity: dict[str, torch.Tensor] = {}
    hook = pipe.transformer.register_forward_hook(lambda _m, _a, out: velocity.__setitem__("v", out[0]))
    start = time.perf_counter()

    def step_end(_pipe: Any, i: int, _t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        step = i + 1
        if previews is not None and previews.due():
            previews.offer_frames(step, preview_frames(pipe, tensors["latents"], velocity["v"], i, guidance,
                                                       width, height, frames))
        if on_step is not None:
            sync_device(parts.device)
            on_step(step, steps, time.perf_counter() - start)
        if should_cancel is not None and should_cancel():
            raise RenderCancelled()   # out of the pipeline at once: no decode of an unwanted clip
        if step_hook is not None and step < steps:
            step_hook(step + 1)
        return {}

    try:
        if step_hook is not None:
            step_hook(1)
        video = pipe(**pipeline_kwargs(image, prompt, negative_prompt, steps=steps, guidance=guidance,
                                       frames=frames, width=width, height=height, seed=seed, fps=fps),
                     callback_on_step_end=step_end).frames[0]
    finally:
        hook.remove()
    video = np.asarray(video, dtype=np.float32)
    if output == "float":
        return video
    return (video * 255).round().astype(np.uint8)


def preview_frames(pipe: Any, latents: torch.Tensor, velocity: torch.Tensor, i: int, guidance: float,
                   width: int, height: int, frames: int) -> np.ndarray:
    """uint8 (latent frames, h, w, 3): the clean estimate after step i+1 (flow matching: x0 = x - sigma * v),
    decoded at half size by the VAE, one picture per latent frame."""
    v = velocity.float()
    if guidance > 1.0 and v.shape[0] == 2 * latents.shape[0]:
        uncond, cond = v.chunk(2)
        v = uncond + guidance * (cond - uncond)
    sigma = float(pipe.scheduler.sigmas[i + 1])
    latent_frames = (frames - 1) // pipe.vae_temporal_compression_ratio + 1
    h, w = height // pipe.vae_spatial_compression_ratio, width // pipe.vae_spatial_compression_ratio
    patch, patch_t = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
    x = pipe._unpack_latents(latents.float(), latent_frames, h, w, patch, patch_t)
    v = pipe._unpack_latents(v, latent_frames, h, w, patch, patch_t)
    x0 = torch.cat([x[:, :, :1], x[:, :, 1:] - sigma * v[:, :, 1:]], dim=2)   # frame 0 is the photo itself
    x0 = pipe._denormalize_latents(x0, pipe.vae.latents_mean, pipe.vae.latents_std, pipe.vae.config.scaling_factor)
    if h >= 8 and w >= 8:   # half size: a quarter of the decode's work, and a preview is small anyway
        x0 = torch.nn.functional.interpolate(x0, size=(latent_frames, h // 2, w // 2), mode="trilinear")
    x0 = x0.to(pipe.vae.dtype)
    timestep = None
    if pipe.vae.config.timestep_conditioning:
        timestep = torch.tensor([DECODE_TIMESTEP], device=x0.device, dtype=x0.dtype)
    video = pipe.vae.decode(x0, timestep, return_dict=False)[0]          # (1, 3, F, H, W) in about [-1, 1]
    picked = video[0, :, ::pipe.vae_temporal_compression_ratio].permute(1, 2, 3, 0)
    return ((picked.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
