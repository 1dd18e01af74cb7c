"""The bench: the CPU suite's rows, its building blocks, and a dry run of the full (GPU) suite on the CPU."""

import json
import math
import re

import numpy as np
import pytest
import torch

from engine.errors import ModelError
from engine.render.bench import run_bench
from engine.render.bench.fast_path import run_child
from engine.render.bench.overheads import moving_frames, time_mp4, time_queue
from engine.render.bench.report import Row, end_to_end_row, target_lines
from engine.render.bench.setup import prepare
from engine.render.bench.timing import (
    capture_unet_inputs,
    full_size_unet_flops,
    matmul_tflops,
    per_step_slope,
    unet_call_flops,
)

torch.set_num_threads(1)

NUMBER = r"(\d+(?:\.\d+)?(?:e[+-]\d+)?)"


def row_value(report: str, label: str) -> float:
    line = next(line for line in report.splitlines() if line.startswith(label))
    return float(re.findall(NUMBER, line[len(label):])[-1])


def test_cpu_suite_reports_the_sampler_the_unet_and_the_per_job_overheads():
    report = run_bench("tiny", repeat=1, device="cpu", steps=2, size=64)
    lines = report.splitlines()
    assert lines[0].startswith("bench  model=tiny") and "device=cpu" in lines[0]
    for name in ("ours ", "reference "):
        row = next(line for line in lines if line.startswith(name))
        median, low, high = (float(x) for x in row.split()[1:4])
        assert 0 < low <= median <= high
    assert "ours/reference (medians): " in report
    diff_line = next(line for line in lines if line.startswith("max |ours - reference|"))
    assert float(diff_line.rsplit(":", 1)[1]) <= 1e-5
    unet = next(line for line in lines if line.startswith("UNet call (CFG batch 2, 16x8x8 latents)"))
    assert float(re.search(r"(\d+\.\d+) GFLOP in", unet).group(1)) > 0
    full = next(line for line in lines if line.startswith("full-size UNet call"))
    assert abs(float(re.search(r"(\d+\.\d+) TFLOP", full).group(1)) - 41.87) < 0.05
    for label in ("validate a 1920x1440 JPEG upload", "queue submit -> claim, SQLite file",
                  "MP4 encode, 16 frames 512x512", "fit to the Discord cap of 10 MiB (fits as is)",
                  "fit, forced re-encode to half the size"):
        assert row_value(report, label) >= 0
    assert row_value(report, "MP4 encode, 16 frames 512x512") > 0
    # Re-encoding takes real encoder runs; a file that fits is only looked at.
    assert row_value(report, "fit, forced re-encode") > row_value(report, "fit to the Discord cap")


def test_the_full_size_model_is_refused_on_the_cpu():
    with pytest.raises(ModelError, match="CUDA GPU"):
        run_bench("random-full", device="cpu")


def test_unet_flops_counted_on_the_meta_device_match_the_measured_full_size():
    assert full_size_unet_flops() == pytest.approx(41.87e12, rel=0.002)
    # FLOPs grow with the pixels: 640x384 has 0.94 of 512x512's latent pixels (plus equal text attention).
    assert full_size_unet_flops(640, 384, 16) < full_size_unet_flops()


def test_flop_count_and_timing_of_one_tiny_unet_call():
    setup = prepare("tiny", "cpu", 2, 64)
    args, kwargs = capture_unet_inputs(setup)
    assert args[0].shape == (2, 4, 16, 8, 8) and kwargs["encoder_hidden_states"].shape[0] == 2
    flops = unet_call_flops(setup.parts.unet, args, kwargs)
    assert 1e6 < flops < 1e10
    label, tflops = matmul_tflops(torch.device("cpu"))
    assert label == "float32 matmul 1024^3" and tflops > 0


def test_queue_and_mp4_timings_use_the_real_store_and_encoder(tmp_path):
    from engine.media.video import read_mp4_frames

    assert 0 < time_queue(3, tmp_path) < 5
    assert (tmp_path / "bench-jobs.sqlite3").stat().st_size > 0
    frames = moving_frames()
    assert frames.shape == (16, 512, 512, 3) and not np.array_equal(frames[0], frames[1])
    seconds, path = time_mp4(1, tmp_path, frames)
    decoded = read_mp4_frames(path)
    assert seconds > 0 and decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 6


def test_per_step_slope_and_rows():
    assert per_step_slope(7.3, 30, 0.9, 2) == pytest.approx(6.4 / 28)
    assert per_step_slope(1.0, 2, 1.0, 2) == 0.5
    row = Row("quick ours-fast", [3.2, 3.0, 3.4], 7.5, 30, "note")
    text = end_to_end_row(row)
    assert text.startswith("quick ours-fast") and "3.200" in text and "106.7" in text and "7.50" in text
    assert "n/a" in end_to_end_row(Row("x", [1.0], None, 10))


