"""Every user-facing text, in the user's language: the message files in templates/messages, the few formats the
status texts share (durations, the progress bar), and `StatusState`, what a job's status message says."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from engine.errors import UserError

MESSAGES_DIR = Path(__file__).resolve().parent.parent / "templates" / "messages"
BAR_WIDTH = 12


@cache
def _messages(locale: str) -> dict[str, dict[str, str]]:
    path = MESSAGES_DIR / f"{locale}.toml"
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def lang(locale: str | None) -> str:
    """Platform locale ("zh-CN", "zh-TW", "en-US", "zh-hans") -> the message set we have ("zh" or "en")."""
    return "zh" if (locale or "").lower().startswith("zh") else "en"


def t(locale: str | None, key: str, **params: Any) -> str:
    """The text for "section.name" in the user's language, falling back to English."""
    section, name = key.split(".", 1)
    for loc in (lang(locale), "en"):
        text = _messages(loc).get(section, {}).get(name)
        if text is not None:
            try:
                return text.format(**params)
            except (KeyError, IndexError, ValueError):
                continue
    return key


def error_text(exc: UserError, locale: str | None) -> str:
    """A refusal in the user's language: a translated text for its key, else the engine's own sentence."""
    text = t(locale, f"errors.{exc.key}", **exc.params)
    return str(exc) if text == f"errors.{exc.key}" else text


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def progress_bar(step: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = round(width * step / total) if total else 0
    return "▰" * filled + "▱" * (width - filled)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- status state

@dataclass
class StatusState:
    """Everything a status message shows; `render` turns it into text."""
    phase: str = "queued"          # queued | warming | starting | rendering | delivering | final
    position: int = 0
    eta_s: float | None = None
    moved_back: bool = False
    retry: bool = False
    paused: bool = False
    step: int = 0
    total: int = 0
    elapsed_s: float = 0.0
    fell_back: str = ""
    cold: bool = False             # the worker has not compiled this size yet (just restarted): slower
    hints: list[str] = field(default_factory=list)
    final_text: str = ""
    preview_step: int = 0          # the latest preview of the forming clip (not part of the text)

    def render(self, locale: str | None) -> str:
        lines = []
        if self.phase == "final":
            lines.append(self.final_text)
        elif self.phase == "queued":
            key = "status.queued_first" if self.position <= 1 else "status.queued"
            lines.append(t(locale, key, position=self.position, eta=duration(self.eta_s)))
            if self.paused:
                lines.append(t(locale, "status.paused"))
            if self.retry:
                lines.append(t(locale, "status.retry"))
            elif self.moved_back:
                lines.append(t(locale, "status.moved_back"))
        elif self.phase == "warming":
            lines.append(t(locale, "status.warming_up"))
        elif self.phase == "starting":
            lines.append(t(locale, "status.starting"))
        elif self.phase == "rendering":
            percent = round(100 * self.step / self.total) if self.total else 0
            lines.append(t(locale, "status.rendering", bar=progress_bar(self.step, self.total), percent=percent,
                           step=self.step, total=self.total, elapsed=duration(self.elapsed_s),
                           eta=duration(self.eta_s)))
        elif self.phase == "delivering":
            lines.append(t(locale, "status.delivering"))
        if self.fell_back and self.phase != "final":
            lines.append(t(locale, "status.fell_back", preset=self.fell_back))
        if self.cold and self.phase in ("starting", "rendering"):
            lines.append(t(locale, "status.cold"))
        if self.hints and self.phase != "final":
            lines.append(t(locale, "status.hints_title"))
            lines.extend(f"• {h}" for h in self.hints)
        return "\n".join(lines)
