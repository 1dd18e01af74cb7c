"""Chaos run: jobs from simulated users on both fake platforms while the processes under them are killed, Redis
restarts, and the platforms answer with 429s, 5xx and late.

Real processes: a redis-server (appendonly yes, appendfsync everysec), one `python -m engine worker` on that
Redis store (tiny model, tiny presets, each step held --step-delay-s as on a slower GPU) and one `python -m bot` (`[engine] local_worker = false`, DISCORD_TOKEN /
TELEGRAM_TOKEN set to the fakes' tokens, API and gateway URLs pointing at the fakes). The fakes (tests/fakes)
and the simulated users run in this process: half the users send `/animate` slash commands with an attachment
on the fake Discord, the other half photos captioned `/animate ...` on the fake Telegram, spread over the run.

Chaos, all of it drawn from --seed:
  * every 20-40 s the worker or the bot (at random) is SIGKILLed and started again 1-3 s later; with
    --bots N, N bot replicas share the store (their Discord shard and the Telegram poller move between them)
    and a kill takes one of them at random;
  * about a third of the way through the sending, Redis is SIGKILLed and started again on the same port and
    folder (it reloads its append-only file, without what it had not yet fsynced);
  * throughout, the fakes answer status edits and result uploads on both platforms with 429s (short
    retry_after), 5xx and late answers (Telegram edits past python-telegram-bot's 5 s read timeout);
    --stalled-uploads Telegram uploads are held past the bot's upload timeout, so they time out ambiguously
    (the video still arrives).

It runs until every job is final and its user has the outcome (or --timeout-s), printing a progress line every
30 s, then prints a summary with each figure beside its target. Logs of every process start, the chaos events
and the summary stay in the run folder it names.

    .venv/bin/python scripts/chaos.py [--jobs 300] [--users 50] [--seed N] [--timeout-s 900] [--bots 2 --lease-s 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

from engine.queue.redis_store import RedisStore  # noqa: E402
from tests.fakes.discord_server import FakeDiscord  # noqa: E402
from tests.fakes.telegram_server import FakeTelegram  # noqa: E402
from tests.harness import config_document, photo_bytes, write_config  # noqa: E402
from tests.redis_server import RedisServer, redis_binary  # noqa: E402

UPLOAD_TIMEOUT_S = 120.0       # the Telegram front end's upload timeout (bot/telegram/app.py, UPLOAD_TIMEOUT_S)
ACK_WINDOW_S = 3.0             # Discord: an interaction not acknowledged within this "did not respond"
TARGET_WAIT_S = 60.0
GIVE_UP_S = 120.0              # a submission nothing happened to for this long, with no job, is lost
PROGRESS_EVERY_S = 30.0

# Discord REST paths (relative to the API base) of what a job's user sees.
TOKEN_PATH = re.compile(r"^/(?:webhooks/\d+|interactions/\d+)/([^/]+)(/.*)?$")
ORIGINAL = r"^/webhooks/\d+/[^/]+/messages/@original$"
FOLLOWUP = r"^/webhooks/\d+/[^/]+$"
CHANNEL_POST = re.compile(r"^/channels/\d+/messages$")
CHANNEL_MESSAGE = re.compile(r"^/channels/\d+/messages/(\d+)$")
TG_EDITS = ("editMessageCaption", "editMessageMedia", "editMessageText")
TG_UPLOADS = ("sendvideo", "sendanimation")


def error_prefixes() -> tuple[str, ...]:
    """The literal start of every final refusal or failure text a user can get (English)."""
    with open(ROOT / "templates" / "messages" / "en.toml", "rb") as f:
        texts = tomllib.load(f)
    values = list(texts["errors"].values()) + [texts["status"][k] for k in ("failed", "cancelled", "too_big")]
    prefixes = {v.split("{")[0].strip() for v in values if isinstance(v, str)}
    return tuple(sorted(p for p in prefixes if len(p) >= 6))


ERRORS = error_prefixes()


def is_error(text: Any) -> bool:
    return isinstance(text, str) and text.strip().startswith(ERRORS)


def now() -> float:
    return time.monotonic()


# ---------------------------------------------------------------------------------------------- the fakes


class _Stamped(list):
    """FakeTelegram's call list: each call gets the time it was answered (the fake keeps its arrival time)."""

    def append(self, call: Any) -> None:
        call.done_at = now()
        super().append(call)


class ChaosTelegram(FakeTelegram):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.calls = _Stamped()
        self.in_flight = 0          # method calls (not getUpdates) being answered now

    async def _handle_method(self, request):
        poll = request.match_info.get("method", "").lower() == "getupdates"
        self.in_flight += not poll
        try:
            return await super()._handle_method(request)
        finally:
            self.in_flight -= not poll


class ChaosDiscord(FakeDiscord):
    async def _answer(self, request, record):
        try:
            return await super()._answer(request, record)
        finally:
            record.done_at = now()

    def bot_connected(self) -> bool:
        return self._connection_for(self.guild_id) is not None

    @property
    def in_flight(self) -> int:
        return sum(1 for r in self.requests if r.status is None)


# ---------------------------------------------------------------------------------------------- processes


