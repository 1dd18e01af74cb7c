"""Loading I2VGen-XL: the real model from a folder or the hub, a tiny random one for tests, a random full one
for GPU benchmarks. Importing this module imports torch, diffusers and transformers (seconds): the bot never
does, and the engine only once it has a job for the model."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from engine.errors import ModelError, first_line
from engine.families import I2VGEN_XL, LTX_VIDEO, family_of_model

if TYPE_CHECKING:
    from engine.render.ltx import LTXParts

ALLOW_CPU_FULL_ENV = "ENGINE_ALLOW_CPU_FULL"
# A UNet below this many parameters is a test-size model that runs fine on a CPU.
SMALL_UNET_PARAMS = 50_000_000
LOW_VRAM_BYTES = 12 * 2**30  # below this much GPU memory, "auto" low_vram turns on

# The scheduler config stored with ali-vilab/i2vgen-xl (scheduler/scheduler_config.json).
I2VGENXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


@dataclass
class ModelParts:
    unet: I2VGenXLUNet
    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    feature_extractor: CLIPImageProcessor
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    name: str
    # Models stay on the CPU and visit the GPU one at a time (cards with little memory).
    low_vram: bool = False
    family: ClassVar[str] = I2VGEN_XL

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "image_encoder": self.image_encoder,
                "text_encoder": self.text_encoder}

    def parameter_count(self) -> int:
        return sum(p.numel() for m in self.modules().values() for p in m.parameters())


# The networks of either family (engine/families.py): ModelParts for I2VGen-XL, LTXParts for LTX-Video.
Parts = Union[ModelParts, "LTXParts"]


# ---------------------------------------------------------------- configs


def tiny_configs() -> dict[str, Any]:
    """diffusers' own test-size I2VGen-XL, with a 4-block VAE so latents are 1/8 of the image like the real one."""
    return {
        "unet": dict(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=4, attention_head_dim=4, num_attention_heads=None, norm_num_groups=2,
        ),
        "vae": dict(
            block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4, sample_size=64, norm_num_groups=2, scaling_factor=0.18125,
        ),
        "text_encoder": CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=4, intermediate_size=16,
            layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2, vocab_size=1000,
            hidden_act="gelu", projection_dim=32,
        ),
        "image_encoder": CLIPVisionConfig(
            hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=1,
        ),
        "feature_extractor": dict(crop_size=32, size=32),
        "scheduler": dict(I2VGENXL_SCHEDULER_CONFIG),
    }


def full_configs() -> dict[str, Any]:
    """The architecture of ali-vilab/i2vgen-xl: UNet ~1.42B, ViT-H/14 image encoder, 24-layer OpenCLIP text
    encoder, the SD VAE."""
    return {
        "unet": dict(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=32, in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=1024, attention_head_dim=64, num_attention_heads=None, norm_num_groups=32,
        ),
        "vae": dict(
            block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4, sample_size=768, norm_num_groups=32, scaling_factor=0.18125,
        ),
        "text_encoder": CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=1024, intermediate_size=4096,
            num_attention_heads=16, num_hidden_layers=24, vocab_size=49408, max_position_embeddings=77,
            hidden_act="gelu", projection_dim=1024, layer_norm_eps=1e-05,
        ),
        "image_encoder": CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
            patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-05,
        ),
        "feature_extractor": dict(crop_size=224, size=224),
        "scheduler": dict(I2VGENXL_SCHEDULER_CONFIG),
    }


def build_modules(configs: dict[str, Any]) -> dict[str, torch.nn.Module]:
    """The four networks from configs, with the current default device and RNG."""
    return {
        "unet": I2VGenXLUNet(**configs["unet"]),
        "vae": AutoencoderKL(**configs["vae"]),
        "text_encoder": CLIPTextModel(configs["text_encoder"]),
        "image_encoder": CLIPVisionModelWithProjection(configs["image_encoder"]),
    }


