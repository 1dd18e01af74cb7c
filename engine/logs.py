"""Logging for `python -m bot` and `python -m engine worker` (the worker the bot starts, too): `[logging] format`
and `level`.

- `format = "text"` (the default): `time LEVEL logger: message`, as ever.
- `format = "json"`: one JSON object a line, `{"time", "level", "logger", "message"}` (time in ISO 8601, UTC),
  plus `job_id` and `platform` when known (an `extra={"job_id": ...}` on the call, or `log_context(...)` around
  it), any other `extra=` field, and `exception` (the traceback) when there is one. Warnings and uncaught
  exceptions are log records too, and whatever else is written on sys.stderr (a library's own log handler,
  a refusal's one line) becomes a JSON line (`JsonStderr`), so every line on stderr parses.

In both formats a filter on the handler redacts the chat tokens from every record (message, arguments,
traceback, extra fields): the values of DISCORD_TOKEN / TELEGRAM_TOKEN (or of the files DISCORD_TOKEN_FILE /
TELEGRAM_TOKEN_FILE name), and anything shaped like a Telegram bot token (`123456:AA...`, 30 characters and
more after the colon) or a Discord bot token (three dot-separated base64url parts).

Standard library only: a `logging.Formatter` subclass, a `logging.Filter` and a line wrapper for sys.stderr.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import LoggingConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
TOKEN_VARS = ("DISCORD_TOKEN", "TELEGRAM_TOKEN")
TOKEN_PATTERNS = (
    re.compile(r"\d+:[A-Za-z0-9_-]{30,}"),                                       # Telegram: <bot id>:<secret>
    re.compile(r"[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}"),   # Discord: id.time.hmac
)
MIN_SECRET_CHARS = 8      # a shorter "token" would redact ordinary words; no real token is that short
CONTEXT_FIELDS = ("job_id", "platform")

_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("log_context", default=None)
# What every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Log records made in this block (and in tasks started from it) carry these fields (job_id, platform)
    in the JSON format, unless the call's own `extra=` names them."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def secrets_from_env(env: Mapping[str, str] | None = None) -> list[str]:
    """The token values the environment gives: each of TOKEN_VARS, and the content of each `*_FILE`."""
    environ = os.environ if env is None else env
    found = []
    for var in TOKEN_VARS:
        if value := environ.get(var, "").strip():
            found.append(value)
        if path := environ.get(f"{var}_FILE", "").strip():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if value := Path(path).read_text(encoding="utf-8").strip():
                    found.append(value)
    return found


class RedactTokens(logging.Filter):
    """Replaces the given secrets and anything shaped like a bot token with REDACTED, in place on the record
    (so every handler and format after it sees the redacted text). Never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        known = set(self.secrets) | {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        self.secrets = sorted(known, key=len, reverse=True)   # the longest first: one may contain another

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in TOKEN_PATTERNS:
            text = pattern.sub(REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:   # arguments that do not fit the message: the handler reports that, as it would
            return True
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


_PLAIN = logging.Formatter()


def iso_utc(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message; job_id and platform when known; the other
    `extra=` fields; exception and stack when there are."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": iso_utc(record.created), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        context = _context.get() or {}
        for key in CONTEXT_FIELDS:
            value = record.__dict__.get(key, context.get(key))
            if value is not None:
                entry[key] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


_GLOG_LINE = re.compile(r"^\[?([DIWEFC])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\]]+)\] ?(.*)$")
_GLOG_LEVELS = {"D": "DEBUG", "I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL", "C": "CRITICAL"}


class JsonStderr:
    """sys.stderr in the JSON format: what other code writes there rather than through the root logger (a
    library's own log handler, as torch and transformers have; a printed warning or refusal; a progress bar)
    comes out as JSON lines too, `logger` "stderr", redacted like any record. Lines in torch's own log format
    (`W1201 12:00:00.000000 123 file.py:10] text`) keep their level and source."""

    def __init__(self, stream: IO[str], redact: RedactTokens):
        self.stream = stream
        self.redact = redact
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._pending = re.split(r"[\r\n]", self._pending + text)
            for line in lines:
                self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._emit(self._pending)
            self._pending = ""
            self.stream.flush()

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        entry: dict[str, Any] = {"time": iso_utc(dt.datetime.now(dt.UTC).timestamp()), "level": "WARNING",
                                 "logger": "stderr", "message": self.redact.redact(line.rstrip())}
        if glog := _GLOG_LINE.match(line):
            entry.update(level=_GLOG_LEVELS[glog[1]], source=glog[2], message=self.redact.redact(glog[3]))
        elif line.startswith(("error:", "internal error:")):
            entry["level"] = "ERROR"
        self.stream.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def __getattr__(self, name: str) -> Any:   # fileno, isatty, encoding, buffer...: the real stream's
        return getattr(self.stream, name)


def make_handler(format: str = "text", secrets: Iterable[str] = (), stream: IO[str] | None = None
                 ) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactTokens([*secrets_from_env(), *secrets]))
    return handler


def setup_logging(format: str = "text", level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """The root logger's one handler, to stderr, in `format` at `level`, tokens redacted (replaces any other).
    With "json", sys.stderr becomes a JsonStderr, so every line on it is JSON."""
    real = sys.stderr.stream if isinstance(sys.stderr, JsonStderr) else sys.stderr
    if isinstance(sys.stderr, JsonStderr):
        sys.stderr.flush()
    handler = make_handler(format, secrets, real)
    sys.stderr = JsonStderr(real, _redactor(handler)) if format == "json" else real
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)   # request URLs carry the Telegram token
    # Warnings and uncaught exceptions go through the same handler: redacted, and one JSON object each.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _redactor(handler: logging.Handler) -> RedactTokens:
    return next(f for f in handler.filters if isinstance(f, RedactTokens))


def configure(settings: LoggingConfig, secrets: Iterable[str] = ()) -> None:
    """`setup_logging` from a config's `[logging]` section."""
    setup_logging(settings.format, settings.level, secrets)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("uncaught").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("uncaught").critical("uncaught exception in thread %s", name,
                                           exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
