"""config.toml -> one typed, validated config.

Every key is a typed field of a section below; nothing else is read. Values come from, strongest first:
command-line flags (assigned after loading, validated too), the environment (`ANIMABOT_<SECTION>__<KEY>`, e.g.
`ANIMABOT_STORAGE__URL=redis://redis:6379/0`), then the file. An unknown section or key, a wrong type or an
out-of-range value stops the program with one line naming `section.key`, the value and what is expected:
`config.toml: queue.per_usr: unknown key (did you mean per_user?)`.

Built on pydantic-settings: its environment source does the `ANIMABOT_` prefix and the `__` nesting, pydantic
the types and ranges; this module only turns its errors into that one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic.functional_validators import BeforeValidator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from engine.errors import UserError
from engine.presets import DEFAULT_PRESETS, Preset

ENV_PREFIX = "ANIMABOT_"
ENV_DELIMITER = "__"

Auto = bool | Literal["auto"]          # "auto": decided from the hardware (on for CUDA, off for the CPU)
NonNegInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegFloat = Annotated[float, Field(ge=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


class Section(BaseModel):
    # Flags are assigned onto a loaded config: validate those too.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EngineConfig(Section):
    model: str = "ali-vilab/i2vgen-xl"
    device: str = "auto"
    compile: Auto = "auto"
    low_vram: Auto = "auto"
    # A worker beside the bot. Always with a SQLite store; with Redis, false lets GPU machines do the work.
    local_worker: bool = True
    decode_chunk_size: PositiveInt = 8
    vae_memory_budget_gib: NonNegFloat = 3.0
    negative_prompt: str = ""
    # The fast path (engine/render/fastpath.py; figures in docs/PERFORMANCE.md).
    fuse_qkv: Auto = "auto"
    cuda_graphs: Auto = False
    channels_last: Auto = False
    fp8: Auto = False
    compile_vae: Auto = False
    compile_mode: str = ""              # "" = the measured default; e.g. "max-autotune-no-cudagraphs"
    compile_backend: str = "inductor"   # "eager" traces without code generation (tests)
    compile_dynamic_hw: Auto = False
    warm_presets: list[str] | None = None   # presets whose buckets are compiled at start; None = all but fallbacks
    # Test and demo knobs: a delay per step, and a simulated CUDA OOM at a given step of the first attempt.
    step_delay_s: NonNegFloat = 0.0
    simulate_oom_at_step: NonNegInt = 0


class QueueConfig(Section):
    per_user: NonNegInt = 2
    max_length: NonNegInt = 50
    jobs_per_hour: NonNegInt = 20
    default_step_s: dict[str, NonNegFloat] = Field(
        default_factory=lambda: {"quick": 0.25, "hq": 0.25, "turbo": 0.08, "lite": 0.07, "fast": 0.2})
    default_overhead_s: NonNegFloat = 2.0
    max_extends: NonNegInt = 3      # extensions in one chain (a clip and its extensions); 0 = no Extend


class LimitsConfig(Section):
    max_image_bytes: PositiveInt = 20_000_000
    max_image_pixels: PositiveInt = 40_000_000
    min_image_side: PositiveInt = 64
    max_prompt_chars: PositiveInt = 500
    blocked_words: list[str] = Field(default_factory=list)
    words: dict[str, list[str]] = Field(default_factory=dict)  # per server/chat id


class StorageConfig(Section):
    url: str = "data/jobs.sqlite3"
    data_dir: str = "data"
    retention_days: NonNegFloat = 7


class DiscordConfig(Section):
    api_base_url: str = ""
    gateway_url: str = ""
    guilds: list[int] = Field(default_factory=list)
    dms: bool = True
    admins: list[int] = Field(default_factory=list)
    edit_interval_s: NonNegFloat = 1.0
    upload_limit_bytes: PositiveInt = 10_485_760
    attachment_hosts: list[str] = Field(default_factory=lambda: ["cdn.discordapp.com", "media.discordapp.net"])
    interaction_ttl_s: Annotated[float, Field(ge=0, le=900)] = 840   # then channel messages (tokens last 15 min)
    max_ratelimit_timeout_s: NonNegFloat = 30    # longer rate-limit waits go back to the edit scheduler
    ready_timeout_s: NonNegFloat = 120
    guild_ready_timeout_s: NonNegFloat = 2.0
    # Sharding: 0 = as many shards as Discord recommends. `shard_ids` empty: the bot replicas on one store take
    # the shards by lease, evenly; listed: this process runs exactly those (shard_count then required).
    shard_count: NonNegInt = 0
    shard_ids: list[NonNegInt] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_shards(self) -> DiscordConfig:
        if self.shard_ids and not self.shard_count:
            raise ValueError("discord.shard_ids: set discord.shard_count too")
        if any(i >= self.shard_count for i in self.shard_ids):
            raise ValueError(f"discord.shard_ids: each must be below discord.shard_count ({self.shard_count})")
        return self


class TelegramConfig(Section):
    api_base_url: str = ""
    file_base_url: str = ""
    chats: list[int] = Field(default_factory=list)
    admins: list[int] = Field(default_factory=list)
    edit_interval_private_s: NonNegFloat = 1.0
    edit_interval_group_s: NonNegFloat = 3.0
    download_limit_bytes: PositiveInt = 20_000_000
    upload_limit_bytes: PositiveInt = 50_000_000
    send_as: Literal["video", "animation"] = "video"
    # "polling": one replica polls at a time (a store lease), the others stand by. "webhook": Telegram posts
    # updates to `webhook_url`; every replica serves its path on listen:port behind a load balancer.
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""
    listen: str = "0.0.0.0"
    port: Port = 8443
    secret_token: str = ""   # required with webhooks: Telegram sends it with each update (1-256 of A-Z a-z 0-9 _ -)

    @model_validator(mode="after")
    def _check_webhook(self) -> TelegramConfig:
        import re

        if self.mode != "webhook":
            return self
        if not self.webhook_url.startswith(("https://", "http://")):
            raise ValueError("telegram.webhook_url: the public URL Telegram posts updates to is required with "
                             "mode = \"webhook\"")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", self.secret_token):
            raise ValueError("telegram.secret_token: required with mode = \"webhook\": 1-256 characters of "
                             "A-Z, a-z, 0-9, _ and -")
        return self


class ReplicasConfig(Section):
    # Bot replicas on one store: what each serves (the jobs it follows, Discord shards, the Telegram poller) is
    # held in the store, renewed every quarter of this; a dead replica's is taken over within it (a hold lasts
    # three quarters of it unrenewed, plus up to a quarter for the next heartbeat).
    lease_s: Annotated[float, Field(ge=1)] = 10.0


class MetricsConfig(Section):
    port: Port = 0


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


def _level_in_any_case(value: Any) -> Any:
    """"debug" is DEBUG; a value that is no level is left as it is, for the refusal to quote."""
    return value.upper() if isinstance(value, str) and value.upper() in LOG_LEVELS else value


class LoggingConfig(Section):
    # "text": time LEVEL logger: message; "json": one JSON object a line (engine/logs.py). Tokens are redacted
    # in both.
    format: Literal["text", "json"] = "text"
    level: Annotated[LogLevel, BeforeValidator(_level_in_any_case)] = "INFO"


class PreviewConfig(Section):
    every_s: NonNegFloat = 3.0     # a preview of the forming clip this often while it renders; 0 = off


class SafetyConfig(Section):
    # "nudenet" (its ONNX detector, in the bot process), a Hugging Face image-classification hub id or folder
    # (run by the worker, which has torch), or "off".
    classifier: str = "nudenet"
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5   # a score at or above it is flagged; 0 flags all
    check_input: bool = True
    check_output: bool = True       # the result and the previews
    output_frames: PositiveInt = 4  # frames of a result (evenly spaced) that are classified
    allow_in_dms: bool = False      # Discord: flagged content in direct messages
    telegram: Literal["withhold", "spoiler"] = "withhold"


class Config(BaseSettings):
    """The whole configuration. `load_config` builds it; flags are then assigned onto its sections."""

    model_config = SettingsConfigDict(extra="forbid", validate_assignment=True, env_prefix=ENV_PREFIX,
                                      env_nested_delimiter=ENV_DELIMITER, case_sensitive=False)

    engine: EngineConfig = Field(default_factory=EngineConfig)
    presets: dict[str, Preset] = Field(default_factory=lambda: dict(DEFAULT_PRESETS))
    queue: QueueConfig = Field(default_factory=QueueConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    discord: DiscordConfig = Field(default_factory=DiscordConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    replicas: ReplicasConfig = Field(default_factory=ReplicasConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    preview: PreviewConfig = Field(default_factory=PreviewConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)

    _path: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init arguments; the environment beats them.
        return env_settings, init_settings

    @model_validator(mode="before")
    @classmethod
    def _complete_presets(cls, data: Any) -> Any:
        """A `[presets.NAME]` table names only what it changes: the rest comes from the built-in preset."""
        if isinstance(data, dict) and isinstance(data.get("presets"), dict):
            presets: dict[str, Any] = {name: dataclasses.asdict(p) for name, p in DEFAULT_PRESETS.items()}
            for name, table in data["presets"].items():
                base = presets.get(name, {"name": name})
                presets[name] = {**base, **table, "name": name} if isinstance(table, dict) else table
            data = {**data, "presets": presets}
        return data

    @model_validator(mode="after")
    def _check_fallbacks(self) -> Config:
        for preset in self.presets.values():
            if preset.fallback and preset.fallback not in self.presets:
                raise ValueError(f"presets.{preset.name}.fallback: no preset named {preset.fallback!r}")
            if preset.fallback and self.presets[preset.fallback].family != preset.family:
                raise ValueError(f"presets.{preset.name}.fallback: {preset.fallback!r} is for another model "
                                 f"family ({self.presets[preset.fallback].family}, not {preset.family})")
        return self

    @property
    def path(self) -> Path | None:
        return self._path

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


# ---- loading, and one line per refusal ----

def parse_config(raw: dict[str, Any], path: Path | None = None, env: dict[str, str] | None = None) -> Config:
    """A config from a TOML document's values (and the environment); UserError naming the first bad key."""
    source = str(path) if path is not None else "config"
    env = dict(os.environ) if env is None else env
    _check_env_sections(env)
    try:
        config = _with_env(env, lambda: Config(**raw))
    except ValidationError as exc:
        raise UserError(_describe(exc, source, raw, env), "config_invalid") from None
    config._path = path
    return config


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read config.toml; a missing default file gives the built-in defaults, a missing named file is an error."""
    explicit = path is not None
    p = Path(path) if path is not None else Path("config.toml")
    if not p.exists():
        if explicit:
            raise UserError(f"Config file not found: {p}", "config_missing")
        return parse_config({}, env=env)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"Config file {p} is not valid TOML: {exc}", "config_invalid") from None
    return parse_config(raw, p, env)


def set_option(section: BaseModel, key: str, value: Any) -> None:
    """Assign a command-line flag onto a section, validated like the file: UserError naming the flag's key."""
    try:
        setattr(section, key, value)
    except ValidationError as exc:
        raise UserError(f"--{key.replace('_', '-')}: {_problem(exc.errors()[0], key)}", "bad_option") from None


