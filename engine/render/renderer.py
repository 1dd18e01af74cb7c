"""One render: size the photo to the preset's bucket, sample, and on a GPU out-of-memory retry once with the
preset's fall-back."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image

from engine.presets import Preset
from engine.render.memory import OOM_ERRORS, free_memory
from engine.render.model import ModelParts, Parts
from engine.render.sampler import PreviewSink, center_crop_wide, sample
from engine.render.turbo import StepPlan


@dataclass
class RenderResult:
    frames: np.ndarray          # uint8 (frames, height, width, 3)
    fps: int
    preset: Preset              # the preset actually used (the fall-back after an out-of-memory)
    fell_back: bool
    width: int
    height: int
    steps: int
    seconds: float              # the whole render, both attempts
    step_seconds: list[float] = field(default_factory=list)  # each step of the attempt that finished


class Renderer:
    """decode_chunk(width, height, frames), when given, picks the frames per VAE decode call for each render
    (a memory budget); otherwise every render decodes decode_chunk_size frames at a time. fp8_parts, when
    given, render the presets that ask for fp8 (the same networks but a float8 UNet)."""

    def __init__(self, parts: Parts, decode_chunk_size: int = 8,
                 decode_chunk: Callable[[int, int, int], int] | None = None, fp8_parts: Parts | None = None):
        self.parts = parts
        self.decode_chunk_size = decode_chunk_size
        self.decode_chunk = decode_chunk
        self.fp8_parts = fp8_parts
        self.warm_up: Any = None   # engine.render.startup.WarmUp while buckets are still to compile

    def cold(self, preset: Preset, image_width: int, image_height: int) -> bool:
        """Whether a render of an image this size would run eagerly: its bucket is not compiled yet."""
        if self.warm_up is None:
            return False
        return self.warm_up.cold(preset, *preset.size_for(image_width, image_height))

    def parts_for(self, preset: Preset) -> Parts:
        return self.fp8_parts if preset.fp8 and self.fp8_parts is not None else self.parts

    def decode_chunk_for(self, width: int, height: int, frames: int) -> int:
        if self.decode_chunk is None:
            return self.decode_chunk_size
        return self.decode_chunk(width, height, frames)

    def render(
        self,
        image: PIL.Image.Image,
        prompt: str,
        negative_prompt: str,
        preset: Preset,
        seed: int,
        presets: dict[str, Preset],
        on_step: Callable[[int, int, float], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        step_hook: Callable[[int], None] | None = None,
        on_fallback: Callable[[Preset], None] | None = None,
        previews: PreviewSink | None = None,
    ) -> RenderResult:
        start = time.perf_counter()
        hooks = dict(on_step=on_step, should_cancel=should_cancel, step_hook=step_hook, previews=previews)
        try:
            return self._attempt(image, prompt, negative_prompt, preset, seed, start, False, **hooks)
        except OOM_ERRORS:
            fallback = presets.get(preset.fallback) if preset.fallback else None
            if fallback is None:
                raise
        # Outside the except block, so the failed attempt's tensors (held by the traceback) can be freed.
        free_memory()
        if on_fallback is not None:
            on_fallback(fallback)
        return self._attempt(image, prompt, negative_prompt, fallback, seed, start, True, **hooks)

    def _attempt(self, image: PIL.Image.Image, prompt: str, negative_prompt: str, preset: Preset, seed: int,
                 start: float, fell_back: bool, on_step, should_cancel, step_hook, previews) -> RenderResult:
        width, height = preset.size_for(image.width, image.height)
        fitted = center_crop_wide(image, width, height)
        step_seconds: list[float] = []
        last = 0.0

        def record_step(step: int, total: int, elapsed: float) -> None:
            nonlocal last
            step_seconds.append(elapsed - last)
            last = elapsed
            if on_step is not None:
                on_step(step, total, elapsed)

        frames = sample_preset(
            self.parts_for(preset), fitted, prompt, negative_prompt, preset, width, height, seed,
            on_step=record_step, should_cancel=should_cancel, step_hook=step_hook, previews=previews,
            decode_chunk_size=self.decode_chunk_for(width, height, preset.frames),
        )
        return RenderResult(
            frames=frames, fps=preset.fps, preset=preset, fell_back=fell_back, width=width, height=height,
            steps=preset.steps, seconds=time.perf_counter() - start, step_seconds=step_seconds,
        )


def sample_preset(parts: Parts, image: PIL.Image.Image, prompt: str, negative_prompt: str, preset: Preset,
                  width: int, height: int, seed: int, steps: int | None = None, plan: StepPlan | None = None,
                  **hooks: Any) -> np.ndarray:
    """One render of a preset by the sampler of the parts' family (steps and plan: the preset's unless given).
    A preset of another family is refused: the worker never claims one."""
    if preset.family != parts.family:
        raise ValueError(f"preset {preset.name} is for {preset.family}; this model is {parts.family}")
    common = dict(steps=steps or preset.steps, guidance=preset.guidance, frames=preset.frames, width=width,
                  height=height, seed=seed, fps=preset.fps, **hooks)
    if not isinstance(parts, ModelParts):
        from engine.render.ltx import sample_ltx

        return sample_ltx(parts, image, prompt, negative_prompt, **common)
    return sample(parts, image, prompt, negative_prompt, scheduler=preset.scheduler,
                  plan=plan if steps else StepPlan.for_preset(preset), **common)
