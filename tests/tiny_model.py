"""Test helpers shared by test files: a small deterministic photo and presets sized for the tiny model
(no torch needed to import this)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from engine.presets import Preset


def make_photo(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    """An RGB picture with a colour gradient, a disc and a bar, so crops and encodings have structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 100 * np.sin((x + y) / 9.0 + seed)
    pixels = np.stack([r, g, b], axis=-1)
    pixels += rng.normal(0, 4, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    cx, cy, rad = width * 0.35, height * 0.45, min(width, height) * 0.2
    draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=(230, 40, 40))
    draw.rectangle(
        (int(width * 0.6), int(height * 0.2), int(width * 0.8), int(height * 0.85)), fill=(20, 30, 200)
    )
    return image


def tiny_presets() -> dict[str, Preset]:
    """Presets the tiny model renders in a fraction of a second on a CPU; "quick" falls back to "lite"."""
    return {
        "quick": Preset("quick", steps=2, scheduler="dpmpp_2m", pixels=64 * 64, frames=4, fps=8, guidance=9.0,
                        fallback="lite"),
        "hq": Preset("hq", steps=3, scheduler="dpmpp_2m", pixels=64 * 64, frames=4, fps=8, guidance=9.0,
                     fallback="lite"),
        "lite": Preset("lite", steps=2, scheduler="dpmpp_2m", pixels=64 * 64, frames=2, fps=8, guidance=9.0),
    }
