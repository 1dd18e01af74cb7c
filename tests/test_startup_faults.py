"""Start-up faults of `python -m bot` as real processes, with the real discord.py and python-telegram-bot clients
against the local fakes: a platform that cannot be reached yet (retried with capped backoff, one line per try,
served once it answers), a token the platform refuses (one line naming its variable; exit code 2 only when no
front end is left), and a bot killed outright (its worker ends with it and gives the lease back)."""

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.jobs import JobState
from engine.queue.sqlite_store import SQLiteStore
from tests.fakes.discord_server import API_PREFIX, FakeDiscord
from tests.fakes.telegram_server import FakeTelegram
from tests.harness import config_document, eventually, photo_bytes, write_config
from tests.test_bot_process import worker_pid

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(150)

TG_TOKEN = "987654:SECRET-tg"
DC_TOKEN = "discord.SECRET.token"
FAST_RETRY = {"BOT_START_RETRY_S": "0.1", "BOT_START_RETRY_MAX_S": "0.4"}
RETRY_LINE = re.compile(r"(\w+): not started \(attempt (\d+)\): (.*); retrying in ([\d.]+) s$")


def free_port() -> int:
    """A port nothing listens on (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bot_config(tmp_path: Path, *, telegram_port: int = 0, discord_port: int = 0, quick_steps: int = 2,
               **engine) -> Path:
    """The tiny model and a SQLite store, with each platform's URLs on the given port (where a fake runs, or
    will)."""
    sections: dict = {"engine": engine, "presets": {"quick": {"steps": quick_steps}}}
    if telegram_port:
        base = f"http://127.0.0.1:{telegram_port}"
        sections["telegram"] = {"api_base_url": f"{base}/bot", "file_base_url": f"{base}/file/bot"}
    if discord_port:
        sections["discord"] = {"api_base_url": f"http://127.0.0.1:{discord_port}{API_PREFIX}",
                               "gateway_url": f"ws://127.0.0.1:{discord_port}/gateway",
                               "attachment_hosts": ["127.0.0.1"], "guild_ready_timeout_s": 0.05}
    return write_config(tmp_path / "config.toml", config_document(tmp_path, **sections))


class BotProcess:
    """`python -m bot` with the given tokens, its log (the worker's too) in a file."""

    def __init__(self, tmp_path: Path, cfg: Path, log_name: str = "bot.log", **tokens: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_TOKEN", "TELEGRAM_TOKEN"))}
        env.update(tokens, **FAST_RETRY, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.store = tmp_path / "jobs.sqlite3"
        self.log_path = tmp_path / log_name
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(cfg)], cwd=ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def retries(self, name: str) -> list[tuple[int, str, float]]:
        """(attempt, problem, delay) of each retry line of front end `name`."""
        found = (RETRY_LINE.search(line) for line in self.log().splitlines())
        return [(int(m[2]), m[3], float(m[4])) for m in found if m and m[1] == name]

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def log_shows(bot: BotProcess, predicate, timeout: float = 60.0):
    async def check():
        assert bot.proc.poll() is None, f"bot exited with {bot.proc.returncode}:\n{bot.log()[-3000:]}"
        return predicate()
    return await eventually(check, timeout, every=0.1)


async def telegram_serves(fake: FakeTelegram) -> None:
    alice = fake.user("Alice", language_code="en")
    chat = fake.private_chat(alice)
    fake.send_text(chat, alice, "/help")
    await fake.wait_for(lambda: fake.calls_to("sendMessage", chat_id=chat.id), 30)


async def discord_serves(fake: FakeDiscord) -> None:
    await fake.wait_until_connected(timeout=30)
    await fake.wait_for(lambda: fake.command_syncs, 30)
    interaction = await fake.slash_command("help")
    await fake.wait_for(lambda: interaction.original_message and not interaction.original_message.loading, 30)
    assert "Send a photo" in interaction.original_message.content


def assert_clean(logs: str, *secrets: str) -> None:
    assert "Traceback" not in logs and "Unclosed" not in logs, logs[-3000:]
    for secret in (*secrets, "SECRET"):
        assert secret not in logs


# ---------------------------------------------------------------- a platform that cannot be reached yet


async def test_unreachable_platforms_are_retried_with_capped_backoff_and_served_once_they_answer(tmp_path):
    tg_port, dc_port = free_port(), free_port()
    bot = BotProcess(tmp_path, bot_config(tmp_path, telegram_port=tg_port, discord_port=dc_port),
                     TELEGRAM_TOKEN=TG_TOKEN, DISCORD_TOKEN=DC_TOKEN)
    try:
        # Neither platform answers, and still the worker loads and the process keeps going.
        await eventually(lambda: worker_pid(bot.store), 60, every=0.1)
        await log_shows(bot, lambda: len(bot.retries("telegram")) >= 4 and len(bot.retries("discord")) >= 4)
        for name, problem in (("telegram", "NetworkError"), ("discord", "ClientConnectorError")):
            tries = bot.retries(name)
            assert [attempt for attempt, _, _ in tries] == list(range(1, len(tries) + 1))
            assert [delay for _, _, delay in tries[:4]] == [0.1, 0.2, 0.4, 0.4]   # doubling, capped
            assert all(p.startswith(problem) for _, p, _ in tries), tries[0]

        # Telegram comes up: served at once, while Discord is still being retried.
        async with FakeTelegram(token=TG_TOKEN, port=tg_port) as tfake:
            await telegram_serves(tfake)
            discord_tries = len(bot.retries("discord"))
            await log_shows(bot, lambda: len(bot.retries("discord")) > discord_tries + 1)
            async with FakeDiscord(token=DC_TOKEN, port=dc_port) as dfake:
                await discord_serves(dfake)
                await log_shows(bot, lambda: re.search(r"discord: started after \d+ attempts", bot.log()))
                code = await asyncio.to_thread(bot.stop)   # the fakes answer the goodbyes meanwhile
    finally:
        bot.kill()
    logs = bot.log()
    assert code == 0, logs[-3000:]
    assert re.search(r"telegram: started after \d+ attempts", logs)
    assert "logging in using static token" not in logs   # one line per try: ours
    assert_clean(logs, TG_TOKEN, DC_TOKEN)


# ---------------------------------------------------------------- a token the platform refuses


@pytest.mark.parametrize("platform", ["telegram", "discord"])
async def test_a_refused_token_is_one_line_naming_its_variable_and_exit_code_2_when_it_was_the_only_one(
        tmp_path, platform):
    wrong = {"telegram": "111:WRONG-token", "discord": "wrong.discord.token"}[platform]
    var = {"telegram": "TELEGRAM_TOKEN", "discord": "DISCORD_TOKEN"}[platform]
    fake = FakeTelegram(token=TG_TOKEN) if platform == "telegram" else FakeDiscord(token=DC_TOKEN)
    async with fake:
        cfg = bot_config(tmp_path, **{f"{platform}_port": fake.port})
        bot = BotProcess(tmp_path, cfg, **{var: wrong})
        try:
            code = await asyncio.to_thread(bot.proc.wait, 60)
        finally:
            bot.kill()
    logs = bot.log()
    assert code == 2, logs[-3000:]
    named = [line for line in logs.splitlines() if var in line]
    assert len(named) == 1, named
    assert "refused the token" in named[0] and "stays off" in named[0]
    assert not bot.retries(platform)   # a refusal is not retried
    assert_clean(logs, wrong, TG_TOKEN, DC_TOKEN)


async def test_with_both_front_ends_a_refused_token_leaves_the_other_serving(tmp_path):
    async with FakeTelegram(token=TG_TOKEN) as tfake, FakeDiscord(token=DC_TOKEN) as dfake:
        cfg = bot_config(tmp_path, telegram_port=tfake.port, discord_port=dfake.port)
        bot = BotProcess(tmp_path, cfg, TELEGRAM_TOKEN=TG_TOKEN, DISCORD_TOKEN="wrong.discord.token")
        try:
            await log_shows(bot, lambda: "DISCORD_TOKEN" in bot.log())
            await telegram_serves(tfake)
            await asyncio.sleep(1.0)
            assert bot.proc.poll() is None
            code = await asyncio.to_thread(bot.stop)
        finally:
            bot.kill()
    logs = bot.log()
    assert code == 0, logs[-3000:]
    assert len([line for line in logs.splitlines() if "DISCORD_TOKEN" in line]) == 1
    assert_clean(logs, "wrong.discord.token", TG_TOKEN)


def test_a_bad_backoff_setting_is_one_line_and_exit_code_2(tmp_path):
    env = {**os.environ, "TELEGRAM_TOKEN": TG_TOKEN, "BOT_START_RETRY_S": "soon"}
    out = subprocess.run([sys.executable, "-m", "bot", "--config", str(bot_config(tmp_path, telegram_port=1))],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: BOT_START_RETRY_S: 'soon' is not a number of seconds above 0."


# ---------------------------------------------------------------- the worker ends with its bot


def gone(pid: int) -> bool:
    """Exited (a zombie not yet reaped by its new parent counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return not sys.platform.startswith("linux")
    return state in ("Z", "X")


async def store_state(store_path: Path):
    store = SQLiteStore(store_path)
    await store.open()
    try:
        return await store.workers(), await store.jobs()
    finally:
        await store.close()


async def test_a_killed_bot_takes_its_worker_with_it_and_the_next_bot_gets_the_lease_at_once(tmp_path):
    async with FakeTelegram(token=TG_TOKEN) as tfake:
        # Ten steps of 0.3 s: the bot is killed with most of the render still to go.
        cfg = bot_config(tmp_path, telegram_port=tfake.port, quick_steps=10, step_delay_s=0.3)
        first = BotProcess(tmp_path, cfg, "first.log", TELEGRAM_TOKEN=TG_TOKEN)
        try:
            worker = await eventually(lambda: worker_pid(first.store), 60, every=0.1)
            alice = tfake.user("Alice", language_code="en")
            tfake.send_photo(tfake.private_chat(alice), alice, photo_bytes(), caption="/animate a cat turning")

            async def rendering():
                _, jobs = await store_state(first.store)
                return any(j.state == JobState.RUNNING and j.step >= 1 for j in jobs)
            await eventually(rendering, 60, every=0.1)
            first.proc.kill()
            first.proc.wait()
            killed_at = time.monotonic()
            while not gone(worker):
                assert time.monotonic() - killed_at < 5, "the worker outlived its bot"
                await asyncio.sleep(0.05)
        finally:
            first.kill()
            if not gone(worker):
                os.kill(worker, signal.SIGKILL)
        # As on SIGTERM: the job in hand went back to the queue, and the lease was given back.
        leases, jobs = await store_state(first.store)
        assert leases == []
        assert [(j.state, j.worker, j.attempts) for j in jobs] == [(JobState.QUEUED, "", 0)]
        assert "returned to the queue: worker stopping" in first.log()

        second = BotProcess(tmp_path, cfg, "second.log", TELEGRAM_TOKEN=TG_TOKEN)
        try:
            assert await eventually(lambda: worker_pid(second.store), 60, every=0.1) != worker
            await tfake.wait_for(lambda: [c for c in tfake.calls_to("sendVideo") if c.ok], 60)
            code = await asyncio.to_thread(second.stop)
        finally:
            second.kill()
    logs = second.log()
    assert code == 0, logs[-3000:]
    assert "Another worker is already running" not in logs and "worker process exited" not in logs
    assert "releasing the lease of dead worker" not in logs


# ---------------------------------------------------------------- the parent watch itself

CHILD = """
import signal, sys, time
from pathlib import Path
from engine.queue.parent import follow_parent

signal.signal(signal.SIGTERM, lambda *_: (Path(sys.argv[2]).write_text("SIGTERM"), sys.exit(0)))
assert follow_parent(int(sys.argv[1]), prctl=sys.argv[3] == "prctl", poll_s=0.1)
print("following", flush=True)
time.sleep(60)
"""
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2], sys.argv[3]])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", [
    pytest.param("prctl", marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")),
    "watcher",
])
def test_a_following_process_gets_sigterm_when_its_parent_is_killed(tmp_path, how):
    marker = tmp_path / "got"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(marker), how], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "following"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while not marker.exists():
            assert time.monotonic() < deadline, "no SIGTERM after the parent died"
            time.sleep(0.02)
        assert marker.read_text() == "SIGTERM"
    finally:
        parent.kill()
        parent.wait()
        if child and not gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_worker_whose_parent_is_already_gone_stops_before_it_starts(tmp_path):
    """The race follow_parent closes: the parent died before the death signal was asked for."""
    cfg = bot_config(tmp_path)
    out = subprocess.run([sys.executable, "-m", "engine", "worker", "--config", str(cfg), "--parent-pid", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == ("error: --parent-pid 1: not this worker's parent "
                                                   "(has it ended?).")
