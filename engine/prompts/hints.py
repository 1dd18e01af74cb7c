"""Non-blocking advice on a prompt: vague motion, too long, no action, mostly Chinese."""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.prompts.slots import Slots, slots_from_chinese
from engine.prompts.words import (
    CAMERA_VERBS,
    CJK,
    CJK_RUN,
    SPEED_IN_TEXT,
    STOP_WORDS,
    Glossary,
    collapse,
    has_motion,
    is_mostly_chinese,
    is_verb,
)

MAX_CONTENT_WORDS = 15



@dataclass(frozen=True)
class Hint:
    key: str           # stable, for translations
    message: str       # English
    params: dict


def prompt_hints(text: str, glossary: Glossary) -> list[Hint]:
    """Advice on a prompt, never a refusal: vague motion, too long, no action, mostly Chinese."""
    text = collapse(text or "")
    chinese = is_mostly_chinese(text)
    slots = slots_from_chinese(text, glossary) if chinese else None
    english = glossary.translate_inline(text).lower()
    hints = []
    english_no_speed = SPEED_IN_TEXT.sub(" ", english)
    vague = _vague_word(english_no_speed, glossary)
    if vague:
        suggestion = _suggestion(english, glossary)
        hints.append(Hint("vague_motion", f"'{vague}' does not say how things move; try something concrete, "
                          f"e.g. {suggestion}.", {"word": vague, "suggestion": suggestion}))
    count = _content_word_count(text, glossary)
    if count > MAX_CONTENT_WORDS:
        hints.append(Hint("too_long", f"Your prompt has {count} key words; about {MAX_CONTENT_WORDS} or fewer "
                          "keep the model focused on one subject and one motion.",
                          {"words": count, "limit": MAX_CONTENT_WORDS}))
    if not has_motion(english, glossary):
        examples = "turning its head, walking forward, hair blowing in the wind, waves rolling"
        hints.append(Hint("no_action", "Say what should move and how, e.g. "
                          f"{examples}; without an action the video may barely move.", {"examples": examples}))
    if slots is not None:      # set exactly when the prompt is mostly Chinese
        translation = _plain_translation(slots)
        unknown = ", ".join(dict.fromkeys(slots.unknown))
        untranslated = f" Not translated: {unknown}." if unknown else ""
        message = f"The model understands English best. Your prompt was read as: \"{translation}\".{untranslated}"
        hints.append(Hint("mostly_chinese", message,
                          {"translation": translation, "unknown": unknown, "untranslated": untranslated}))
    return hints


def _vague_word(english: str, glossary: Glossary) -> str | None:
    """The first vague word or phrase, unless a concrete motion is said beside it ("moving her arms while
    dancing")."""
    found = None
    rest = english
    for phrase in sorted(glossary.vague, key=len, reverse=True):
        pattern = rf"\b{re.escape(phrase)}\b"
        if re.search(pattern, rest):
            found = found or phrase
            rest = re.sub(pattern, " ", rest)
    if found is None:
        return None
    concrete = [w for w in re.findall(r"[a-z]+", rest) if is_verb(w, glossary) and w not in CAMERA_VERBS]
    return None if concrete else found


def _suggestion(english: str, glossary: Glossary) -> str:
    for word in re.findall(r"[a-z]+", english):
        for key in (word, word.rstrip("s"), word + "s"):
            if key in glossary.suggestions and key != "default":
                return glossary.suggestions[key]
    return glossary.suggestions.get("default", "turning its head, walking forward")


def _content_word_count(text: str, glossary: Glossary) -> int:
    count = 0
    for part in re.findall(f"[{CJK}]+|[A-Za-z0-9'-]+", text):
        if CJK_RUN.fullmatch(part):
            count += sum(1 for cat, _, _ in glossary.segment(part) if cat not in ("skip", "connector"))
        elif part.lower() not in STOP_WORDS:
            count += 1
    return count


def _plain_translation(slots: Slots) -> str:
    parts = slots.subject + slots.action + slots.speed + slots.camera + slots.environment
    return ", ".join(p for p in parts if p)
