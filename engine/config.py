"""config.toml -> typed settings. Flags override these; unknown keys are kept in `raw`."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.presets import Preset, presets_from_config


@dataclass
class EngineConfig:
    model: str = "ali-vilab/i2vgen-xl"
    device: str = "auto"
    compile: str | bool = "auto"
    low_vram: str | bool = "auto"
    local_worker: bool = True
    decode_chunk_size: int = 8
    vae_memory_budget_gib: float = 3.0
    negative_prompt: str = ""
    # Test and demo knobs: a delay per step, and a simulated CUDA OOM at a given step of the first attempt.
    step_delay_s: float = 0.0
    simulate_oom_at_step: int = 0


@dataclass
class QueueConfig:
    per_user: int = 2
    max_length: int = 50
    jobs_per_hour: int = 20
    default_step_s: dict[str, float] = field(default_factory=lambda: {"quick": 0.25, "hq": 0.25, "lite": 0.07})
    default_overhead_s: float = 2.0


@dataclass
class LimitsConfig:
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    min_image_side: int = 64
    max_prompt_chars: int = 500
    blocked_words: list[str] = field(default_factory=list)
    words: dict[str, list[str]] = field(default_factory=dict)  # per server/chat id


@dataclass
class StorageConfig:
    url: str = "data/jobs.sqlite3"
    data_dir: str = "data"
    retention_days: float = 7


@dataclass
class DiscordConfig:
    api_base_url: str = ""
    gateway_url: str = ""
    guilds: list[int] = field(default_factory=list)
    dms: bool = True
    admins: list[int] = field(default_factory=list)
    edit_interval_s: float = 1.0
    upload_limit_bytes: int = 10_485_760
    attachment_hosts: list[str] = field(default_factory=lambda: ["cdn.discordapp.com", "media.discordapp.net"])


@dataclass
class TelegramConfig:
    api_base_url: str = ""
    file_base_url: str = ""
    chats: list[int] = field(default_factory=list)
    admins: list[int] = field(default_factory=list)
    edit_interval_private_s: float = 1.0
    edit_interval_group_s: float = 3.0
    download_limit_bytes: int = 20_000_000
    upload_limit_bytes: int = 50_000_000
    send_as: str = "video"


@dataclass
class MetricsConfig:
    port: int = 0


@dataclass
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    presets: dict[str, Preset] = field(default_factory=dict)
    queue: QueueConfig = field(default_factory=QueueConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    raw: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def preset(self, name: str) -> Preset:
        try:
            return self.presets[name]
        except KeyError:
            raise UserError(
                f"Unknown preset '{name}'; choose one of: {', '.join(sorted(self.presets))}.",
                "unknown_preset", name=name,
            ) from None

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)


def _section(cls, values: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def parse_config(raw: dict[str, Any], path: Path | None = None) -> Config:
    return Config(
        engine=_section(EngineConfig, raw.get("engine", {})),
        presets=presets_from_config(raw.get("presets", {})),
        queue=_section(QueueConfig, raw.get("queue", {})),
        limits=_section(LimitsConfig, raw.get("limits", {})),
        storage=_section(StorageConfig, raw.get("storage", {})),
        discord=_section(DiscordConfig, raw.get("discord", {})),
        telegram=_section(TelegramConfig, raw.get("telegram", {})),
        metrics=_section(MetricsConfig, raw.get("metrics", {})),
        raw=raw,
        path=path,
    )


def load_config(path: str | Path | None = None) -> Config:
    """Read config.toml; a missing default file gives the built-in defaults, a missing named file is an error."""
    explicit = path is not None
    p = Path(path) if explicit else Path("config.toml")
    if not p.exists():
        if explicit:
            raise UserError(f"Config file not found: {p}", "config_missing")
        return parse_config({})
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"Config file {p} is not valid TOML: {exc}", "config_invalid") from None
    return parse_config(raw, p)