def _with_env(env: dict[str, str], build):
    """pydantic-settings reads os.environ: build with `env` in its place (tests pass their own)."""
    if env is os.environ or env == dict(os.environ):
        return build()
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return build()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _sections() -> list[str]:
    return list(Config.model_fields)


def _check_env_sections(env: dict[str, str]) -> None:
    sections = _sections()
    for var in env:
        if not var.upper().startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section = rest.split(ENV_DELIMITER, 1)[0]
        if section not in sections or ENV_DELIMITER not in rest:
            raise UserError(f"{var}: unknown section {section!r}{_did_you_mean(section, sections)}; "
                            f"use {ENV_PREFIX}<SECTION>{ENV_DELIMITER}<KEY>", "config_invalid")


def _describe(exc: ValidationError, source: str, raw: dict[str, Any], env: dict[str, str]) -> str:
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    if not loc or error["type"] == "value_error" and isinstance(error.get("input"), dict):
        # one of our own checks across keys (of the whole config, or of one section): it names them
        return f"{source}: {error['msg'].removeprefix('Value error, ')}"
    key = ".".join(loc)
    var = (ENV_PREFIX + ENV_DELIMITER.join(loc)).upper()
    where = var if any(v.upper() == var for v in env) else source
    if error["type"] == "extra_forbidden" and len(loc) == 1:
        return f"{where}: [{key}]: unknown section{_did_you_mean(loc[0], _sections())}"
    return f"{where}: {key}: {_problem(error, loc[-1])}"


def _problem(error: ErrorDetails, key: str) -> str:
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        owner = _section_fields(error["loc"][:-1])
        return f"unknown key{_did_you_mean(key, owner)}"
    value = error.get("input")
    return f"{value!r} is not valid: {error['msg'][0].lower() + error['msg'][1:]}"


def _section_fields(loc: tuple) -> list[str]:
    model: Any = Config
    for part in loc:
        if isinstance(part, int) or model is None:
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        if getattr(annotation, "__origin__", None) is dict:   # [presets.NAME]: the name is free, then a table
            return [f.name for f in dataclasses.fields(Preset)]
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