def byte_level_tokenizer() -> CLIPTokenizer:
    """An offline CLIP tokenizer: every byte-level character is a token (no merges), so any text encodes."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in alphabet:
            vocab[ch + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


# ---------------------------------------------------------------- building


def build_tiny(seed: int = 0) -> ModelParts:
    """A random-weight test model; the same seed always gives the same weights. fp32 on the CPU."""
    configs = tiny_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = build_modules(configs)
    for module in modules.values():
        module.eval()
    return ModelParts(
        **modules,
        tokenizer=byte_level_tokenizer(),
        feature_extractor=CLIPImageProcessor(**configs["feature_extractor"]),
        scheduler_config=configs["scheduler"],
        device=torch.device("cpu"),
        dtype=torch.float32,
        name="tiny",
    )


def build_random_full(device: str | torch.device = "cuda") -> ModelParts:
    """Full-size I2VGen-XL with random weights in fp16, for GPU benchmarks without the download."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ModelError("The random full-size model needs a CUDA GPU (about 5 GB of weights in fp16).")
    configs = full_configs()
    # Initialise in fp32 on the GPU (fast, and the default init stays finite), then halve.
    with torch.device(device):
        modules = build_modules(configs)
    for module in modules.values():
        module.to(torch.float16).eval()
    return ModelParts(
        **modules,
        tokenizer=byte_level_tokenizer(),
        feature_extractor=CLIPImageProcessor(**configs["feature_extractor"]),
        scheduler_config=configs["scheduler"],
        device=device,
        dtype=torch.float16,
        name="random-full",
    )


def count_parameters_meta(configs: dict[str, Any]) -> dict[str, int]:
    """Parameter count of each network, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        modules = build_modules(configs)
    return {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}


# ---------------------------------------------------------------- saving and loading


def save_model(parts: ModelParts, folder: str | Path) -> Path:
    """Write the diffusers I2VGen-XL layout (loadable by load_model and by I2VGenXLPipeline.from_pretrained)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in parts.modules().items():
        module.save_pretrained(folder / name)
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    parts.feature_extractor.save_pretrained(folder / "feature_extractor")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(parts.scheduler_config, indent=2))
    (folder / "model_index.json").write_text(json.dumps(_model_index(), indent=2))
    return folder


