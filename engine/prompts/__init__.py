"""Structured prompts from templates/prompts, caption flags, prompt hints and step advice.

I2VGen-XL at 30 steps has little room to recover from a vague prompt; naming the parts
("[Subject: a cat] [Action: turning its head, slow motion] [Camera: static shot]") keeps subject and motion
steady. Users write free text, in English or Chinese; this module builds the structured prompt for them.
The text encoder is an English CLIP model, so Chinese words are translated through the glossary; words the
glossary does not know stay as written (the raw text is kept on the job as `prompt_raw`).

Modules, by what they do:
    choices    camera and speed choices and aliases, PromptSpec (what the user asked for)
    templates  templates/prompts/*.toml: slot templates and the glossary
    words      word-level facts shared by the parser, the hints and the advice
    slots      free text -> slots -> the structured prompt (build_prompt)
    flags      caption flags (Telegram)
    hints      advice on a prompt, never a refusal
    advice     whether an HQ render is worth it (and the `auto` preset)
"""

from engine.prompts.advice import Advice, resolve_auto_preset, step_advice
from engine.prompts.choices import CAMERAS, SLOTS, SPEEDS, PromptSpec, check_choice, normalize_choice
from engine.prompts.flags import parse_flags
from engine.prompts.hints import MAX_CONTENT_WORDS, Hint, prompt_hints
from engine.prompts.slots import build_prompt
from engine.prompts.templates import (
    TEMPLATES_DIR,
    Templates,
    available_templates,
    load_glossary,
    load_templates,
)
from engine.prompts.words import Glossary

__all__ = [
    "CAMERAS", "MAX_CONTENT_WORDS", "SLOTS", "SPEEDS", "TEMPLATES_DIR", "Advice", "Glossary", "Hint", "PromptSpec",
    "Templates", "available_templates", "build_prompt", "check_choice", "load_glossary", "load_templates",
    "normalize_choice", "parse_flags", "prompt_hints", "resolve_auto_preset", "step_advice",
]
