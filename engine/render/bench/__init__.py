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
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import DiscordConfig, EngineConfig, LimitsConfig
from engine.errors import ModelError, first_line
from engine.presets import DEFAULT_PRESETS, Preset
from engine.render.model import ModelParts, full_configs, load_model, place
from engine.render.sampler import encode_prompt, sample, vae_scale

PROMPT = "a red ball rolls across a wooden table, soft light"
NEGATIVE = "distorted, blurry, static"
IMAGE_NOISE_SEED = 1234  # seeds the VAE posterior sample, for ours and (through the global RNG) the reference
MODEL_SEED = 0           # random full-size weights: the same in every process of one run
FULL_DEADLINE_S = 450.0  # the full suite plans its fresh-process parts to end within this
DEADLINE_ENV = "ENGINE_BENCH_DEADLINE_S"
CHILD_MARKER = "BENCH-CHILD-RESULT "
UNET_SAMPLE_CALLS = 5
REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class BenchSetup:
    parts: ModelParts
    image: Any  # PIL.Image.Image
    width: int
    height: int
    frames: int
    steps: int
    scheduler: str
    guidance: float
    fps: int
    decode_chunk_size: int
    latents: torch.Tensor  # starting noise, shared by every measurement
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor
    pipeline: Any = None  # the reference pipeline, built once


Measurement = Callable[[BenchSetup], tuple[float, np.ndarray]]
Echo = Callable[[str], None]


def run_bench(model: str = "tiny", repeat: int = 3, device: str = "auto", steps: int | None = None,
              size: int | tuple[int, int] | str | None = None, suite: str = "auto", echo: Echo | None = None,
              deadline_s: float | None = None, compile_backend: str = "inductor") -> str:
    """A printable report. suite "cpu": sampler table, UNet FLOPs and per-job overheads; "full": everything
    the GPU run reports (works on the CPU too, slowly, with the tiny model); "auto": full on CUDA.
    echo receives each line as soon as it is known (the full suite echoes to stderr by default).
    deadline_s (default FULL_DEADLINE_S, or $ENGINE_BENCH_DEADLINE_S) bounds the full suite's fresh processes.
    compile_backend "eager" makes the full suite's compile a quick graph capture (a dry run of the suite)."""
    start = time.perf_counter()
    if deadline_s is None:
        deadline_s = float(os.environ.get(DEADLINE_ENV) or FULL_DEADLINE_S)
    setup = prepare(model, device, steps, size)
    if suite == "auto":
        suite = "full" if setup.parts.device.type == "cuda" else "cpu"
    if suite == "full":
        report = Report(echo if echo is not None else _stderr)
        run_full_suite(setup, model, max(1, repeat), report, start + deadline_s, compile_backend)
        return report.text()
    if suite != "cpu":
        raise ValueError(f"suite must be auto, cpu or full, not {suite!r}")
    report = Report(echo)
    run_cpu_suite(setup, max(1, repeat), report)
    return report.text()


def default_measurements() -> dict[str, Measurement]:
    return {"ours": time_ours, "reference": time_reference}


