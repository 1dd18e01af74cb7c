"""Store faults under a running bot, for real: a real redis-server (append-only file on, fsynced every second, as
in docker-compose.yml) stopped with SIGTERM and started again on the same port and data folder, killed with
SIGKILL after losing its last writes, or frozen so that it stops answering; a real worker process; the bot's
JobService and BotCore behind the Telegram front end (the real python-telegram-bot client against the fake Bot
API). Then the SQLite file deleted or overwritten under a running bot, and the data folder full (a small
tmpfs: this needs root, and is skipped without it).

What must hold: each process logs one line when the outage starts and one when it ends; the job in flight ends
in exactly one result message; a submission during the outage gets a clear refusal in the user's language and
leaves nothing behind; a job whose record the store lost is told to its user as failed; nothing else stored is
lost, and nothing restarts in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.core import BotCore
from bot.telegram.app import TelegramFrontEnd
from bot.texts import t
from engine.config import Config
from engine.jobs import Job, JobState
from engine.queue.resilient import StoreFault, resilient, store_patience
from engine.queue.service import JobService
from engine.queue.sqlite_store import SQLiteStore
from engine.queue.store import Limits
from tests.fakes.telegram_server import FakeTelegram
from tests.harness import config_document, eventually, make_config, photo_bytes, running_stack, write_config
from tests.redis_server import RedisServer, running_redis

ROOT = Path(__file__).resolve().parent.parent
STEPS, STEP_DELAY_S = 12, 0.25          # a 3 s render: the faults land in the middle of it
STORE_LOG = "engine.queue.store"
pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------- helpers


def store_lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == STORE_LOG and text in r.getMessage()]


def videos_to(fake: FakeTelegram, chat) -> list:
    return [c for c in fake.calls_to("sendVideo", chat_id=chat.id) if c.ok]


def replies_to(fake: FakeTelegram, message) -> list[str]:
    """Texts of the bot's text messages answering `message`."""
    return [c.params.get("text") or "" for c in fake.calls_to("sendMessage", chat_id=message.chat_id)
            if c.ok and (c.params.get("reply_parameters") or {}).get("message_id") == message.message_id]


def shown(fake: FakeTelegram, chat) -> list[str]:
    """What the bot's messages in a chat show now (text or caption)."""
    return [(m.text if m.text is not None else m.caption) or "" for m in fake.bot_messages(chat.id)]


async def refused_with(fake: FakeTelegram, message, key: str, locale: str, timeout: float = 20.0) -> None:
    want = t(locale, f"errors.{key}")
    await fake.wait_for(lambda: want in replies_to(fake, message), timeout)


@pytest.fixture(autouse=True)
def _test_started(monkeypatch):
    """The Redis tests share one store, and every fake Telegram numbers its users alike: a test looks only
    at the jobs made since it started."""
    monkeypatch.setattr(sys.modules[__name__], "STARTED", time.time())


STARTED = 0.0


async def job_of(service: JobService, user, state: JobState | None = None, min_step: int = 0) -> Job | None:
    jobs = await service.store.jobs(user=f"telegram:{user.id}")
    return next((j for j in jobs if j.created_at >= STARTED and (state is None or j.state == state)
                 and j.step >= min_step), None)


async def rendering(service: JobService, user) -> Job | None:
    return await job_of(service, user, JobState.RUNNING, min_step=1)


@contextlib.asynccontextmanager
async def telegram_bot(config: Config, fake: FakeTelegram) -> AsyncIterator[JobService]:
    """The bot's side, in this process: JobService, BotCore and the Telegram front end."""
    service = JobService(config, poll_interval_s=0.05)
    await service.start()
    core = BotCore(config, service)
    front = TelegramFrontEnd(core, config, fake.token, poll_timeout=1)
    await front.start()
    try:
        yield service
    finally:
        await front.close()
        await core.close()
        await service.close()


def telegram_section(fake: FakeTelegram) -> dict:
    return {"api_base_url": fake.base_url, "file_base_url": fake.base_file_url}


def people(fake: FakeTelegram):
    """Alice and Bob write in English, Chen in Chinese; each in a private chat."""
    users = [fake.user("Alice", language_code="en"), fake.user("Bob", language_code="en"),
             fake.user("Chen", language_code="zh")]
    return [(u, fake.private_chat(u)) for u in users]


# ---------------------------------------------------------------- Redis: one server and one worker process


