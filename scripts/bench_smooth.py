"""Smoothing filters against the truth: clips made at 24 fps, every third frame kept (8 fps, as rendered), then
interpolated back to 24 fps by each filter of engine.media.clip. Prints each filter's CPU seconds per clip
(ffmpeg and this process, median of REPEAT) and the PSNR of the in-between frames against the frames they
replace. Needs the test extras (scikit-image's photos).

    .venv/bin/python scripts/bench_smooth.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

from engine.media.clip import FILTERS, smooth  # noqa: E402
from engine.render.bench.clips import _cpu_s, panning_clip  # noqa: E402

REPEAT = 5
FRAMES_24 = 46   # becomes 16 at 8 fps


def crossing() -> np.ndarray:
    """A cat photo crossing an astronaut photo at 6 px a frame while the background pans 1 px."""
    bg = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((640, 640)))
    cat = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((160, 110)))
    frames = []
    for k in range(FRAMES_24):
        f = bg[2 * k // 3:2 * k // 3 + 512, k:k + 512].copy()
        x, y = 20 + 6 * k, 300 - 2 * k
        f[y:y + 110, x:x + 160] = cat
        frames.append(f)
    return np.stack(frames)


def zoom() -> np.ndarray:
    """A slow zoom into the coffee photo (every pixel moves by a different amount)."""
    big = np.asarray(Image.fromarray(skimage.data.coffee()).resize((900, 700)))
    frames = []
    for k in range(FRAMES_24):
        side = int(512 * (1 - 0.006 * k))
        top, left = 350 - side // 2, 450 - side // 2
        crop = big[top:top + side, left:left + side]
        frames.append(np.asarray(Image.fromarray(crop).resize((512, 512), Image.Resampling.LANCZOS)))
    return np.stack(frames)


def pan() -> np.ndarray:
    """The engine bench's synthetic pan, at 24 fps (4 px right, 8/3 px down a frame)."""
    return panning_clip(frames=FRAMES_24)[:, :, :]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255 ** 2 / max(mse, 1e-9))


def main() -> None:
    print(f"{'clip':10s} {'filter':20s} {'CPU s':>7s} {'PSNR median':>12s} {'worst':>7s}")
    for name, truth in (("crossing", crossing()), ("zoom", zoom()), ("pan", pan())):
        rendered = truth[::3]
        between = [k for k in range(len(truth)) if k % 3]
        for method in FILTERS:
            cpu = []
            for _ in range(REPEAT):
                start = _cpu_s()
                out, _ = smooth(rendered, 8, method)
                cpu.append(_cpu_s() - start)
            scores = [psnr(out[k], truth[k]) for k in between]
            print(f"{name:10s} {method:20s} {statistics.median(cpu):7.2f} {statistics.median(scores):12.2f} "
                  f"{min(scores):7.2f}")
        nearest = [psnr(rendered[min(round(k / 3), len(rendered) - 1)], truth[k]) for k in between]
        print(f"{name:10s} {'(repeat nearest)':20s} {'':7s} {statistics.median(nearest):12.2f} {min(nearest):7.2f}")


if __name__ == "__main__":
    main()
