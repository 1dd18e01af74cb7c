"""A worker's renderer at start-up: the fast path from the config, a float8 twin of the UNet for presets that
ask for fp8, DeepCache on the UNets for presets that reuse features, and the compile warm-up.

The warm-up compiles one aspect bucket at a time: the default preset's first bucket before the worker takes
jobs, the others between jobs (a job whose bucket is not compiled yet renders eagerly and says so). Compiled
code survives restarts twice over: inductor's on-disk caches, and PyTorch's portable cache artifacts
(torch.compiler.save_cache_artifacts), both in a folder of the data folder named for torch, Triton and the
GPU, so workers of different cards sharing a data folder never load each other's kernels.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from engine.config import EngineConfig
from engine.errors import first_line
from engine.presets import DEFAULT_PRESET, Preset
from engine.render.fastpath import (
    FastPathOptions,
    WarmCompiled,
    accelerate,
    compiled_modules,
    configure_compile_cache,
    decode_chunk_policy,
    fp8_twin,
    fp8_unavailable,
    learning,
    options_from_config,
)
from engine.render.model import ModelParts, Parts
from engine.render.renderer import Renderer, sample_preset
from engine.render.turbo import StepPlan, deep_cache

log = logging.getLogger("engine.render.startup")

WARM_UP_STEPS = 2
ARTIFACTS_FILE = "portable-cache.bin"


def build_renderer(parts: Parts, engine_cfg: EngineConfig, presets: dict[str, Preset], data_dir: str | Path,
                   warm: bool | Iterable[str] = True, serve_early: bool = False) -> Renderer:
    """The worker's renderer for the presets of its model's family. With compile on, warm buckets of `warm`
    (True: every preset users pick, see warm_presets): all of them now, or with serve_early only the first,
    leaving the rest in renderer.warm_up for the worker to run between jobs."""
    presets = {name: p for name, p in presets.items() if p.family == parts.family}
    options = options_from_config(engine_cfg, parts.device, data_dir)
    if parts.low_vram and options.cuda_graphs:
        # Offloading moves the weights between calls; captured graphs would point at the old addresses.
        options = dataclasses.replace(options, cuda_graphs=False)
    artifacts = PortableCache(options.cache_dir) if options.compile and options.backend == "inductor" else None
    if artifacts is not None:
        artifacts.load()   # before anything compiles
    fast = accelerate(parts, options)
    fp8_parts = _fp8_parts(fast, options, presets) if isinstance(fast, ModelParts) else None
    for unet_parts in filter(None, (fast, fp8_parts)):
        for preset in presets.values():
            if preset.deep_cache_interval > 1 and isinstance(unet_parts, ModelParts):
                deep_cache(unet_parts.unet, preset.deep_cache_branch)   # a wrong branch fails here, at start
    renderer = Renderer(fast, decode_chunk_size=engine_cfg.decode_chunk_size,
                        decode_chunk=decode_chunk_policy(fast, engine_cfg), fp8_parts=fp8_parts)
    if options.compile and warm:
        chosen = list(warm) if not isinstance(warm, bool) else warm_presets(presets, engine_cfg)
        enabled = [name for name in chosen if name in presets]
        renderer.warm_up = WarmUp(renderer, presets, enabled, options.cache_dir, artifacts)
        renderer.warm_up.run(limit=1 if serve_early else None)
    return renderer


def _fp8_parts(fast: ModelParts, options: FastPathOptions, presets: dict[str, Preset]) -> ModelParts | None:
    """Parts with a float8 twin of the UNet when some preset asks for fp8 and the card has it (with
    [engine] fp8 on, every preset already renders in fp8: no twin)."""
    wanting = [name for name, p in presets.items() if p.fp8]
    if not wanting or options.fp8:
        return None
    reason = fp8_unavailable(fast.device)
    if reason:
        log.warning("preset %s asks for fp8: %s; it renders without fp8", ", ".join(wanting), reason)
        return None
    return fp8_variant(fast, options)


def fp8_variant(fast: ModelParts, options: FastPathOptions) -> ModelParts:
    """fast with a float8 twin of its UNet, compiled like the original (before any deep cache is installed:
    the cache's block forwards would be copied along)."""
    network = fast.unet.module if isinstance(fast.unet, WarmCompiled) else fast.unet
    twin = fp8_twin(network)
    return dataclasses.replace(fast, unet=WarmCompiled(twin, options) if options.compile else twin)


def warm_presets(presets: dict[str, Preset], engine_cfg: EngineConfig | None = None) -> list[str]:
    """Presets to compile at start-up: config's warm_presets if set, else every preset that is not only an
    out-of-memory fall-back (those run eagerly, and they are the small ones), the default preset first."""
    chosen = engine_cfg.warm_presets if engine_cfg is not None else None
    if chosen is not None:
        return [name for name in chosen if name in presets]
    fallbacks = {p.fallback for p in presets.values() if p.fallback}
    names = [name for name in presets if name not in fallbacks]
    # The default preset first: the worker serves once its first bucket is warm.
    return sorted(names, key=lambda name: name != DEFAULT_PRESET)


# ---------------------------------------------------------------- the warm-up, a bucket at a time


class WarmUp:
    """The buckets still to compile, in order. A compile that fails empties the compile cache and starts over
    once (a worker killed mid-compile can leave a truncated kernel there that fails every later start); a
    second failure leaves everything eager: slower, but the queue keeps moving."""

    def __init__(self, renderer: Renderer, presets: dict[str, Preset], enabled: list[str],
                 cache_dir: Path | None, artifacts: PortableCache | None = None):
        self.renderer, self.presets, self.cache_dir, self.artifacts = renderer, presets, cache_dir, artifacts
        self.all = warm_shapes(presets, enabled)
        self.pending = deque(self.all)
        self.times: dict[str, float] = {}
        self.attempt = 1
        self.started = time.perf_counter()

    @property
    def done(self) -> bool:
        return not self.pending

    def cold(self, preset: Preset, width: int, height: int) -> bool:
        """Whether a render of preset at width x height would still run eagerly."""
        key = shape_of(preset, width, height)
        return any(shape_of(self.presets[name], w, h) == key for name, _, w, h in self.pending)

    def run(self, limit: int | None = None) -> None:
        """Warm up to `limit` more buckets (all with None)."""
        count = 0
        while self.pending and (limit is None or count < limit):
            self.step()
            count += 1

    def step(self) -> None:
        """Compile the next bucket (or, after a failure, start over)."""
        name, aspect, width, height = self.pending[0]
        preset = self.presets[name]
        key = f"{name} {aspect} {width}x{height}x{preset.frames}"
        parts = self.renderer.parts_for(preset)
        try:
            seconds = warm_bucket(parts, preset, width, height,
                                  self.renderer.decode_chunk_for(width, height, preset.frames))
        except Exception as exc:
            self._failed(exc)
            return
        self.pending.popleft()
        self.times[key] = seconds
        log.info("warm-up %s: %.1f s%s", key, seconds, "" if self.pending else
                 f"; all {len(self.times)} buckets done in {time.perf_counter() - self.started:.1f} s "
                 f"(compile cache {self.cache_dir})")
        if self.artifacts is not None:
            self.artifacts.save()

    def _failed(self, exc: Exception) -> None:
        log.warning("compile warm-up failed (attempt %d): %s: %s", self.attempt, type(exc).__name__,
                    first_line(exc))
        for parts in (self.renderer.parts, self.renderer.fp8_parts):
            for module in compiled_modules(parts) if parts is not None else ():
                module.warm_keys.clear()   # shapes never warmed run eagerly
        torch._dynamo.reset()
        self.times.clear()
        if self.attempt == 1:
            self.attempt = 2
            self.pending = deque(self.all)
            if self.cache_dir is not None:
                shutil.rmtree(self.cache_dir, ignore_errors=True)
                configure_compile_cache(self.cache_dir)
            return
        self.pending.clear()
        log.error("compiling failed twice: rendering without the compiled UNet")


def warm_up(renderer_or_parts: Renderer | ModelParts, presets: dict[str, Preset], enabled: Iterable[str],
            steps: int = WARM_UP_STEPS) -> dict[str, float]:
    """Render every aspect bucket of the enabled presets once with a few steps, so that compiling happens
    now and not in a user's job. Shapes shared by presets are rendered once. Returns seconds per bucket,
    keyed "preset aspect WxHxF"; {} when nothing is compiled."""
    if isinstance(renderer_or_parts, Renderer):
        renderer = renderer_or_parts
    else:  # I2VGen-XL parts
        defaults = EngineConfig()
        renderer = Renderer(renderer_or_parts, defaults.decode_chunk_size,
                            decode_chunk_policy(renderer_or_parts, defaults))
    if not compiled_modules(renderer.parts):
        return {}
    times: dict[str, float] = {}
    for name, aspect, width, height in warm_shapes(presets, enabled):
        preset = presets[name]
        chunk = renderer.decode_chunk_for(width, height, preset.frames)
        key = f"{name} {aspect} {width}x{height}x{preset.frames}"
        times[key] = warm_bucket(renderer.parts_for(preset), preset, width, height, chunk, steps)
    return times


def shape_of(preset: Preset, width: int, height: int) -> tuple:
    """What the compiled UNet tells renders apart by: size, frames, guidance, the plan's step kinds, fp8."""
    return (width, height, preset.frames, preset.guidance > 1.0,
            frozenset(StepPlan.for_preset(preset).kinds()), preset.fp8)


def warm_shapes(presets: dict[str, Preset], enabled: Iterable[str]) -> list[tuple[str, str, int, int]]:
    """(preset, aspect, width, height) of each distinct compiled shape the warm-up renders: shapes shared
    by presets come once, under the first preset that has them. The first preset's square bucket comes
    first (the bucket most photos land in): the worker serves once it is warm."""
    shapes, seen = [], set()
    for name in enabled:
        preset = presets[name]
        for aspect, (width, height) in preset.buckets().items():
            shape = shape_of(preset, width, height)
            if shape not in seen:
                seen.add(shape)
                shapes.append((name, aspect, width, height))
    return shapes


def warm_plan(preset: Preset, steps: int = WARM_UP_STEPS) -> tuple[int, StepPlan | None]:
    """Steps and plan for a warm-up render that goes through every kind of step the preset's renders do
    (guided or not, full or reused), in as few steps as that takes."""
    plan = StepPlan.for_preset(preset)
    if plan.is_exact:
        return steps, None
    kinds = plan.kinds()
    guided = any(g for g, _ in kinds)
    unguided = any(not g for g, _ in kinds)
    per_phase = 2 if plan.interval > 1 else 1
    total = per_phase * (guided + unguided)
    return total, StepPlan(total, per_phase if guided and unguided else total if guided else 0,
                           2 if plan.interval > 1 else 1, plan.branch)


def warm_bucket(parts: Parts, preset: Preset, width: int, height: int, decode_chunk: int,
                steps: int = WARM_UP_STEPS) -> float:
    """Seconds to render one bucket while the compiled networks learn its shapes (compiling if needed)."""
    steps, plan = warm_plan(preset, steps)
    start = time.perf_counter()
    with learning(parts):
        sample_preset(parts, warm_image(width, height), "warm-up", "", preset, width, height, 0, steps=steps,
                      plan=plan, decode_chunk_size=decode_chunk)
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    return time.perf_counter() - start


def warm_image(width: int, height: int) -> PIL.Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                       128 + 100 * np.sin((x + y) / 7.0)], axis=-1)
    return PIL.Image.fromarray(pixels.astype(np.uint8), "RGB")


# ---------------------------------------------------------------- portable cache artifacts


class PortableCache:
    """PyTorch's portable compile cache (Mega-Cache) in one file of the (torch/Triton/GPU-keyed) compile
    cache folder: loaded before the first compile, saved after each bucket warms."""

    def __init__(self, cache_dir: Path | None):
        self.path = Path(cache_dir) / ARTIFACTS_FILE if cache_dir is not None else None

    def load(self) -> bool:
        if self.path is None or not self.path.exists():
            return False
        try:
            torch.compiler.load_cache_artifacts(self.path.read_bytes())
        except Exception as exc:
            log.warning("compile cache artifacts %s unreadable (%s): removed, compiling afresh", self.path,
                        first_line(exc))
            self.path.unlink(missing_ok=True)
            return False
        log.info("compile cache artifacts loaded from %s", self.path)
        return True

    def save(self) -> bool:
        if self.path is None:
            return False
        try:
            saved = torch.compiler.save_cache_artifacts()
            if not saved:
                return False
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(saved[0])
            tmp.replace(self.path)   # a worker killed mid-write leaves the old file, never half of one
        except Exception as exc:
            log.warning("could not save compile cache artifacts to %s: %s", self.path, first_line(exc))
            return False
        return True
