"""A Hugging Face image-classification model as the NSFW classifier (e.g. Falconsai/nsfw_image_detection):
an image's score is the probability of the model's NSFW labels. It needs torch, so the worker runs it."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from engine.config import SafetyConfig
from engine.errors import ModelError, first_line
from engine.safety import Gate, is_off, runs_in_bot

# Label names that mean "not safe" across the published NSFW classifiers (Falconsai: nsfw; GantMan-style
# five-class models: porn, hentai, sexy).
NSFW_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "explicit", "unsafe"})


class HubClassifier:
    def __init__(self, spec: str, device: str = "cpu"):
        hub = {"local_files_only": True} if os.path.isdir(spec) or os.environ.get("HF_HUB_OFFLINE") == "1" else {}
        try:
            self.processor = AutoImageProcessor.from_pretrained(spec, **hub)
            self.model = AutoModelForImageClassification.from_pretrained(spec, **hub).eval().to(device)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"Cannot load the safety classifier {spec}: {first_line(exc)}") from None
        labels = {int(i): str(name).lower() for i, name in self.model.config.id2label.items()}
        self.nsfw_ids = sorted(i for i, name in labels.items() if name in NSFW_LABELS)
        if not self.nsfw_ids:
            raise ModelError(f"The safety classifier {spec} has no NSFW label (its labels: "
                             f"{', '.join(labels.values())}).")
        self.device = device

    @torch.inference_mode()
    def scores(self, images: Sequence[np.ndarray]) -> list[float]:
        inputs = self.processor(images=[Image.fromarray(np.asarray(im)) for im in images], return_tensors="pt")
        logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
        probs = logits.float().softmax(-1)[:, self.nsfw_ids].sum(-1)
        return [float(p) for p in probs.clamp(0, 1)]


def load_classifier(spec: str, device: str = "cpu") -> HubClassifier:
    return HubClassifier(spec, device)


def worker_gate(config: SafetyConfig, device: str = "cpu") -> Gate:
    """The worker's gate: the configured Hugging Face classifier; nudenet runs in the bot, and "off" nowhere."""
    if runs_in_bot(config.classifier) or is_off(config.classifier):
        return Gate(config, None)
    return Gate(config, load_classifier(config.classifier.strip(), device))
