"""Step advice: whether more denoising steps (HQ) are worth it for this prompt and image."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.media.detail import DETAILED_AT, VERY_DETAILED_AT
from engine.prompts.words import SLOW_WORDS, TEXTURE_WORDS


@dataclass
class Advice:
    suggest_hq: bool
    reasons: list[str]
    keys: list[str] = field(default_factory=list)     # stable ids of the reasons, for translations


def step_advice(prompt: str, image_detail: float | None) -> Advice:
    """Whether more denoising steps are worth it. Pass the built prompt (it carries the speed phrase) and
    DetailScore.score of the input image, or None when unknown. Slow motion, fine-texture words and a
    detailed image each count one point, a very detailed image two; two points suggest HQ."""
    reasons: list[str] = []
    keys: list[str] = []
    points = 0
    if SLOW_WORDS.search(prompt or ""):
        points += 1
        keys.append("slow_motion")
        reasons.append("slow motion shows every step's smoothness")
    textures = list(dict.fromkeys(m.group(0).lower() for m in TEXTURE_WORDS.finditer(prompt or "")))
    if textures:
        points += 1
        keys.append("texture_words")
        reasons.append(f"fine textures in the prompt ({', '.join(textures[:4])})")
    if image_detail is not None and image_detail >= DETAILED_AT:
        very = image_detail >= VERY_DETAILED_AT
        points += 2 if very else 1
        keys.append("very_detailed_image" if very else "detailed_image")
        reasons.append(f"{'very ' if very else ''}detailed image (detail score {image_detail:.2f})")
    return Advice(points >= 2, reasons, keys)


def resolve_auto_preset(advice: Advice) -> str:
    """The preset an `auto` request runs with."""
    return "hq" if advice.suggest_hq else "quick"
