"""Named render presets and the aspect buckets that keep a photo's orientation."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

from engine.families import LTX_VIDEO

SCHEDULERS = ("dpmpp_2m", "ddim")
Family = Literal["i2vgen-xl", "ltx-video"]
DEFAULT_PRESET = "quick"   # what /animate and a captioned photo get unless the user or the server picks another
Scheduler = Literal["dpmpp_2m", "ddim"]

# (name, width/height). A compiled model only ever sees these few shapes per preset.
ASPECTS: tuple[tuple[str, float], ...] = (
    ("1:1", 1.0), ("4:3", 4 / 3), ("3:4", 3 / 4), ("16:9", 16 / 9), ("9:16", 9 / 16),
)
_ASPECT_TOLERANCE = 0.07  # |log(bucket ratio / wanted ratio)| we accept for a bigger bucket


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Preset:
    """One `[presets.NAME]` table of config.toml, validated as it is built."""
    name: str
    steps: Annotated[int, Field(ge=1)] = 30
    scheduler: Scheduler = "dpmpp_2m"
    pixels: Annotated[int, Field(ge=64 * 64)] = 512 * 512   # width*height budget
    frames: Annotated[int, Field(ge=1)] = 16
    fps: Annotated[int, Field(ge=1)] = 8
    guidance: Annotated[float, Field(ge=0)] = 9.0
    fallback: str = ""                                    # preset retried with on out-of-memory; "" none
    smooth: bool = False                                  # interpolate the clip to 24 fps (engine/media/clip.py)
    # Turbo (engine/render/turbo.py), each of which changes the output: guidance for this share of the steps
    # (the first ones), the whole UNet only every deep_cache_interval-th step (the others reuse its deep
    # features, recomputing deep_cache_branch blocks at each end), and torchao's float8 linears on a card
    # that has them.
    cfg_fraction: Annotated[float, Field(ge=0, le=1)] = 1.0
    deep_cache_interval: Annotated[int, Field(ge=1)] = 1
    deep_cache_branch: Annotated[int, Field(ge=1)] = 1
    fp8: bool = False
    family: Family = "i2vgen-xl"                          # the model family that renders it (engine/families.py)

    @model_validator(mode="after")
    def _fits_its_family(self) -> Preset:
        if self.family == LTX_VIDEO:
            if (self.frames - 1) % 8:
                raise ValueError(f"an LTX-Video preset has 8k+1 frames (9, 17, 25, 49...), not {self.frames}")
            if not self.exact:
                raise ValueError("cfg_fraction, deep_cache_interval and fp8 are for I2VGen-XL presets only")
        return self

    @property
    def exact(self) -> bool:
        """Whether this preset renders what the plain pipeline renders (up to rounding)."""
        return self.cfg_fraction >= 1 and self.deep_cache_interval <= 1 and not self.fp8

    def preview_fps(self, preview_frames: int) -> int:
        """The rate at which a preview of that many frames lasts as long as the clip (LTX-Video's previews
        have one frame per latent frame, fewer than the clip)."""
        return max(1, round(self.fps * preview_frames / self.frames))

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
    # Smooth by default: 2 s of stutter become 24 fps for about 2 CPU-seconds (docs/PERFORMANCE.md).
    "quick": Preset("quick", 30, "dpmpp_2m", 512 * 512, 16, 8, 9.0, "lite", smooth=True),
    "hq": Preset("hq", 50, "dpmpp_2m", 512 * 512, 16, 8, 9.0, "lite", smooth=True),
    # Opt-in and output-changing: guidance for 40% of the steps, deep features reused on alternate steps, fp8.
    "turbo": Preset("turbo", 25, "dpmpp_2m", 512 * 512, 16, 8, 9.0, "lite", cfg_fraction=0.4,
                    deep_cache_interval=2, deep_cache_branch=1, fp8=True),
    "lite": Preset("lite", 30, "dpmpp_2m", 256 * 256, 8, 8, 9.0, ""),
    # LTX-Video (distilled): 8 steps without guidance, 49 frames at its own 24 fps (2 s). Sides are multiples
    # of 64 here, so of 32 as LTX needs.
    "fast": Preset("fast", 8, "dpmpp_2m", 512 * 512, 49, 24, 1.0, "", family="ltx-video"),
}