@dataclass
class Cluster:
    server: RedisServer
    url: str
    tmp: Path
    worker: subprocess.Popen
    log: Path

    def bot_config(self, fake: FakeTelegram) -> Config:
        return make_config(self.tmp, presets={"quick": {"steps": STEPS}}, telegram=telegram_section(fake),
                           storage={"url": self.url, "data_dir": str(self.tmp / "data")})

    def log_mark(self) -> int:
        return len(self.log.read_bytes())

    def log_since(self, mark: int) -> list[str]:
        return self.log.read_bytes()[mark:].decode(errors="replace").splitlines()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store_faults")
    with running_redis(appendonly=True) as server:
        # Short socket timeouts, so a frozen server is noticed in a second here (5 s by default).
        url = server.url + "?prefix=faults:&socket_timeout=1&socket_connect_timeout=1"
        cfg = write_config(tmp / "worker.toml", config_document(
            tmp, engine={"step_delay_s": STEP_DELAY_S}, presets={"quick": {"steps": STEPS}},
            storage={"url": url, "data_dir": str(tmp / "data")}))
        log = tmp / "worker.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--config", str(cfg)], cwd=ROOT,
                                      env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "ready: model tiny" not in log.read_text(errors="replace"):
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            yield Cluster(server, url, tmp, worker, log)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    assert worker.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def assert_one_outage(caplog, worker_lines: list[str]) -> None:
    """One line when the outage starts and one when it ends, in the bot and in the worker."""
    assert len(store_lines(caplog, "store unreachable")) == 1, store_lines(caplog, "store")
    assert len(store_lines(caplog, "store reachable again")) == 1, store_lines(caplog, "store")
    assert sum("store unreachable" in line for line in worker_lines) == 1, worker_lines
    assert sum("store reachable again" in line for line in worker_lines) == 1, worker_lines
    assert not [line for line in worker_lines if "Traceback" in line or "ERROR" in line], worker_lines


async def test_redis_stopped_and_started_again_mid_render_delays_the_job_and_refuses_new_ones_clearly(
        cluster, caplog):
    caplog.set_level(logging.INFO)
    mark = cluster.log_mark()
    async with FakeTelegram() as fake, telegram_bot(cluster.bot_config(fake), fake) as service:
        (alice, a_chat), (bob, b_chat), (chen, c_chat) = people(fake)
        fake.send_photo(a_chat, alice, photo_bytes(), caption="/animate a cat turning its head")
        job = await eventually(lambda: rendering(service, alice))

        cluster.server.terminate()   # SIGTERM: Redis writes out its append-only file and exits
        down_at = time.monotonic()
        asked = [fake.send_photo(b_chat, bob, photo_bytes(seed=1), caption="/animate waves rolling"),
                 fake.send_photo(c_chat, chen, photo_bytes(seed=2), caption="/animate 海浪翻滚")]
        await refused_with(fake, asked[0], "store_unavailable", "en")
        await refused_with(fake, asked[1], "store_unavailable", "zh")
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))
        cluster.server.restart()     # same port, same append-only file

        await fake.wait_for(lambda: videos_to(fake, a_chat), 30)
        done = await eventually(lambda: job_of(service, alice, JobState.DONE))
        assert done.id == job.id and done.attempts == 1
        await eventually(lambda: _delivered(service, job.id))
        # Nothing of the refused submissions is left, and the bot takes them once the store is back.
        assert await job_of(service, bob) is None and await job_of(service, chen) is None
        images = [p.name for p in (cluster.tmp / "data" / "images").iterdir() if p.stat().st_mtime >= STARTED]
        assert images == [f"{job.id}.png"]
        again = fake.send_photo(b_chat, bob, photo_bytes(seed=1), caption="/animate waves rolling")
        await fake.wait_for(lambda: videos_to(fake, b_chat), 30)
        assert not replies_to(fake, again)
    assert len(videos_to(fake, a_chat)) == 1
    assert not [s for s in shown(fake, a_chat) if "❌" in s]
    assert_one_outage(caplog, cluster.log_since(mark))


async def _delivered(service: JobService, job_id: str) -> bool:
    job = await service.store.get(job_id)
    return bool(job and job.delivered)


