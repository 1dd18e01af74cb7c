"""The report's text: the lines collected (and echoed as they come), the header, the CPU suite's table, the
full suite's UNet and end-to-end rows, and the performance targets with their verdicts. Formatting only:
the figures come from the measurements."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.render.bench.setup import BenchSetup
from engine.render.bench.timing import UNET_SAMPLE_CALLS
from engine.render.model import ModelParts

ERROR_CHARS = 160  # a failure note stays one readable line of the report

TARGETS = {"quick_s": 3.5, "speedup": 2.0, "hq_s": 6.0, "turbo_s": 2.0, "warm_compile_s": 60.0,
           "ready_warm_s": 30.0, "ready_cold_s": 90.0, "ltx_clip_s": 2.0, "peak_gib": 8.0, "low_vram_gib": 6.0}

Echo = Callable[[str], None]


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


def echo_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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


# ---------------------------------------------------------------- CPU suite


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


# ---------------------------------------------------------------- full suite


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


def target_lines(eager_rows: list[Row], fast: dict[str, Any], low: Row, ltx: dict[str, Any] | None = None
                 ) -> list[str]:
    """Each target with the measured figure (the targets are for one H100, warm)."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = ["targets (one H100/H200, warm)"]
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
        turbo = next((r for r in fast["rows"] if r.label == "turbo ours-fast"), None)
        if turbo is not None:
            lines.append(f"  turbo end to end {turbo.median:.2f} s <= {TARGETS['turbo_s']} s: "
                         f"{verdict(turbo.median <= TARGETS['turbo_s'])}")
        lines.append(f"  first job at full speed, empty cache {fast['ready_s']:.1f} s <= "
                     f"{TARGETS['ready_cold_s']:.0f} s: {verdict(fast['ready_s'] <= TARGETS['ready_cold_s'])}")
        if peaks:
            lines.append(f"  peak memory by default {max(peaks):.2f} GiB <= {TARGETS['peak_gib']} GiB: "
                         f"{verdict(max(peaks) <= TARGETS['peak_gib'])}")
        warm = fast.get("warm", {})
        if "ready_s" in warm:
            lines.append(f"  first job at full speed, warm cache {warm['ready_s']:.1f} s <= "
                         f"{TARGETS['ready_warm_s']:.0f} s: {verdict(warm['ready_s'] <= TARGETS['ready_warm_s'])}")
        if "all_buckets_s" in warm:
            lines.append(f"  compile warm-up with a warm cache, all {warm['buckets']} buckets "
                         f"{warm['all_buckets_s']:.0f} s (sampled) <= {TARGETS['warm_compile_s']:.0f} s: "
                         f"{verdict(warm['all_buckets_s'] <= TARGETS['warm_compile_s'])}")
    else:
        lines.append("  fast path: not measured")
    if ltx and ltx.get("rows"):
        best = min(ltx["rows"], key=lambda r: r.median)
        lines.append(f"  LTX-Video 2-second clip ({best.label}) {best.median:.2f} s <= {TARGETS['ltx_clip_s']} s: "
                     f"{verdict(best.median <= TARGETS['ltx_clip_s'])}")
    else:
        lines.append("  LTX-Video: not measured")
    if low.peak_gib is not None:
        lines.append(f"  low_vram peak {low.peak_gib:.2f} GiB <= {TARGETS['low_vram_gib']} GiB: "
                     f"{verdict(low.peak_gib <= TARGETS['low_vram_gib'])}")
    return lines
