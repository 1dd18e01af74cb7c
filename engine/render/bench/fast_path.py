"""The fast path's rows, measured in fresh Python processes: a cold compile (empty cache) followed by the
fast renders and the compiled UNet call, then a warm-cache compile in a second process.

A fresh process is what a worker start is, and it can be held to a time limit: a first compile that takes
minutes is killed with its compile workers instead of overrunning the whole run. The parent sends a JSON spec
on the command line (`python -m engine.render.bench child SPEC_JSON`, see __main__.py); the child rebuilds
the same setup, checks that its weights match the parent's, and prints one result line after CHILD_MARKER.
Outputs of the eager run are handed over as .npy files in the run's folder, to measure the deviation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import load_config
from engine.errors import first_line
from engine.families import I2VGEN_XL
from engine.presets import DEFAULT_PRESETS, Preset
from engine.render.bench.report import (
    ERROR_CHARS,
    Report,
    Row,
    end_to_end_header,
    end_to_end_row,
    unet_row,
    unet_table_header,
)
from engine.render.bench.setup import BenchSetup, prepare
from engine.render.bench.timing import (
    capture_unet_inputs,
    peak_memory,
    relative_deviation,
    time_ours,
    time_unet_calls,
)
from engine.render.fastpath import (
    COMPILE_MODE,
    GRAPHS_MODE,
    FastPathOptions,
    accelerate,
    fp8_unavailable,
    options_from_config,
)
from engine.render.model import ModelParts
from engine.render.startup import WARM_UP_STEPS, fp8_variant, warm_bucket, warm_presets, warm_shapes
from engine.render.turbo import StepPlan, deep_cache

CHILD_MARKER = "BENCH-CHILD-RESULT "
REPO_ROOT = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------- in the bench's process


def fast_options(cache_dir: Path, device: torch.device, backend: str = "inductor") -> dict[str, Any]:
    """The worker's fast path for this device (compile forced on), as JSON for a child process: config.toml and
    the environment (e.g. ANIMABOT_ENGINE__COMPILE_MODE) apply, as they do for the worker."""
    engine = load_config().engine.model_copy(update={"compile": backend != "none"})
    options = options_from_config(engine, device, cache_dir.parent)
    fields = dataclasses.asdict(dataclasses.replace(options, backend=backend if backend != "none" else "eager"))
    fields["cache_dir"] = str(cache_dir)
    return fields


def fast_path_rows(setup: BenchSetup, model: str, repeat: int, quick: int, hq: int, folder: Path,
                   deadline: float, report: Report, flops: float, peak: float,
                   backend: str = "inductor") -> dict[str, Any]:
    """Cold compile + fast renders in one fresh process, then a warm-cache compile in another."""
    device = setup.parts.device
    cache_dir = folder / "compile-cache"
    turbo = max(1, round(quick * DEFAULT_PRESETS["turbo"].steps / DEFAULT_PRESETS["quick"].steps))
    spec: dict[str, Any] = {
        "model": model, "device": str(device), "width": setup.width, "height": setup.height,
        "frames": setup.frames, "quick": quick, "hq": hq, "turbo": turbo, "repeat": repeat,
        "folder": str(folder), "options": fast_options(cache_dir, device, backend),
        "checksum": weights_checksum(setup.parts),
    }
    mode = spec["options"]["mode"] or (GRAPHS_MODE if spec["options"]["cuda_graphs"] else COMPILE_MODE)
    bucket = f"{setup.width}x{setup.height}x{setup.frames}"
    compiler = (f"torch.compile mode {mode}, backend {spec['options']['backend']}" if spec["options"]["compile"]
                else "torch.compile off (a dry run)")
    report.add("", f"fast path: fused QKV {spec['options']['fuse_qkv']}, {compiler}, CUDA graphs {spec['options']['cuda_graphs']}, "
                   f"fp8 {spec['options']['fp8']} (fresh processes, compile cache {cache_dir.name}/)")
    # The first compile may take minutes: it gets all the time left; the warm-cache check only what remains.
    cold = run_child({**spec, "measure": True}, timeout=deadline - time.perf_counter() - 20)
    if "error" in cold:
        report.add(f"  fast path not measured: {cold['error']}")
        return cold
    calls = cold.get("compiled_calls", {})
    report.add(f"compile warm-up of 1 bucket ({bucket}, {cold['warm_steps']} steps), empty cache, fresh "
               f"process: {cold['compile_s']:.1f} s (model load {cold['load_s']:.1f} s before it); UNet calls "
               f"after it: {calls.get('compiled', 0)} compiled, {calls.get('eager', 0)} eager")
    report.add(unet_table_header()[1], unet_row("fast (compiled)", cold["step_ms"], flops, peak,
                                               f"deviation {cold['unet_deviation']:.1e} vs eager"))
    report.add(*end_to_end_header())
    fast_rows = [Row("quick ours-fast", cold["quick"], cold["quick_peak"], quick,
                     f"max |fast - eager| {cold['frames_deviation']:.1e}"),
                 Row("hq ours-fast", cold["hq"], cold["hq_peak"], hq),
                 Row("turbo ours-fast", cold["turbo"], cold["turbo_peak"], turbo, cold["turbo_note"])]
    for row in fast_rows:
        report.add(end_to_end_row(row))
    report.add(f"turbo's own warm-up (its step kinds{', a float8 twin' if 'fp8 on' in cold['turbo_note'] else ''})"
               f": {cold['turbo_compile_s']:.1f} s")
    warm = run_child({**spec, "measure": False, "turbo": 0}, timeout=deadline - time.perf_counter() - 5)
    if "error" in warm:
        report.add(f"  warm-cache compile not measured: {warm['error']}")
    else:
        own = {name: p for name, p in DEFAULT_PRESETS.items() if p.family == I2VGEN_XL}   # this worker's family
        buckets = len(warm_shapes(own, warm_presets(own)))
        warm["all_buckets_s"] = buckets * warm["compile_s"]
        warm["buckets"] = buckets
        report.add(f"compile warm-up of the same bucket, warm cache, fresh process: {warm['compile_s']:.1f} s; "
                   f"all {buckets} buckets of the warmed presets: {warm['all_buckets_s']:.0f} s "
                   f"(sampled: {buckets} x 1 bucket)")
    warm_ready = f"{warm['ready_s']:.1f} s" if "ready_s" in warm else "not measured"
    report.add(f"start to the first job at full speed (load + first bucket), empty cache: {cold['ready_s']:.1f} s; "
               f"warm cache: {warm_ready}")
    return {**cold, "rows": fast_rows, "warm": warm, "spec": spec}


# Layouts and modes measured beside the default, each in a fresh process with its own compile.
VARIANTS = (("CUDA graphs", {"cuda_graphs": True, "mode": GRAPHS_MODE}), ("channels-last", {"channels_last": True}))


def variant_rows(fast: dict[str, Any], deadline: float, report: Report) -> dict[str, Any]:
    """quick with each variant of the fast path, while time is left: speed and deviation from eager."""
    results: dict[str, Any] = {}
    if "spec" not in fast:
        return results
    spec, quick, default_s = fast["spec"], fast["spec"]["quick"], float(np.median(fast["quick"]))
    report.add("")
    for label, change in VARIANTS:
        options = {**spec["options"], **change}
        if spec["options"]["backend"] != "inductor":
            options["mode"] = ""   # the eager backend takes no mode
        if options["cuda_graphs"] and not (options["compile"] and spec["device"].startswith("cuda")):
            report.add(f"quick ours-fast {label}: not measured (CUDA and the compiler only)")
            continue
        result = run_child({**spec, "options": options, "measure": "quick", "turbo": 0},
                           timeout=deadline - time.perf_counter() - 5)
        if "error" in result:
            report.add(f"quick ours-fast {label}: not measured: {result['error']}")
            continue
        results[label] = result
        median = float(np.median(result["quick"]))
        report.add(end_to_end_row(Row(f"quick ours-fast {label}", result["quick"], result["quick_peak"], quick,
                                      f"max |fast - eager| {result['frames_deviation']:.1e}, "
                                      f"{default_s / median:.2f}x the default fast path")))
    return results


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run child_main in a fresh Python (its own process group, killed whole at the time limit)."""
    if timeout < 30:
        return {"error": f"out of time ({timeout:.0f} s left for it)"}
    spec = {**spec, "spawned_at": time.time()}   # start-up times count from here, imports included
    command = [sys.executable, "-m", "engine.render.bench", "child", json.dumps(spec)]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    # A SIGTERM to the bench (a time limit around it) must take the child and its compile workers along.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s (a first compile with an empty cache "
                         "takes minutes; ENGINE_BENCH_DEADLINE_S gives it more time)"}
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    for line in stdout.splitlines():
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER):])
    return {"error": f"the process ended with code {proc.returncode} and no result"}


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def weights_checksum(parts: ModelParts) -> float:
    """A sum over a few UNet weights: equal in two processes only when they built the same model."""
    params = list(parts.unet.parameters())
    return float(sum(p.detach().float().sum().item() for p in params[:: max(1, len(params) // 16)]))


# ---------------------------------------------------------------- in the fresh process


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load, check the weights match the parent's, accelerate, compile one bucket (timed);
    with "measure", also the fast renders, the sampled UNet call and the deviations from the eager outputs."""
    start = time.perf_counter()
    setup = prepare(spec["model"], spec["device"], spec["quick"], (spec["width"], spec["height"]))
    result: dict[str, Any] = {"load_s": time.perf_counter() - start}
    if not math.isclose(weights_checksum(setup.parts), spec["checksum"], rel_tol=1e-6):
        return {"error": "the fresh process built different weights"}
    options = FastPathOptions(**{**spec["options"], "cache_dir": Path(spec["options"]["cache_dir"])})
    fast = accelerate(setup.parts, options)
    assert isinstance(fast, ModelParts)   # the bench's I2VGen-XL suite (prepare refuses LTX-Video)
    preset = Preset("bench", spec["quick"], setup.scheduler, setup.width * setup.height, setup.frames,
                    setup.fps, setup.guidance)
    turbo = turbo_setup(fast, options, setup, spec) if spec.get("turbo") else None
    # The same warm-up a worker runs at start-up, so compile_s is what a worker start costs per bucket.
    result["warm_steps"] = WARM_UP_STEPS
    result["compile_s"] = warm_bucket(fast, preset, setup.width, setup.height, setup.decode_chunk_size,
                                      WARM_UP_STEPS)
    # What a worker start costs before its first job runs compiled: the process, the load, its first bucket.
    result["ready_s"] = time.time() - spec.get("spawned_at", time.time() - (time.perf_counter() - start))
    if not spec.get("measure"):
        return result
    fast_setup = dataclasses.replace(setup, parts=fast, pipeline=None)
    folder = Path(spec["folder"])
    renders = (("quick", spec["quick"], spec["repeat"]), ("hq", spec["hq"], 1))
    for name, steps, runs in renders[:1] if spec["measure"] == "quick" else renders:
        result[name], result[f"{name}_peak"] = [], None
        for _ in range(runs):
            with peak_memory(fast.device) as mem:
                seconds, frames = time_ours(fast_setup, steps=steps)
            result[name].append(seconds)
            result[f"{name}_peak"] = mem["gib"]
            if name == "quick":
                quick_frames = frames
                eager = np.load(folder / "frames_eager.npy")
                result["frames_deviation"] = float(np.abs(frames - eager).max())
    if turbo is not None:
        result.update(measure_turbo(*turbo, setup, spec, quick_frames=quick_frames))
    if spec["measure"] == "quick":
        return result
    args, kwargs = capture_unet_inputs(fast_setup)
    result["step_ms"], out = time_unet_calls(fast.unet, args, kwargs)
    eager_out = torch.from_numpy(np.load(folder / "unet_eager.npy"))
    result["unet_deviation"] = relative_deviation(out.cpu(), eager_out)
    result["compiled_calls"] = dict(fast.unet.calls) if hasattr(fast.unet, "calls") else {}
    return result


def turbo_setup(fast: ModelParts, options: FastPathOptions, setup: BenchSetup, spec: dict[str, Any]
                ) -> tuple[ModelParts, Preset, str]:
    """The turbo preset at the bench's size, and the parts that render it (a float8 twin where the card has
    float8), with the deep cache installed before anything compiles, as the worker does."""
    preset = dataclasses.replace(DEFAULT_PRESETS["turbo"], name="bench-turbo", steps=spec["turbo"],
                                 pixels=setup.width * setup.height, frames=setup.frames, fps=setup.fps,
                                 guidance=setup.guidance, scheduler=setup.scheduler)
    reason = fp8_unavailable(fast.device) if preset.fp8 else "off"
    parts = fp8_variant(fast, options) if not reason else fast
    deep_cache(parts.unet, preset.deep_cache_branch)
    return parts, preset, "fp8 on" if not reason else f"fp8 off ({reason})"


def measure_turbo(parts: ModelParts, preset: Preset, fp8_note: str, setup: BenchSetup, spec: dict[str, Any],
                  quick_frames: np.ndarray) -> dict[str, Any]:
    """Turbo compiled: its warm-up, its renders, and its PSNR against this process's quick frames."""
    result: dict[str, Any] = {"turbo_compile_s": warm_bucket(parts, preset, setup.width, setup.height,
                                                             setup.decode_chunk_size)}
    turbo_setup_ = dataclasses.replace(setup, parts=parts, pipeline=None)
    plan = StepPlan.for_preset(preset)
    result["turbo"], result["turbo_peak"] = [], None
    for _ in range(spec["repeat"]):
        with peak_memory(parts.device) as mem:
            seconds, frames = time_ours(turbo_setup_, steps=preset.steps, plan=plan)
        result["turbo"].append(seconds)
        result["turbo_peak"] = mem["gib"]
    mse = float(np.mean((frames.astype(np.float64) - quick_frames) ** 2))
    result["turbo_psnr"] = 10 * math.log10(1 / mse) if mse > 0 else float("inf")
    result["turbo_note"] = (f"PSNR {result['turbo_psnr']:.1f} dB vs quick; guidance {plan.cfg_steps}/{plan.steps} "
                            f"steps, deep cache every {plan.interval}, {fp8_note}")
    return result


def child_entry(argv: list[str]) -> int:
    """`python -m engine.render.bench child SPEC_JSON`: always one result line, an error one on failure."""
    if len(argv) != 2 or argv[0] != "child":
        print("usage: python -m engine.render.bench child SPEC_JSON (run by run_bench)", file=sys.stderr)
        return 2
    try:
        result = child_main(json.loads(argv[1]))
    except Exception as exc:
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {first_line(exc)[:ERROR_CHARS]}"}
    print(CHILD_MARKER + json.dumps(result), flush=True)
    return 0
