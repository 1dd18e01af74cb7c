"""Speed of the render engine, on the same model, inputs and noise throughout.

CPU suite (the tiny model): our sampler against diffusers' I2VGenXLPipeline, one UNet call's FLOPs, and the
per-job work outside the model (image validation, queue submit -> claim, MP4 encode, fitting to Discord's cap).

Full suite (a GPU and the random full-size model): the diffusers pipeline, our engine eager and our fast path
for quick and hq end to end, ms per UNet call and its TFLOP/s against a matmul measured in the same run, peak
memory, the low_vram peak, the fast path's deviation, and the compile warm-up with an empty and a warm cache.
The fast path runs in fresh Python processes (python -m engine.render.bench child ...), each with a time limit, so a
slow first compile cannot overrun the whole run. Rows marked "sampled" extrapolate from fewer steps.

Each end-to-end measurement is a function setup -> (seconds, frames); measurements run interleaved, `repeat`
rounds, so that drifts of the machine (heat, other load) hit all of them alike.

How the pieces fit: `run_bench` builds one BenchSetup (setup.py) and runs a suite driver below. The drivers
take their figures from timing.py (timed renders and UNet calls, peak memory, FLOPs, the matmul roofline),
overheads.py (the per-job work outside the model), eager.py (the full suite's in-process eager rows) and
fast_path.py (the fresh-process fast path), and hand them to report.py, which formats the lines and judges
the targets. This is a tool: the worker and the bot never import it (it imports torch and diffusers).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.presets import DEFAULT_PRESETS
from engine.render.bench.clips import clip_edit_lines
from engine.render.bench.eager import eager_end_to_end, eager_unet_rows, low_vram_row
from engine.render.bench.fast_path import fast_path_rows, variant_rows
from engine.render.bench.ltx import ltx_rows
from engine.render.bench.overheads import overhead_rows
from engine.render.bench.report import (
    Echo,
    Report,
    echo_to_stderr,
    end_to_end_header,
    end_to_end_row,
    format_report,
    header_lines,
    target_lines,
    unet_row,
    unet_table_header,
)
from engine.render.bench.setup import BenchSetup, prepare, resized
from engine.render.bench.timing import (
    Measurement,
    capture_unet_inputs,
    full_size_unet_flops,
    matmul_tflops,
    time_ours,
    time_reference,
    time_unet_calls,
    time_with_previews,
    unet_call_flops,
)
from engine.render.memory import free_memory

FULL_DEADLINE_S = 450.0  # the full suite plans its fresh-process parts to end within this
DEADLINE_ENV = "ENGINE_BENCH_DEADLINE_S"


def run_bench(model: str = "tiny", repeat: int = 3, device: str = "auto", steps: int | None = None,
              size: int | tuple[int, int] | str | None = None, suite: str = "auto", echo: Echo | None = None,
              deadline_s: float | None = None, compile_backend: str = "inductor") -> str:
    """A printable report. suite "cpu": sampler table, UNet FLOPs and per-job overheads; "full": everything
    the GPU run reports (works on the CPU too, slowly, with the tiny model); "auto": full on CUDA.
    echo receives each line as soon as it is known (the full suite echoes to stderr by default).
    deadline_s (default FULL_DEADLINE_S, or $ENGINE_BENCH_DEADLINE_S) bounds the full suite's fresh processes.
    compile_backend "eager" makes the full suite's compile a graph capture without code generation, and
    "none" leaves the fast path uncompiled: dry runs of the suite's processes and rows on a CPU."""
    start = time.perf_counter()
    if deadline_s is None:
        deadline_s = float(os.environ.get(DEADLINE_ENV) or FULL_DEADLINE_S)
    setup = prepare(model, device, steps, size)
    if suite == "auto":
        suite = "full" if setup.parts.device.type == "cuda" else "cpu"
    if suite == "full":
        report = Report(echo if echo is not None else echo_to_stderr)
        run_full_suite(setup, model, max(1, repeat), report, start + deadline_s, compile_backend)
        return report.text()
    if suite != "cpu":
        raise ValueError(f"suite must be auto, cpu or full, not {suite!r}")
    report = Report(echo)
    run_cpu_suite(setup, max(1, repeat), report)
    return report.text()


# ---------------------------------------------------------------- CPU suite


def default_measurements() -> dict[str, Measurement]:
    return {"ours": time_ours, "reference": time_reference}


def run_cpu_suite(setup: BenchSetup, repeat: int, report: Report) -> None:
    measurements = default_measurements()
    outputs = {name: fn(setup)[1] for name, fn in measurements.items()}  # warm-up, and outputs to compare
    times: dict[str, list[float]] = {name: [] for name in measurements}
    for _ in range(repeat):
        for name, fn in measurements.items():
            times[name].append(fn(setup)[0])
    report.add(*format_report(setup, times, outputs).splitlines())
    report.add("", *unet_efficiency_lines(setup))
    report.add("", *preview_cost_lines(setup, repeat))
    report.add("", *clip_edit_lines(repeat))
    report.add("", f"{'per-job work outside the model (median of ' + str(repeat) + ')':<58}{'ms':>9}")
    for label, seconds in overhead_rows(repeat):
        report.add(f"{label:<58}{1000 * seconds:>9.1f}")


