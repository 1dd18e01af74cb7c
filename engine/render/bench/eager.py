"""The full suite's rows measured in the bench's own process, on the eager (uncompiled) networks: sampled UNet
calls (plain, channels-last, torchao fp8 linears), diffusers' pipeline against our sampler end to end, and our
sampler with low_vram offload. They come before the fast path, so a fast path that overruns its time still
leaves these printed."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engine.errors import first_line
from engine.render.bench.report import ERROR_CHARS, Row
from engine.render.bench.setup import BenchSetup
from engine.render.bench.timing import (
    peak_memory,
    per_step_slope,
    relative_deviation,
    time_ours,
    time_reference,
    time_unet_calls,
)
from engine.render.fastpath import fp8_twin, fp8_unavailable, to_channels_last
from engine.render.model import place


def eager_unet_rows(setup: BenchSetup, args: tuple, kwargs: dict[str, Any]
                    ) -> tuple[list[tuple[str, float, str]], torch.Tensor]:
    """Sampled UNet calls of the eager network, also in channels-last and with fp8 linears (reverted after)."""
    unet = setup.parts.unet
    ms, ref = time_unet_calls(unet, args, kwargs)
    rows = [("eager", ms, "")]
    try:
        to_channels_last(unet)
        ms_cl, out = time_unet_calls(unet, args, kwargs)
        rows.append(("eager channels-last", ms_cl, f"deviation {relative_deviation(out, ref):.1e}"))
    except Exception as exc:
        rows.append(("eager channels-last", float("nan"), f"failed: {first_line(exc)[:ERROR_CHARS]}"))
    finally:
        to_channels_last(unet, "contiguous")
    reason = fp8_unavailable(setup.parts.device)
    if reason:
        rows.append(("eager fp8 linears", float("nan"), f"not measured: {reason}"))
        return rows, ref
    try:
        twin = fp8_twin(unet)   # torchao; the original stays as it is
        ms_fp8, out = time_unet_calls(twin, args, kwargs)
        note = f"deviation {relative_deviation(out, ref):.1e} (turbo only)"
        rows.append(("eager fp8 linears", ms_fp8, note))
        del twin
    except Exception as exc:
        rows.append(("eager fp8 linears", float("nan"), f"failed: {first_line(exc)[:ERROR_CHARS]}"))
    return rows, ref


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
