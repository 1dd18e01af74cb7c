"""`/healthz` and `/readyz` beside `/metrics` on `[metrics] port`, asked of a real `python -m bot` the way a
container healthcheck or a Kubernetes probe asks: alive from the start, ready once its store answers and its
front end has connected, not ready while its Redis is down, and ready again when Redis is back."""

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine.queue.metrics import Metrics, process_registry, start_metrics_server
from tests.fakes.telegram_server import FakeTelegram
from tests.harness import config_document, write_config
from tests.redis_server import running_redis
from tests.test_startup_faults import BotProcess, free_port, telegram_serves

pytestmark = pytest.mark.timeout(60)

TG_TOKEN = "987654:SECRET-tg"


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body); (0, "") while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


async def answers(bot: BotProcess, port: int, path: str, status: int, timeout: float = 15.0) -> str:
    """The body of the first answer to `path` with `status`, asked every 0.1 s."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen: tuple[int, str] = (0, "")
    while asyncio.get_running_loop().time() < deadline:
        assert bot.proc.poll() is None, f"bot exited with {bot.proc.returncode}:\n{bot.log()[-3000:]}"
        seen = await asyncio.to_thread(get, port, path)
        if seen[0] == status:
            return seen[1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never answered {status}; last {seen}\n{bot.log()[-3000:]}")


def telegram_at(port: int) -> dict:
    base = f"http://127.0.0.1:{port}"
    return {"api_base_url": f"{base}/bot", "file_base_url": f"{base}/file/bot"}


async def test_a_bot_is_alive_at_once_and_ready_when_its_front_end_has_connected(tmp_path: Path):
    """With Redis and no local worker, so nothing here waits for torch (the SQLite bot, which starts its worker,
    is asked for /readyz in tests/test_logs.py)."""
    tg_port, metrics_port = free_port(), free_port()
    with running_redis() as redis:
        cfg = write_config(tmp_path / "config.toml", config_document(
            tmp_path, storage={"url": redis.url}, engine={"local_worker": False}, telegram=telegram_at(tg_port),
            metrics={"port": metrics_port}))
        bot = BotProcess(tmp_path, cfg, TELEGRAM_TOKEN=TG_TOKEN)
        try:
            assert await answers(bot, metrics_port, "/healthz", 200) == "ok\n"
            # Telegram cannot be reached yet (retried with backoff): alive, but not ready, saying why.
            body = json.loads(await answers(bot, metrics_port, "/readyz", 503))
            assert body == {"ready": False, "reason": "not connected yet: telegram"}
            async with FakeTelegram(token=TG_TOKEN, port=tg_port) as tfake:
                assert json.loads(await answers(bot, metrics_port, "/readyz", 200)) == {"ready": True}
                await telegram_serves(tfake)
                status, metrics = await asyncio.to_thread(get, metrics_port, "/metrics")
                assert status == 200 and "animabot_queue_depth 0.0" in metrics and "animabot_workers{" in metrics
                assert "process_resident_memory_bytes" in metrics
                code = await asyncio.to_thread(bot.stop)
        finally:
            bot.kill()
    assert code == 0, bot.log()[-3000:]
    assert TG_TOKEN not in bot.log()


async def test_readyz_is_503_while_redis_is_down_and_200_again_when_it_is_back(tmp_path: Path):
    metrics_port = free_port()
    with running_redis() as redis:
        async with FakeTelegram(token=TG_TOKEN) as tfake:
            cfg = write_config(tmp_path / "config.toml", config_document(
                tmp_path, storage={"url": redis.url}, engine={"local_worker": False},
                telegram={"api_base_url": tfake.base_url, "file_base_url": tfake.base_file_url},
                metrics={"port": metrics_port}))
            bot = BotProcess(tmp_path, cfg, TELEGRAM_TOKEN=TG_TOKEN)
            try:
                await answers(bot, metrics_port, "/readyz", 200)
                redis.kill()
                body = json.loads(await answers(bot, metrics_port, "/readyz", 503))
                assert body["reason"].startswith("store unreachable: "), body
                assert await asyncio.to_thread(get, metrics_port, "/healthz") == (200, "ok\n")   # still alive
                redis.restart()
                await answers(bot, metrics_port, "/readyz", 200)
                code = await asyncio.to_thread(bot.stop)
            finally:
                bot.kill()
    assert code == 0, bot.log()[-3000:]
    assert "store unreachable" in bot.log() and "store reachable again" in bot.log()


def test_the_endpoint_alone_metrics_health_and_a_readiness_check_that_breaks():
    """A worker's endpoint (no readiness check: ready while it runs), a check that raises (503 with its
    reason), and a port already taken (one line naming the key)."""
    worker = start_metrics_server(free_port(), process_registry(), addr="127.0.0.1")
    assert worker is not None
    try:
        assert get(worker.port, "/healthz") == (200, "ok\n")
        assert get(worker.port, "/readyz") == (200, '{"ready": true}\n')
        status, text = get(worker.port, "/metrics")
        assert status == 200 and "process_cpu_seconds_total" in text and "animabot_" not in text

        def broken() -> tuple[bool, str]:
            raise RuntimeError("no loop")

        bot = start_metrics_server(free_port(), Metrics().registry, addr="127.0.0.1", ready=broken)
        assert bot is not None
        try:
            status, text = get(bot.port, "/readyz")
            assert status == 503 and json.loads(text)["reason"] == "readiness check failed: RuntimeError: no loop"
        finally:
            bot.stop()
        from engine.errors import UserError

        with pytest.raises(UserError, match=rf"metrics.port: cannot listen on 127.0.0.1:{worker.port} "):
            start_metrics_server(worker.port, process_registry(), addr="127.0.0.1")
    finally:
        worker.stop()
