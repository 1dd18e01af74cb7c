"""The buttons on status and result messages, as both platforms carry them: `anim:<action>:<job id>` (a
Discord custom id and a Telegram callback datum alike, so they work after a restart), and the pages of /mine."""

from __future__ import annotations

from dataclasses import dataclass

from bot.texts import t
from engine.jobs import Job


@dataclass(frozen=True)
class Button:
    action: str       # one of BUTTON_ACTIONS
    job_id: str
    label: str
    row: int = 0      # a result's first row holds what is used most; the rest is behind More

    @property
    def custom_id(self) -> str:
        """Fits Discord's 100-character custom ids and Telegram's 64-byte callback data; survives restarts."""
        return f"anim:{self.action}:{self.job_id}"


def parse_custom_id(custom_id: str) -> tuple[str, str] | None:
    parts = custom_id.split(":")
    if len(parts) == 3 and parts[0] == "anim" and parts[1] in BUTTON_ACTIONS:
        return parts[1], parts[2]
    return None


BUTTON_ACTIONS = ("cancel", "hq", "reroll", "extend", "more", "smooth", "loop", "report", "delete", "info",
                  "remove", "post", "drop", "page")
MINE_PAGE = 5   # clips a /mine page lists


def buttons(locale: str | None, job_id: str, *actions: str, row: int = 0) -> list[Button]:
    return [Button(a, job_id, t(locale, f"buttons.{a}"), row) for a in actions]


@dataclass
class MinePage:
    """One page of a user's /mine: the text, its clips (newest first) and the buttons (post again, delete,
    previous and next: `anim:page:<user>-<page>`, so only the list's owner turns its pages)."""
    text: str
    clips: list[Job]
    buttons: list[Button]
    page: int
    pages: int


def page_id(user_id: str, page: int) -> str:
    return f"{user_id}-{page}"


def parse_page_id(value: str) -> tuple[str, int]:
    user_id, _, page = value.rpartition("-")
    return user_id, int(page) if page.isdigit() else 0
