"""Prompt templates and the glossary, read from templates/prompts/*.toml (cached until a file changes)."""

from __future__ import annotations

import functools
import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.prompts.choices import SLOTS, normalize_choice
from engine.prompts.words import Glossary, collapse, verb_forms

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates" / "prompts"
_ZH_CATEGORIES = ("subject", "action", "camera", "speed", "environment", "modifier", "connector")



@dataclass(frozen=True)
class Templates:
    name: str
    description: str
    format: str
    defaults: dict[str, str]
    cameras: dict[str, str]
    speeds: dict[str, str]
    glossary: Glossary
    path: Path | None = None

    def render(self, slots: dict[str, str]) -> str:
        """The format with each slot filled; empty slots go with their comma, empty [ ] groups go whole."""
        parts = []
        for piece in re.split(r"(\[[^\[\]]*\])", self.format):
            names = _placeholders(piece)
            if names and not any(slots.get(n) for n in names):
                continue
            for name in names:
                if not slots.get(name):
                    piece = _drop_placeholder(piece, name)
            parts.append(piece.format_map({n: slots.get(n, "") for n in SLOTS}))
        return collapse("".join(parts))

    def label_of(self, slot: str) -> str | None:
        """The label of the [Label: ...] group that holds a slot, e.g. 'Camera' for camera."""
        for piece in re.findall(r"\[[^\[\]]*\]", self.format):
            if slot in _placeholders(piece):
                m = re.match(r"\[\s*([^:\]{]+?)\s*:", piece)
                return m.group(1) if m else None
        return None

    def camera_phrase(self, choice: str) -> str:
        return self.cameras.get(choice, choice)

    def speed_phrase(self, choice: str) -> str:
        return self.speeds.get(choice, choice)


def _placeholders(piece: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(piece) if name is not None]


def _drop_placeholder(piece: str, name: str) -> str:
    for pattern in (rf"\s*,\s*\{{{name}\}}", rf"\{{{name}\}}\s*,\s*", rf"\{{{name}\}}"):
        new = re.sub(pattern, "", piece, count=1)
        if new != piece:
            return new
    return piece


def available_templates(folder: Path | None = None) -> list[str]:
    """Names of the template sets in the folder (every .toml with a format key)."""
    folder = Path(folder) if folder else TEMPLATES_DIR
    names = []
    for path in sorted(folder.glob("*.toml")):
        try:
            if "format" in tomllib.loads(path.read_text(encoding="utf-8")):
                names.append(path.stem)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
            continue
    return names


def load_templates(folder: Path | None = None, name: str = "default") -> Templates:
    """The template set `name` from `folder` (default: the repository's templates/prompts). Cached; an
    edited file is read again."""
    folder = (Path(folder) if folder else TEMPLATES_DIR).resolve()
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name or ""):
        raise UserError(f"Template set names use letters, digits, - and _ only, not '{name}'.",
                        "templates_unknown", name=name)
    path = folder / f"{name}.toml"
    if not path.is_file():
        names = ", ".join(available_templates(folder)) or "none"
        raise UserError(f"No prompt template set '{name}' in {folder}; available: {names}.",
                        "templates_unknown", name=name, choices=names)
    return _load_templates_cached(str(folder), name, _folder_stamp(folder))


def load_glossary(folder: Path | None = None, name: str = "glossary") -> Glossary:
    folder = (Path(folder) if folder else TEMPLATES_DIR).resolve()
    return _load_glossary_cached(str(folder), name, _folder_stamp(folder))


def _folder_stamp(folder: Path) -> tuple[tuple[str, int], ...]:
    return tuple((p.name, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.toml")))


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"Prompt file not found: {path}", "templates_missing", path=str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"Prompt file {path} is not valid TOML: {exc}", "templates_invalid",
                        path=str(path)) from None


@functools.lru_cache(maxsize=32)
def _load_glossary_cached(folder: str, name: str, _stamp: tuple) -> Glossary:
    path = Path(folder) / f"{name}.toml"
    raw = _read_toml(path)
    english = raw.get("english", {})
    zh: dict[str, tuple[str, str]] = {}
    for category, words in raw.get("zh", {}).items():
        if category == "skip":
            zh.update({w: ("skip", "") for w in words.get("words", [])})
        elif category in _ZH_CATEGORIES:
            zh.update({w: (category, str(e)) for w, e in words.items()})
        else:
            raise UserError(f"{path}: unknown section [zh.{category}]; use one of "
                            f"{', '.join(_ZH_CATEGORIES + ('skip',))}.", "templates_invalid", path=str(path))
    verbs = tuple(str(v).lower() for v in english.get("motion_verbs", []))
    phrases = tuple(str(p).lower() for p in english.get("motion_phrases", []))
    # Multi-word English actions from the Chinese table ("head rotation") also mark an action.
    phrases += tuple(sorted({e.lower() for c, e in zh.values() if c == "action" and " " in e} - set(phrases)))
    return Glossary(
        cameras={normalize_choice(k): str(v) for k, v in raw.get("camera", {}).items()},
        speeds={normalize_choice(k): str(v) for k, v in raw.get("speed", {}).items()},
        motion_verbs=verbs,
        motion_phrases=phrases,
        vague=tuple(str(v).lower() for v in english.get("vague", [])),
        suggestions={str(k).lower(): str(v) for k, v in raw.get("suggestions", {}).items()},
        zh=zh,
        motion_forms=frozenset(f for v in verbs for f in verb_forms(v)),
        zh_longest=max((len(w) for w in zh), default=1),
    )


@functools.lru_cache(maxsize=32)
def _load_templates_cached(folder: str, name: str, stamp: tuple) -> Templates:
    path = Path(folder) / f"{name}.toml"
    raw = _read_toml(path)
    fmt = raw.get("format")
    if not isinstance(fmt, str) or not fmt.strip():
        raise UserError(f"{path}: 'format' is missing.", "templates_invalid", path=str(path))
    _check_format(fmt, path)
    glossary = _load_glossary_cached(folder, str(raw.get("glossary", "glossary")), stamp)
    cameras = dict(glossary.cameras) | {normalize_choice(k): str(v) for k, v in raw.get("camera", {}).items()}
    speeds = dict(glossary.speeds) | {normalize_choice(k): str(v) for k, v in raw.get("speed", {}).items()}
    defaults = {slot: str(raw.get("defaults", {}).get(slot, "")).strip() for slot in SLOTS}
    return Templates(name, str(raw.get("description", "")), fmt, defaults, cameras, speeds, glossary, path)


def _check_format(fmt: str, path: Path) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise UserError(f"{path}: bad format string: {exc}", "templates_invalid", path=str(path)) from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in SLOTS or spec or conversion:
            raise UserError(f"{path}: unknown placeholder {{{name}}} in format; use "
                            f"{', '.join('{' + s + '}' for s in SLOTS)}.", "templates_invalid", path=str(path))
