"""One render of the tiny model at 256x256x16, 30 steps, with previews every 3 s ("on") or none ("off"), as the
worker makes them (GIF encoded on the preview thread). Time it whole-process, paired, e.g.:

    /usr/bin/time -v .venv/bin/python scripts/bench_previews.py on
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.media.preview import preview_gif  # noqa: E402
from engine.render.fastpath import warm_image  # noqa: E402
from engine.render.model import load_model  # noqa: E402
from engine.render.preview import PreviewTimer  # noqa: E402
from engine.render.sampler import sample  # noqa: E402

EVERY_S = 3.0


def main() -> None:
    every = EVERY_S if sys.argv[1:] == ["on"] else 0.0
    torch.manual_seed(0)
    parts = load_model("tiny", device="cpu")
    made: list[int] = []
    timer = PreviewTimer(every, lambda step, frames: made.append(len(preview_gif(frames, 8))))
    start = time.perf_counter()
    sample(parts, warm_image(256, 256), "waves", steps=30, scheduler="dpmpp_2m", guidance=9.0, frames=16,
           width=256, height=256, seed=1, previews=timer)
    timer.close()
    print(f"previews {'on' if every else 'off'}: render {time.perf_counter() - start:.3f} s, {len(made)} previews")


if __name__ == "__main__":
    main()
