"""The fast path for a GPU: fused attention projections, torch.compile of the UNet with a persistent compile
cache, a warm-up of every aspect bucket at start-up, and a VAE decode chunk sized to a memory budget.

Nothing on by default changes a render beyond fp16 rounding. fp8 linears (torchao) change it more: they stay
off for every preset unless `[engine] fp8` is set, and a preset with `fp8 = true` (turbo) renders through a
float8 twin of the UNet where the card has float8 (the bench reports the deviation).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.config import EngineConfig
from engine.render.model import ModelParts, Parts

log = logging.getLogger("engine.render.fastpath")

# Measured on an H200: 99 s to compile one bucket from an empty cache, 130 ms a step after. max-autotune's
# first compile was still running at the end of its time: opt in with compile_mode or the variable below.
COMPILE_MODE = "default"
GRAPHS_MODE = "reduce-overhead"            # CUDA graphs: every warmed shape gets its own captured graph
COMPILE_CACHE_DIR = "compile-cache"        # under the data folder
RECOMPILE_LIMIT = 64                       # compiled shapes kept per function (torch's default of 8 is too few)

# VAE decode activations, measured on an H100 in fp16 at 512x512 (16 frames): peak 5.3 GiB decoding 1 frame
# at a time, 9.5 GiB by 8, 14.2 GiB by 16, with ~4.6 GiB of weights resident. So ~0.6 GiB per frame decoded
# at once plus ~0.06 GiB per call; both scale with the pixel count.
DECODE_GIB_PER_FRAME = 0.6
DECODE_GIB_FIXED = 0.06
DECODE_REFERENCE_PIXELS = 512 * 512


@dataclass(frozen=True)
class FastPathOptions:
    compile: bool
    cuda_graphs: bool
    channels_last: bool
    fuse_qkv: bool
    cache_dir: Path | None
    fp8: bool = False
    compile_vae: bool = False   # the decoder is ~0.2 s of a render: not worth its compile time by default
    mode: str = ""              # torch.compile mode; "" picks COMPILE_MODE, or GRAPHS_MODE with cuda_graphs
    backend: str = "inductor"   # "eager" runs the same graph capture without code generation (tests)
    # One compiled graph for every bucket (height and width symbolic) instead of one per bucket: a start-up
    # traces the UNet once instead of once per bucket, for somewhat less specialised kernels.
    dynamic_hw: bool = False

    @property
    def compile_mode(self) -> str:
        return self.mode or (GRAPHS_MODE if self.cuda_graphs else COMPILE_MODE)


def _auto(value: Any, cuda: bool) -> bool:
    """"auto" (or None) means on for CUDA and off for the CPU; a bool is taken as is."""
    if isinstance(value, bool):
        return value
    if value is None or str(value).strip().lower() == "auto":
        return cuda
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def options_from_config(engine_cfg: EngineConfig, device: str | torch.device, data_dir: str | Path
                        ) -> FastPathOptions:
    """The fast path from [engine] settings: compile and fused QKV "auto" = on for CUDA, off for the CPU.
    CUDA graphs, channels-last, fp8 and the VAE compile stay off unless set."""
    cuda = torch.device(device).type == "cuda"
    compile_ = _auto(engine_cfg.compile, cuda)
    return FastPathOptions(
        compile=compile_,
        # The profile shows the launch queue full (GPU bound): graphs would save little and cost memory.
        cuda_graphs=compile_ and cuda and _auto(engine_cfg.cuda_graphs, cuda),
        channels_last=_auto(engine_cfg.channels_last, cuda),
        fuse_qkv=_auto(engine_cfg.fuse_qkv, cuda),
        cache_dir=(Path(data_dir) / COMPILE_CACHE_DIR / compile_cache_key(torch.device(device))
                   if compile_ else None),
        fp8=_auto(engine_cfg.fp8, cuda),
        compile_vae=compile_ and _auto(engine_cfg.compile_vae, cuda),
        mode=engine_cfg.compile_mode,
        backend=engine_cfg.compile_backend or "inductor",
        dynamic_hw=_auto(engine_cfg.compile_dynamic_hw, cuda),
    )


def compile_cache_key(device: torch.device) -> str:
    """The compile cache folder's name: torch, Triton and the card (name and compute capability), so workers
    of different kinds sharing a data folder keep apart."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    if device.type == "cuda" and torch.cuda.is_available():
        capability = "".join(map(str, torch.cuda.get_device_capability(device)))
        card = f"{torch.cuda.get_device_name(device)}-sm{capability}"
    else:
        card = device.type
    key = f"torch{torch.__version__}-triton{triton_version}-{card}"
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in key)


# ---------------------------------------------------------------- building


