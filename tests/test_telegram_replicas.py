"""Several Telegram bot replicas on one store: real `python -m bot` processes (two replicas) and a real
`python -m engine worker --model tiny` on a real redis-server, against the fake Bot API in this process.

- webhook mode: each replica serves its own webhook server; the test plays Telegram and the load balancer,
  posting updates to the replicas in turn. One replica is SIGKILLed mid-render: the other finishes the
  statuses and deliveries of its jobs within the lease, and serves the updates that come after.
- polling mode: only the replica holding `telegram:poller` polls; when it is killed the other polls within
  the lease, and follows the dead one's jobs. Telegram (the fake) never sees two pollers at once.
- a webhook post without the right secret token: 403, one log line, not processed (in this process).

Each kill prints the takeover time: from the kill to the first edit or delivery by the survivor of a job the
dead replica followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bot.core import BotCore
from bot.replicas import Replica
from bot.telegram.app import POLLER, TelegramFrontEnd
from bot.telegram.status import ChatPacer
from engine.config import Config
from engine.queue.redis_store import RedisStore
from engine.queue.service import JobService
from tests.fakes.telegram_server import Call, ChatMessage, FakeTelegram
from tests.harness import config_document, eventually, make_config, photo_bytes, write_config
from tests.redis_server import free_port, running_redis

ROOT = Path(__file__).resolve().parent.parent
LEASE_S = 2.0
STEPS = 12
STEP_DELAY_S = 0.25          # a render takes about 3 s: a kill lands in the middle of one, and the takeover too
SECRET = "replica-test-secret"
HOOK_PATH = "/telegram-hook"
STATUS_EDITS = ("editMessageText", "editMessageCaption", "editMessageMedia", "deleteMessage")


class Cluster:
    """A worker and bot replicas (real processes) on one redis-server, talking to `fake`."""

    def __init__(self, tmp: Path, redis_url: str, fake: FakeTelegram, mode: str):
        self.tmp, self.redis_url, self.fake, self.mode = tmp, redis_url, fake, mode
        self.hook_url = f"http://127.0.0.1:8443{HOOK_PATH}"   # the load balancer's address: never called
        telegram: dict[str, Any] = {"api_base_url": fake.base_url, "file_base_url": fake.base_file_url,
                                    "edit_interval_private_s": 0.3, "edit_interval_group_s": 0.3, "mode": mode}
        if mode == "webhook":
            telegram.update(webhook_url=self.hook_url, secret_token=SECRET, listen="127.0.0.1")
        doc = config_document(
            tmp, engine={"model": "tiny", "device": "cpu", "local_worker": False, "step_delay_s": STEP_DELAY_S},
            presets={"quick": {"steps": STEPS}}, queue={"per_user": 10, "max_length": 100, "jobs_per_hour": 0},
            storage={"url": redis_url, "data_dir": str(tmp / "data")}, telegram=telegram)
        self.config_path = write_config(tmp / "config.toml", doc)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_TOKEN", "TELEGRAM_TOKEN",
                                                                        "ANIMABOT_"))}
        self.env = {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                    "ANIMABOT_REPLICAS__LEASE_S": str(LEASE_S)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.store = RedisStore(redis_url)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.tmp / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    async def start(self, replicas: list[str]) -> None:
        await self.store.open()
        self._spawn("worker", [sys.executable, "-m", "engine", "worker", "--config", str(self.config_path)],
                    self.env)
        for name in replicas:
            env = {**self.env, "TELEGRAM_TOKEN": self.fake.token}
            if self.mode == "webhook":
                self.ports[name] = free_port()
                env["ANIMABOT_TELEGRAM__PORT"] = str(self.ports[name])
            self._spawn(name, [sys.executable, "-m", "bot", "--config", str(self.config_path)], env)

        async def ready() -> bool:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            return ("ready: model tiny" in self.log("worker")
                    and all("bot running: telegram" in self.log(name) for name in replicas))
        await eventually(ready, 60, "the worker and the bot replicas up", every=0.1)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def kill(self, name: str) -> float:
        """SIGKILL a replica; returns when, on this process's monotonic clock (the fake's)."""
        at = time.monotonic()
        self.procs[name].kill()
        self.procs[name].wait()
        return at

    def hook(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{HOOK_PATH}"

    async def stop(self, name: str) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:   # in a thread: the fake in this event loop must keep answering while the bot shuts down
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        return proc.returncode

    async def close(self) -> None:
        for name in list(self.procs):
            await self.stop(name)
        await self.store.close()


@contextlib.asynccontextmanager
async def cluster_of(tmp: Path, mode: str, replicas: list[str]) -> AsyncIterator[Cluster]:
    with running_redis() as redis:
        async with FakeTelegram() as fake:
            cluster = Cluster(tmp, redis.url, fake, mode)
            try:
                await cluster.start(replicas)
                yield cluster
            finally:
                await cluster.close()


def people(fake: FakeTelegram) -> list[tuple[Any, Any]]:
    """Three users, each in a chat: two private chats and a group."""
    alice, bob, chen = (fake.user(n, language_code="en") for n in ("Alice", "Bob", "Chen"))
    group = fake.group_chat("Artists", supergroup=True)
    return [(alice, fake.private_chat(alice)), (bob, fake.private_chat(bob)), (chen, group)]


def replies_to(fake: FakeTelegram, method: str, message: ChatMessage) -> list[Call]:
    return [c for c in fake.calls_to(method, chat_id=message.chat_id) if c.ok
            and (c.params.get("reply_parameters") or {}).get("message_id") == message.message_id]


def status_of(fake: FakeTelegram, message: ChatMessage) -> int | None:
    """The id of the status message posted for the job of a user's message (a photo replying to it)."""
    sent = replies_to(fake, "sendPhoto", message)
    return sent[0].result["message_id"] if sent else None