class Report:
    """Lines of the report, echoed as they come (a run cut short still shows what it measured)."""

    def __init__(self, echo: Echo | None = None):
        self.lines: list[str] = []
        self.echo = echo

    def add(self, *lines: str) -> None:
        for line in lines:
            self.lines.append(line)
            if self.echo is not None:
                self.echo(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- setup


def prepare(model: str, device: str, steps: int | None, size: int | tuple[int, int] | str | None) -> BenchSetup:
    torch_device = _bench_device(model, device)
    if model != "tiny":
        torch.manual_seed(MODEL_SEED)
    parts = load_model(model, device=str(torch_device))
    small = parts.name == "tiny"
    width, height = parse_size(size) if size is not None else ((64, 64) if small else (512, 512))
    frames, steps = 16, steps or 30
    image = _bench_image(width, height)
    scale = vae_scale(parts)
    latent_shape = (1, parts.unet.config.in_channels, frames, height // scale, width // scale)
    latents = torch.randn(latent_shape, generator=torch.Generator("cpu").manual_seed(0))
    with torch.no_grad():
        prompt_embeds = encode_prompt(parts, PROMPT)
        negative_embeds = encode_prompt(parts, NEGATIVE)
    return BenchSetup(
        parts=parts, image=image, width=width, height=height, frames=frames, steps=steps,
        scheduler="dpmpp_2m", guidance=9.0, fps=8,
        decode_chunk_size=production_decode_chunk(parts, width, height, frames),
        latents=latents.to(parts.device, parts.dtype), prompt_embeds=prompt_embeds,
        negative_embeds=negative_embeds, pipeline=reference_pipeline(parts, "dpmpp_2m"),
    )


def production_decode_chunk(parts: ModelParts, width: int, height: int, frames: int) -> int:
    """The decode chunk the worker would use with the default config (the memory budget on CUDA)."""
    from engine.render.fastpath import decode_chunk_policy

    policy = decode_chunk_policy(parts, EngineConfig())
    return policy(width, height, frames) if policy else EngineConfig().decode_chunk_size


def _bench_device(model: str, device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if model != "tiny" and resolved.type != "cuda":
        raise ModelError(f"Benchmarking {model} needs a CUDA GPU; on the CPU use the tiny model.")
    return resolved


def parse_size(size: int | tuple[int, int] | str) -> tuple[int, int]:
    """64 -> (64, 64); "512x320" -> (512, 320); (w, h) as is."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, str):
        w, _, h = size.lower().partition("x")
        return int(w), int(h or w)
    return int(size[0]), int(size[1])


def _bench_image(width: int, height: int):
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                       128 + 100 * np.sin((x + y) / 7.0)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def reference_pipeline(parts: ModelParts, scheduler: str):
    from diffusers import I2VGenXLPipeline

    from engine.render.sampler import build_scheduler

    pipe = I2VGenXLPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
        image_encoder=parts.image_encoder, feature_extractor=parts.feature_extractor, unet=parts.unet,
        scheduler=build_scheduler(parts.scheduler_config, scheduler),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------- end-to-end measurements


def time_ours(setup: BenchSetup, steps: int | None = None) -> tuple[float, np.ndarray]:
    generator = torch.Generator("cpu").manual_seed(IMAGE_NOISE_SEED)
    return _timed(setup, lambda: sample(
        setup.parts, setup.image, PROMPT, NEGATIVE, steps=steps or setup.steps, scheduler=setup.scheduler,
        guidance=setup.guidance, frames=setup.frames, width=setup.width, height=setup.height, seed=0,
        fps=setup.fps, latents=setup.latents, decode_chunk_size=setup.decode_chunk_size, output="float",
        image_latents_generator=generator,
    ))


def time_reference(setup: BenchSetup, steps: int | None = None) -> tuple[float, np.ndarray]:
    def run() -> np.ndarray:
        torch.manual_seed(IMAGE_NOISE_SEED)  # the pipeline samples the VAE posterior from the global RNG
        return setup.pipeline(
            image=setup.image, prompt_embeds=setup.prompt_embeds, negative_prompt_embeds=setup.negative_embeds,
            height=setup.height, width=setup.width, target_fps=setup.fps, num_frames=setup.frames,
            num_inference_steps=steps or setup.steps, guidance_scale=setup.guidance, latents=setup.latents,
            decode_chunk_size=setup.decode_chunk_size, output_type="np",
        ).frames[0]

    return _timed(setup, run)


def _timed(setup: BenchSetup, run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    _sync(setup.parts.device)
    start = time.perf_counter()
    out = run()
    _sync(setup.parts.device)
    return time.perf_counter() - start, out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """{"gib": peak GiB allocated within the block} on CUDA; None on the CPU."""
    result: dict[str, float | None] = {"gib": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield result
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result["gib"] = torch.cuda.max_memory_allocated(device) / 2**30


# ---------------------------------------------------------------- UNet efficiency


def capture_unet_inputs(setup: BenchSetup, parts: ModelParts | None = None) -> tuple[tuple, dict[str, Any]]:
    """The exact arguments of one UNet call of a render of this setup (CFG batch), from a 1-step render."""
    parts = parts or setup.parts
    captured: list[tuple[tuple, dict[str, Any]]] = []
    handle = parts.unet.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append((args, dict(kwargs))), with_kwargs=True)
    try:
        sample(parts, setup.image, PROMPT, NEGATIVE, steps=1, scheduler=setup.scheduler,
               guidance=setup.guidance, frames=setup.frames, width=setup.width, height=setup.height, seed=0,
               fps=setup.fps, latents=setup.latents, output="latent")
    finally:
        handle.remove()
    return captured[0]


def unet_call_flops(unet: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> float:
    """FLOPs of one UNet call, counted by torch's FlopCounterMode (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(*args, **kwargs)
    return float(counter.get_total_flops())


def full_size_unet_flops(width: int = 512, height: int = 512, frames: int = 16) -> float:
    """FLOPs of one full-size I2VGen-XL UNet call with CFG (batch 2), counted on the meta device (no memory,
    no GPU): what the GPU run's TFLOP/s figures divide."""
    from diffusers import I2VGenXLUNet

    with torch.device("meta"):
        unet = I2VGenXLUNet(**full_configs()["unet"]).to(torch.float16)
        latents = torch.empty(2, 4, frames, height // 8, width // 8, dtype=torch.float16)
        kwargs = dict(encoder_hidden_states=torch.empty(2, 77, 1024, dtype=torch.float16),
                      fps=torch.tensor([8, 8]), image_latents=torch.empty_like(latents),
                      image_embeddings=torch.empty(2, 1, 1024, dtype=torch.float16), return_dict=False)
        return unet_call_flops(unet, (latents, torch.tensor(999)), kwargs)


def time_unet_calls(unet: torch.nn.Module, args: tuple, kwargs: dict[str, Any], calls: int = UNET_SAMPLE_CALLS,
                    device: torch.device | None = None) -> tuple[float, torch.Tensor]:
    """(ms per call over `calls` calls after one warm-up call, the last output)."""
    device = device or args[0].device
    with torch.no_grad():
        out = unet(*args, **kwargs)[0]
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            out = unet(*args, **kwargs)[0]
        _sync(device)
    return 1000 * (time.perf_counter() - start) / calls, out


def matmul_tflops(device: torch.device) -> tuple[str, float]:
    """(label, TFLOP/s) of a large square matmul: bf16 8192^3 on CUDA (timed with CUDA events), float32
    1024^3 on the CPU: the roofline the UNet's TFLOP/s is compared with."""
    if device.type == "cuda":
        n, dtype, iters = 8192, torch.bfloat16, 20
    else:
        n, dtype, iters = 1024, torch.float32, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        begin.record()
        for _ in range(iters):
            a @ b
        end.record()
        torch.cuda.synchronize(device)
        seconds = begin.elapsed_time(end) / 1000
    else:
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        seconds = time.perf_counter() - start
    label = f"{str(dtype).removeprefix('torch.')} matmul {n}^3"
    return label, 2 * n**3 * iters / seconds / 1e12


def relative_deviation(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in float32."""
    ref = ref.float()
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


# ---------------------------------------------------------------- per-job work outside the model


def time_validation(repeat: int, width: int = 1920, height: int = 1440) -> float:
    """Seconds to check and decode a phone-sized JPEG upload (engine.media.validate.load_image)."""
    from engine.media.validate import load_image

    buffer = io.BytesIO()
    _bench_image(width, height).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    lim = LimitsConfig()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        load_image(data, max_bytes=lim.max_image_bytes, max_pixels=lim.max_image_pixels,
                   min_side=lim.min_image_side)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_queue(repeat: int, folder: Path) -> float:
    """Seconds from submit to claim of one job through a real SQLite store file."""
    return asyncio.run(_time_queue(repeat, folder))


async def _time_queue(repeat: int, folder: Path) -> float:
    from engine.jobs import Job, JobState, new_job_id
    from engine.queue.sqlite_store import SQLiteStore
    from engine.queue.store import Limits

    store = SQLiteStore(folder / "bench-jobs.sqlite3")
    await store.open()
    try:
        times = []
        for i in range(repeat):
            job = Job(id=new_job_id(), user=f"bench:{i}", prompt_raw="x", prompt="x", preset="quick", seed=i,
                      image_path=str(folder / "in.png"))
            start = time.perf_counter()
            await store.submit(job, Limits())
            claimed = await store.claim("bench-worker")
            times.append(time.perf_counter() - start)
            assert claimed is not None and claimed.id == job.id
            await store.finish(job.id, JobState.DONE)
        return statistics.median(times)
    finally:
        await store.close()


def moving_frames(width: int = 512, height: int = 512, frames: int = 16) -> np.ndarray:
    """(frames, height, width, 3) uint8: a textured picture panning 4 pixels a frame, so the encoder has
    detail and motion to code, like a generated clip (~170 kB at the default quality)."""
    wide = width + 4 * frames
    texture = np.random.default_rng(0).normal(0, 20, (height // 2, wide // 2, 3)).repeat(2, 0).repeat(2, 1)
    still = np.clip(np.asarray(_bench_image(wide, height)) + texture, 0, 255).astype(np.uint8)
    return np.stack([still[:, 4 * i:4 * i + width] for i in range(frames)])


def time_mp4(repeat: int, folder: Path, frames: np.ndarray, fps: int = 8) -> tuple[float, Path]:
    from engine.media.video import write_mp4

    times = []
    path = folder / "bench.mp4"
    for _ in range(repeat):
        start = time.perf_counter()
        write_mp4(frames, path, fps=fps)
        times.append(time.perf_counter() - start)
    return statistics.median(times), path


def time_fit(repeat: int, path: Path, max_bytes: int) -> float:
    from engine.media.video import fit_to_size

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fit_to_size(path, max_bytes, out_path=path.with_name("bench.fit.mp4"))
        times.append(time.perf_counter() - start)
        assert out.stat().st_size <= max_bytes
    return statistics.median(times)


def overhead_rows(repeat: int) -> list[tuple[str, float]]:
    """(label, seconds) for the work a job needs outside the model."""
    cap = DiscordConfig().upload_limit_bytes
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        folder = Path(tmp)
        mp4_s, path = time_mp4(repeat, folder, moving_frames())
        size = path.stat().st_size
        return [
            ("validate a 1920x1440 JPEG upload (load_image)", time_validation(repeat)),
            ("queue submit -> claim, SQLite file", time_queue(max(repeat, 5), folder)),
            (f"MP4 encode, 16 frames 512x512 (write_mp4, {size / 1000:.0f} kB)", mp4_s),
            (f"fit to the Discord cap of {cap / 2**20:.0f} MiB (fits as is)", time_fit(repeat, path, cap)),
            ("fit, forced re-encode to half the size", time_fit(repeat, path, size // 2)),
        ]


# ---------------------------------------------------------------- CPU suite


def run_cpu_suite(setup: BenchSetup, repeat: int, report: Report) -> None:
    measurements = default_measurements()
    outputs = {name: fn(setup)[1] for name, fn in measurements.items()}  # warm-up, and outputs to compare
    times: dict[str, list[float]] = {name: [] for name in measurements}
    for _ in range(repeat):
        for name, fn in measurements.items():
            times[name].append(fn(setup)[0])
    report.add(*format_report(setup, times, outputs).splitlines())
    report.add("", *unet_efficiency_lines(setup))
    report.add("", f"{'per-job work outside the model (median of ' + str(repeat) + ')':<58}{'ms':>9}")
    for label, seconds in overhead_rows(repeat):
        report.add(f"{label:<58}{1000 * seconds:>9.1f}")


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


def format_report(setup: BenchSetup, times: dict[str, list[float]], outputs: dict[str, np.ndarray]) -> str:
    parts = setup.parts
    runs = len(next(iter(times.values())))
    lines = [
        *header_lines(parts),
        f"render {setup.width}x{setup.height}, {setup.frames} frames, {setup.steps} steps {setup.scheduler}, "
        f"guidance {setup.guidance}, decode chunk {setup.decode_chunk_size}; "
        f"{runs} runs each after 1 warm-up, interleaved",
        "",
        f"{'':<12}{'median s':>10}{'min s':>10}{'max s':>10}{'stdev s':>10}{'ms/step':>10}",
    ]
    for name, values in times.items():
        med = statistics.median(values)
        stdev = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"{name:<12}{med:>10.3f}{min(values):>10.3f}{max(values):>10.3f}{stdev:>10.3f}"
                     f"{1000 * med / setup.steps:>10.1f}")
    if "ours" in times and "reference" in times:
        ratio = statistics.median(times["ours"]) / statistics.median(times["reference"])
        diff = float(np.abs(outputs["ours"].astype(np.float32) - outputs["reference"].astype(np.float32)).max())
        lines += ["", f"ours/reference (medians): {ratio:.3f}",
                  f"max |ours - reference| on frames in [0, 1], same noise: {diff:.2e}"]
    return "\n".join(lines)


def header_lines(parts: ModelParts) -> list[str]:
    import diffusers

    return [
        f"bench  model={parts.name} ({parts.parameter_count() / 1e6:.1f}M params)  device={_device_name(parts)}"
        f"  dtype={str(parts.dtype).removeprefix('torch.')}  threads={torch.get_num_threads()}",
        f"       torch {torch.__version__}, diffusers {diffusers.__version__}",
    ]


def _device_name(parts: ModelParts) -> str:
    if parts.device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(parts.device)})"
    return "cpu"


# ---------------------------------------------------------------- full suite


@dataclass
class Row:
    label: str
    times: list[float]
    peak_gib: float | None = None
    steps: int = 0
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)


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

        del eager_unet_out
        _free(parts.device)
        fast = fast_path_rows(setup, model, repeat, quick, hq, folder, deadline, report, flops, peak,
                              compile_backend)
    report.add("", *target_lines(rows, fast, low[0]))


def eager_unet_rows(setup: BenchSetup, args: tuple, kwargs: dict[str, Any]
                    ) -> tuple[list[tuple[str, float, str]], torch.Tensor]:
    """Sampled UNet calls of the eager network, also in channels-last and with fp8 linears (reverted after)."""
    from engine.render.fastpath import quantize_linears_fp8, to_channels_last

    unet = setup.parts.unet
    ms, ref = time_unet_calls(unet, args, kwargs)
    rows = [("eager", ms, "")]
    try:
        to_channels_last(unet)
        ms_cl, out = time_unet_calls(unet, args, kwargs)
        rows.append(("eager channels-last", ms_cl, f"deviation {relative_deviation(out, ref):.1e}"))
    except Exception as exc:
        rows.append(("eager channels-last", float("nan"), f"failed: {_first_line(exc)}"))
    finally:
        to_channels_last(unet, "contiguous")
    replaced: list = []
    try:
        replaced = quantize_linears_fp8(unet)
        ms_fp8, out = time_unet_calls(unet, args, kwargs)
        note = f"deviation {relative_deviation(out, ref):.1e} (off by default)"
        rows.append(("eager fp8 linears", ms_fp8, note))
    except Exception as exc:
        rows.append(("eager fp8 linears", float("nan"), f"failed: {_first_line(exc)}"))
    finally:
        for parent, name, linear in replaced:
            setattr(parent, name, linear)
    return rows, ref


def unet_table_header() -> list[str]:
    return [f"UNet call, sampled: 1 warm-up + {UNET_SAMPLE_CALLS} calls",
            f"{'':<26}{'ms/call':>10}{'TFLOP/s':>10}{'of peak':>9}  note"]


def unet_row(name: str, ms: float, flops: float, peak: float, note: str = "") -> str:
    achieved = flops / (ms / 1000) / 1e12 if ms == ms and ms > 0 else float("nan")
    rate = f"{achieved:>10.1f}" if achieved >= 10 else f"{achieved:>10.3g}"
    return f"{name:<26}{ms:>10.1f}{rate}{100 * achieved / peak:>8.1f}%  {note}".rstrip()


def end_to_end_header() -> list[str]:
    return ["end to end", f"{'':<28}{'median s':>9}{'min s':>8}{'max s':>8}{'runs':>5}{'ms/step':>9}"
                          f"{'peak GiB':>9}  note"]


def end_to_end_row(row: Row) -> str:
    peak = f"{row.peak_gib:>9.2f}" if row.peak_gib is not None else f"{'n/a':>9}"
    per_step = 1000 * row.median / row.steps if row.steps else float("nan")
    return (f"{row.label:<28}{row.median:>9.3f}{min(row.times):>8.3f}{max(row.times):>8.3f}{len(row.times):>5}"
            f"{per_step:>9.1f}{peak}  {row.note}").rstrip()


def eager_end_to_end(setup: BenchSetup, repeat: int, quick: int, hq: int) -> tuple[list[Row], np.ndarray]:
    """diffusers' pipeline and our sampler, eager: quick measured, hq sampled from the per-step slope."""
    device = setup.parts.device
    engines = {"diffusers-eager": time_reference, "ours-eager": time_ours}
    short = 2
    for fn in engines.values():
        fn(setup, steps=short)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in engines}
    peaks: dict[str, float | None] = {name: None for name in engines}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(repeat):
        for name, fn in engines.items():
            with peak_memory(device) as mem:
                seconds, outputs[name] = fn(setup, steps=quick)
            times[name].append(seconds)
            if mem["gib"] is not None:
                peaks[name] = max(peaks[name] or 0.0, mem["gib"])
    rows = [Row(f"quick {name}", times[name], peaks[name], quick) for name in engines]
    for name, fn in engines.items():
        slope = per_step_slope(statistics.median(times[name]), quick, fn(setup, steps=short)[0], short)
        estimate = statistics.median(times[name]) + (hq - quick) * slope
        rows.append(Row(f"hq {name}", [estimate], peaks[name], hq,
                        f"sampled: quick + {hq - quick} x {1000 * slope:.1f} ms per-step slope"))
    diff = float(np.abs(outputs["ours-eager"] - outputs["diffusers-eager"].astype(np.float32)).max())
    rows[1].note = f"max |ours - diffusers| {diff:.1e}"
    return rows, outputs["ours-eager"]


def low_vram_row(setup: BenchSetup, quick: int, steps: int = 5) -> tuple[Row, str]:
    """Our sampler with model CPU offload: its peak, and whether only the running network was on the GPU."""
    parts = setup.parts
    steps = min(steps, quick)
    place(parts, parts.device, parts.dtype, low_vram=True)
    seen: list[str] = []
    watched = {"text_encoder": parts.text_encoder, "image_encoder": parts.image_encoder, "unet": parts.unet,
               "vae.encoder": parts.vae.encoder, "vae.decoder": parts.vae.decoder}
    owners = {"vae.encoder": parts.vae, "vae.decoder": parts.vae}

    def check(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            for other, net in parts.modules().items():
                on_gpu = next(net.parameters()).device.type == "cuda"
                running = owners.get(name, watched[name]) is net
                if on_gpu != running and parts.device.type == "cuda":
                    seen.append(f"{other} {'on' if on_gpu else 'off'} the GPU while {name} ran")
        return hook

    handles = [m.register_forward_pre_hook(check(n)) for n, m in watched.items()]
    try:
        time_ours(setup, steps=2)  # warm-up of the transfers
        with peak_memory(parts.device) as mem:
            seconds, _ = time_ours(setup, steps=steps)
        short, _ = time_ours(setup, steps=2)
    finally:
        for h in handles:
            h.remove()
        place(parts, parts.device, parts.dtype, low_vram=False)
    slope = per_step_slope(seconds, steps, short, 2)
    estimate = seconds + (quick - steps) * slope
    row = Row("quick ours-eager low_vram", [estimate], mem["gib"], quick,
              f"sampled: {steps} steps + {quick - steps} x {1000 * slope:.1f} ms")
    verdict = ("each network was on the GPU only while it ran" if not seen
               else "NOT offloaded: " + "; ".join(sorted(set(seen))[:4]))
    return row, verdict


def per_step_slope(long_s: float, long_steps: int, short_s: float, short_steps: int) -> float:
    """Seconds each extra step adds, from two renders that differ only in steps."""
    if long_steps <= short_steps:
        return long_s / max(1, long_steps)
    return max(0.0, (long_s - short_s) / (long_steps - short_steps))


# ---------------------------------------------------------------- fast path in fresh processes


def fast_options(cache_dir: Path, device: torch.device, backend: str = "inductor") -> dict[str, Any]:
    """The worker's fast path for this device (compile forced on), as JSON for a child process."""
    from engine.render.fastpath import options_from_config

    options = options_from_config(dataclasses.replace(EngineConfig(), compile=True), device, cache_dir.parent)
    fields = dataclasses.asdict(dataclasses.replace(options, backend=backend))
    fields["cache_dir"] = str(cache_dir)
    return fields


def fast_path_rows(setup: BenchSetup, model: str, repeat: int, quick: int, hq: int, folder: Path,
                   deadline: float, report: Report, flops: float, peak: float,
                   backend: str = "inductor") -> dict[str, Any]:
    """Cold compile + fast renders in one fresh process, then a warm-cache compile in another."""
    from engine.render.fastpath import COMPILE_MODE, GRAPHS_MODE

    device = setup.parts.device
    cache_dir = folder / "compile-cache"
    spec = {
        "model": model, "device": str(device), "width": setup.width, "height": setup.height,
        "frames": setup.frames, "quick": quick, "hq": hq, "repeat": repeat, "folder": str(folder),
        "options": fast_options(cache_dir, device, backend), "checksum": weights_checksum(setup.parts),
    }
    mode = spec["options"]["mode"] or (GRAPHS_MODE if spec["options"]["cuda_graphs"] else COMPILE_MODE)
    bucket = f"{setup.width}x{setup.height}x{setup.frames}"
    report.add("", f"fast path: fused QKV {spec['options']['fuse_qkv']}, torch.compile mode {mode}, "
                   f"backend {spec['options']['backend']}, CUDA graphs {spec['options']['cuda_graphs']}, "
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
                 Row("hq ours-fast", cold["hq"], cold["hq_peak"], hq)]
    for row in fast_rows:
        report.add(end_to_end_row(row))
    warm = run_child({**spec, "measure": False}, timeout=deadline - time.perf_counter() - 5)
    if "error" in warm:
        report.add(f"  warm-cache compile not measured: {warm['error']}")
    else:
        from engine.render.fastpath import warm_presets, warm_shapes

        buckets = len(warm_shapes(DEFAULT_PRESETS, warm_presets(DEFAULT_PRESETS)))
        warm["all_buckets_s"] = buckets * warm["compile_s"]
        warm["buckets"] = buckets
        report.add(f"compile warm-up of the same bucket, warm cache, fresh process: {warm['compile_s']:.1f} s; "
                   f"all {buckets} buckets of the warmed presets: {warm['all_buckets_s']:.0f} s "
                   f"(sampled: {buckets} x 1 bucket)")
    return {**cold, "rows": fast_rows, "warm": warm}


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run child_main in a fresh Python (its own process group, killed whole at the time limit)."""
    if timeout < 30:
        return {"error": f"out of time ({timeout:.0f} s left for it)"}
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


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load, check the weights match the parent's, accelerate, compile one bucket (timed);
    with "measure", also the fast renders, the sampled UNet call and the deviations from the eager outputs."""
    from engine.render.fastpath import FastPathOptions, accelerate, warm_bucket

    start = time.perf_counter()
    setup = prepare(spec["model"], spec["device"], spec["quick"], (spec["width"], spec["height"]))
    result: dict[str, Any] = {"load_s": time.perf_counter() - start}
    if not math.isclose(weights_checksum(setup.parts), spec["checksum"], rel_tol=1e-6):
        return {"error": "the fresh process built different weights"}
    options = FastPathOptions(**{**spec["options"], "cache_dir": Path(spec["options"]["cache_dir"])})
    fast = accelerate(setup.parts, options)
    preset = Preset("bench", spec["quick"], setup.scheduler, setup.width * setup.height, setup.frames,
                    setup.fps, setup.guidance)
    result["warm_steps"] = 2
    result["compile_s"] = warm_bucket(fast, preset, setup.width, setup.height, setup.decode_chunk_size, 2)
    if not spec.get("measure"):
        return result
    fast_setup = dataclasses.replace(setup, parts=fast, pipeline=None)
    folder = Path(spec["folder"])
    for name, steps, runs in (("quick", spec["quick"], spec["repeat"]), ("hq", spec["hq"], 1)):
        result[name], result[f"{name}_peak"] = [], None
        for _ in range(runs):
            with peak_memory(fast.device) as mem:
                seconds, frames = time_ours(fast_setup, steps=steps)
            result[name].append(seconds)
            result[f"{name}_peak"] = mem["gib"]
            if name == "quick":
                eager = np.load(folder / "frames_eager.npy")
                result["frames_deviation"] = float(np.abs(frames - eager).max())
    args, kwargs = capture_unet_inputs(fast_setup)
    result["step_ms"], out = time_unet_calls(fast.unet, args, kwargs)
    eager_out = torch.from_numpy(np.load(folder / "unet_eager.npy"))
    result["unet_deviation"] = relative_deviation(out.cpu(), eager_out)
    result["compiled_calls"] = dict(fast.unet.calls) if hasattr(fast.unet, "calls") else {}
    return result


def weights_checksum(parts: ModelParts) -> float:
    """A sum over a few UNet weights: equal in two processes only when they built the same model."""
    params = list(parts.unet.parameters())
    return float(sum(p.detach().float().sum().item() for p in params[:: max(1, len(params) // 16)]))


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _first_line(exc: BaseException) -> str:
    return first_line(exc)[:160]


# ---------------------------------------------------------------- targets


TARGETS = {"quick_s": 3.5, "speedup": 2.0, "hq_s": 6.0, "warm_compile_s": 30.0, "peak_gib": 8.0,
           "low_vram_gib": 6.0}


def target_lines(eager_rows: list[Row], fast: dict[str, Any], low: Row) -> list[str]:
    """Each target with the measured figure (the targets are for one H100, warm)."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = ["targets (one H100, warm)"]
    diffusers_quick = next(r for r in eager_rows if r.label == "quick diffusers-eager").median
    if "rows" in fast:
        quick, hq = fast["rows"][0], fast["rows"][1]
        speedup = diffusers_quick / quick.median
        peaks = [x for x in (quick.peak_gib, hq.peak_gib) if x is not None]
        lines += [
            f"  quick end to end {quick.median:.2f} s <= {TARGETS['quick_s']} s: "
            f"{verdict(quick.median <= TARGETS['quick_s'])}",
            f"  quick {speedup:.2f}x faster than diffusers-eager, >= {TARGETS['speedup']}x: "
            f"{verdict(speedup >= TARGETS['speedup'])}",
            f"  hq end to end {hq.median:.2f} s <= {TARGETS['hq_s']} s: "
            f"{verdict(hq.median <= TARGETS['hq_s'])}",
        ]
        if peaks:
            lines.append(f"  peak memory by default {max(peaks):.2f} GiB <= {TARGETS['peak_gib']} GiB: "
                         f"{verdict(max(peaks) <= TARGETS['peak_gib'])}")
        warm = fast.get("warm", {})
        if "all_buckets_s" in warm:
            lines.append(f"  compile warm-up with a warm cache, all {warm['buckets']} buckets "
                         f"{warm['all_buckets_s']:.0f} s (sampled) <= {TARGETS['warm_compile_s']:.0f} s: "
                         f"{verdict(warm['all_buckets_s'] <= TARGETS['warm_compile_s'])}")
    else:
        lines.append("  fast path: not measured")
    if low.peak_gib is not None:
        lines.append(f"  low_vram peak {low.peak_gib:.2f} GiB <= {TARGETS['low_vram_gib']} GiB: "
                     f"{verdict(low.peak_gib <= TARGETS['low_vram_gib'])}")
    return lines


def _child_entry(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "child":
        print("usage: python -m engine.render.bench child SPEC_JSON (run by run_bench)", file=sys.stderr)
        return 2
    try:
        result = child_main(json.loads(argv[1]))
    except Exception as exc:
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {_first_line(exc)}"}
    print(CHILD_MARKER + json.dumps(result), flush=True)
    return 0