def test_targets_are_judged_from_the_rows():
    eager = [Row("quick diffusers-eager", [7.3], 7.3, 30)]
    fast = {"rows": [Row("quick ours-fast", [3.4], 7.6, 30), Row("hq ours-fast", [6.5], 7.6, 50),
                     Row("turbo ours-fast", [1.8], 7.0, 25)],
            "ready_s": 95.0, "warm": {"all_buckets_s": 25.0, "buckets": 5, "ready_s": 12.5}}
    lines = target_lines(eager, fast, Row("low", [9.0], 5.5, 30))
    text = "\n".join(lines)
    assert "quick end to end 3.40 s <= 3.5 s: met" in text
    assert "2.15x faster than diffusers-eager, >= 2.0x: met" in text
    assert "hq end to end 6.50 s <= 6.0 s: MISSED" in text
    assert "peak memory by default 7.60 GiB <= 8.0 GiB: met" in text
    assert "all 5 buckets 25 s (sampled) <= 60 s: met" in text
    assert "turbo end to end 1.80 s <= 2.0 s: met" in text
    assert "first job at full speed, empty cache 95.0 s <= 90 s: MISSED" in text
    assert "first job at full speed, warm cache 12.5 s <= 30 s: met" in text
    assert "low_vram peak 5.50 GiB <= 6.0 GiB: met" in text
    assert "fast path: not measured" in "\n".join(target_lines(eager, {"error": "x"}, Row("l", [1], None)))


def test_a_child_without_time_or_with_a_bad_spec_reports_an_error():
    assert "out of time" in run_child({}, timeout=5)["error"]
    result = run_child({"model": "no-such-model", "device": "cpu"}, timeout=120)
    assert "error" in result and json.dumps(result)


@pytest.mark.slow
def test_full_suite_dry_run_on_the_cpu():
    """Everything the GPU run does, with the tiny model and the fast path uncompiled (the compiled UNet's
    equality with eager has its own tests, test_fastpath and test_turbo): fresh processes, cold and warm
    start-up, the fast path's rows, turbo, the variants, and their deviations from eager."""
    lines: list[str] = []
    report = run_bench("tiny", repeat=1, device="cpu", steps=3, size=64, suite="full", echo=lines.append,
                       compile_backend="none")
    assert report.splitlines() == lines  # echoed as measured
    for label in ("quick diffusers-eager", "quick ours-eager", "hq diffusers-eager", "hq ours-eager",
                  "quick ours-eager low_vram", "quick ours-fast", "hq ours-fast"):
        assert any(line.startswith(label + " ") for line in lines), label
    assert "low_vram: each network was on the GPU only while it ran" in report
    for label in ("eager ", "eager channels-last", "fast (compiled)"):
        row = next(line for line in lines if line.startswith(label))
        assert float(row[26:36]) > 0, row
    assert "eager fp8 linears" in report and "not measured: fp8 needs a CUDA card" in report
    turbo = next(line for line in lines if line.startswith("turbo ours-fast "))
    assert re.search(r"PSNR \d+\.\d dB vs quick; guidance 1/2 steps, deep cache every 2, fp8 off", turbo), turbo
    assert re.search(r"first job at full speed \(load \+ first bucket\), empty cache: \d+\.\d s; warm cache: "
                     r"\d+\.\d s", report)
    assert "quick ours-fast CUDA graphs: not measured (CUDA and the compiler only)" in report
    assert "LTX-Video (tiny-ltx): the fast preset, 64x64, 49 frames at 24 fps, 8 steps, guidance 1.0" in report
    assert next(line for line in lines if line.startswith("fast ltx-eager ")).split()[2] != "nan"
    assert re.search(r"LTX-Video 2-second clip \(fast ltx-eager\) \d+\.\d\d s <= 2.0 s", report)
    assert re.search(r"quick ours-fast channels-last .*max \|fast - eager\| .*x the default fast path", report)
    assert row_value(report, "quick ours-eager ") == pytest.approx(0.0, abs=1e-5)  # |ours - diffusers|
    assert row_value(report, "quick ours-fast ") <= 1e-5  # |fast - eager|
    assert re.search(r"empty cache, fresh process: \d+\.\d s", report)
    warm = re.search(r"warm cache, fresh process: (\d+\.\d) s; all 10 buckets", report)
    assert warm and float(warm.group(1)) > 0
    targets = lines[lines.index("targets (one H100/H200, warm)"):]
    assert len(targets) >= 4 and not math.isnan(row_value(report, "hq ours-fast "))