class Proc:
    """A restartable child (the bot or the worker); every start logs to a file of its own."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], run_dir: Path, nice: int = 0):
        self.name, self.cmd, self.env, self.run_dir, self.nice = name, cmd, env, run_dir, nice
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)

    def kill(self) -> int:
        assert self.proc is not None
        pid = self.proc.pid
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        return pid

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class Kill:
    target: str          # "bot" | "worker" | "redis"
    at: float            # monotonic
    wall: float
    down_s: float = 0.0
    log: str = ""        # the log of the process killed
    back_at: float = 0.0  # bot: when its Discord gateway connection was live again


# ---------------------------------------------------------------------------------------------- submissions


@dataclass
class Submission:
    n: int
    platform: str
    user: str
    sent_at: float
    # Discord
    interaction: Any = None
    token: str = ""
    live_at_send: bool = True
    no_dispatch: str = ""           # the fake could not dispatch it at all (no gateway connection)
    # Telegram
    chat_id: int = 0
    message_id: int = 0
    status_ids: set[int] = field(default_factory=set)
    # what the user saw: (time answered, kind), kind in ack / status / result / error
    events: list[tuple[float, str]] = field(default_factory=list)
    uploads: list[Any] = field(default_factory=list)   # successful result uploads (records / calls)
    job: Any = None
    job_id: str = ""
    gone_from_store: bool = False   # its job was in the store, and is no longer

    @property
    def final_at(self) -> float | None:
        finals = [t for t, kind in self.events if kind in ("result", "error")]
        return min(finals) if finals else None

    @property
    def acked(self) -> bool:
        return any(kind == "ack" for _, kind in self.events)

    def label(self) -> str:
        return f"job {self.job_id or '-'} ({self.platform}, {self.user}, submission #{self.n})"


class Observer:
    """Reads what the fakes recorded into each submission's timeline (incrementally, as the run goes)."""

    def __init__(self, dfake: ChaosDiscord, tfake: ChaosTelegram):
        self.dfake, self.tfake = dfake, tfake
        self.subs: list[Submission] = []
        self.by_token: dict[str, Submission] = {}
        self.by_message: dict[tuple[int, int], Submission] = {}     # Telegram (chat, user message id)
        self.by_status: dict[tuple[int, int], Submission] = {}      # Telegram (chat, status message id)
        self.by_job: dict[str, Submission] = {}
        self._d_done: set[int] = set()
        self._d_from = 0
        self._t_from = 0

    def add(self, sub: Submission) -> None:
        self.subs.append(sub)
        if sub.token:
            self.by_token[sub.token] = sub
        if sub.chat_id:
            self.by_message[(sub.chat_id, sub.message_id)] = sub

    def link_job(self, job: Any) -> Submission | None:
        """Match a stored job to its submission by where its status message lives."""
        sub = self.by_job.get(job.id)
        if sub is None:
            try:
                ref = json.loads(job.status_ref) if job.status_ref else {}
            except ValueError:
                ref = {}
            if job.platform == "discord" and ref.get("token"):
                sub = self.by_token.get(ref["token"])
            elif job.platform == "telegram" and ref.get("reply_to"):
                sub = self.by_message.get((int(ref.get("chat") or job.chat), int(ref["reply_to"])))
            if sub is not None:
                self.by_job[job.id] = sub
                sub.job_id = job.id
        if sub is not None:
            sub.job = job
        return sub

    def scan(self) -> None:
        self._scan_discord()
        self._scan_telegram()

    def _scan_discord(self) -> None:
        requests = self.dfake.requests
        for r in requests[self._d_from:]:
            if r.status is not None and id(r) not in self._d_done and self._discord_record(r):
                self._d_done.add(id(r))
        # Past the records that are done (or that no submission claimed for a minute: not a job's).
        while self._d_from < len(requests):
            r = requests[self._d_from]
            if id(r) not in self._d_done and not (r.status is not None and now() - r.time > 60):
                break
            self._d_done.discard(id(r))
            self._d_from += 1

    def _discord_record(self, r: Any) -> bool:
        """False when its submission is not known yet (try again later)."""
        if r.status is None or r.status >= 300 or not hasattr(r, "done_at"):
            return True
        body = r.json if isinstance(r.json, dict) else {}
        sub = None
        match = TOKEN_PATH.match(r.path)
        if match:
            sub = self.by_token.get(match.group(1))
        elif r.method == "POST" and CHANNEL_POST.match(r.path) and body.get("nonce"):
            nonce = str(body["nonce"])
            job_id = nonce[:-1] if nonce.endswith("v") else nonce.rsplit("s", 1)[0]
            sub = self.by_job.get(job_id)
        elif r.method in ("PATCH", "DELETE") and (m := CHANNEL_MESSAGE.match(r.path)):
            message = self.dfake.messages.get(int(m.group(1)))
            if message is None or not message.nonce:
                return True
            nonce = message.nonce
            sub = self.by_job.get(nonce[:-1] if nonce.endswith("v") else nonce.rsplit("s", 1)[0])
        else:
            return True
        if sub is None:
            return False
        if r.method == "DELETE":
            return True
        if any(name.endswith(".mp4") for name, _ in r.files):
            sub.events.append((r.done_at, "result"))
            sub.uploads.append(r)
            return True
        content = (body.get("data") or {}).get("content") if r.path.endswith("/callback") else body.get("content")
        if is_error(content):
            sub.events.append((r.done_at, "error"))
        elif r.path.endswith("/callback"):
            sub.events.append((r.done_at, "ack"))
        else:
            sub.events.append((r.done_at, "status"))
        return True

    def _scan_telegram(self) -> None:
        calls = self.tfake.calls
        while self._t_from < len(calls):
            c = calls[self._t_from]
            self._t_from += 1
            if c.ok:
                self._telegram_call(c)

    def _telegram_call(self, c: Any) -> None:
        method, params = c.method.lower(), c.params
        chat = params.get("chat_id")
        reply = params.get("reply_parameters")
        reply_id = reply.get("message_id") if isinstance(reply, dict) else params.get("reply_to_message_id")
        if method in ("sendphoto", "sendmessage", *TG_UPLOADS) and reply_id is not None:
            sub = self.by_message.get((chat, int(reply_id)))
            if sub is None:
                return
            message_id = (c.result or {}).get("message_id")
            if method in TG_UPLOADS:
                sub.events.append((c.done_at, "result"))
                sub.uploads.append(c)
            elif is_error(params.get("text") or params.get("caption")):
                sub.events.append((c.done_at, "error"))
            else:
                sub.events.append((c.done_at, "status"))
                if message_id:
                    sub.status_ids.add(int(message_id))
                    self.by_status[(chat, int(message_id))] = sub
        elif method in {m.lower() for m in TG_EDITS}:
            sub = self.by_status.get((chat, _int(params.get("message_id"))))
            if sub is None:
                return
            media = params.get("media")
            if isinstance(media, str):
                with contextlib.suppress(ValueError):
                    media = json.loads(media)
            text = params.get("text") or params.get("caption")
            if not text and isinstance(media, dict):
                text = media.get("caption")
            sub.events.append((c.done_at, "error" if is_error(text) else "status"))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------- the run


