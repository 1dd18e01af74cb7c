"""What turbo saves, counted without a GPU: the full-size I2VGen-XL UNet's FLOPs per kind of step (guided or
not, full or reusing the deep features), counted on the meta device by torch's FlopCounterMode, summed over
turbo's step plan and set against quick's 30 guided full steps. Time on a GPU follows FLOPs closely for
this UNet (the GPU run is compute bound, docs/PERFORMANCE.md), so the share predicts turbo's UNet time.

    .venv/bin/python scripts/bench_turbo.py [--width 512 --height 512 --frames 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.presets import DEFAULT_PRESETS  # noqa: E402
from engine.render.bench.timing import unet_call_flops  # noqa: E402
from engine.render.model import full_configs  # noqa: E402
from engine.render.turbo import StepPlan, deep_cache  # noqa: E402


def kind_flops(width: int, height: int, frames: int, branch: int) -> dict[tuple[bool, bool], float]:
    """FLOPs of one UNet call for each (guided, reused) kind of step."""
    from diffusers import I2VGenXLUNet

    out: dict[tuple[bool, bool], float] = {}
    with torch.device("meta"):
        unet = I2VGenXLUNet(**full_configs()["unet"]).to(torch.float16)
        cache = deep_cache(unet, branch)
        for guided in (True, False):
            b = 2 if guided else 1
            latents = torch.empty(b, 4, frames, height // 8, width // 8, dtype=torch.float16)
            kwargs = dict(encoder_hidden_states=torch.empty(b, 77, 1024, dtype=torch.float16),
                          fps=torch.tensor([8] * b), image_latents=torch.empty_like(latents),
                          image_embeddings=torch.empty(b, 1, 1024, dtype=torch.float16), return_dict=False)
            for reused in (False, True):
                with cache.step("reuse" if reused else "store"):
                    out[(guided, reused)] = unet_call_flops(unet, (latents, torch.tensor(999)), kwargs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    quick, turbo = DEFAULT_PRESETS["quick"], DEFAULT_PRESETS["turbo"]
    start = time.perf_counter()
    flops = kind_flops(args.width, args.height, args.frames, turbo.deep_cache_branch)
    full = flops[(True, False)]
    print(f"full-size UNet call, {args.width}x{args.height}x{args.frames}, counted on the meta device "
          f"({time.perf_counter() - start:.1f} s):")
    for (guided, reused), value in flops.items():
        print(f"  {'guided (batch 2)' if guided else 'unguided (batch 1)':<19} "
              f"{'reused deep features' if reused else 'full':<21} {value / 1e12:6.2f} TFLOP "
              f"({100 * value / full:5.1f}% of a guided full step)")
    plan = StepPlan.for_preset(turbo)
    counts: dict[tuple[bool, bool], int] = {}
    for step in range(1, plan.steps + 1):
        kind = (plan.guided(step), plan.reused(step))
        counts[kind] = counts.get(kind, 0) + 1
    turbo_total = sum(flops[k] * n for k, n in counts.items())
    quick_total = quick.steps * full
    described = ", ".join(f"{n} {'guided' if g else 'unguided'} {'reused' if r else 'full'}"
                          for (g, r), n in sorted(counts.items(), reverse=True))
    print(f"quick: {quick.steps} guided full steps = {quick_total / 1e12:.1f} TFLOP")
    print(f"turbo: {plan.steps} steps ({described}) = {turbo_total / 1e12:.1f} TFLOP = "
          f"{100 * turbo_total / quick_total:.1f}% of quick's UNet work (before fp8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
