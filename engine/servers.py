"""Per-server settings: what a Discord server's or a Telegram group's moderators set with /settings.

Validated by pydantic like the config; stored in the job store (SQLite or Redis) beside the jobs; a server that
set nothing gets the config's values. Each setting is changed from a text value, as typed in a Telegram command
or sent by a Discord option, so both front ends change them the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import UserError

if TYPE_CHECKING:
    from engine.safety import Rule

Safety = Literal["standard", "strict"]   # strict: flagged content is refused everywhere, NSFW channels too

# The settings a moderator can change, in the order /settings shows them.
KEYS = ("channels", "preset", "smooth", "safety", "telegram_safety", "language", "jobs_per_hour",
        "moderation_channel")
RESET_WORDS = ("default", "reset", "none", "off-default")
_ON, _OFF = ("on", "true", "yes", "1", "开"), ("off", "false", "no", "0", "关")


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    channels: list[str] = Field(default_factory=list)   # where the bot may be used (Discord); empty: anywhere
    preset: str | None = None                # what /animate renders with
    smooth: bool | None = None               # None: as the preset says
    safety: Safety = "standard"
    telegram_safety: Literal["withhold", "spoiler"] | None = None
    language: Literal["en", "zh"] | None = None   # None: each user's own
    jobs_per_hour: int | None = Field(default=None, ge=1)   # per user, within the config's limit
    moderation_channel: str | None = None    # where reports go; None: the admins by direct message

    def allows(self, channel: str | int | None) -> bool:
        return not self.channels or str(channel) in self.channels

    def rule(self, chat_rule: Rule) -> Rule:
        """Where flagged content may go in this server: strict refuses it everywhere, even in NSFW channels."""
        return "withhold" if self.safety == "strict" else chat_rule


def change(settings: ServerSettings, key: str, value: str, *, presets: list[str], max_jobs_per_hour: int
           ) -> ServerSettings:
    """A copy of `settings` with `key` set from its text `value` ("default" restores the config's value).
    `channels` takes "+ID" to allow a channel, "-ID" to remove it. Raises UserError("bad_setting")."""
    key = key.strip().lower().replace("-", "_")
    if key not in KEYS:
        raise UserError(f"There is no setting called {key!r}; the settings are {', '.join(KEYS)}.",
                        "unknown_setting", setting=key, keys=", ".join(KEYS))
    text = value.strip()
    fields: dict[str, Any] = settings.model_dump()
    if text.lower() in RESET_WORDS:
        fields[key] = ServerSettings.model_fields[key].get_default(call_default_factory=True)
    elif key == "channels":
        channel = text.lstrip("+-").strip("<#>")
        if not channel.lstrip("-").isdigit():
            raise _bad(key, value, "+ID or -ID of a channel")
        fields[key] = sorted(set(fields[key]) - {channel}) if text.startswith("-") else \
            sorted({*fields[key], channel})
    elif key == "preset":
        if text.lower() not in presets:
            raise _bad(key, value, ", ".join(presets))
        fields[key] = text.lower()
    elif key == "smooth":
        if text.lower() not in _ON + _OFF:
            raise _bad(key, value, "on or off")
        fields[key] = text.lower() in _ON
    elif key == "jobs_per_hour":
        if not text.isdigit() or int(text) < 1 or (max_jobs_per_hour and int(text) > max_jobs_per_hour):
            raise _bad(key, value, f"a number from 1 to {max_jobs_per_hour}" if max_jobs_per_hour else "a number")
        fields[key] = int(text)
    elif key == "moderation_channel":
        channel = text.strip("<#>")
        if not channel.lstrip("-").isdigit():
            raise _bad(key, value, "a channel")
        fields[key] = channel
    else:
        fields[key] = text.lower()
    try:
        return ServerSettings(**fields)
    except ValidationError:
        choices = {"safety": "standard or strict", "telegram_safety": "withhold or spoiler", "language": "en or zh"}
        raise _bad(key, value, choices.get(key, "another value")) from None


def _bad(key: str, value: str, expected: str) -> UserError:
    return UserError(f"{key} cannot be {value!r}: use {expected}, or default.", "bad_setting", setting=key,
                     value=value, expected=expected)
