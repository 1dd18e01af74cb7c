"""Small images for chat status messages: the looping preview of a clip as it forms (an animated GIF, which
Discord shows inline and Telegram plays as an animation) and the still copy of the user's photo that a Telegram
status starts from."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PREVIEW_LONG_SIDE = 256
STATUS_PHOTO_LONG_SIDE = 512
THUMBNAIL_LONG_SIDE = 160


def _fit(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    w, h = size
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def preview_gif(frames: np.ndarray, fps: int, long_side: int = PREVIEW_LONG_SIDE) -> bytes:
    """uint8 (F, h, w, 3) frames -> a looping GIF about `long_side` px on its long side, at the clip's rate."""
    size = _fit((frames.shape[2], frames.shape[1]), long_side)
    # Pillow's default palette search (median cut) took 1.7 s for 16 frames here; the fast octree takes 0.05 s
    # and dithering adds noise to a picture that is already a rough estimate.
    images = [Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)
              .quantize(colors=255, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, round(1000 / max(1, fps))), optimize=False)
    return buf.getvalue()


def status_photo(path: str | Path, long_side: int = STATUS_PHOTO_LONG_SIDE) -> bytes:
    """A JPEG copy of a stored (already validated) photo, at most `long_side` px on its long side."""
    with Image.open(path) as im:
        image = im.convert("RGB")
    if max(image.size) > long_side:
        image = image.resize(_fit(image.size, long_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def clip_thumbnail(path: str | Path, long_side: int = THUMBNAIL_LONG_SIDE) -> bytes:
    """A JPEG of a clip's first frame, at most `long_side` px on its long side (the /mine list)."""
    from engine.media.video import read_first_frame

    image = Image.fromarray(read_first_frame(path))
    image = image.resize(_fit(image.size, long_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return buf.getvalue()