def takeover_calls(fake: FakeTelegram, messages: list[ChatMessage], after: float) -> list[Call]:
    """The calls after `after` that edit or delete the status of one of `messages`' jobs, or deliver one of
    their videos, in order."""
    statuses = {(m.chat_id, status_of(fake, m)) for m in messages}
    found = [c for c in fake.calls if c.time > after and (
        (c.method in STATUS_EDITS and (int(c.params.get("chat_id", 0)), c.params.get("message_id")) in statuses)
        or (c.method == "sendVideo" and any(c in replies_to(fake, "sendVideo", m) for m in messages)))]
    return sorted(found, key=lambda c: c.time)


def report_takeover(mode: str, fake: FakeTelegram, messages: list[ChatMessage], killed_at: float) -> None:
    """Print the takeover time; the survivor edited the dead replica's statuses and delivered its videos."""
    calls = takeover_calls(fake, messages, killed_at)
    assert calls, "the survivor never edited or delivered the dead replica's jobs"
    edits = [c for c in calls if c.method.startswith("edit")]
    videos = [c for c in calls if c.method == "sendVideo"]
    assert edits and videos, [c.method for c in calls]
    report(mode, f"kill -> first {calls[0].method} by the survivor of a job the dead replica followed; then "
                 f"{len(edits)} edits, {len(videos)} deliveries", calls[0].time - killed_at)


def check_answered(fake: FakeTelegram, messages: list[ChatMessage], killed_at: float) -> None:
    """One video for each message; two only where the first upload reached Telegram before the kill (its
    answer may never have been read: an ambiguous upload), the second after it."""
    for message in messages:
        videos = replies_to(fake, "sendVideo", message)
        assert len(videos) in (1, 2), (message.caption, [c.time for c in videos])
        if len(videos) == 2:
            assert videos[0].time <= killed_at < videos[1].time, (message.caption, [c.time for c in videos])


async def jobs_of(cluster: Cluster, messages: list[ChatMessage]) -> list[Any]:
    wanted = {(m.chat_id, m.message_id) for m in messages}
    jobs = []
    for job in await cluster.store.jobs():
        ref = json.loads(job.status_ref or "{}")
        if (int(ref.get("chat") or job.chat), ref.get("reply_to")) in wanted:
            jobs.append(job)
    return jobs


