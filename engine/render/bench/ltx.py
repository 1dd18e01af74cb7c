"""The LTX-Video rows of the full suite: the `fast` preset's 2-second clip (49 frames at 24 fps) with the random
full-size model (built on the meta device, materialised on the GPU), eager and then compiled: seconds end to
end, peak memory, and the compile warm-up. On the CPU (a dry run) the tiny LTX-Video stands in."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from engine.errors import first_line
from engine.presets import DEFAULT_PRESETS
from engine.render.bench.report import ERROR_CHARS, Report, Row, end_to_end_header, end_to_end_row
from engine.render.bench.setup import IMAGE_NOISE_SEED, PROMPT
from engine.render.bench.timing import peak_memory
from engine.render.fastpath import FastPathOptions, accelerate
from engine.render.model import load_model
from engine.render.renderer import sample_preset
from engine.render.sampler import sync_device
from engine.render.startup import warm_bucket, warm_image

# Seconds a stage needs at least to be started (a cold compile of the transformer takes a minute or two).
EAGER_NEEDS_S = 60.0
COMPILE_NEEDS_S = 150.0


def ltx_rows(device: torch.device, width: int, height: int, repeat: int, deadline: float, report: Report,
             cache_dir: Path, backend: str = "inductor") -> dict[str, Any]:
    spec = "random-full-ltx" if device.type == "cuda" else "tiny-ltx"
    preset = dataclasses.replace(DEFAULT_PRESETS["fast"], pixels=width * height)
    width, height = preset.bucket("1:1")
    clip = f"{width}x{height}, {preset.frames} frames at {preset.fps} fps, {preset.steps} steps, guidance " \
           f"{preset.guidance}"
    report.add("", f"LTX-Video ({spec}): the fast preset, {clip}")
    if time.perf_counter() > deadline - EAGER_NEEDS_S:
        report.add("  LTX-Video not measured: out of time")
        return {}
    result: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        parts = load_model(spec, device=str(device))
        report.add(f"  model built in {time.perf_counter() - start:.1f} s ({parts.parameter_count() / 1e9:.2f}B "
                   f"parameters, {parts.dtype})")
        image = warm_image(width, height)

        def timed() -> tuple[float, float | None]:
            with peak_memory(parts.device) as mem:
                sync_device(parts.device)
                t0 = time.perf_counter()
                sample_preset(parts, image, PROMPT, "", preset, width, height, IMAGE_NOISE_SEED)
                sync_device(parts.device)
            return time.perf_counter() - t0, mem["gib"]

        timed()   # the first render pays for allocations and kernel choices
        runs = [timed() for _ in range(repeat)]
        rows = [Row("fast ltx-eager", [s for s, _ in runs], max((g or 0.0) for _, g in runs) or None,
                    preset.steps)]
        if backend != "none" and time.perf_counter() < deadline - COMPILE_NEEDS_S:
            options = FastPathOptions(compile=True, cuda_graphs=False, channels_last=False, fuse_qkv=False,
                                      cache_dir=cache_dir, backend=backend)
            parts = accelerate(parts, options)
            result["compile_s"] = warm_bucket(parts, preset, width, height, decode_chunk=8)
            runs = [timed() for _ in range(repeat)]
            rows.append(Row("fast ltx-fast", [s for s, _ in runs], max((g or 0.0) for _, g in runs) or None,
                            preset.steps, f"compile warm-up {result['compile_s']:.1f} s"))
        else:
            report.add("  compiled LTX-Video not measured: " + ("compile off (a dry run)" if backend == "none"
                                                                else "out of time"))
        report.add(*end_to_end_header())
        for row in rows:
            report.add(end_to_end_row(row))
        result["rows"] = rows
    except Exception as exc:
        report.add(f"  LTX-Video not measured: {type(exc).__name__}: {first_line(exc)[:ERROR_CHARS]}")
    return result