@pytest.mark.parametrize("down_s", [1.5, 0.0], ids=["down-1.5s", "restarted-at-once"])
async def test_redis_killed_after_losing_its_last_writes_tells_the_users_of_the_jobs_it_lost(cluster, caplog,
                                                                                            down_s):
    """Restarted at once, the outage may be too short for any call to fail: the bot's watcher sees another
    Redis server process answering instead."""
    caplog.set_level(logging.INFO)
    mark = cluster.log_mark()
    async with FakeTelegram() as fake, telegram_bot(cluster.bot_config(fake), fake) as service:
        (alice, a_chat), (bob, b_chat), (chen, c_chat) = people(fake)
        fake.send_photo(a_chat, alice, photo_bytes(), caption="/animate a cat turning its head")
        job = await eventually(lambda: rendering(service, alice))
        await asyncio.sleep(0.3)
        durable = cluster.server.aof_size()   # what a crash keeps: written and fsynced
        for user, chat in ((bob, b_chat), (chen, c_chat)):
            fake.send_photo(chat, user, photo_bytes(seed=user.id % 7), caption="/animate waves rolling")
        lost = [await eventually(lambda u=u: job_of(service, u)) for u in (bob, chen)]
        await fake.wait_for(lambda: all(fake.calls_to("sendPhoto", chat_id=c.id) for c in (b_chat, c_chat)), 10)

        # SIGKILL, and the last writes (Bob's and Chen's jobs) never reached the disk: a crashed machine's Redis.
        cluster.server.kill()
        cluster.server.truncate_aof(durable)
        await asyncio.sleep(down_s)
        cluster.server.restart()

        for chat, locale in ((b_chat, "en"), (c_chat, "zh")):
            want = t(locale, "status.failed", reason=t(locale, "errors.lost"))
            await fake.wait_for(lambda chat=chat, want=want: want in shown(fake, chat), 20)
        await fake.wait_for(lambda: videos_to(fake, a_chat), 30)
        await eventually(lambda: _delivered(service, job.id))
        for gone in lost:
            assert await service.store.get(gone.id) is None
            assert not Path(gone.image_path).exists()
    assert len(videos_to(fake, a_chat)) == 1 and not videos_to(fake, b_chat) and not videos_to(fake, c_chat)
    for chat in (b_chat, c_chat):   # one message each: the status, now saying the job was lost
        assert len([s for s in shown(fake, chat) if s]) == 1
    if down_s:
        assert_one_outage(caplog, cluster.log_since(mark))
    else:   # one line in the bot either way; the worker may not have met the outage at all
        seen = store_lines(caplog, "store unreachable") + store_lines(caplog, "store restarted")
        assert len(seen) == 1, store_lines(caplog, "store")
        worker_lines = cluster.log_since(mark)
        assert sum("store unreachable" in line for line in worker_lines) <= 1, worker_lines


async def test_redis_that_stops_answering_for_seconds_is_waited_out(cluster, caplog):
    caplog.set_level(logging.INFO)
    mark = cluster.log_mark()
    async with FakeTelegram() as fake, telegram_bot(cluster.bot_config(fake), fake) as service:
        (alice, a_chat), (bob, b_chat), _ = people(fake)
        fake.send_photo(a_chat, alice, photo_bytes(), caption="/animate a cat turning its head")
        job = await eventually(lambda: rendering(service, alice))

        cluster.server.pause()   # SIGSTOP: connections are accepted, nothing is answered
        frozen_at = time.monotonic()
        asked = fake.send_photo(b_chat, bob, photo_bytes(seed=1), caption="/animate waves rolling")
        await refused_with(fake, asked, "store_unavailable", "en")
        await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - frozen_at)))
        cluster.server.resume()

        await fake.wait_for(lambda: videos_to(fake, a_chat), 30)
        await eventually(lambda: _delivered(service, job.id))
        assert await job_of(service, bob) is None
    assert len(videos_to(fake, a_chat)) == 1
    assert not [s for s in shown(fake, a_chat) if "❌" in s]
    assert_one_outage(caplog, cluster.log_since(mark))


# ---------------------------------------------------------------- SQLite: the file deleted or corrupted


def sqlite_config(tmp_path: Path, fake: FakeTelegram, **engine) -> Config:
    return make_config(tmp_path, engine=engine, presets={"quick": {"steps": 6}}, telegram=telegram_section(fake))


