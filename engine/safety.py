"""The NSFW gate: a classifier's score for some images, the verdict at the configured threshold, and what a
verdict means where a clip is going.

Torch-free. `nudenet` (an ONNX detector shipped inside its wheel, on onnxruntime) runs here, in a thread of the
bot process; a Hugging Face image classifier needs torch, so it lives in `engine/render/nsfw.py` and the worker
runs it. Both give one score from 0 to 1 per image; a set of images scores its highest.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    import PIL.Image

    from engine.config import SafetyConfig
    from engine.jobs import Job

log = logging.getLogger("engine.safety")

# Where flagged content may go: shown plainly (an age-restricted channel), behind a spoiler, or nowhere.
Rule = Literal["allow", "spoiler", "withhold"]
Stage = Literal["input", "preview", "output"]

NUDENET = "nudenet"
OFF = "off"
# A refused upload and a withheld result end `failed` with one of these (the front ends translate the key).
SAFETY_REASONS = {
    "nsfw_input": "This image looks like adult content, which is not allowed here.",
    "nsfw_output": "The video came out looking like adult content, which is not allowed here, so it was not posted.",
}

# The detector's classes that count as nudity; faces, feet and covered parts do not.
EXPOSED_CLASSES = frozenset({"FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
                             "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"})


class Classifier(Protocol):
    def scores(self, images: Sequence[np.ndarray]) -> list[float]:
        """One score in [0, 1] per RGB uint8 image (height, width, 3)."""


def runs_in_bot(spec: str) -> bool:
    return spec.strip().lower() == NUDENET


def is_off(spec: str) -> bool:
    return spec.strip().lower() in (OFF, "")


class NudeNet:
    """nudenet's detector: an image's score is the highest confidence among the exposed-body classes it
    found, 0 if none. One onnxruntime thread: it shares the bot's cores with the event loop."""

    def __init__(self) -> None:
        import nudenet
        import onnxruntime
        from nudenet import NudeDetector

        self.detector = NudeDetector()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        model = Path(nudenet.__path__[0]) / "320n.onnx"   # the detector inside the wheel
        self.detector.onnx_session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"])

    def detections(self, image: np.ndarray) -> list[dict]:
        # The detector expects OpenCV's channel order (BGR), as cv2.imread gives.
        return self.detector.detect(np.ascontiguousarray(image[..., ::-1]))

    def scores(self, images: Sequence[np.ndarray]) -> list[float]:
        return [max((float(d["score"]) for d in self.detections(img) if d["class"] in EXPOSED_CLASSES),
                    default=0.0) for img in images]


@dataclass(frozen=True)
class Verdict:
    stage: Stage
    score: float
    flagged: bool


class Gate:
    """The configured checks with one classifier (None: nothing here to check with)."""

    def __init__(self, config: SafetyConfig, classifier: Classifier | None):
        self.config = config
        self.classifier = classifier

    def checks(self, stage: Stage) -> bool:
        if self.classifier is None:
            return False
        return self.config.check_input if stage == "input" else self.config.check_output

    def check(self, stage: Stage, images: Sequence[np.ndarray]) -> Verdict | None:
        """The verdict on these images, or None when this stage is not checked here."""
        if not self.checks(stage) or not images:
            return None
        assert self.classifier is not None
        score = max(self.classifier.scores(images))
        return Verdict(stage, round(score, 4), score >= self.config.threshold)

    def check_image(self, stage: Stage, image: str | Path | bytes | PIL.Image.Image) -> Verdict | None:
        """An image (the upload: a file or a decoded image) or an encoded GIF (a preview: its last frame, the
        most formed)."""
        if not self.checks(stage):
            return None
        return self.check(stage, [image_rgb(image)])

    def check_frames(self, stage: Stage, frames: np.ndarray) -> Verdict | None:
        """A clip: `output_frames` of its frames, evenly spaced, ends included."""
        if not self.checks(stage) or len(frames) == 0:
            return None
        return self.check(stage, list(frames[spaced(len(frames), self.config.output_frames)]))

    def check_video(self, stage: Stage, path: str | Path) -> Verdict | None:
        if not self.checks(stage):
            return None
        from engine.media.video import read_mp4_frames

        return self.check_frames(stage, read_mp4_frames(path))


def bot_gate(config: SafetyConfig) -> Gate:
    """The gate of the bot process: nudenet when configured, else one that checks nothing (the worker does)."""
    return Gate(config, NudeNet() if runs_in_bot(config.classifier) else None)


def spaced(count: int, n: int) -> list[int]:
    """n indices spread evenly over range(count), first and last included."""
    if count <= n:
        return list(range(count))
    return sorted({round(i * (count - 1) / (n - 1)) for i in range(n)}) if n > 1 else [count - 1]


def image_rgb(source: str | Path | bytes | PIL.Image.Image) -> np.ndarray:
    from PIL import Image

    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"))
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        frames = int(getattr(im, "n_frames", 1))
        if frames > 1:
            im.seek(frames - 1)
        return np.asarray(im.convert("RGB"))


def placement(flagged: bool, rule: str) -> Rule:
    """What happens to content: "allow" (post it), "spoiler" (post it hidden) or "withhold"."""
    if not flagged or rule == "allow":
        return "allow"
    return "spoiler" if rule == "spoiler" else "withhold"


def verdict_fields(job: Job, verdict: Verdict) -> dict:
    """The job's safety fields after this verdict: the highest score seen, flagged once any check flagged,
    and the first stage that did."""
    flagged = job.verdict == "flagged" or verdict.flagged
    return {"nsfw_score": max(job.nsfw_score, verdict.score), "verdict": "flagged" if flagged else "passed",
            "flagged_at": job.flagged_at or (verdict.stage if verdict.flagged else "")}
