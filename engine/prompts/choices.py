"""Camera and speed choices, their spellings and aliases, and what a user asked for (`PromptSpec`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import UserError

CAMERAS = ("static", "zoom-in", "zoom-out", "pan-left", "pan-right", "tilt-up", "tilt-down", "orbit")
SPEEDS = ("slow", "normal", "fast")
SLOTS = ("subject", "action", "speed", "camera", "environment")

_CHOICE_ALIASES = {
    "still": "static", "fixed": "static", "none": "static",
    "push-in": "zoom-in", "dolly-in": "zoom-in", "pull-out": "zoom-out", "dolly-out": "zoom-out",
    "pull-back": "zoom-out", "arc": "orbit", "slow-motion": "slow", "slowmo": "slow", "slow-mo": "slow",
    "medium": "normal", "quick": "fast", "static-shot": "static", "orbit-shot": "orbit",
    "fast-motion": "fast", "normal-speed": "normal",
}
_ZH_CATEGORIES = ("subject", "action", "camera", "speed", "environment", "modifier", "connector")


def normalize_choice(value: str) -> str:
    """'Zoom In', 'zoom_in', 'ZoomIn', 'zoomin' -> 'zoom-in'. Unknown values come back normalized, not checked."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", value.strip())
    text = re.sub(r"[\s_\-\u2010-\u2015]+", "-", text.lower()).strip("-")
    compact = text.replace("-", "")
    for choice in CAMERAS + SPEEDS:
        if compact == choice.replace("-", ""):
            return choice
    return _CHOICE_ALIASES.get(text, text)


def check_choice(kind: str, value: str) -> str:
    """The normalized camera or speed choice, or a UserError naming the valid ones."""
    choices = CAMERAS if kind == "camera" else SPEEDS
    choice = normalize_choice(value)
    if choice not in choices:
        raise UserError(
            f"Unknown {kind} '{value}'. Choose one of: {', '.join(choices)}.",
            f"unknown_{kind}", value=value, choices=", ".join(choices),
        )
    return choice


@dataclass
class PromptSpec:
    text: str
    camera: str | None = None
    speed: str | None = None
    subject: str | None = None
    environment: str | None = None
