"""Turbo: two output-changing savings in the denoising loop of an I2VGen-XL UNet.

- Guidance for the first part of the steps only. Classifier-free guidance doubles the UNet batch; late steps
  refine detail that guidance no longer steers much, so they run the conditional branch alone.
- DeepCache-style feature reuse. Adjacent steps' deep UNet features barely change, so on a "cached" step only
  the shallow blocks run (the first `branch` down blocks and the last `branch` up blocks) and the output of the
  deeper up blocks is taken from the latest full step.

The plan says, per step, which of these apply; DeepCache installs the skipping on a UNet once and is steered
per step, so one network serves exact and turbo presets alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class StepPlan:
    """Which savings each step of a render takes. Exact when cfg_steps >= steps and interval is 1."""
    steps: int
    cfg_steps: int          # the first cfg_steps steps run with guidance (when the preset guides at all)
    interval: int = 1       # every interval-th step (from the first) runs the whole UNet; 1 = no reuse
    branch: int = 1         # up blocks recomputed on a reused step, counted from the output side

    @classmethod
    def exact(cls, steps: int) -> StepPlan:
        return cls(steps, steps)

    @classmethod
    def for_preset(cls, preset: Any) -> StepPlan:
        """From a preset's cfg_fraction, deep_cache_interval and deep_cache_branch."""
        steps = preset.steps
        return cls(steps, min(steps, math.ceil(preset.cfg_fraction * steps)), preset.deep_cache_interval,
                   preset.deep_cache_branch)

    @property
    def is_exact(self) -> bool:
        return self.cfg_steps >= self.steps and self.interval <= 1

    def guided(self, step: int) -> bool:
        """Step counts from 1."""
        return step <= self.cfg_steps

    def reused(self, step: int) -> bool:
        """Whether step reuses the deep features. A step right after guidance stops runs in full: its deep
        features would otherwise come from a step with the other batch."""
        if self.interval <= 1 or (step - 1) % self.interval == 0:
            return False
        return not (self.guided(step - 1) and not self.guided(step))

    def kinds(self) -> set[tuple[bool, bool]]:
        """The distinct (guided, reused) combinations the render goes through (what a warm-up must see)."""
        return {(self.guided(s), self.reused(s)) for s in range(1, self.steps + 1)}


class DeepCache:
    """Skips a UNet's deep blocks on steps marked reused. Installed on the network's blocks (instance
    forwards, so a compiled twin that shares the blocks sees them too); with no step marked it only passes
    calls through. Mode per call: "off" (run everything), "store" (run everything, keep the boundary
    feature), "reuse" (skip the deep blocks, hand out the kept feature)."""

    def __init__(self, unet: torch.nn.Module, branch: int):
        ups, downs = len(unet.up_blocks), len(unet.down_blocks)
        if not 1 <= branch < min(ups, downs):
            raise ValueError(f"deep_cache_branch must be from 1 to {min(ups, downs) - 1} for this UNet, "
                             f"not {branch}")
        self.branch = branch
        self.mode = "off"
        self.feature: torch.Tensor | None = None
        self.skipped = 0   # deep blocks skipped so far (for tests and the bench)
        for block in list(unet.down_blocks)[branch:]:
            _override(block, self._down(block))
        _override(unet.mid_block, self._passthrough(unet.mid_block))
        boundary = ups - branch - 1
        for i, block in enumerate(list(unet.up_blocks)[:boundary + 1]):
            _override(block, self._up(block, boundary=(i == boundary)))

    @contextmanager
    def step(self, mode: str) -> Iterator[None]:
        self.mode = mode
        try:
            yield
        finally:
            self.mode = "off"

    def _down(self, block: torch.nn.Module) -> Callable[..., Any]:
        original = block.forward
        outputs = len(block.resnets) + (1 if getattr(block, "downsamplers", None) else 0)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.mode != "reuse":
                return original(*args, **kwargs)
            self.skipped += 1
            hidden = _hidden(args, kwargs)
            # The skipped up blocks are the only readers of these residuals: any tensor will do.
            return hidden, (hidden,) * outputs
        return forward

    def _passthrough(self, block: torch.nn.Module) -> Callable[..., Any]:
        original = block.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.mode != "reuse":
                return original(*args, **kwargs)
            self.skipped += 1
            return _hidden(args, kwargs)
        return forward

    def _up(self, block: torch.nn.Module, boundary: bool) -> Callable[..., Any]:
        original = block.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.mode == "reuse":
                self.skipped += 1
                return self._kept(_hidden(args, kwargs)) if boundary else _hidden(args, kwargs)
            out = original(*args, **kwargs)
            if boundary and self.mode == "store":
                # A copy: with CUDA graphs the output's memory is overwritten by the next replay.
                self.feature = out.detach().clone()
            return out
        return forward

    def _kept(self, like: torch.Tensor) -> torch.Tensor:
        if self.feature is None:
            raise RuntimeError("a reused step came before any full step")
        feature = self.feature
        if feature.shape[0] == 2 * like.shape[0]:
            # Kept from a guided step (unconditional frames, then conditional): the conditional half.
            feature = feature[like.shape[0]:]
        return feature


def deep_cache(unet: torch.nn.Module, branch: int) -> DeepCache:
    """The DeepCache installed on unet (a compiled wrapper's network), installing it on first use. One per
    network: a second branch depth is refused rather than stacked."""
    net = getattr(unet, "module", unet)
    existing = net.__dict__.get("_deep_cache")
    if existing is not None:
        if existing.branch != branch:
            raise ValueError(f"this UNet caches at branch {existing.branch}; presets must agree, not {branch}")
        return existing
    cache = DeepCache(net, branch)
    net.__dict__["_deep_cache"] = cache
    return cache


def _override(block: torch.nn.Module, forward: Callable[..., Any]) -> None:
    block.forward = forward


def _hidden(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
