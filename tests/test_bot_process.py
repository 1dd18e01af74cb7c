"""`python -m bot` as an operator runs it: a real process with tokens from *_TOKEN_FILE files, both front ends
against the local fakes, the worker as a child process that is restarted when it dies, a clean SIGTERM, and
logs that never contain a token."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import load_config
from engine.queue.sqlite_store import SQLiteStore
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.telegram_server import FakeTelegram
from tests.harness import TINY_PRESETS, eventually, photo_bytes, write_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(150)


async def worker_pid(store_path: Path) -> int | None:
    store = SQLiteStore(store_path)
    await store.open()
    try:
        alive = [w for w in await store.workers() if w.alive and w.state in ("ready", "busy")]
        return alive[0].pid if alive else None
    finally:
        await store.close()


async def test_bot_process_serves_both_platforms_restarts_its_worker_and_never_logs_tokens(tmp_path):
    async with FakeDiscord(token="discord.SECRET.token") as dfake, FakeTelegram(token="987654:SECRET-tg") as tfake:
        presets = {k: dict(v) for k, v in TINY_PRESETS.items()}
        cfg = write_config(tmp_path / "config.toml", {
            "engine": {"model": "tiny", "device": "cpu", "step_delay_s": 0.3},
            "presets": presets,
            "storage": {"url": str(tmp_path / "jobs.sqlite3"), "data_dir": str(tmp_path / "data")},
            "discord": {"api_base_url": dfake.api_base, "gateway_url": dfake.gateway_url,
                        "attachment_hosts": ["127.0.0.1"], "guild_ready_timeout_s": 0.05},
            "telegram": {"api_base_url": tfake.base_url, "file_base_url": tfake.base_file_url},
        })
        (tmp_path / "discord.token").write_text(dfake.token + "\n")
        (tmp_path / "telegram.token").write_text(tfake.token + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_TOKEN", "TELEGRAM_TOKEN"))}
        env.update(DISCORD_TOKEN_FILE=str(tmp_path / "discord.token"),
                   TELEGRAM_TOKEN_FILE=str(tmp_path / "telegram.token"), OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1")
        log_path = tmp_path / "bot.log"
        with open(log_path, "w") as log:
            bot = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(cfg)], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            store_path = load_config(cfg).storage.url
            first_worker = await eventually(lambda: worker_pid(Path(store_path)), 60, every=0.1)
            await dfake.wait_until_connected(timeout=30)

            # Telegram: a captioned photo; the worker is killed mid-render and the job still arrives.
            alice = tfake.user("Alice", language_code="en")
            tfake.send_photo(tfake.private_chat(alice), alice, photo_bytes(), caption="/animate a cat turning")
            await eventually(lambda: _running_job(Path(store_path)), 60, every=0.1)
            os.kill(first_worker, signal.SIGKILL)
            await tfake.wait_for(lambda: [c for c in tfake.calls_to("sendVideo") if c.ok], 90)
            second_worker = await worker_pid(Path(store_path))
            assert second_worker and second_worker != first_worker

            # Discord: /animate with an attachment from the fake CDN.
            att = dfake.add_attachment("photo.png", photo_bytes(), "image/png")
            inter = await dfake.slash_command("animate", [{"name": "image", "value": att},
                                                          {"name": "prompt", "value": "waves rolling"}])
            # The result is a new message (a followup), so its owner's phone is notified.
            await dfake.wait_for(lambda: any(dfake.messages[i].attachments for i in inter.followup_ids
                                             if i in dfake.messages), 60)
        finally:
            bot.send_signal(signal.SIGTERM)
            code = bot.wait(60)
        logs = log_path.read_text()
        assert code == 0, logs[-3000:]
        assert "worker process exited" in logs and "restarting" in logs
        for secret in (dfake.token, tfake.token, "SECRET"):
            assert secret not in logs


async def _running_job(store_path: Path) -> bool:
    store = SQLiteStore(store_path)
    await store.open()
    try:
        return any(j.step >= 1 for j in await store.running())
    finally:
        await store.close()