async def test_sqlite_file_deleted_under_the_bot_refuses_new_jobs_finishes_the_one_under_way_and_keeps_all(
        tmp_path, tiny_parts, caplog):
    caplog.set_level(logging.INFO)
    async with FakeTelegram() as fake:
        config = sqlite_config(tmp_path, fake, step_delay_s=0.4)
        db = Path(config.storage.url)
        async with running_stack(config, tiny_parts) as stack, telegram_bot_on(stack, config, fake):
            (alice, a_chat), (bob, b_chat), (chen, c_chat) = people(fake)
            fake.send_photo(a_chat, alice, photo_bytes(), caption="/animate a cat turning its head")
            job = await eventually(lambda: rendering(stack.service, alice))
            db.unlink()   # `rm jobs.sqlite3` while the bot runs
            asked = [fake.send_photo(b_chat, bob, photo_bytes(seed=1), caption="/animate waves rolling"),
                     fake.send_photo(c_chat, chen, photo_bytes(seed=2), caption="/animate 海浪翻滚")]
            await refused_with(fake, asked[0], "store_broken", "en")
            await refused_with(fake, asked[1], "store_broken", "zh")
            await fake.wait_for(lambda: videos_to(fake, a_chat), 30)   # the job under way goes on
            await eventually(lambda: _delivered(stack.service, job.id))
    # On stopping, what the open database held went back to its place: a restart goes on from it.
    store = SQLiteStore(db)
    await store.open()
    try:
        jobs = await store.jobs()
    finally:
        await store.close()
    assert [(j.id, j.state, j.delivered) for j in jobs] == [(job.id, JobState.DONE, True)]
    assert Path(jobs[0].result_path).exists()
    deleted = store_lines(caplog, "was deleted")
    assert len([line for line in deleted if "saved back" in line]) == 1, deleted   # the bot's store: once
    assert len(store_lines(caplog, "is saved in")) == 1
    assert len(videos_to(fake, a_chat)) == 1


@contextlib.asynccontextmanager
async def telegram_bot_on(stack, config: Config, fake: FakeTelegram) -> AsyncIterator[TelegramFrontEnd]:
    front = TelegramFrontEnd(stack.core, config, fake.token, poll_timeout=1)
    await front.start()
    try:
        yield front
    finally:
        await front.close()


async def test_sqlite_file_corrupted_under_the_bot_is_one_line_refuses_new_jobs_and_overwrites_nothing(
        tmp_path, tiny_parts, caplog):
    caplog.set_level(logging.INFO)
    async with FakeTelegram() as fake:
        config = sqlite_config(tmp_path, fake)
        db = Path(config.storage.url)
        async with running_stack(config, tiny_parts) as stack, telegram_bot_on(stack, config, fake):
            (alice, a_chat), (bob, b_chat), (chen, c_chat) = people(fake)
            fake.send_photo(a_chat, alice, photo_bytes(), caption="/animate a cat turning its head")
            await fake.wait_for(lambda: videos_to(fake, a_chat), 30)
            done = await eventually(lambda: job_of(stack.service, alice, JobState.DONE))
            await eventually(lambda: _delivered(stack.service, done.id))

            with open(db, "r+b") as f:   # a bad disk, or a stray write over the file
                f.write(os.urandom(8192))
            corrupted = db.read_bytes()
            asked = [fake.send_photo(b_chat, bob, photo_bytes(seed=1), caption="/animate waves rolling"),
                     fake.send_photo(c_chat, chen, photo_bytes(seed=2), caption="/animate 海浪翻滚")]
            await refused_with(fake, asked[0], "store_broken", "en")
            await refused_with(fake, asked[1], "store_broken", "zh")
            await asyncio.sleep(3.0)   # the watcher and the worker keep meeting the fault meanwhile
            assert db.read_bytes() == corrupted   # nothing writes over it
            assert Path(done.result_path).exists() and Path(done.image_path).exists()
            stack.worker.stop()   # a worker told to stop while its store is broken stops
    broken = store_lines(caplog, "store broken")
    assert len(broken) == 2, broken   # the bot's store, and the in-process worker's: once each
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith(("engine", "bot"))]


def test_a_worker_started_on_a_corrupted_store_waits_with_one_line_instead_of_restarting(tmp_path):
    db = tmp_path / "jobs.sqlite3"
    db.write_bytes(os.urandom(8192))
    cfg = write_config(tmp_path / "config.toml", config_document(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--config", str(cfg)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        assert worker.stdout is not None
        while not any("store broken" in line for line in lines):
            assert time.monotonic() < deadline and worker.poll() is None, lines
            lines.append(worker.stdout.readline())
        time.sleep(3.0)
        assert worker.poll() is None   # waiting, not exiting (the bot would restart it, again and again)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=20)
    lines += out.splitlines()
    assert sum("store broken" in line for line in lines) == 1, lines
    assert "Traceback" not in "".join(lines)
    assert db.read_bytes()[:16] != b"SQLite format 3\x00"   # still the operator's to restore


# ---------------------------------------------------------------- the data folder full


@pytest.fixture
def small_disk(tmp_path):
    """tmp_path/data on a 2 MiB tmpfs; `fill()` takes the space that is left, `free()` gives it back."""
    data = tmp_path / "data"
    data.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(data)],
                      capture_output=True).returncode != 0:
        # A container without CAP_SYS_ADMIN cannot mount one even as root: nothing else makes a real ENOSPC.
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN) to simulate a full disk")

    class Disk:
        filler = data / "filler"

        def fill(self) -> None:
            with open(self.filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)

        def free(self) -> None:
            self.filler.unlink()

    yield Disk()
    subprocess.run(["umount", "-l", str(data)], check=False)


