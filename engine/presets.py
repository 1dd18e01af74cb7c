"""Named render presets and the aspect buckets that keep a photo's orientation."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

SCHEDULERS = ("dpmpp_2m", "ddim")

# (name, width/height). A compiled model only ever sees these few shapes per preset.
ASPECTS: tuple[tuple[str, float], ...] = (
    ("1:1", 1.0), ("4:3", 4 / 3), ("3:4", 3 / 4), ("16:9", 16 / 9), ("9:16", 9 / 16),
)
_ASPECT_TOLERANCE = 0.07  # |log(bucket ratio / wanted ratio)| we accept for a bigger bucket


@dataclass(frozen=True)
class Preset:
    name: str
    steps: int = 30
    scheduler: str = "dpmpp_2m"
    pixels: int = 512 * 512
    frames: int = 16
    fps: int = 8
    guidance: float = 9.0
    fallback: str = ""

    def bucket(self, aspect: str) -> tuple[int, int]:
        """(width, height) for a named aspect: sides multiple of 64, area within the pixel budget."""
        return _bucket(self.pixels, dict(ASPECTS)[aspect])

    def buckets(self) -> dict[str, tuple[int, int]]:
        return {name: self.bucket(name) for name, _ in ASPECTS}

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The bucket nearest in aspect ratio to an input of width x height."""
        wanted = math.log(width / height)
        name = min(ASPECTS, key=lambda a: abs(math.log(a[1]) - wanted))[0]
        return self.bucket(name)


def _bucket(pixels: int, ratio: float) -> tuple[int, int]:
    candidates = []
    for h in range(64, pixels // 64 + 1, 64):
        for w in (math.floor(h * ratio / 64) * 64, math.ceil(h * ratio / 64) * 64):
            if w >= 64 and w * h <= pixels:
                candidates.append((abs(math.log((w / h) / ratio)), w, h))
    if not candidates:
        return 64, 64
    close = [c for c in candidates if c[0] <= _ASPECT_TOLERANCE]
    if close:
        _, w, h = max(close, key=lambda c: (c[1] * c[2], -c[0]))
    else:
        _, w, h = min(candidates, key=lambda c: (c[0], -c[1] * c[2]))
    return w, h


DEFAULT_PRESETS: dict[str, Preset] = {
    "quick": Preset("quick", 30, "dpmpp_2m", 512 * 512, 16, 8, 9.0, "lite"),
    "hq": Preset("hq", 50, "dpmpp_2m", 512 * 512, 16, 8, 9.0, "lite"),
    "lite": Preset("lite", 30, "dpmpp_2m", 256 * 256, 8, 8, 9.0, ""),
}


def presets_from_config(section: dict[str, Any]) -> dict[str, Preset]:
    presets = dict(DEFAULT_PRESETS)
    for name, values in section.items():
        base = presets.get(name, Preset(name))
        known = {k: values[k] for k in ("steps", "scheduler", "pixels", "frames", "fps", "guidance", "fallback")
                 if k in values}
        preset = replace(base, name=name, **known)
        if preset.scheduler not in SCHEDULERS:
            raise ValueError(f"preset {name}: scheduler must be one of {SCHEDULERS}, not {preset.scheduler!r}")
        presets[name] = preset
    return presets
