"""Caption flags (`--camera zoom-in --seed 42`), as phones type them too (em dashes, smart quotes)."""

from __future__ import annotations

import re

from engine.errors import UserError
from engine.prompts.choices import CAMERAS, SPEEDS, check_choice, normalize_choice
from engine.prompts.words import collapse

_FLAG_NAMES = {"camera": "camera", "cam": "camera", "speed": "speed", "seed": "seed", "negative": "negative",
               "neg": "negative", "preset": "preset", "subject": "subject", "environment": "environment",
               "env": "environment"}
_FREE_TEXT_FLAGS = ("negative", "subject", "environment")
# Flags without a value: (option, value).
_SWITCHES = {"smooth": ("smooth", True), "no-smooth": ("smooth", False), "loop": ("loop", True)}
_MAX_SEED = 2**32 - 1
# "--" and what phones and input methods turn it into: em dash, en dash, a Chinese double em dash.
_FLAG = re.compile(r"(?:^|(?<=\s))(--|——|—|–|−−)([A-Za-z][A-Za-z_-]*)(=|\s+|$)")
_QUOTES = {'"': '"', "'": "'", "“": "”", "„": "“", "‘": "’", "«": "»", "「": "」", "『": "』"}


def parse_flags(caption: str) -> tuple[str, dict]:
    """Split '--camera zoom-in --speed slow a cat' into ('a cat', {'camera': 'zoom-in', 'speed': 'slow'}).
    Also '—camera' / '–camera' (phones replace '--'), '--camera=zoom-in', '--camera zoom in', '--seed 42',
    '--negative "blurry, dark"' (unquoted: up to the next option), '--preset hq', '--subject', '--env'.
    '--smooth' / '--no-smooth' / '--loop' take no value (options smooth: bool, loop: True).
    Option keys: camera, speed (checked choices), seed (int), negative, subject, environment (text), preset
    (a lower-case name; the caller checks it against the configured presets, "auto" included).
    A '--' option with an unknown name is an error; with a dash that phones insert it is left as prose."""
    caption = caption or ""
    text_parts: list[str] = []
    options: dict = {}
    pos = 0
    while m := _FLAG.search(caption, pos):
        dash, raw_name = m.group(1), m.group(2)
        key = raw_name.lower().replace("_", "-")
        name = _FLAG_NAMES.get(key)
        text_parts.append(caption[pos:m.start()])
        if key in _SWITCHES and m.group(3) != "=":
            option, on = _SWITCHES[key]
            options[option] = on
            pos = m.end()
            continue
        if name is None:
            if dash == "--":
                raise UserError(f"Unknown option --{raw_name}; use {', '.join('--' + n for n in _flag_list())}.",
                                "unknown_option", option=raw_name)
            text_parts.append(m.group(0))   # a dash in the prose, not an option
            pos = m.end()
            continue
        value, pos = _flag_value(caption, m.end(), name, explicit=m.group(3) == "=")
        options[name] = _check_flag(name, value)
    text_parts.append(caption[pos:])
    return collapse("".join(text_parts)), options


def _flag_list() -> list[str]:
    return [*dict.fromkeys(_FLAG_NAMES.values()), *_SWITCHES]


def _flag_value(caption: str, at: int, name: str, explicit: bool) -> tuple[str | None, int]:
    if at >= len(caption) or (not explicit and caption[at:at + 1].isspace()):
        return None, at
    if name in _FREE_TEXT_FLAGS:
        close = _QUOTES.get(caption[at])
        if close:
            end = caption.find(close, at + 1)
            if end < 0:
                raise UserError(f"The --{name} text has no closing quote.", "unclosed_quote", option=name)
            return caption[at + 1:end], end + 1
        nxt = _FLAG.search(caption, at)
        end = nxt.start() if nxt else len(caption)
        return caption[at:end].strip() or None, end
    token = re.match(r"\S+", caption[at:])
    if token is None or _FLAG.match(caption, at):
        return None, at
    end = at + token.end()
    value = token.group(0).rstrip(",;.")
    if name in ("camera", "speed"):
        valid = CAMERAS if name == "camera" else SPEEDS
        two = re.match(r"\s+([A-Za-z]+)", caption[end:])    # "--camera zoom in", "--speed slow motion"
        if two and normalize_choice(f"{value} {two.group(1)}") in valid:
            return f"{value} {two.group(1)}", end + two.end()
    return value, end


def _check_flag(name: str, value: str | None):
    if value is None:
        examples = {"camera": "zoom-in", "speed": "slow", "seed": "42", "negative": '"blurry"',
                    "preset": "hq", "subject": '"a cat"', "environment": '"at the beach"'}
        raise UserError(f"--{name} needs a value, e.g. --{name} {examples[name]}.", "missing_value", option=name)
    if name in ("camera", "speed"):
        return check_choice(name, value)
    if name == "seed":
        if not re.fullmatch(r"\d{1,10}", value) or int(value) > _MAX_SEED:
            raise UserError(f"--seed takes a whole number from 0 to {_MAX_SEED}, not '{value}'.",
                            "bad_seed", value=value)
        return int(value)
    if name == "preset":
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise UserError(f"--preset takes a preset name like quick, hq or auto, not '{value}'.",
                            "bad_preset", value=value)
        return value.lower()
    return value.strip()
