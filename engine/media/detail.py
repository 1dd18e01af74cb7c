"""How much fine detail an input image holds: busy textures (fur, grass, water) need more denoising steps.

Two cheap measures on a downscaled grayscale copy, numpy and Pillow only:
- edge density: the fraction of pixels whose Sobel gradient exceeds a threshold (texture and edges);
- entropy: Shannon entropy of the grayscale histogram in bits (0 for a flat image, 8 at most).
Edge density alone calls a binary drawing (a silhouette, a chessboard) as busy as a photo of fur; entropy
alone calls a smooth gradient the busiest image of all. Their product needs both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

ANALYSIS_SIDE = 256        # long side of the analysed copy, so the score does not depend on the image size
EDGE_THRESHOLD = 0.08      # Sobel magnitude (1.0 = a black-to-white step) that counts as an edge pixel
FULL_EDGE_DENSITY = 0.5    # edge density that counts as fully busy
DETAILED_AT = 0.35         # score from which an image is "detailed"
VERY_DETAILED_AT = 0.7     # score from which the detail alone is worth more steps


@dataclass(frozen=True)
class DetailScore:
    edge_density: float    # 0..1, fraction of edge pixels
    entropy: float         # 0..8 bits
    score: float           # 0..1
    detailed: bool


def image_detail(image: Image.Image, threshold: float = DETAILED_AT) -> DetailScore:
    gray = _analysis_gray(image)
    density = edge_density(gray)
    entropy = gray_entropy(gray)
    score = min(1.0, density / FULL_EDGE_DENSITY) * (entropy / 8.0)
    return DetailScore(round(density, 4), round(entropy, 4), round(score, 4), score >= threshold)


def _analysis_gray(image: Image.Image) -> np.ndarray:
    """Grayscale in [0, 1] with the long side at ANALYSIS_SIDE. Small images are enlarged too: the model
    enlarges them as well, and their detail is only as fine as it looks after that."""
    if min(image.size) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    gray = _to_gray(image)
    scale = ANALYSIS_SIDE / max(gray.size)
    size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    if size != gray.size:
        gray = gray.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.float32) / 255.0


def _to_gray(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels may hold any colour: judge the image as shown on a neutral background.
        background = Image.new("RGBA", image.size, (128, 128, 128, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L")


def edge_density(gray: np.ndarray, threshold: float = EDGE_THRESHOLD) -> float:
    if gray.size == 0:
        return 0.0
    padded = np.pad(gray, 1, mode="edge")
    left, right = padded[:, :-2], padded[:, 2:]
    gx = (right[:-2] + 2 * right[1:-1] + right[2:]) - (left[:-2] + 2 * left[1:-1] + left[2:])
    top, bottom = padded[:-2, :], padded[2:, :]
    gy = (bottom[:, :-2] + 2 * bottom[:, 1:-1] + bottom[:, 2:]) - (top[:, :-2] + 2 * top[:, 1:-1] + top[:, 2:])
    magnitude = np.hypot(gx, gy) / 4.0  # a unit step gives 4 with the 1-2-1 Sobel kernels
    return float((magnitude > threshold).mean())


def gray_entropy(gray: np.ndarray) -> float:
    if gray.size == 0:
        return 0.0
    levels = np.clip(np.rint(gray * 255), 0, 255).astype(np.int64)
    p = np.bincount(levels.ravel(), minlength=256) / levels.size
    p = p[p > 0]
    return float(max(0.0, -(p * np.log2(p)).sum()))
