"""Start-up against speed: how long the worker's compile warm-up of every bucket takes, and how fast a quick
render is afterwards, for one compile setting, in this fresh process. Run it twice with the same cache folder
to see a cold start and a warm-cache start. Prints one JSON line.

    python scripts/warmup_study.py --model random-full --cache /tmp/cc [--dynamic-hw] [--mode default]
    python scripts/warmup_study.py --model tiny --device cpu --cache /tmp/cc --buckets 64x64,96x64 --frames 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.presets import DEFAULT_PRESETS  # noqa: E402
from engine.render.bench.setup import MODEL_SEED  # noqa: E402
from engine.render.fastpath import FastPathOptions, accelerate  # noqa: E402
from engine.render.model import load_model  # noqa: E402
from engine.render.sampler import sample  # noqa: E402
from engine.render.startup import warm_bucket, warm_image, warm_presets, warm_shapes  # noqa: E402


def timed_render(parts, width: int, height: int, frames: int, steps: int) -> float:
    quick = DEFAULT_PRESETS["quick"]
    start = time.perf_counter()
    sample(parts, warm_image(width, height), "waves", "", steps=steps, scheduler=quick.scheduler,
           guidance=quick.guidance, frames=frames, width=width, height=height, seed=0, fps=quick.fps,
           decode_chunk_size=4)
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="random-full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--mode", default="default")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--dynamic-hw", action="store_true")
    parser.add_argument("--buckets", default="", help="WxH,WxH (default: every bucket of the warmed presets)")
    parser.add_argument("--frames", type=int, default=DEFAULT_PRESETS["quick"].frames)
    parser.add_argument("--steps", type=int, default=DEFAULT_PRESETS["quick"].steps)
    parser.add_argument("--timed", type=int, default=2, help="buckets to time a full render in afterwards")
    args = parser.parse_args()

    own = {name: p for name, p in DEFAULT_PRESETS.items() if p.family == "i2vgen-xl"}
    buckets = ([tuple(int(v) for v in b.split("x")) for b in args.buckets.split(",")] if args.buckets
               else sorted({(w, h) for _, _, w, h in warm_shapes(own, warm_presets(own))}))
    start = time.perf_counter()
    torch.manual_seed(MODEL_SEED)
    parts = load_model(args.model, device=args.device)
    load_s = time.perf_counter() - start
    options = FastPathOptions(compile=True, cuda_graphs=False, channels_last=False,
                              fuse_qkv=parts.device.type == "cuda", cache_dir=Path(args.cache), mode=args.mode,
                              backend=args.backend, dynamic_hw=args.dynamic_hw)
    fast = accelerate(parts, options)
    quick = dataclasses.replace(DEFAULT_PRESETS["quick"], frames=args.frames)
    warm = {f"{w}x{h}": round(warm_bucket(fast, quick, w, h, 4), 1) for w, h in buckets}
    renders = {}
    for w, h in buckets[:args.timed]:
        times = sorted(timed_render(fast, w, h, args.frames, args.steps) for _ in range(2))
        renders[f"{w}x{h}"] = round(times[0], 3)
    print(json.dumps({
        "stage": "done", "mode": args.mode, "dynamic_hw": args.dynamic_hw, "load_s": round(load_s, 1),
        "warm_up_s": warm, "warm_up_total_s": round(sum(warm.values()), 1),
        f"render_{args.steps}_steps_s": renders, "unet_calls": dict(fast.unet.calls),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if parts.device.type == "cuda" else None,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