class Chaos:
    def __init__(self, args: argparse.Namespace, run_dir: Path):
        self.args = args
        self.run_dir = run_dir
        self.rng_send = random.Random(f"{args.seed}:send")
        self.rng_chaos = random.Random(f"{args.seed}:chaos")
        self.rng_faults = random.Random(f"{args.seed}:faults")
        self.stop = asyncio.Event()
        self.kills: list[Kill] = []
        self.injected: dict[str, int] = {}
        self.sending_done = False
        self.t0 = 0.0
        self.jobs: list[Any] = []
        self.store_error = ""
        self._events_log = open(run_dir / "chaos-events.log", "w")  # noqa: SIM115 - open for the whole run

    def event(self, text: str, echo: bool = True) -> None:
        line = f"[{now() - self.t0:7.1f} s] {text}"
        self._events_log.write(line + "\n")
        self._events_log.flush()
        if echo:
            print(line, flush=True)

    async def pause(self, seconds: float) -> bool:
        """Sleep; True when the run is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        return self.stop.is_set()

    # ---- set-up

    async def run(self) -> int:
        binary = redis_binary()
        if binary is None:
            raise SystemExit("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        self.redis = RedisServer(binary, appendonly=True).start()
        try:
            async with ChaosDiscord() as dfake, ChaosTelegram() as tfake:
                self.dfake, self.tfake = dfake, tfake
                self.observer = Observer(dfake, tfake)
                return await self._run_with_fakes()
        finally:
            with contextlib.suppress(OSError):
                shutil.copy(self.redis.dir / "redis.log", self.run_dir / "redis.log")
            self.redis.stop()
            self._events_log.close()

    async def _run_with_fakes(self) -> int:
        args, dfake, tfake = self.args, self.dfake, self.tfake
        self.d_users = [dfake.add_member(f"duser{i}") for i in range(args.users // 2)]
        self.t_users = [tfake.user(f"tuser{i}", language_code="en") for i in range(args.users - args.users // 2)]
        doc = config_document(
            self.run_dir,
            engine={"model": "tiny", "device": "cpu", "local_worker": False, "step_delay_s": args.step_delay_s},
            queue={"per_user": 100_000, "max_length": 100_000, "jobs_per_hour": 0},
            storage={"url": self.redis.url, "data_dir": str(self.run_dir / "data")},
            discord={"api_base_url": dfake.api_base, "gateway_url": dfake.gateway_url,
                     "attachment_hosts": ["127.0.0.1"], "guild_ready_timeout_s": 0.05, "edit_interval_s": 1.0},
            telegram={"api_base_url": tfake.base_url, "file_base_url": tfake.base_file_url,
                      "edit_interval_private_s": 1.0, "edit_interval_group_s": 3.0},
        )
        cfg = write_config(self.run_dir / "config.toml", doc)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_TOKEN", "TELEGRAM_TOKEN"))}
        env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        if args.lease_s:
            env["ANIMABOT_REPLICAS__LEASE_S"] = str(args.lease_s)
        py = sys.executable
        # On a GPU machine the worker barely uses the CPU; here the tiny model renders on it, so it yields the
        # CPU to the bot (which must acknowledge Discord interactions within 3 s), as a GPU would.
        self.worker = Proc("worker", [py, "-m", "engine", "worker", "--config", str(cfg)], env, self.run_dir,
                           nice=10)
        self.bots = [Proc("bot" if i == 0 else f"bot{i + 1}", [py, "-m", "bot", "--config", str(cfg)],
                          {**env, "DISCORD_TOKEN": dfake.token, "TELEGRAM_TOKEN": tfake.token}, self.run_dir)
                     for i in range(args.bots)]
        self.procs = {"worker": self.worker, **{bot.name: bot for bot in self.bots}}
        self.store = RedisStore(self.redis.url)
        await self.store.open()
        self.t0 = now()
        self.worker.start()
        for bot in self.bots:
            bot.start()
        self.event(f"run folder {self.run_dir}; redis {self.redis.url} (appendonly yes, appendfsync everysec)")
        try:
            await self._wait_ready()
            self.event("bot and worker ready; sending")
            return await self._chaos()
        finally:
            self.stop.set()
            await self._final_read()
            # In threads: the fakes in this event loop must keep answering the bot while it shuts down.
            for bot in self.bots:
                await asyncio.to_thread(bot.stop)
            await asyncio.to_thread(self.worker.stop)
            await self.store.close()

    async def _wait_ready(self) -> None:
        deadline = now() + 120
        while now() < deadline:
            workers = await self.store.workers()
            if (any(w.alive and w.state in ("ready", "busy") for w in workers) and self.dfake.bot_connected()
                    and self.dfake.find_command("animate") and self.tfake.polls):
                return
            for proc in self.procs.values():
                if proc.proc is not None and proc.proc.poll() is not None:
                    raise SystemExit(f"the {proc.name} exited at start (code {proc.proc.returncode}); "
                                     f"see {proc.log_path}:\n{proc.log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.2)
        raise SystemExit("the bot or the worker did not get ready within 120 s")

    # ---- the run itself

    async def _chaos(self) -> int:
        args = self.args
        self.window_s = args.send_over_s or max(30.0, min(0.55 * args.timeout_s, 1.5 * args.jobs))
        self.t_send = now()
        tasks = [asyncio.create_task(c, name=n) for n, c in (
            ("sender", self._sender()), ("monkey", self._monkey()), ("redis", self._redis_restart()),
            ("faults", self._faults()), ("stalls", self._stalled_uploads()), ("observe", self._observe()),
            ("gateway", self._watch_gateway()))]
        deadline = self.t0 + args.timeout_s
        next_progress = now() + PROGRESS_EVERY_S
        all_settled_since: float | None = None
        outcome = "timeout"
        try:
            while now() < deadline:
                await asyncio.sleep(0.5)
                if now() >= next_progress:
                    next_progress += PROGRESS_EVERY_S
                    self._progress()
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                state = self._settled()
                if state == "all":
                    outcome = "finished"
                    break
                if state == "all but delivered flags":
                    all_settled_since = all_settled_since or now()
                    if now() - all_settled_since > 90:
                        outcome = "finished (some final jobs never marked delivered)"
                        break
                else:
                    all_settled_since = None
        finally:
            self.stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.elapsed_s = now() - self.t0
        self.outcome = outcome
        self.event(f"run {outcome} after {self.elapsed_s:.0f} s")
        return 0

    async def _sender(self) -> None:
        args, rng = self.args, self.rng_send
        plan = sorted((rng.uniform(0, self.window_s), k) for k in range(args.jobs))
        images = [photo_bytes(96, 80, seed=s) for s in range(8)]
        d_count = len(self.d_users)
        pending: set[asyncio.Task] = set()
        for at, k in plan:
            if await self.pause(max(0.0, self.t_send + at - now())):
                return
            u = k % args.users
            image = images[k % len(images)]
            if u < d_count:
                task = asyncio.create_task(self._send_discord(k, u, image))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                user = self.t_users[u - d_count]
                chat = self.tfake.private_chat(user)
                sub = Submission(k, "telegram", user.first_name, now())
                sent = self.tfake.send_photo(chat, user, image, caption=f"/animate waves rolling {k}")
                sub.chat_id, sub.message_id = chat.id, sent.message_id
                self.observer.add(sub)
        await asyncio.gather(*pending)
        self.sending_done = True
        self.event(f"all {args.jobs} jobs sent")

    async def _send_discord(self, k: int, u: int, image: bytes) -> None:
        dfake = self.dfake
        sub = Submission(k, "discord", f"duser{u}", now())
        att = dfake.add_attachment(f"photo{k}.png", image, "image/png")
        sub.live_at_send = dfake.bot_connected()
        try:
            inter = await dfake.slash_command("animate", [{"name": "image", "value": att},
                                                          {"name": "prompt", "value": f"waves rolling {k}"}],
                                              user_id=self.d_users[u])
        except RuntimeError as exc:   # no gateway connection, none to resume: Discord has nowhere to send it
            sub.no_dispatch = str(exc)
            self.observer.add(sub)
            return
        sub.interaction, sub.token, sub.sent_at = inter, inter.token, inter.created_at
        self.observer.add(sub)

    async def _monkey(self) -> None:
        rng = self.rng_chaos
        while not await self.pause(rng.uniform(20, 40)):
            target = rng.choice(("worker", "bot"))
            proc = self.procs["worker"] if target == "worker" else rng.choice(self.bots)
            kill = Kill(target, now(), time.time(), log=proc.log_path.name)
            pid = proc.kill()
            self.kills.append(kill)
            down = rng.uniform(1, 3)
            self.event(f"SIGKILL {target} (pid {pid}, log {kill.log}); starting it again in {down:.1f} s")
            await asyncio.sleep(down)
            proc.start()
            kill.down_s = now() - kill.at
            self.event(f"{target} started again (log {proc.log_path.name})", echo=False)

    async def _redis_restart(self) -> None:
        if await self.pause(self.window_s / 3):
            return
        kill = Kill("redis", now(), time.time(), log="redis.log")
        self.redis.kill()
        self.kills.append(kill)
        down = self.rng_chaos.uniform(1, 3)
        self.event(f"SIGKILL redis-server (append-only file on); starting it again in {down:.1f} s")
        await asyncio.sleep(down)
        await asyncio.to_thread(self.redis.restart)
        kill.down_s = now() - kill.at
        self.event("redis-server started again on the same port and folder")

    def _inject(self, key: str) -> None:
        self.injected[key] = self.injected.get(key, 0) + 1

    async def _faults(self) -> None:
        """One fault every 1.5-4 s, on the next matching request of whichever job makes it."""
        rng, dfake, tfake = self.rng_faults, self.dfake, self.tfake
        while not await self.pause(rng.uniform(1.5, 4.0)):
            platform = rng.choice(("discord", "telegram"))
            target = rng.choice(("edit", "upload"))
            kind = rng.choice(("429", "5xx", "delay"))
            if platform == "discord":
                method, path = ("PATCH", ORIGINAL) if target == "edit" else ("POST", FOLLOWUP)
                if kind == "429":
                    dfake.fail_next(method, path, 429, retry_after=round(rng.uniform(0.1, 1.0), 2))
                elif kind == "5xx":
                    dfake.fail_next(method, path, rng.choice((500, 502, 503)))
                else:
                    dfake.delay_next(method, path, round(rng.uniform(2, 10), 1))
            else:
                method = rng.choice(("editMessageCaption", "editMessageCaption", "editMessageMedia",
                                     "editMessageText")) if target == "edit" else "sendVideo"
                if kind == "429":
                    tfake.fail_next(method, 429, retry_after=rng.choice((1, 2)))
                elif kind == "5xx":
                    tfake.fail_next(method, rng.choice((500, 502)))
                elif target == "edit":   # past python-telegram-bot's 5 s read timeout: the edit still lands
                    tfake.delay_next(method, round(rng.uniform(6, 10), 1))
                else:                    # late, within the upload timeout
                    tfake.delay_next(method, round(rng.uniform(2, 10), 1))
            self._inject(f"{platform} {target} {kind}")

    async def _stalled_uploads(self) -> None:
        """Telegram uploads held past the bot's upload timeout: the bot gives up and sends again, the first
        copy still arrives (an ambiguous timeout)."""
        count = self.args.stalled_uploads
        for k in range(count):
            if await self.pause(max(0.0, self.t_send + self.window_s * (k + 0.5) / count - now())):
                return
            self.tfake.delay_next("sendVideo", UPLOAD_TIMEOUT_S + 5)
            self._inject("telegram upload stalled past the upload timeout")
            self.event(f"the next Telegram upload is held {UPLOAD_TIMEOUT_S + 5:.0f} s", echo=False)

    async def _watch_gateway(self) -> None:
        """When the bot's Discord gateway connection comes back after each bot kill."""
        while not self.stop.is_set():
            for kill in self.kills:
                if kill.target == "bot" and not kill.back_at and now() > kill.at + 0.5 \
                        and self.dfake.bot_connected():
                    kill.back_at = now()
            await asyncio.sleep(0.1)

    async def _observe(self) -> None:
        last_store = 0.0
        while not self.stop.is_set():
            self.observer.scan()
            if now() - last_store > 2:
                last_store = now()
                await self._read_store()
            await asyncio.sleep(0.5)

    async def _read_store(self) -> bool:
        try:
            jobs = await asyncio.wait_for(self.store.jobs(limit=1_000_000), 5)
        except Exception as exc:   # Redis restarting: keep the last good read
            self.store_error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.open(), 5)
            return False
        self.store_error = ""
        self.jobs = jobs
        for job in jobs:
            self.observer.link_job(job)
        present = {job.id for job in jobs}
        for sub in self.observer.subs:
            if sub.job is not None and sub.job.id not in present:   # gone: Redis came back without it
                sub.job, sub.gone_from_store = None, True
        return True

    async def _final_read(self) -> None:
        for _ in range(10):
            if await self._read_store():
                break
            await asyncio.sleep(1)
        self.observer.scan()

    # ---- when is it over

    def _resolved(self, sub: Submission) -> bool:
        if sub.final_at is not None or sub.no_dispatch:
            return True
        age = now() - sub.sent_at
        if sub.platform == "discord" and not sub.acked:
            return age > ACK_WINDOW_S + 2     # nothing can acknowledge it any more
        quiet = now() - max([sub.sent_at] + [t for t, _ in sub.events])
        if quiet < GIVE_UP_S:
            return False
        # Nothing will come: no job and nobody holding the update, or a final job whose user heard nothing.
        return (sub.job is None and self._update_taken(sub)) or (sub.job is not None and sub.job.state.final)

    def _update_taken(self, sub: Submission) -> bool:
        if sub.platform != "telegram":
            return True
        return not any((u.get("message") or {}).get("message_id") == sub.message_id
                       and (u.get("message") or {}).get("chat", {}).get("id") == sub.chat_id
                       for u in self.tfake.pending_updates)

    def _settled(self) -> str:
        if not self.sending_done or self.store_error:
            return "no"
        if not all(self._resolved(s) for s in self.observer.subs):
            return "no"
        if self.dfake.in_flight or self.tfake.in_flight:
            return "no"
        if any(not j.state.final for j in self.jobs):
            return "no"
        if any(not j.delivered for j in self.jobs):
            return "all but delivered flags"
        return "all"

    def _progress(self) -> None:
        subs = self.observer.subs
        answered = sum(1 for s in subs if s.final_at is not None)
        states: dict[str, int] = {}
        for j in self.jobs:
            states[str(j.state)] = states.get(str(j.state), 0) + 1
        kills = {t: sum(1 for k in self.kills if k.target == t) for t in ("worker", "bot", "redis")}
        hit = self._fault_hits()
        print(f"[{now() - self.t0:7.1f} s] sent {len(subs)}/{self.args.jobs} · answered {answered} · store "
              f"{', '.join(f'{k} {v}' for k, v in sorted(states.items())) or '-'}"
              f"{' (unreachable)' if self.store_error else ''} · kills: worker {kills['worker']}, bot "
              f"{kills['bot']}, redis {kills['redis']} · faults hit {sum(hit.values())}/"
              f"{sum(self.injected.values())}", flush=True)

    def _fault_hits(self) -> dict[str, int]:
        hits: dict[str, int] = {}
        for r in self.dfake.requests:
            if r.fault:
                target = "edit" if r.method == "PATCH" else "upload"
                kind = "delay" if r.fault == "delay" else ("429" if r.fault == "429" else "5xx")
                hits[f"discord {target} {kind}"] = hits.get(f"discord {target} {kind}", 0) + 1
        for c in self.tfake.calls:
            if c.fault:
                target = "upload" if c.method.lower() in TG_UPLOADS else "edit"
                if c.fault.startswith("delay") and _delay(c.fault) >= UPLOAD_TIMEOUT_S:
                    key = "telegram upload stalled past the upload timeout"
                else:
                    kind = "delay" if c.fault.startswith("delay") else ("429" if "429" in c.fault else "5xx")
                    key = f"telegram {target} {kind}"
                hits[key] = hits.get(key, 0) + 1
        return hits

    # ---- the figures

    def bot_killed_between(self, start: float, end: float) -> Kill | None:
        return next((k for k in self.kills if k.target == "bot" and start <= k.at <= end), None)

    def summary(self) -> tuple[str, bool]:
        obs, args = self.observer, self.args
        subs = obs.subs
        lines: list[str] = []
        out = lines.append
        refused: list[Submission] = []
        lost: list[tuple[Submission, str]] = []
        once: dict[str, int] = {"discord": 0, "telegram": 0}
        errors: dict[str, list[Submission]] = {"discord": [], "telegram": []}
        dups: dict[str, list[Submission]] = {"discord": [], "telegram": []}
        for sub in subs:
            if sub.platform == "discord" and not sub.acked and sub.final_at is None:
                killed = self.bot_killed_between(sub.sent_at - 1.0, sub.sent_at + ACK_WINDOW_S)
                if sub.no_dispatch or not sub.live_at_send or killed:
                    refused.append(sub)
                    continue
            results = self.alive_results(sub)
            if len(results) == 1:
                once[sub.platform] += 1
            elif len(results) > 1:
                dups[sub.platform].append(sub)
            elif sub.final_at is not None and any(kind == "error" for _, kind in sub.events):
                errors[sub.platform].append(sub)
            else:
                lost.append((sub, self.why_lost(sub)))
        ambiguous = self.ambiguous_uploads()
        d_cut = [r for s in subs if s.platform == "discord" for r in s.uploads
                 if self.bot_killed_between(r.time, r.done_at)]
        tg_dup_unexplained = [s for s in dups["telegram"] if not any(id(c) in ambiguous for c in s.uploads)]
        waits = []
        for sub in subs:
            wait, start, end = self.longest_wait(sub)
            if wait is not None:
                waits.append((wait, sub, start, end))
        waits.sort(key=lambda x: -x[0])
        stalled = {id(s) for s in subs if any(c.fault and c.fault.startswith("delay")
                                              and _delay(c.fault) >= UPLOAD_TIMEOUT_S for c in s.uploads)}
        waits_other = [x for x in waits if id(x[1]) not in stalled]
        final = sum(1 for j in self.jobs if j.state.final)
        undelivered = [j for j in self.jobs if j.state.final and not j.delivered]
        states: dict[str, int] = {}
        for j in self.jobs:
            states[str(j.state)] = states.get(str(j.state), 0) + 1
        orphans = [j for j in self.jobs if j.id not in obs.by_job]
        kills = {t: sum(1 for k in self.kills if k.target == t) for t in ("worker", "bot", "redis")}
        per = {p: sum(1 for s in subs if s.platform == p) for p in ("discord", "telegram")}
        hits = self._fault_hits()

        out("=" * 100)
        out("chaos run summary")
        out(f"command: .venv/bin/python scripts/chaos.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}".rstrip())
        out(f"seed {args.seed}; {args.users} users ({len(self.d_users)} Discord, {len(self.t_users)} Telegram); "
            f"jobs sent over {self.window_s:.0f} s; {self.outcome} after {self.elapsed_s:.0f} s "
            f"(timeout {args.timeout_s:.0f} s)")
        replicas = f", one of {args.bots} replicas each time" if args.bots > 1 else ""
        out(f"chaos: SIGKILL worker {kills['worker']}x, bot {kills['bot']}x (each started again after 1-3 s{replicas}), "
            f"redis-server {kills['redis']}x (restarted on its append-only file)")
        bot_kills = [k for k in self.kills if k.target == "bot"]
        back = [k.back_at - k.at for k in bot_kills if k.back_at]
        polls = [next((p.time for p in self.tfake.polls if p.time > k.at), None) for k in bot_kills]
        polled = [t - k.at for t, k in zip(polls, bot_kills) if t is not None]
        if back:
            out(f"after a bot kill: Discord gateway live again in {sum(back) / len(back):.1f} s on average "
                f"(longest {max(back):.1f} s), Telegram polled again in "
                f"{sum(polled) / max(1, len(polled)):.1f} s (longest {max(polled, default=0):.1f} s)")
        out("faults hit/injected: " + ", ".join(f"{k} {hits.get(k, 0)}/{v}" for k, v in sorted(self.injected.items())))
        out("-" * 100)
        out(f"jobs submitted                    {len(subs):>5}   (Discord {per['discord']}, Telegram {per['telegram']})")
        out(f"jobs in the store                 {len(self.jobs):>5}   ({', '.join(f'{k} {v}' for k, v in sorted(states.items()))}); "
            f"final {final}, final but not marked delivered {len(undelivered)}"
            + (f", not matched to a submission {len(orphans)}" if orphans else ""))
        answered = sum(once.values()) + sum(len(v) for v in dups.values()) + sum(len(v) for v in errors.values())
        out(f"users answered                    {answered:>5}   (a video or a final error)")
        out(f"  delivered once                  {sum(once.values()):>5}   (Discord {once['discord']}, "
            f"Telegram {once['telegram']})")
        out(f"  answered with an error          {sum(len(v) for v in errors.values()):>5}   (Discord "
            f"{len(errors['discord'])}, Telegram {len(errors['telegram'])})" + self.error_reasons(errors))
        out(f"refused by Discord, bot down      {len(refused):>5}   (\"The application did not respond\": "
            f"the interaction reached no running bot within {ACK_WINDOW_S:.0f} s; not lost by the bot)")
        out("-" * 100)
        ok_lost = not lost
        ok_d = not dups["discord"]
        ok_t = not tg_dup_unexplained and len(dups["telegram"]) <= len(ambiguous)
        longest = waits[0] if waits else None
        ok_wait = longest is None or longest[0] <= TARGET_WAIT_S

        def row(name: str, value: str, target: str, ok: bool) -> None:
            out(f"{name:<34}{value:>9}   target {target:<52} {'met' if ok else 'MISSED'}")

        row("lost (no final answer to the user)", str(len(lost)), "0", ok_lost)
        row("duplicated, Discord", str(len(dups["discord"])), "0", ok_d)
        row("duplicated, Telegram", str(len(dups["telegram"])),
            f"only after an ambiguous upload ({len(ambiguous)} ambiguous)", ok_t)
        held = [c for c in self.tg_uploads() if c.fault and c.fault.startswith("delay")
                and _delay(c.fault) >= UPLOAD_TIMEOUT_S]
        held_cut = [c for c in held if self.bot_killed_between(c.time, c.done_at)]
        cut = [c for c in self.tg_uploads() if id(c) in ambiguous and c not in held]
        out(f"{'':34}{'':9}   ambiguous uploads: {len(ambiguous)} = {len(held)} held past the bot's "
            f"{UPLOAD_TIMEOUT_S:.0f} s upload timeout ({len(held_cut)} of them cut short by a bot kill) + "
            f"{len(cut)} under way when the bot was killed; duplicates without one: {len(tg_dup_unexplained)}")
        if longest is not None:
            w, s, a, b = longest
            row("longest wait without an update", f"{w:.1f} s", f"<= {TARGET_WAIT_S:.0f} s", ok_wait)
            out(f"{'':34}{'':9}   {s.label()}: from {a} to {b}")
            if stalled and waits_other:
                w2, s2, a2, b2 = waits_other[0]
                out(f"{'':34}{'':9}   without the {len(stalled)} jobs whose upload was held past the upload "
                    f"timeout: {w2:.1f} s, {s2.label()}: from {a2} to {b2}")
        if d_cut:
            out(f"Discord result uploads under way when the bot was killed: {len(d_cut)}")
        passed = ok_lost and ok_d and ok_t and ok_wait
        out("-" * 100)
        out("PASS" if passed else "FAIL")
        out("=" * 100)
        details = self.details(lost, dups, tg_dup_unexplained, waits[:5], undelivered, refused)
        return "\n".join(lines) + ("\n" + details if details else ""), passed

    def alive_results(self, sub: Submission) -> list[Any]:
        """The result videos the user has now (posted and not deleted since)."""
        if sub.platform == "telegram":
            out = []
            for c in sub.uploads:
                message = self.tfake.message(sub.chat_id, (c.result or {}).get("message_id", 0))
                if message is not None and not message.deleted:
                    out.append(message)
            return out
        inter = sub.interaction
        if inter is None:
            return []
        candidates = [inter.original_message, *inter.followups]
        if sub.job_id:
            candidates += [m for m in self.dfake.messages.values()
                           if m.nonce and m.nonce.startswith(sub.job_id) and m not in candidates]
        return [m for m in candidates if m is not None and not m.deleted
                and any(str(a.get("filename", "")).endswith(".mp4") for a in m.attachments)]

    def tg_uploads(self) -> list[Any]:
        return [c for sub in self.observer.subs if sub.platform == "telegram" for c in sub.uploads]

    def ambiguous_uploads(self) -> set[int]:
        """Telegram uploads whose answer the bot never had: held past its timeout, or it was killed meanwhile."""
        out = set()
        for sub in self.observer.subs:
            if sub.platform != "telegram":
                continue
            for c in sub.uploads:
                held = bool(c.fault and c.fault.startswith("delay") and _delay(c.fault) >= UPLOAD_TIMEOUT_S)
                if held or self.bot_killed_between(c.time, c.done_at):
                    out.add(id(c))
        return out

    def longest_wait(self, sub: Submission) -> tuple[float | None, str, str]:
        final = sub.final_at
        if final is None:
            return None, "", ""
        marks = [(sub.sent_at, "submission")] + sorted((t, k) for t, k in sub.events if t <= final)
        best: tuple[float | None, str, str] = (None, "", "")
        for (t1, k1), (t2, k2) in zip(marks, marks[1:]):
            if best[0] is None or t2 - t1 > best[0]:
                best = (t2 - t1, f"{k1} at {t1 - self.t0:.1f} s", f"{k2} at {t2 - self.t0:.1f} s")
        return best

    def why_lost(self, sub: Submission) -> str:
        job = sub.job
        kill = self.bot_killed_between(sub.sent_at - 0.5, sub.sent_at + 30)
        near = f"; bot killed {kill.at - sub.sent_at:+.1f} s after it was sent (log {kill.log})" if kill else ""
        if sub.platform == "discord" and not sub.acked:
            return "not acknowledged within 3 s while the bot was up"
        if sub.uploads:
            return "its video was posted, then deleted"
        if job is None and sub.gone_from_store:
            return f"its job {sub.job_id} was in the store and is gone (Redis restart), and nobody told its user{near}"
        if job is None:
            if sub.platform == "telegram":
                taken = self._update_taken(sub)
                seen = "no status message, " if not sub.events else ""
                return (f"{seen}no job in the store; the update was "
                        f"{'taken from getUpdates' if taken else 'never taken'}{near}")
            return f"acknowledged ('thinking…'), then no job in the store and no answer{near}"
        if not job.state.final:
            return f"its job is still {job.state} (attempts {job.attempts}){near}"
        return f"its job is {job.state} (delivered flag {job.delivered}), but its user saw no outcome{near}"

    def error_reasons(self, errors: dict[str, list[Submission]]) -> str:
        reasons: dict[str, int] = {}
        for subs in errors.values():
            for s in subs:
                if s.job is not None:
                    key = s.job.error_key or s.job.error or str(s.job.state)
                else:
                    key = "job gone from the store" if s.gone_from_store else "no job"
                reasons[key] = reasons.get(key, 0) + 1
        return ("; reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))) if reasons else ""

    def details(self, lost, dups, tg_unexplained, waits, undelivered, refused) -> str:
        lines: list[str] = []
        out = lines.append
        if lost:
            groups: dict[str, list[tuple[Submission, str]]] = {}
            for sub, why in lost:
                groups.setdefault(re.sub(r"; bot killed.*", "", why), []).append((sub, why))
            for reason, members in groups.items():
                out(f"lost, {reason}: {len(members)}")
                for sub, why in members[:3]:
                    out(f"  {sub.label()}, sent at {sub.sent_at - self.t0:.1f} s: {why}")
                    lines.extend(self.trace(sub))
                    lines.extend(self.log_lines(sub.job_id))
                if len(members) > 3:
                    out("  and " + ", ".join(f"{s.job_id or '-'} (#{s.n})" for s, _ in members[3:]))
        for platform in ("discord", "telegram"):
            for sub in dups[platform]:
                ups = ", ".join(f"{getattr(u, 'time', 0) - self.t0:.1f}->{u.done_at - self.t0:.1f} s"
                                + (f" [{u.fault}]" if u.fault else "") for u in sub.uploads)
                tag = " (no ambiguous upload)" if sub in tg_unexplained else ""
                out(f"duplicated{tag}: {sub.label()}: uploads {ups}")
                lines.extend(self.trace(sub))
                lines.extend(self.log_lines(sub.job_id))
        if undelivered:
            out("final in the store but not marked delivered: " + ", ".join(f"{j.id} ({j.state})" for j in undelivered))
        if waits:
            out("longest waits without an update:")
            for w, s, a, b in waits:
                out(f"  {w:6.1f} s  {s.label()}: from {a} to {b}")
        if refused:
            out("refused by Discord (sent at, s): " + ", ".join(f"#{s.n} {s.sent_at - self.t0:.1f}" for s in refused))
        return "\n".join(lines)

    def trace(self, sub: Submission) -> list[str]:
        """What the bot asked of the platform for this submission, in order: time sent -> answered."""
        rows: list[tuple[float, str]] = []
        if sub.platform == "discord" and sub.token:
            for r in self.dfake.requests:
                match = TOKEN_PATH.match(r.path)
                if not match or match.group(1) != sub.token:
                    continue
                what = {"/callback": "callback", "/messages/@original": "original"}.get(match.group(2) or "",
                                                                                      match.group(2) or "followup")
                files = ",".join(name for name, _ in r.files)
                body = r.json if isinstance(r.json, dict) else {}
                content = (body.get("data") or {}).get("content") if what == "callback" else body.get("content")
                rows.append((r.time, f"{r.method} {what} -> {r.status}" + (f" [{r.fault}]" if r.fault else "")
                             + (f" files {files}" if files else "")
                             + (f" \"{' / '.join(str(content).splitlines())[:60]}\"" if content else "")
                             + f" (answered {getattr(r, 'done_at', r.time) - self.t0:.1f} s)"))
        elif sub.platform == "telegram":
            ids = sub.status_ids | {(c.result or {}).get("message_id") for c in sub.uploads}
            for c in self.tfake.calls:
                if c.params.get("chat_id") != sub.chat_id:
                    continue
                reply = c.params.get("reply_parameters")
                reply_id = reply.get("message_id") if isinstance(reply, dict) else None
                if reply_id != sub.message_id and _int(c.params.get("message_id")) not in ids:
                    continue
                message_id = (c.result or {}).get("message_id") if isinstance(c.result, dict) else None
                rows.append((c.time, f"{c.method} -> {c.status}" + (f" [{c.fault}]" if c.fault else "")
                             + (f" message {message_id}" if message_id else "")
                             + f" (answered {c.done_at - self.t0:.1f} s)"))
        return [f"      {t - self.t0:7.1f} s  {text}" for t, text in sorted(rows, key=lambda x: x[0])]

    def log_lines(self, job_id: str, limit: int = 12) -> list[str]:
        if not job_id:
            return []
        found = []
        for path in sorted(self.run_dir.glob("*.log")):
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    if job_id in line:
                        found.append(f"      {path.name}: {line.strip()[:200]}")
        return found[:limit]


def _delay(fault: str) -> float:
    match = re.search(r"delay ([\d.]+)", fault)
    return float(match.group(1)) if match else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--send-over-s", type=float, default=0.0,
                        help="spread the jobs over this many seconds (default: 55%% of the timeout, at most "
                             "1.5 s a job)")
    parser.add_argument("--stalled-uploads", type=int, default=None,
                        help="Telegram uploads held past the bot's upload timeout (default: one per 100 jobs)")
    parser.add_argument("--step-delay-s", type=float, default=0.5,
                        help="seconds each denoising step of the tiny model is held, as on a slower GPU: status "
                             "edits then happen while jobs render (0: the tiny model's own speed)")
    parser.add_argument("--bots", type=int, default=1, help="bot replicas on the store (a kill takes one)")
    parser.add_argument("--lease-s", type=float, default=0.0,
                        help="[replicas] lease_s of the bots (default: config.toml's)")
    parser.add_argument("--run-dir", default="", help="folder for the logs (default: a new one under /tmp)")
    args = parser.parse_args()
    if args.users < 2 or args.jobs < 1:
        parser.error("--users must be at least 2 and --jobs at least 1")
    if args.stalled_uploads is None:
        args.stalled_uploads = max(1, args.jobs // 100)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="chaos-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(args, run_dir)
    asyncio.run(chaos.run())
    text, passed = chaos.summary()
    print(text, flush=True)
    (run_dir / "summary.txt").write_text(text + "\n", encoding="utf-8")
    print(f"logs: {run_dir}")
    return 0 if passed else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