async def kill_mid_render(cluster: Cluster, victim: str, mine: list[ChatMessage]) -> float:
    """SIGKILL `victim` as soon as one of the jobs of `mine` (which it follows) is rendering."""
    async def rendering() -> bool:
        running = {j.id for j in await cluster.store.running() if 1 <= j.step < STEPS}
        return bool(running & {j.id for j in await jobs_of(cluster, mine)})
    await eventually(rendering, 30, f"a job followed by {victim} rendering")
    return cluster.kill(victim)


async def all_delivered(cluster: Cluster, fake: FakeTelegram, messages: list[ChatMessage], timeout: float) -> None:
    async def done() -> bool:
        if not all(replies_to(fake, "sendVideo", m) for m in messages):
            return False
        jobs = await jobs_of(cluster, messages)
        return len(jobs) == len(messages) and all(j.state.final and j.delivered for j in jobs)
    await eventually(done, timeout, "every job delivered", every=0.2)


def report(mode: str, what: str, seconds: float) -> None:
    print(f"\n{mode}: takeover {seconds:.2f} s ({what}; lease {LEASE_S:.0f} s)", flush=True)


# ---------------------------------------------------------------- webhook


async def test_webhook_replicas_one_killed_mid_render_the_other_finishes_its_jobs(tmp_path):
    async with cluster_of(tmp_path, "webhook", ["a", "b"]) as cluster:
        fake = cluster.fake
        hooks = fake.calls_to("setWebhook")
        assert len(hooks) == 2 and all(c.ok for c in hooks)
        assert fake.webhook is not None and fake.webhook["url"] == cluster.hook_url
        assert fake.webhook["secret_token"] == SECRET

        users = people(fake)
        sent: dict[str, list[ChatMessage]] = {"a": [], "b": []}
        for k in range(4):   # the load balancer's turns: a, b, a, b
            user, chat = users[k % len(users)]
            replica = "ab"[k % 2]
            message = fake.send_photo(chat, user, photo_bytes(seed=k), caption=f"/animate wave number {k}")
            assert await fake.post_update(cluster.hook(replica), message) == 200
            sent[replica].append(message)
        everyone = sent["a"] + sent["b"]
        await fake.wait_for(lambda: all(status_of(fake, m) for m in everyone), 30)

        killed_at = await kill_mid_render(cluster, "a", sent["a"])
        later = []
        for k in range(4, 6):   # after the kill: "a" refuses connections, the load balancer tries "b"
            user, chat = users[k % len(users)]
            message = fake.send_photo(chat, user, photo_bytes(seed=k), caption=f"/animate wave number {k}")
            try:
                status = await fake.post_update(cluster.hook("a"), message)
            except aiohttp.ClientError:
                status = await fake.post_update(cluster.hook("b"), message)
            assert status == 200
            later.append(message)

        await all_delivered(cluster, fake, everyone + later, 75)
        report_takeover("webhook", fake, sent["a"], killed_at)
        check_answered(fake, everyone + later, killed_at)
        for message in sent["a"]:   # the survivor finished each status: the video posted, the status gone
            status = fake.message(message.chat_id, status_of(fake, message) or 0)
            assert status is not None and status.deleted, message.caption
        assert "in place of a replica that stopped" in cluster.log("b")
        assert fake.polls == [] and fake.unknown_methods == [] and fake.server_errors == []

        assert await cluster.stop("b") == 0   # a replica stopping leaves the webhook to the others
        assert fake.calls_to("deleteWebhook") == [] and fake.webhook["url"] == cluster.hook_url


# ---------------------------------------------------------------- polling