def _model_index() -> dict[str, Any]:
    import diffusers

    return {
        "_class_name": "I2VGenXLPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "I2VGenXLUNet"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
    }


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelError(f"Unknown device {device!r}; use auto, cpu or cuda.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"Device {device!r} was asked for, but no CUDA GPU is available here.")
    return resolved


def load_model(spec: str, device: str = "auto", low_vram: bool | None = False) -> Parts:
    """spec: "tiny", "tiny-ltx", "random-full", "random-full-ltx", a local folder with a diffusers I2VGen-XL or
    LTX-Video layout, or a hub id (engine.families.family_of_model tells which). fp16 on CUDA (bf16 for
    LTX-Video), fp32 on CPU. low_vram keeps the networks on the CPU between uses; None decides by the card's
    memory."""
    dev = resolve_device(device)
    if low_vram is None:
        low_vram = dev.type == "cuda" and torch.cuda.get_device_properties(dev).total_memory < LOW_VRAM_BYTES
    if family_of_model(spec) == LTX_VIDEO:
        return _load_ltx(spec, dev, bool(low_vram))
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if spec == "tiny":
        parts = build_tiny()
    elif spec == "random-full":
        parts = build_random_full(dev)
    else:
        parts = _load_pretrained(spec, dev, dtype)
    return place(parts, dev, dtype, low_vram=low_vram and dev.type == "cuda")


def _load_ltx(spec: str, device: torch.device, low_vram: bool) -> LTXParts:
    from engine.render import ltx

    if spec == "tiny-ltx":
        parts = ltx.build_tiny_ltx()
    elif spec == "random-full-ltx":
        parts = ltx.build_random_full_ltx(device)
    else:
        folder = Path(spec).expanduser()
        if device.type != "cuda" and os.environ.get(ALLOW_CPU_FULL_ENV) != "1" and not folder.is_dir():
            raise ModelError(f"Model {spec} is full size and needs a CUDA GPU (set {ALLOW_CPU_FULL_ENV}=1 to run "
                             "it on the CPU anyway, very slowly).")
        parts = ltx.load_ltx(spec, device, {"local_files_only": True} if _offline() else {})
    return ltx.place_ltx(parts, device, low_vram and device.type == "cuda")


def place(parts: ModelParts, device: torch.device, dtype: torch.dtype, low_vram: bool = False) -> ModelParts:
    """Cast to dtype and move to the device; with low_vram the networks wait on the CPU."""
    home = torch.device("cpu") if low_vram else device
    for module in parts.modules().values():
        module.to(home)
        if module.dtype != dtype:  # diffusers logs a notice on every dtype cast, wanted or not
            module.to(dtype)
    parts.device, parts.dtype, parts.low_vram = device, dtype, low_vram
    return parts


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") != 1


def _load_pretrained(spec: str, device: torch.device, dtype: torch.dtype) -> ModelParts:
    source, variant, small = _locate(spec, device)
    if device.type != "cuda" and not small and os.environ.get(ALLOW_CPU_FULL_ENV) != "1":
        raise ModelError(
            f"Model {spec} is full size and needs a CUDA GPU (set {ALLOW_CPU_FULL_ENV}=1 to run it on the CPU "
            "anyway, very slowly).")
    hub = {"local_files_only": True} if _offline() else {}
    try:
        with warnings.catch_warnings():
            # diffusers 0.42 still passes an argument huggingface_hub 1.x+ deprecated; nothing for us to fix.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
            return _load_components(source, variant, dtype, hub, name=spec)
    except (OSError, ValueError, KeyError) as exc:
        if hub and source == spec:
            raise ModelError(f"Cannot load model {spec}: no such folder, and not in the local Hugging Face cache "
                             "while HF_HUB_OFFLINE is set.") from None
        raise ModelError(f"Cannot load model {spec}: {first_line(exc)}") from None


def _locate(spec: str, device: torch.device) -> tuple[str, str | None, bool]:
    """(source for from_pretrained, weights variant, small enough for a CPU) for a folder or a hub id."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not (folder / "unet" / "config.json").is_file():
            raise ModelError(f"Model folder {spec} has no unet/config.json: not a saved I2VGen-XL.")
        try:
            small = _unet_is_small(str(folder), {})
        except (OSError, ValueError, TypeError) as exc:
            raise ModelError(f"Model folder {spec} has a bad unet/config.json: {first_line(exc)}") from None
        return str(folder), None, small
    if folder.exists():
        raise ModelError(f"Model path {spec} is a file; give the folder that holds unet/, vae/ and the rest.")
    if _looks_like_path(spec):
        raise ModelError(f"Model folder not found: {spec}")
    # A hub id names a full-size model (checking would mean a download); fp16 weights on a GPU.
    return spec, ("fp16" if device.type == "cuda" else None), False


def _unet_is_small(source: str, hub: dict[str, Any]) -> bool:
    config = I2VGenXLUNet.load_config(source, subfolder="unet", **hub)
    with torch.device("meta"):
        unet = I2VGenXLUNet.from_config(config)
    return sum(p.numel() for p in unet.parameters()) < SMALL_UNET_PARAMS


def _load_components(source: str, variant: str | None, dtype: torch.dtype, hub: dict[str, Any],
                     name: str) -> ModelParts:
    def diffusers_model(cls, sub):
        return cls.from_pretrained(source, subfolder=sub, torch_dtype=dtype, variant=variant, **hub)

    def transformers_model(cls, sub):
        try:
            return cls.from_pretrained(source, subfolder=sub, variant=variant, **_dtype_kwarg(dtype), **hub)
        except OSError:
            if variant is None:
                raise
            # Some snapshots hold only the full-precision files for the encoders.
            return cls.from_pretrained(source, subfolder=sub, **_dtype_kwarg(dtype), **hub)

    scheduler_config = dict(DDIMScheduler.load_config(source, subfolder="scheduler", **hub))
    scheduler_config.pop("_use_default_values", None)
    parts = ModelParts(
        unet=diffusers_model(I2VGenXLUNet, "unet"),
        vae=diffusers_model(AutoencoderKL, "vae"),
        image_encoder=transformers_model(CLIPVisionModelWithProjection, "image_encoder"),
        text_encoder=transformers_model(CLIPTextModel, "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **hub),
        feature_extractor=CLIPImageProcessor.from_pretrained(source, subfolder="feature_extractor", **hub),
        scheduler_config=scheduler_config,
        device=torch.device("cpu"),
        dtype=dtype,
        name=name,
    )
    for module in parts.modules().values():
        module.eval()
    return parts


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # transformers renamed torch_dtype to dtype in 4.56.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


