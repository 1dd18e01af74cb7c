"""The fast path for a GPU: fused attention projections, torch.compile of the UNet with a persistent compile
cache, a warm-up of every aspect bucket at start-up, and a VAE decode chunk sized to a memory budget.

Nothing on by default changes a render beyond fp16 rounding. fp8 linears change it more and stay off behind a
flag (the bench reports their deviation); block caching is a flag without an implementation yet.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from engine.config import EngineConfig
from engine.errors import first_line
from engine.presets import Preset
from engine.render.model import ModelParts
from engine.render.renderer import Renderer
from engine.render.sampler import sample

log = logging.getLogger("engine.render.fastpath")

# Measured on an H200: 99 s to compile one bucket from an empty cache, 130 ms a step after. max-autotune's
# first compile was still running at the end of its time: opt in with compile_mode or the variable below.
COMPILE_MODE = "default"
GRAPHS_MODE = "reduce-overhead"            # CUDA graphs: every warmed shape gets its own captured graph
COMPILE_CACHE_DIR = "compile-cache"        # under the data folder
RECOMPILE_LIMIT = 64                       # compiled shapes kept per function (torch's default of 8 is too few)
WARM_UP_STEPS = 2

# VAE decode activations, measured on an H100 in fp16 at 512x512 (16 frames): peak 5.3 GiB decoding 1 frame
# at a time, 9.5 GiB by 8, 14.2 GiB by 16, with ~4.6 GiB of weights resident. So ~0.6 GiB per frame decoded
# at once plus ~0.06 GiB per call; both scale with the pixel count.
DECODE_GIB_PER_FRAME = 0.6
DECODE_GIB_FIXED = 0.06
DECODE_REFERENCE_PIXELS = 512 * 512

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8 e4m3fn


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
        cache_dir=Path(data_dir) / COMPILE_CACHE_DIR if compile_ else None,
        fp8=_auto(engine_cfg.fp8, cuda),
        compile_vae=compile_ and _auto(engine_cfg.compile_vae, cuda),
        mode=engine_cfg.compile_mode,
        backend=engine_cfg.compile_backend or "inductor",
        dynamic_hw=_auto(engine_cfg.compile_dynamic_hw, cuda),
    )


# ---------------------------------------------------------------- building


def accelerate(parts: ModelParts, options: FastPathOptions) -> ModelParts:
    """Apply the options. Fusing, fp8 and channels-last change the networks in place; the returned parts run
    the UNet (and with compile_vae the VAE decoder) through a compiled twin once warm_up has seen a shape."""
    if options.fuse_qkv:
        fuse_qkv(parts.unet)
    if options.fp8:
        quantize_linears_fp8(parts.unet)
    if options.channels_last:
        to_channels_last(parts.unet)
        to_channels_last(parts.vae)
    if not options.compile:
        return parts
    if options.backend == "inductor":
        configure_compile_cache(options.cache_dir)
    _raise_recompile_limit()
    unet = parts.unet if isinstance(parts.unet, WarmCompiled) else WarmCompiled(parts.unet, options)
    if options.compile_vae and not isinstance(parts.vae.decoder, WarmCompiled):
        parts.vae.decoder = WarmCompiled(parts.vae.decoder, options)
    return dataclasses.replace(parts, unet=unet)


def build_renderer(parts: ModelParts, engine_cfg: EngineConfig, presets: dict[str, Preset], data_dir: str | Path,
                   warm: bool | Iterable[str] = True) -> Renderer:
    """The worker's renderer: the fast path from the config, a VAE decode chunk from the memory budget on
    CUDA, and (when compiled) a warm-up of every bucket of the presets users pick, logged per bucket."""
    options = options_from_config(engine_cfg, parts.device, data_dir)
    if parts.low_vram and options.cuda_graphs:
        # Offloading moves the weights between calls; captured graphs would point at the old addresses.
        options = dataclasses.replace(options, cuda_graphs=False)
    fast = accelerate(parts, options)
    renderer = Renderer(fast, decode_chunk_size=engine_cfg.decode_chunk_size,
                        decode_chunk=decode_chunk_policy(fast, engine_cfg))
    if options.compile and warm:
        enabled = list(warm) if not isinstance(warm, bool) else warm_presets(presets, engine_cfg)
        warm_up_or_fall_back(renderer, presets, enabled, options.cache_dir)
    return renderer


def warm_up_or_fall_back(renderer: Renderer, presets: dict[str, Preset], enabled: list[str],
                         cache_dir: Path | None) -> None:
    """Warm up; if compiling fails, empty the compile cache and try once more (a worker killed mid-compile
    can leave a truncated kernel there, which fails every later start); if it fails again, render eagerly:
    slower, but the queue keeps moving."""
    for attempt in (1, 2):
        t0 = time.perf_counter()
        try:
            times = warm_up(renderer, presets, enabled)
        except Exception as exc:
            log.warning("compile warm-up failed (attempt %d): %s: %s", attempt, type(exc).__name__,
                        first_line(exc))
            for module in compiled_modules(renderer.parts):
                module.warm_keys.clear()   # shapes never warmed run eagerly
            torch._dynamo.reset()
            if attempt == 1 and cache_dir is not None:
                shutil.rmtree(cache_dir, ignore_errors=True)
                configure_compile_cache(cache_dir)
            continue
        for bucket, seconds in times.items():
            log.info("warm-up %s: %.1f s", bucket, seconds)
        log.info("warm-up of %d buckets done in %.1f s (compile cache %s)", len(times),
                 time.perf_counter() - t0, cache_dir)
        return
    log.error("compiling failed twice: rendering without the compiled UNet")


def warm_presets(presets: dict[str, Preset], engine_cfg: EngineConfig | None = None) -> list[str]:
    """Presets to compile at start-up: config's warm_presets if set, else every preset that is not only an
    out-of-memory fall-back (those run eagerly, and they are the small ones)."""
    chosen = engine_cfg.warm_presets if engine_cfg is not None else None
    if chosen is not None:
        return [name for name in chosen if name in presets]
    fallbacks = {p.fallback for p in presets.values() if p.fallback}
    return [name for name in presets if name not in fallbacks]


def decode_chunk_policy(parts: ModelParts, engine_cfg: EngineConfig) -> Callable[[int, int, int], int] | None:
    """On CUDA, frames decoded at once: within vae_memory_budget_gib and at most decode_chunk_size.
    None on the CPU (the renderer's fixed decode_chunk_size)."""
    if parts.device.type != "cuda":
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


class Fp8Linear(torch.nn.Module):
    """y = x W^T + b with x and W in float8 e4m3 and one scale each: W's fixed, x's from each call's largest
    value. About twice the matmul throughput of fp16 on Hopper; not exact (a few % relative error)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().amax().float().clamp(min=1e-12) / FP8_MAX
        self.register_buffer("weight_fp8", (weight.float() / scale).to(FP8_DTYPE))
        self.register_buffer("weight_scale", scale)
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        x_scale = rows.abs().amax().float().clamp(min=1e-12) / FP8_MAX
        x_fp8 = (rows.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        y = torch._scaled_mm(x_fp8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                             out_dtype=self.out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_linears_fp8(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """Replace every Linear whose sides are multiples of 16 (what fp8 matmuls need) by Fp8Linear. Returns
    (parent, attribute, original) for each, so a caller may put the originals back."""
    targets = [(parent, name, child) for parent in module.modules()
               for name, child in parent.named_children()
               if type(child) is torch.nn.Linear and child.in_features % 16 == 0
               and child.out_features % 16 == 0]
    for parent, name, child in targets:
        setattr(parent, name, Fp8Linear(child))
    return targets


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


def compiled_modules(parts: ModelParts) -> list[WarmCompiled]:
    found = [parts.unet, getattr(parts.vae, "decoder", None)]
    return [m for m in found if isinstance(m, WarmCompiled)]


@contextmanager
def learning(parts: ModelParts) -> Iterator[list[WarmCompiled]]:
    """Within this block, compiled networks compile (and from then on run compiled) every shape they see."""
    modules = compiled_modules(parts)
    for m in modules:
        m.learning = True
    try:
        yield modules
    finally:
        for m in modules:
            m.learning = False


# ---------------------------------------------------------------- warm-up


def warm_up(renderer_or_parts: Renderer | ModelParts, presets: dict[str, Preset], enabled: Iterable[str],
            steps: int = WARM_UP_STEPS) -> dict[str, float]:
    """Render every aspect bucket of the enabled presets once with a few steps, so that compiling happens
    now and not in a user's job. Shapes shared by presets are rendered once. Returns seconds per bucket,
    keyed "preset aspect WxHxF"; {} when nothing is compiled."""
    if isinstance(renderer_or_parts, Renderer):
        parts, chunk_for = renderer_or_parts.parts, renderer_or_parts.decode_chunk_for
    else:
        parts = renderer_or_parts
        defaults = EngineConfig()
        chunk_for = Renderer(parts, defaults.decode_chunk_size,
                             decode_chunk_policy(parts, defaults)).decode_chunk_for
    if not compiled_modules(parts):
        return {}
    times: dict[str, float] = {}
    for name, aspect, width, height in warm_shapes(presets, enabled):
        preset = presets[name]
        chunk = chunk_for(width, height, preset.frames)
        key = f"{name} {aspect} {width}x{height}x{preset.frames}"
        times[key] = warm_bucket(parts, preset, width, height, chunk, steps)
    return times


def warm_shapes(presets: dict[str, Preset], enabled: Iterable[str]) -> list[tuple[str, str, int, int]]:
    """(preset, aspect, width, height) of each distinct UNet input shape the warm-up renders: shapes shared
    by presets (same size, frames and CFG) come once, under the first preset that has them."""
    shapes, seen = [], set()
    for name in enabled:
        preset = presets[name]
        for aspect, (width, height) in preset.buckets().items():
            shape = (width, height, preset.frames, preset.guidance > 1.0)
            if shape not in seen:
                seen.add(shape)
                shapes.append((name, aspect, width, height))
    return shapes


def warm_bucket(parts: ModelParts, preset: Preset, width: int, height: int, decode_chunk: int,
                steps: int = WARM_UP_STEPS) -> float:
    """Seconds to render one bucket while the compiled networks learn its shapes (compiling if needed)."""
    start = time.perf_counter()
    with learning(parts):
        sample(parts, warm_image(width, height), "warm-up", "", steps=steps, scheduler=preset.scheduler,
               guidance=preset.guidance, frames=preset.frames, width=width, height=height, seed=0,
               fps=preset.fps, decode_chunk_size=decode_chunk)
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    return time.perf_counter() - start


def warm_image(width: int, height: int) -> PIL.Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                       128 + 100 * np.sin((x + y) / 7.0)], axis=-1)
    return PIL.Image.fromarray(pixels.astype(np.uint8), "RGB")