PREVIEW_EVERY_S = 3.0   # the shipped [preview] every_s
PREVIEW_CPU_SIDE = 256  # the tiny model at 64x64 renders in about a second: too short to see a preview


def preview_cost_lines(setup: BenchSetup, repeat: int) -> list[str]:
    """The same render with previews off and every PREVIEW_EVERY_S, interleaved: what previews cost. On the
    CPU the render is made larger so that it lasts several preview intervals."""
    if setup.parts.device.type != "cuda":
        setup = resized(setup, PREVIEW_CPU_SIDE, PREVIEW_CPU_SIDE)
    off: list[float] = []
    on: list[float] = []
    made: list[int] = []
    time_with_previews(setup, 0)   # warm-up at the new size (allocator, caches): not counted
    for _ in range(repeat):
        off.append(time_with_previews(setup, 0)[0])
        seconds, count = time_with_previews(setup, PREVIEW_EVERY_S)
        on.append(seconds)
        made.append(count)
    a, b = statistics.median(off), statistics.median(on)
    shape = f"{setup.width}x{setup.height}x{setup.frames}, {setup.steps} steps"
    return [f"previews every {PREVIEW_EVERY_S:g} s ({shape}, median of {repeat}): off {a:.3f} s, on {b:.3f} s, "
            f"{100 * (b / a - 1):+.1f}% ({statistics.median(made):g} previews a render)"]


def unet_efficiency_lines(setup: BenchSetup) -> list[str]:
    parts = setup.parts
    args, kwargs = capture_unet_inputs(setup)
    flops = unet_call_flops(parts.unet, args, kwargs)
    ms, _ = time_unet_calls(parts.unet, args, kwargs, calls=3)
    label, peak = matmul_tflops(parts.device)
    achieved = flops / (ms / 1000) / 1e12
    latent = "x".join(str(d) for d in args[0].shape[2:])
    full = full_size_unet_flops()
    return [
        f"UNet call (CFG batch {args[0].shape[0]}, {latent} latents): {flops / 1e9:.3f} GFLOP in {ms:.1f} ms = "
        f"{1000 * achieved:.2f} GFLOP/s, {100 * achieved / peak:.1f}% of a {label} ({1000 * peak:.1f} GFLOP/s)",
        f"full-size UNet call, 512x512x16 with CFG, counted on the meta device: {full / 1e12:.2f} TFLOP",
    ]


# ---------------------------------------------------------------- full suite


def run_full_suite(setup: BenchSetup, model: str, repeat: int, report: Report, deadline: float,
                   compile_backend: str = "inductor") -> None:
    parts = setup.parts
    quick, hq = setup.steps, round(setup.steps * DEFAULT_PRESETS["hq"].steps / DEFAULT_PRESETS["quick"].steps)
    report.add(*header_lines(parts),
               f"render {setup.width}x{setup.height}, {setup.frames} frames, {setup.scheduler}, guidance "
               f"{setup.guidance}: quick {quick} steps, hq {hq} steps; decode chunk {setup.decode_chunk_size} "
               f"(default memory budget); {repeat} runs per end-to-end row unless noted", "")

    label, peak = matmul_tflops(parts.device)
    args, kwargs = capture_unet_inputs(setup)
    flops = unet_call_flops(parts.unet, args, kwargs)
    report.add(f"roofline: {label} = {peak:.1f} TFLOP/s; one UNet call (CFG batch {args[0].shape[0]}) = "
               f"{flops / 1e12:.2f} TFLOP", "")

    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        folder = Path(tmp)
        step_rows, eager_unet_out = eager_unet_rows(setup, args, kwargs)
        np.save(folder / "unet_eager.npy", eager_unet_out.float().cpu().numpy())
        report.add(*unet_table_header())
        for name, ms, note in step_rows:
            report.add(unet_row(name, ms, flops, peak, note))

        rows, eager_frames = eager_end_to_end(setup, repeat, quick, hq)
        np.save(folder / "frames_eager.npy", eager_frames)
        report.add("", *end_to_end_header())
        for row in rows:
            report.add(end_to_end_row(row))
        low = low_vram_row(setup, quick)
        report.add(end_to_end_row(low[0]), f"  low_vram: {low[1]}")

        # The fresh processes need the GPU memory the eager rows held in this one.
        del eager_unet_out
        free_memory()
        fast = fast_path_rows(setup, model, repeat, quick, hq, folder, deadline, report, flops, peak,
                              compile_backend)
        free_memory()
        ltx = ltx_rows(parts.device, setup.width, setup.height, repeat, deadline, report, folder / "ltx-cache",
                       compile_backend)
        free_memory()
        variant_rows(fast, deadline, report)
    report.add("", *target_lines(rows, fast, low[0], ltx))