def accelerate(parts: Parts, options: FastPathOptions) -> Parts:
    """Apply the options. Fusing, fp8 and channels-last change the networks in place; the returned parts run
    the UNet (and with compile_vae the VAE decoder) through a compiled twin once warm_up has seen a shape.
    LTX-Video's transformer gets the compiled twin only (the other options are I2VGen-XL's)."""
    if not isinstance(parts, ModelParts):
        if options.compile:
            _prepare_compile(options)
            pipe = parts.pipe
            if not isinstance(pipe.transformer, WarmCompiled):
                pipe.transformer = WarmCompiled(pipe.transformer, options)
        return parts
    if options.fuse_qkv:
        fuse_qkv(parts.unet)
    if options.fp8:
        quantize_fp8(parts.unet)
    if options.channels_last:
        to_channels_last(parts.unet)
        to_channels_last(parts.vae)
    if not options.compile:
        return parts
    _prepare_compile(options)
    unet = parts.unet if isinstance(parts.unet, WarmCompiled) else WarmCompiled(parts.unet, options)
    if options.compile_vae and not isinstance(parts.vae.decoder, WarmCompiled):
        parts.vae.decoder = WarmCompiled(parts.vae.decoder, options)
    return dataclasses.replace(parts, unet=unet)


def _prepare_compile(options: FastPathOptions) -> None:
    if options.backend == "inductor":
        configure_compile_cache(options.cache_dir)
    _raise_recompile_limit()


def decode_chunk_policy(parts: Parts, engine_cfg: EngineConfig) -> Callable[[int, int, int], int] | None:
    """On CUDA, frames decoded at once: within vae_memory_budget_gib and at most decode_chunk_size.
    None on the CPU (the renderer's fixed decode_chunk_size) and for LTX-Video (its pipeline decodes)."""
    if parts.device.type != "cuda" or not isinstance(parts, ModelParts):
        return None
    budget = float(engine_cfg.vae_memory_budget_gib)
    cap = max(1, int(engine_cfg.decode_chunk_size))
    return lambda width, height, frames: min(cap, decode_chunk_for(width, height, frames, budget))


def decode_chunk_for(width: int, height: int, frames: int, budget_gib: float) -> int:
    """Frames per VAE decode call so that one call's activations stay within budget_gib, in chunks as even as
    possible (16 frames with room for 6 -> 6, 6, 4). At least 1 even when one frame is over budget."""
    if frames < 1:
        raise ValueError(f"frames must be at least 1, not {frames}")
    scale = width * height / DECODE_REFERENCE_PIXELS
    room = (budget_gib - DECODE_GIB_FIXED * scale) / (DECODE_GIB_PER_FRAME * scale)
    limit = max(1, min(frames, math.floor(room)))
    return math.ceil(frames / math.ceil(frames / limit))


def decode_gib_estimate(width: int, height: int, chunk: int) -> float:
    """The activation memory decode_chunk_for assumes for one decode call of `chunk` frames."""
    scale = width * height / DECODE_REFERENCE_PIXELS
    return (DECODE_GIB_FIXED + DECODE_GIB_PER_FRAME * chunk) * scale


# ---------------------------------------------------------------- fused projections, fp8, layout


def fuse_qkv(unet: torch.nn.Module) -> int:
    """One matmul for q, k and v in self-attention and for k and v in cross-attention (diffusers'
    fuse_qkv_projections), then drop the unfused copies so the weights are not held twice. Returns the
    number of attention layers fused; 0 when already fused."""
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    if not layers or all(isinstance(m.processor, FusedAttnProcessor2_0) for m in layers):
        return 0
    unet.fuse_qkv_projections()
    unet.original_attn_processors = None  # the unfused weights are gone below: no way back
    for attn in layers:
        unused = ("to_k", "to_v") if attn.is_cross_attention else ("to_q", "to_k", "to_v")
        for name in unused:
            delattr(attn, name)
    return len(layers)


def fp8_unavailable(device: torch.device) -> str:
    """Why torchao's float8 linears cannot run on device; "" when they can (a CUDA card of compute
    capability 8.9 or newer, Ada or Hopper, with torchao installed)."""
    if device.type != "cuda":
        return "fp8 needs a CUDA card of compute capability 8.9 or newer"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return f"fp8 needs compute capability 8.9 or newer; this card has {capability[0]}.{capability[1]}"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "fp8 needs torchao: pip install -e '.[gpu]'"
    return ""


