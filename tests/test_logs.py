"""`[logging] format = "json"` as an operator's log shipper reads it: a real `python -m bot` and the worker it
starts, every line on stdout and stderr one JSON object with time (ISO 8601, UTC), level, logger and message,
and no token anywhere; the formatter's fields (job id, platform, exception) and the token filter in both formats;
and a bad `[logging]` value refused in one line, exit code 2."""

import asyncio
import datetime as dt
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import parse_config
from engine.errors import UserError
from engine.logs import REDACTED, log_context, make_handler
from tests.fakes.telegram_server import FakeTelegram
from tests.harness import config_document, eventually, write_config
from tests.test_config import refusal, run
from tests.test_health import get
from tests.test_startup_faults import BotProcess, free_port, telegram_serves

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent

# Shaped like a real bot token, so the pattern and the environment value both have to catch it.
TG_TOKEN = "7012345678:AAHk3vQpZr8xW1yTn0bLmC4dEf5gHi6jKlMn"
DISCORD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789"


def parse_lines(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return records


async def log_says(read, text: str, timeout: float = 40.0) -> None:
    """Until `text` is in the log. (The log, not the store: a test that opened the SQLite file too would be
    one more process on it.)"""
    async def check():
        return text in read()
    await eventually(check, timeout, every=0.1)


async def test_a_bot_and_its_worker_log_one_json_object_a_line_and_never_a_token(tmp_path: Path):
    port = free_port()
    async with FakeTelegram(token=TG_TOKEN) as tfake:
        cfg = write_config(tmp_path / "config.toml", config_document(
            tmp_path, telegram={"api_base_url": tfake.base_url, "file_base_url": tfake.base_file_url},
            metrics={"port": port}))
        bot = BotProcess(tmp_path, cfg, TELEGRAM_TOKEN=TG_TOKEN, ANIMABOT_LOGGING__FORMAT="json")
        try:
            await telegram_serves(tfake)
            await log_says(bot.log, "ready: model tiny loaded")   # the worker process's line
            # The SQLite store answers and Telegram is connected: ready (its worker serves no port of its own).
            assert await asyncio.to_thread(get, port, "/readyz") == (200, '{"ready": true}\n')
            code = await asyncio.to_thread(bot.stop)
        finally:
            bot.kill()
    text = bot.log()   # the bot's stdout and stderr, and its worker's (inherited)
    assert code == 0, text[-3000:]
    records = parse_lines(text)
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert record["time"].endswith("Z") and dt.datetime.fromisoformat(record["time"]).utcoffset() == dt.timedelta(0)
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    loggers = {r["logger"] for r in records}
    assert {"bot", "engine.queue.worker"} <= loggers, loggers   # the bot's lines and the worker process's
    assert any(r["logger"] == "bot" and r["message"] == "bot running: telegram" for r in records)
    assert TG_TOKEN not in text and TG_TOKEN.split(":", 1)[1] not in text


def capture(format: str, *secrets: str) -> tuple[logging.Logger, io.StringIO]:
    """A logger of its own with the processes' handler writing to a buffer."""
    stream = io.StringIO()
    logger = logging.getLogger(f"tests.logs.{format}.{len(secrets)}")
    logger.handlers[:] = [make_handler(format, secrets, stream)]
    logger.propagate, logger.level = False, logging.DEBUG
    return logger, stream


def test_json_records_carry_job_id_platform_extra_fields_and_the_exception():
    logger, stream = capture("json")
    logger.info("job %s started", "abc123", extra={"job_id": "abc123", "platform": "telegram"})
    with log_context(job_id="j2", platform="discord"):
        logger.warning("edit retried", extra={"attempt": 2})
        logger.info("overridden", extra={"platform": "cli"})
    try:
        raise ValueError("broken frame")
    except ValueError:
        logger.exception("job %s failed", "j3")
    logger.info("plain")
    first, second, third, fourth, fifth = parse_lines(stream.getvalue())
    assert first["message"] == "job abc123 started" and first["level"] == "INFO"
    assert (first["job_id"], first["platform"], first["logger"]) == ("abc123", "telegram", "tests.logs.json.0")
    assert (second["job_id"], second["platform"], second["attempt"]) == ("j2", "discord", 2)
    assert (third["job_id"], third["platform"]) == ("j2", "cli")
    assert fourth["level"] == "ERROR" and fourth["message"] == "job j3 failed"
    assert fourth["exception"].startswith("Traceback") and "ValueError: broken frame" in fourth["exception"]
    assert "job_id" not in fifth and "platform" not in fifth and "exception" not in fifth


@pytest.mark.parametrize("format", ["text", "json"])
def test_tokens_are_redacted_from_every_part_of_a_record_in_both_formats(monkeypatch, format):
    monkeypatch.setenv("DISCORD_TOKEN", "short.dc.value-123")    # from the environment, whatever its shape
    logger, stream = capture(format, "explicit-secret-42")
    logger.info("GET https://api.telegram.org/bot%s/getMe", TG_TOKEN)
    logger.info("discord says no to %s", DISCORD_TOKEN)
    logger.info("env token short.dc.value-123 and explicit-secret-42", extra={"url": f"/bot{TG_TOKEN}/x"})
    try:
        raise ConnectionError(f"cannot reach /bot{TG_TOKEN}/getUpdates")
    except ConnectionError:
        logger.exception("polling failed")
    text = stream.getvalue()
    for secret in (TG_TOKEN, TG_TOKEN.split(":", 1)[1], DISCORD_TOKEN, "short.dc.value-123", "explicit-secret-42"):
        assert secret not in text, (secret, text)
    assert text.count(REDACTED) >= (6 if format == "json" else 5)   # text shows no extra fields
    assert "ConnectionError: cannot reach /bot" in text
    if format == "json":
        records = parse_lines(text)
        assert records[0]["message"] == f"GET https://api.telegram.org/bot{REDACTED}/getMe"
        assert records[2]["url"] == f"/bot{REDACTED}/x"
    else:
        assert f" INFO tests.logs.text.1: GET https://api.telegram.org/bot{REDACTED}/getMe\n" in text


def test_a_token_file_is_redacted_too(tmp_path, monkeypatch):
    (tmp_path / "tg").write_text("999:file-token-value\n")
    monkeypatch.setenv("TELEGRAM_TOKEN_FILE", str(tmp_path / "tg"))
    logger, stream = capture("text")
    logger.warning("token is 999:file-token-value")
    assert "file-token-value" not in stream.getvalue() and REDACTED in stream.getvalue()


def test_the_logging_keys_are_checked_and_a_level_in_any_case_is_taken():
    config = parse_config({"logging": {"format": "json", "level": "debug"}}, env={})
    assert (config.logging.format, config.logging.level) == ("json", "DEBUG")
    assert parse_config({}, env={}).logging.model_dump() == {"format": "text", "level": "INFO"}
    with pytest.raises(UserError, match=r"logging.level: 'loud' is not valid"):
        parse_config({"logging": {"level": "loud"}}, env={})


@pytest.mark.parametrize("module, args", [("bot", []), ("engine", ["worker"])])
def test_a_bad_logging_value_is_one_line_and_exit_code_2(tmp_path, module, args):
    store = {"storage": {"url": str(tmp_path / "jobs.sqlite3"), "data_dir": str(tmp_path / "data")}}
    cfg = write_config(tmp_path / "config.toml", store)
    env = {"ANIMABOT_LOGGING__FORMAT": "yaml", "TELEGRAM_TOKEN": TG_TOKEN}
    line = refusal(run(module, *args, "--config", cfg, env=env))
    assert line == "error: ANIMABOT_LOGGING__FORMAT: logging.format: 'yaml' is not valid: input should be " \
                   "'text' or 'json'"
    cfg = write_config(tmp_path / "config.toml", {**store, "logging": {"level": "loud"}})
    line = refusal(run(module, *args, "--config", cfg, env={"TELEGRAM_TOKEN": TG_TOKEN}))
    assert line.startswith(f"error: {cfg}: logging.level: 'loud' is not valid: input should be 'DEBUG'"), line


async def test_a_worker_started_by_hand_logs_json_and_is_alive_while_it_loads_its_model(tmp_path):
    """`python -m engine worker` as a compose worker runs it (no bot, no --parent-pid): the same logging setup,
    and /healthz, /readyz and /metrics (the process's own) on `[metrics] port`, answered from the start, while
    torch and the model load."""
    port = free_port()
    cfg = write_config(tmp_path / "config.toml", config_document(tmp_path, metrics={"port": port}))
    log_path = tmp_path / "worker.log"
    env = {**os.environ, "ANIMABOT_LOGGING__FORMAT": "json", "TELEGRAM_TOKEN": TG_TOKEN, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--config", str(cfg)], cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        async def alive():
            assert worker.poll() is None, log_path.read_text()
            return await asyncio.to_thread(get, port, "/healthz") == (200, "ok\n")
        await eventually(alive, 15, every=0.1)
        assert await asyncio.to_thread(get, port, "/readyz") == (200, '{"ready": true}\n')
        status, metrics = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200 and "process_resident_memory_bytes" in metrics
    finally:
        worker.kill()
        worker.wait()
    records = parse_lines(log_path.read_text())
    assert records[0]["logger"] == "engine.metrics" and records[0]["message"].startswith("serving /metrics")
    assert TG_TOKEN not in log_path.read_text()