async def test_a_full_data_folder_fails_the_results_it_cannot_save_and_refuses_uploads_until_there_is_space(
        tmp_path, tiny_parts, small_disk, caplog):
    caplog.set_level(logging.INFO)
    async with FakeTelegram() as fake:
        config = sqlite_config(tmp_path, fake, step_delay_s=0.3)
        async with running_stack(config, tiny_parts) as stack, telegram_bot_on(stack, config, fake):
            (alice, a_chat), (bob, b_chat), (chen, c_chat) = people(fake)
            fake.send_photo(a_chat, alice, photo_bytes(), caption="/animate a cat turning its head")
            fake.send_photo(c_chat, chen, photo_bytes(seed=2), caption="/animate 猫转头")
            # Two chats' updates may be handled in either order: wait until one job renders and the other
            # waits behind it, so both results are still to be saved when the disk fills.
            async def both_in_flight():
                jobs = [await job_of(stack.service, alice), await job_of(stack.service, chen)]
                return (all(j is not None and j.state in (JobState.QUEUED, JobState.RUNNING) for j in jobs)
                        and any(j.state == JobState.RUNNING and j.step >= 1 for j in jobs))
            await eventually(both_in_flight)
            small_disk.fill()
            # The results cannot be saved: each owner is told, in their language.
            for chat, locale in ((a_chat, "en"), (c_chat, "zh")):
                want = t(locale, "status.failed", reason=t(locale, "errors.result_disk_full"))
                await fake.wait_for(lambda chat=chat, want=want: want in shown(fake, chat), 30)
            # New uploads cannot be saved: refused, in their language.
            asked = [fake.send_photo(b_chat, bob, photo_bytes(seed=1), caption="/animate waves rolling"),
                     fake.send_photo(c_chat, chen, photo_bytes(seed=3), caption="/animate 海浪翻滚")]
            await refused_with(fake, asked[0], "disk_full", "en")
            await refused_with(fake, asked[1], "disk_full", "zh")
            assert await job_of(stack.service, bob) is None

            small_disk.free()
            again = fake.send_photo(b_chat, bob, photo_bytes(seed=1), caption="/animate waves rolling")
            await fake.wait_for(lambda: videos_to(fake, b_chat), 30)
            assert not replies_to(fake, again)
            jobs = await stack.service.store.jobs()
    assert sorted(j.state for j in jobs) == [JobState.DONE, JobState.FAILED, JobState.FAILED]
    full = [r.getMessage() for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and "data folder" in full[0], full
    assert len([r for r in caplog.records if "has space again" in r.getMessage()]) == 1


async def test_a_full_disk_under_the_sqlite_file_refuses_submissions_and_delays_other_writes(tmp_path,
                                                                                            small_disk, caplog):
    caplog.set_level(logging.INFO)
    store = resilient(SQLiteStore(tmp_path / "data" / "jobs.sqlite3"))
    await store.open()
    try:
        first = Job(id="j1", user="u1", prompt_raw="a", prompt="a", preset="quick", seed=1, image_path="")
        await store.submit(first, Limits())
        small_disk.fill()
        with pytest.raises(StoreFault) as refused:
            await store.submit(Job(id="j2", user="u2", prompt_raw="b", prompt="b", preset="quick", seed=2,
                                   image_path=""), Limits())
        assert refused.value.key == "disk_full" and refused.value.kind == "full"

        async def background_write():
            with store_patience(None):
                return await store.update("j1", step=3)
        write = asyncio.create_task(background_write())
        await asyncio.sleep(1.5)
        assert not write.done()   # waiting for space, not failing
        small_disk.free()
        assert (await asyncio.wait_for(write, 10)).step == 3
        assert [j.id for j in await store.jobs()] == ["j1"]
    finally:
        await store.close()
    assert len(store_lines(caplog, "no space left")) == 1 and len(store_lines(caplog, "working again")) == 1
