"""What the clip edits cost on this machine's CPU: smooth with each interpolation filter tried, and loop, on a
16-frame 512x512 clip at 8 fps (the quick preset's output) whose content pans, so the interpolator has motion
to follow."""

from __future__ import annotations

import resource
import statistics
import time

import numpy as np

from engine.media.clip import FILTERS, loop, smooth

SIDE, FRAMES, FPS = 512, 16, 8


def panning_clip(side: int = SIDE, frames: int = FRAMES) -> np.ndarray:
    """A smooth texture with a bright disc, panned 12 px right and 8 px down a frame."""
    size = side + 16 * frames
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = 128 + 60 * np.sin(x / 23) * np.cos(y / 31) + 40 * np.sin((x + 2 * y) / 57)
    texture[(x - size / 2) ** 2 + (y - size / 2) ** 2 < (side / 6) ** 2] = 240
    rgb = np.stack([texture, np.roll(texture, 40, axis=1), 255 - texture], axis=-1).clip(0, 255).astype(np.uint8)
    return np.stack([rgb[8 * k:8 * k + side, 12 * k:12 * k + side] for k in range(frames)])


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (ffmpeg runs as one)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(fn, repeat: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds) of fn()."""
    walls, cpus = [], []
    for _ in range(repeat):
        cpu, wall = _cpu_s(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_s() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def clip_edit_lines(repeat: int) -> list[str]:
    clip = panning_clip()
    lines = [f"{'clip edits, ' + str(FRAMES) + 'x' + str(SIDE) + 'x' + str(SIDE) + ' at 8 fps (median of ' + str(repeat) + ')':<58}"
             f"{'wall s':>9}{'CPU s':>9}"]
    for name in FILTERS:
        wall, cpu = _measure(lambda name=name: smooth(clip, FPS, name), repeat)
        lines.append(f"{'smooth with ' + name + ' -> ' + str(3 * (FRAMES - 1) + 1) + ' frames at 24 fps':<58}"
                     f"{wall:>9.3f}{cpu:>9.3f}")
    wall, cpu = _measure(lambda: loop(clip), repeat)
    lines.append(f"{'loop -> ' + str(2 * (FRAMES - 1)) + ' frames':<58}{wall:>9.3f}{cpu:>9.3f}")
    return lines
