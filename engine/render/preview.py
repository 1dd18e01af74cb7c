"""Previews of a clip while it forms: the sampler's estimate of the clean latents, turned into colours without a
VAE call, every few seconds, encoded off the sampling thread.

The estimate (x0) comes from the model's output at a step: for a v-prediction model x0 = sqrt(a)·x − sqrt(1−a)·v,
with a = alphas_cumprod[t]. The latent-to-RGB projection is a fixed linear map of the four latent channels of the
Stable Diffusion VAE, which I2VGen-XL uses (scaling factor 0.18125 against SD's 0.18215): the factors of
ComfyUI's `comfy/latent_formats.py` (class SD15, `latent_rgb_factors`), applied to scaled latents and read as
[-1, 1]. With the tiny random test model the colours mean nothing; sizes, frame counts and timing do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

log = logging.getLogger("engine.render.preview")

# R, G, B per latent channel (ComfyUI, comfy/latent_formats.py, SD15.latent_rgb_factors).
LATENT_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)


def clean_estimate(sched, latents: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The scheduler's estimate of the clean latents at timestep t, from the (guided) model output."""
    a = sched.alphas_cumprod[int(t)].to(device=latents.device, dtype=torch.float32)
    x, out = latents.float(), model_output.float()
    kind = sched.config.prediction_type
    if kind == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out
    if kind == "epsilon":
        return (x - (1 - a).sqrt() * out) / a.sqrt().clamp(min=1e-4)
    return out   # "sample": the model predicts x0 itself


def latents_to_rgb(x0: torch.Tensor) -> np.ndarray:
    """(1, 4, F, h, w) scaled latents -> uint8 (F, h, w, 3): one small matmul, no VAE."""
    factors = torch.tensor(LATENT_RGB_FACTORS, device=x0.device, dtype=torch.float32)
    rgb = torch.einsum("cfhw,cr->fhwr", x0[0].float(), factors)
    return ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()


class PreviewTimer:
    """Asks the sampler for a preview every `every_s` seconds (none while the last one is still being encoded,
    so a slow encoder never queues work behind the render), and encodes it in a thread of its own.

    `deliver(step, frames)` runs on that thread with uint8 (F, h, w, 3) frames; it encodes and stores them.
    """

    def __init__(self, every_s: float, deliver: Callable[[int, np.ndarray], None],
                 clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self._deliver = deliver
        self._clock = clock
        self._last = clock()          # the first preview comes every_s after the render starts
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview")
        self._busy: Future | None = None
        self._lock = threading.Lock()
        self.sent = 0

    def due(self) -> bool:
        if self.every_s <= 0 or self._clock() - self._last < self.every_s:
            return False
        return self._busy is None or self._busy.done()

    def offer(self, step: int, x0: torch.Tensor) -> None:
        """On the sampling thread: project I2VGen-XL's clean estimate to colours (cheap), then encode it."""
        self.offer_frames(step, latents_to_rgb(x0))

    def offer_frames(self, step: int, frames: np.ndarray) -> None:
        """On the sampling thread: hand frames a family made itself (LTX-Video decodes) to the encoder."""
        self._last = self._clock()
        with self._lock:
            self._busy = self._pool.submit(self._run, step, frames)

    def _run(self, step: int, frames: np.ndarray) -> None:
        try:
            self._deliver(step, frames)
            self.sent += 1
        except Exception:   # a preview is a nicety: never let it fail a render
            log.exception("preview at step %d failed", step)

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
