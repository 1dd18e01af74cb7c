"""The NSFW gate's figures on this machine: nudenet's cost per image (one onnxruntime thread, as the bot runs
it), the cost of checking one result (reading a 16-frame 512x512 MP4 and classifying 4 frames), and the
false-positive check: every image scikit-image ships, with its score and whether the default threshold flags
it.

    .venv/bin/python scripts/bench_safety.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from engine.config import SafetyConfig  # noqa: E402
from engine.media.video import write_mp4  # noqa: E402
from engine.safety import Gate, NudeNet  # noqa: E402

REPEAT = 20


def images() -> dict[str, np.ndarray]:
    """Every 2-D or RGB(A) image in skimage.data that needs no download."""
    out = {}
    for name in sorted(skimage.data.__all__):
        fn = getattr(skimage.data, name)
        if name in ("download_all", "lbp_frontal_face_cascade_filename") or not callable(fn):
            continue
        try:
            image = fn()
        except Exception:   # needs the optional download helper
            continue
        image = np.asarray(image[0] if isinstance(image, tuple) else image)
        if image.ndim == 3 and image.shape[-1] not in (3, 4):
            continue   # a volume, not a picture
        if image.ndim not in (2, 3) or min(image.shape[:2]) < 32:
            continue
        if image.dtype != np.uint8:
            image = image.astype(np.float64)
            image = (255 * (image - image.min()) / max(1e-9, np.ptp(image))).astype(np.uint8)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        out[name] = np.ascontiguousarray(image[..., :3])
    return out


def main() -> None:
    t0 = time.perf_counter()
    detector = NudeNet()
    print(f"load: {1000 * (time.perf_counter() - t0):.0f} ms (imports onnxruntime and OpenCV, opens the model)")
    gate = Gate(SafetyConfig(), detector)
    photos = images()
    astronaut = photos["astronaut"]
    detector.scores([astronaut])   # first run allocates
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        detector.scores([astronaut])
        times.append(time.perf_counter() - t)
    print(f"one 512x512 image: median {1000 * statistics.median(times):.1f} ms, "
          f"min {1000 * min(times):.1f} ms over {REPEAT}")

    frames = np.stack([astronaut] * 16)
    with tempfile.TemporaryDirectory() as folder:
        clip = write_mp4(frames, Path(folder) / "clip.mp4", fps=8)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            gate.check_video("output", clip)
            times.append(time.perf_counter() - t)
    print(f"one result (16x512x512 MP4, {gate.config.output_frames} frames checked): "
          f"median {1000 * statistics.median(times):.0f} ms over 5")

    print(f"\nfalse-positive check at the default threshold {gate.config.threshold}:")
    flagged = []
    for name, image in photos.items():
        found = detector.detections(image)
        verdict = gate.check("input", [image])
        assert verdict is not None
        if verdict.flagged:
            flagged.append(name)
        top = ", ".join(f"{d['class']} {d['score']:.2f}" for d in found[:3]) or "nothing"
        print(f"  {name:22s} {str(image.shape):16s} score {verdict.score:.2f} "
              f"{'FLAGGED' if verdict.flagged else 'ok':7s} (found: {top})")
    print(f"flagged {len(flagged)} of {len(photos)}: {', '.join(flagged) or 'none'}")


if __name__ == "__main__":
    main()