async def test_polling_replicas_one_polls_and_the_other_takes_over_when_it_is_killed(tmp_path):
    async with cluster_of(tmp_path, "polling", ["a", "b"]) as cluster:
        fake = cluster.fake
        holds = await cluster.store.holders(POLLER)
        assert len(holds) == 1 and holds[POLLER].live
        pids = {cluster.pid(n): n for n in ("a", "b")}
        poller = pids[int(holds[POLLER].owner.split("/")[1])]
        standby = "b" if poller == "a" else "a"
        assert "this one stands by" in cluster.log(standby)

        users = people(fake)
        first = []
        for k in range(4):
            user, chat = users[k % len(users)]
            first.append(fake.send_photo(chat, user, photo_bytes(seed=k), caption=f"/animate leaf number {k}"))
        await fake.wait_for(lambda: all(status_of(fake, m) for m in first), 30)

        assert fake.poll_conflicts == [] and not [p for p in fake.polls if p.status == 409]
        polls_before = len(fake.polls)
        killed_at = await kill_mid_render(cluster, poller, first)
        later = []
        for k in range(4, 6):   # wait at Telegram until the standby polls
            user, chat = users[k % len(users)]
            later.append(fake.send_photo(chat, user, photo_bytes(seed=k), caption=f"/animate leaf number {k}"))

        await all_delivered(cluster, fake, first + later, 75)
        polled = next(p for p in fake.polls[polls_before:] if p.time > killed_at and p.status == 200)
        report("polling", "kill -> first getUpdates by the standby", polled.time - killed_at)
        report_takeover("polling", fake, first, killed_at)
        check_answered(fake, first + later, killed_at)
        assert "polling for updates in place of a replica that stopped" in cluster.log(standby)
        holds = await cluster.store.holders(POLLER)
        assert int(holds[POLLER].owner.split("/")[1]) == cluster.pid(standby)
        # Never two pollers: no poll terminated by another, no 409 at all.
        assert fake.poll_conflicts == [] and not [p for p in fake.polls if p.status == 409]
        assert fake.unknown_methods == [] and fake.server_errors == []


# ---------------------------------------------------------------- the secret token


def webhook_config(tmp_path: Path, fake: FakeTelegram, port: int) -> Config:
    return make_config(tmp_path, telegram={
        "api_base_url": fake.base_url, "file_base_url": fake.base_file_url, "mode": "webhook",
        "webhook_url": f"https://bot.example.org{HOOK_PATH}", "listen": "127.0.0.1", "port": port,
        "secret_token": SECRET})


