"""The NSFW gate with real classifiers: nudenet's detector, and a tiny random Hugging Face image classifier
saved to a folder and loaded back the way a hub model would be."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from engine.config import SafetyConfig
from engine.jobs import Job
from engine.safety import (
    EXPOSED_CLASSES,
    Gate,
    NudeNet,
    Verdict,
    image_rgb,
    placement,
    spaced,
    verdict_fields,
)

# scikit-image's ordinary photographs (colorwheel, a synthetic test pattern, is not one: see README, Safety).
PHOTOS = ("astronaut", "camera", "cat", "chelsea", "coffee", "rocket", "horse", "moon", "hubble_deep_field",
          "immunohistochemistry", "retina", "brick", "grass", "gravel", "clock", "coins", "stereo_motorcycle")


def rgb(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):
        image = image[0]
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


@pytest.fixture(scope="module")
def nudenet() -> NudeNet:
    return NudeNet()


def test_nudenet_really_runs_and_finds_the_astronauts_face(nudenet):
    found = {d["class"]: d["score"] for d in nudenet.detections(rgb("astronaut"))}
    assert found.get("FACE_FEMALE", 0) > 0.5   # the detector ran; a face is not nudity
    assert nudenet.scores([rgb("astronaut")]) == [0.0]
    assert not EXPOSED_CLASSES & found.keys()


def test_no_ordinary_photo_is_flagged_at_the_default_threshold(nudenet):
    gate = Gate(SafetyConfig(), nudenet)
    verdicts = {name: gate.check("input", [rgb(name)]) for name in PHOTOS}
    assert all(v is not None and not v.flagged for v in verdicts.values()), verdicts


def test_threshold_zero_flags_everything_and_off_checks_nothing(nudenet):
    photo = [rgb("chelsea")]
    assert Gate(SafetyConfig(threshold=0), nudenet).check("input", photo) == Verdict("input", 0.0, True)
    assert Gate(SafetyConfig(threshold=0), None).check("input", photo) is None
    assert Gate(SafetyConfig(threshold=0, check_input=False), nudenet).check("input", photo) is None
    assert Gate(SafetyConfig(threshold=0, check_output=False), nudenet).check("output", photo) is None


def test_a_preview_gif_is_judged_by_its_last_frame(tmp_path):
    from engine.media.preview import preview_gif

    frames = np.zeros((4, 32, 32, 3), np.uint8)
    frames[-1] = 255
    assert image_rgb(preview_gif(frames, 8)).mean() > 200


def test_result_frames_are_spread_over_the_clip():
    assert spaced(16, 4) == [0, 5, 10, 15]
    assert spaced(3, 4) == [0, 1, 2]
    assert spaced(10, 1) == [9]


def test_placement_by_rule():
    assert placement(False, "withhold") == "allow"
    assert placement(True, "allow") == "allow"
    assert placement(True, "spoiler") == "spoiler"
    assert placement(True, "withhold") == "withhold"


def test_verdicts_accumulate_on_the_job():
    job = Job(id="j", user="u", prompt_raw="p", prompt="p", preset="quick", seed=1, image_path="x")
    job.__dict__.update(verdict_fields(job, Verdict("input", 0.1, False)))
    assert (job.verdict, job.nsfw_score, job.flagged_at) == ("passed", 0.1, "")
    job.__dict__.update(verdict_fields(job, Verdict("preview", 0.7, True)))
    job.__dict__.update(verdict_fields(job, Verdict("output", 0.2, False)))
    assert (job.verdict, job.nsfw_score, job.flagged_at) == ("flagged", 0.7, "preview")


# ---- a Hugging Face classifier (needs torch: the worker's)

def save_tiny_classifier(folder) -> str:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=37, num_labels=2,
                       id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
    model = ViTForImageClassification(config)
    with torch.no_grad():   # a wider head spreads the images' scores apart (coffee 0.31, camera 0.34)
        model.classifier.weight.mul_(3)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def test_a_saved_classifier_with_the_threshold_between_two_scores_flags_one(tmp_path):
    from engine.render.nsfw import load_classifier

    classifier = load_classifier(save_tiny_classifier(tmp_path / "nsfw"))
    images = [rgb("coffee"), rgb("camera")]
    low, high = sorted(classifier.scores(images))
    assert high - low > 0.01, (low, high)
    gate = Gate(SafetyConfig(classifier=str(tmp_path / "nsfw"), threshold=(low + high) / 2), classifier)
    flags = [gate.check("output", [im]).flagged for im in images]
    assert sorted(flags) == [False, True]


def test_a_classifier_without_an_nsfw_label_is_refused_with_a_reason(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from engine.errors import ModelError
    from engine.render.nsfw import load_classifier

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=2, id2label={0: "cat", 1: "dog"})
    ViTForImageClassification(config).save_pretrained(tmp_path / "pets")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "pets")
    with pytest.raises(ModelError, match="no NSFW label"):
        load_classifier(str(tmp_path / "pets"))
    with pytest.raises(ModelError, match="Cannot load the safety classifier"):
        load_classifier(str(tmp_path / "missing"))