def quantize_fp8(module: torch.nn.Module) -> None:
    """torchao's dynamic float8 quantisation (weights and activations in e4m3, one scale per row) of every
    Linear whose sides are multiples of 16, as its kernels need. About twice fp16's matmul throughput on
    Hopper; not exact."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def fits(child: torch.nn.Module, _name: str) -> bool:
        return (type(child) is torch.nn.Linear and child.in_features % 16 == 0
                and child.out_features % 16 == 0)

    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fits)


def fp8_twin(unet: torch.nn.Module) -> torch.nn.Module:
    """A float8 copy of unet for the presets that ask for fp8, so the exact presets keep the original."""
    if "_deep_cache" in unet.__dict__:
        raise RuntimeError("make the fp8 twin before installing the deep cache")
    twin = copy.deepcopy(unet)
    quantize_fp8(twin)
    return twin


def to_channels_last(module: torch.nn.Module, memory_format: str = "channels_last") -> None:
    """4-d weights to channels_last, 5-d ones to channels_last_3d (nn.Module.to refuses 5-d channels_last);
    memory_format="contiguous" goes back."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.dim() in formats:
            fmt = torch.contiguous_format if memory_format == "contiguous" else formats[tensor.dim()]
            tensor.data = tensor.data.contiguous(memory_format=fmt)


# ---------------------------------------------------------------- compiling


def configure_compile_cache(cache_dir: Path | None) -> None:
    """Keep inductor's FX graph cache and AOTAutograd cache on disk under cache_dir, so a restart compiles in
    seconds, not minutes. Set before the first compile; the environment also reaches compile workers."""
    if cache_dir is not None:
        cache_dir = Path(cache_dir).absolute()
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)  # Triton's cache follows unless set
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def _raise_recompile_limit() -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))


def input_key(args: tuple, kwargs: dict[str, Any]) -> tuple:
    """What tells compiled code apart: shape, dtype and device of every tensor argument."""
    items = [*enumerate(args), *sorted(kwargs.items())]
    return tuple((name, tuple(v.shape), v.dtype, v.device.type)
                 for name, v in items if isinstance(v, torch.Tensor))


class WarmCompiled(torch.nn.Module):
    """A network and its torch.compile'd twin (the same parameters). Inputs shaped like one seen while
    learning (warm-up) run compiled; any other shape runs eagerly, since compiling it in the middle of a job
    would stall that job for minutes. Attributes the network has (config, dtype...) read through."""

    def __init__(self, module: torch.nn.Module, options: FastPathOptions):
        super().__init__()
        self.module = module
        kwargs: dict[str, Any] = {"dynamic": False, "backend": options.backend}
        if options.backend == "inductor":
            kwargs["mode"] = options.compile_mode
        # Kept out of the module tree: its parameters are self.module's.
        self.__dict__["compiled"] = torch.compile(module, **kwargs)
        self.__dict__["warm_keys"] = set()
        self.__dict__["calls"] = {"compiled": 0, "eager": 0}
        self.cuda_graphs = options.cuda_graphs and options.compile_mode in (GRAPHS_MODE, "max-autotune")
        self.dynamic_hw = options.dynamic_hw
        self.learning = False

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module" or "module" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["module"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        key = input_key(args, kwargs)
        if self.learning:
            self.warm_keys.add(key)
            if self.dynamic_hw:
                _mark_height_width_dynamic(args, kwargs)
        elif key not in self.warm_keys:
            self.calls["eager"] += 1
            return self.module(*args, **kwargs)
        self.calls["compiled"] += 1
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with nullcontext() if self.learning else _no_new_compiles():
            return self.compiled(*args, **kwargs)


def _mark_height_width_dynamic(args: tuple, kwargs: dict[str, Any]) -> None:
    """The last two dims of image-like inputs (UNet latents B,C,F,H,W; decoder latents B,C,H,W) symbolic."""
    for value in [*args, *kwargs.values()]:
        if isinstance(value, torch.Tensor) and value.dim() >= 4:
            torch._dynamo.maybe_mark_dynamic(value, value.dim() - 2)
            torch._dynamo.maybe_mark_dynamic(value, value.dim() - 1)


@contextmanager
def _no_new_compiles() -> Iterator[None]:
    """A warm shape whose guards still fail (an unusual flag) runs eagerly rather than compiling."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("eager_on_recompile"):
        yield


def compiled_modules(parts: Parts) -> list[WarmCompiled]:
    if isinstance(parts, ModelParts):
        found = [parts.unet, getattr(parts.vae, "decoder", None)]
    else:
        found = [parts.pipe.transformer]
    return [m for m in found if isinstance(m, WarmCompiled)]


@contextmanager
def learning(parts: Parts) -> Iterator[list[WarmCompiled]]:
    """Within this block, compiled networks compile (and from then on run compiled) every shape they see."""
    modules = compiled_modules(parts)
    for m in modules:
        m.learning = True
    try:
        yield modules
    finally:
        for m in modules:
            m.learning = False