async def test_a_webhook_post_without_the_right_secret_is_refused_with_403_and_one_line(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    async with FakeTelegram() as fake:
        config = webhook_config(tmp_path, fake, port)
        service = JobService(config, poll_interval_s=0.05)
        await service.start()
        core = BotCore(config, service)
        front = TelegramFrontEnd(core, config, fake.token)
        try:
            await front.start()
            assert fake.webhook is not None and fake.webhook["secret_token"] == SECRET
            assert fake.webhook["allowed_updates"] == ["message", "callback_query"]
            alice = fake.user("Alice", language_code="en")
            chat = fake.private_chat(alice)
            url = f"http://127.0.0.1:{port}{HOOK_PATH}"
            wrong = fake.send_text(chat, alice, "/help")
            missing = fake.send_text(chat, alice, "/queue")
            caplog.clear()
            assert await fake.post_update(url, wrong, secret_token="not-the-secret") == 403
            assert await fake.post_update(url, missing, secret_token=None) == 403
            lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
            assert lines == [("WARNING", "telegram webhook: refused a post with a wrong secret token (403)"),
                             ("WARNING", "telegram webhook: refused a post without the secret token (403)")]
            assert not [r for r in caplog.records if r.exc_info]

            right = fake.send_text(chat, alice, "/privacy")
            assert await fake.post_update(url, right) == 200
            await fake.wait_for(lambda: replies_to(fake, "sendMessage", right), 10)
            await asyncio.sleep(0.3)
            assert not replies_to(fake, "sendMessage", wrong) and not replies_to(fake, "sendMessage", missing)
            assert fake.polls == []
        finally:
            await front.close()
            await core.close()
            await service.close()
        assert fake.calls_to("deleteWebhook") == [] and fake.webhook is not None


# ---------------------------------------------------------------- a poller that loses its hold


async def test_a_poller_that_lost_its_hold_stops_polling(tmp_path):
    """A poller whose heartbeat stalled past its lease: the standby polls, and the stalled one stops as soon
    as it learns that it lost the hold (in this process: two front ends, each with its replica). A bare
    `/animate prompt` taken by the first is answered by the image that reaches the second."""
    async with FakeTelegram() as fake:
        config = make_config(tmp_path, telegram={"api_base_url": fake.base_url, "file_base_url": fake.base_file_url})
        service = JobService(config, poll_interval_s=0.05)
        await service.start()
        core = BotCore(config, service)
        replicas = [Replica(service.store, lease_s=1.0) for _ in range(2)]
        fronts = [TelegramFrontEnd(core, config, fake.token, poll_timeout=1, replica=r) for r in replicas]
        try:
            for replica in replicas:   # both first: a replica starting frees the holds of its own process
                await replica.start()
            for replica, front in zip(replicas, fronts, strict=True):
                await front.start()
                replica.every_beat(front.take_over)
            a, b = fronts
            assert a.polling and not b.polling
            alice = fake.user("Alice", language_code="en")
            chat = fake.private_chat(alice)
            first = fake.send_text(chat, alice, "/help")
            await fake.wait_for(lambda: replies_to(fake, "sendMessage", first), 10)
            ask = fake.send_text(chat, alice, "/animate a dog running")
            await fake.wait_for(lambda: replies_to(fake, "sendMessage", ask), 10)

            await replicas[0].stop()   # a's heartbeat stalls: its hold expires, b polls
            await eventually(lambda: b.polling, 5, "the standby polling")
            await replicas[0].renew()   # a's next beat: the hold is b's now
            await eventually(lambda: not a.polling, 5, "the old poller stopped")
            conflicts = len(fake.poll_conflicts)
            later = fake.send_text(chat, alice, "/privacy")
            await fake.wait_for(lambda: replies_to(fake, "sendMessage", later), 10)
            image = fake.send_photo(chat, alice, photo_bytes())   # the answer to the ask, now read by b
            await fake.wait_for(lambda: replies_to(fake, "sendPhoto", image), 10)   # its job's status
            [job] = await service.store.jobs()
            assert job.prompt_raw == "a dog running"
            await asyncio.sleep(1.5)   # a would poll again within this
            assert len(fake.poll_conflicts) == conflicts and b.polling and not a.polling
            assert len(replies_to(fake, "sendMessage", first)) == len(replies_to(fake, "sendMessage", later)) == 1
        finally:
            for replica in replicas:
                await replica.stop()
            for front in fronts:
                await front.close()
            for replica in replicas:
                await replica.close()
            await core.close()
            await service.close()


# ---------------------------------------------------------------- edit pacing shared through the store


async def test_two_replicas_pacers_of_one_chat_space_its_edits_and_share_flood_control(tmp_path):
    """Each replica has its own pacer for a chat; through the store their edits keep the chat's spacing, and a
    flood-control wait seen by one holds the other's edits too."""
    config = make_config(tmp_path)
    async with JobService(config, poll_interval_s=0.05) as one, JobService(config, poll_interval_s=0.05) as two:
        pacers = [ChatPacer(s.store, "telegram:chat:-100", 0.2) for s in (one, two)]
        starts: list[float] = []

        async def edit(pacer: ChatPacer) -> None:
            async with pacer.turn():
                starts.append(time.monotonic())
                await asyncio.sleep(0.05)   # the edit's round trip
        await asyncio.gather(*(edit(pacers[k % 2]) for k in range(6)))
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert len(starts) == 6 and min(gaps) >= 0.18, gaps   # turns at least the interval apart

        pacers[0].hold(1.0)   # Telegram answered 429 with retry_after 1 to the first replica
        await asyncio.sleep(0.05)
        held = time.monotonic()
        await edit(pacers[1])
        assert starts[-1] - held >= 0.9
