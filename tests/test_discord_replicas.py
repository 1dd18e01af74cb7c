"""Two `python -m bot` replicas on one real redis-server share two Discord shards of the fake gateway (which
routes each guild's interactions to shard `(guild_id >> 22) % 2`), with a GPU worker process of its own. One
replica is SIGKILLed mid-render: the survivor takes over its statuses and deliveries and then its shard, and
every job is answered exactly once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.queue.redis_store import RedisStore
from tests.fakes.discord_server import FakeDiscord
from tests.harness import TINY_PRESETS, eventually, photo_bytes, write_config
from tests.redis_server import running_redis

ROOT = Path(__file__).resolve().parent.parent
LEASE_S = 3.0
pytestmark = pytest.mark.timeout(240)


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def results(fake: FakeDiscord) -> dict[str, int]:
    """Video messages the bot left, by file name (one per job)."""
    seen: dict[str, int] = {}
    for message in fake.messages.values():
        for attachment in message.attachments if not message.deleted else []:
            if attachment["filename"].endswith(".mp4"):
                seen[attachment["filename"]] = seen.get(attachment["filename"], 0) + 1
    return seen


async def test_two_replicas_share_the_shards_and_the_survivor_finishes_a_killed_ones_jobs(tmp_path):
    presets = {k: dict(v) for k, v in TINY_PRESETS.items()}
    presets["quick"].update(steps=12)
    with running_redis() as server:
        url = server.url + "?prefix=replicas:"
        async with FakeDiscord(gateway_wait_s=30) as fake:
            first_shard = (fake.guild_id >> 22) % 2
            guild_b, channel_b = fake.add_guild("Second", shard=(1 - first_shard, 2))
            cfg = write_config(tmp_path / "config.toml", {
                "engine": {"model": "tiny", "device": "cpu", "step_delay_s": 0.4, "local_worker": False},
                "presets": presets,
                "queue": {"per_user": 2, "jobs_per_hour": 0},
                "storage": {"url": url, "data_dir": str(tmp_path / "data")},
                "discord": {"api_base_url": fake.api_base, "gateway_url": fake.gateway_url,
                            "attachment_hosts": ["127.0.0.1"], "guild_ready_timeout_s": 0.05,
                            "edit_interval_s": 0.2, "shard_count": 2},
                "replicas": {"lease_s": LEASE_S},
                "safety": {"classifier": "off"},
            })
            env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_TOKEN", "TELEGRAM_TOKEN"))}
            env.update(DISCORD_TOKEN=fake.token, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
            config_args = ["--config", str(cfg)]
            worker = start(["-m", "engine", "worker", "--store", url, *config_args], tmp_path / "worker.log", env)
            bots = {start(["-m", "bot", *config_args], tmp_path / f"bot{i}.log", env) for i in range(2)}
            store = RedisStore(url)
            await store.open()
            try:
                # Both replicas started alike: one shard each.
                async def shard_owners():
                    holds = await store.holders("discord:shard:")
                    owners = {name: h.owner for name, h in holds.items() if h.live}
                    connected = all(fake._connection_for(g) for g in (fake.guild_id, guild_b))
                    return owners if len(set(owners.values())) == 2 and connected else None
                owners = await eventually(shard_owners, 90, "each replica to run one shard")
                victim_pid = int(owners[f"discord:shard:{first_shard}"].split("/")[1])
                victim = next(b for b in bots if b.pid == victim_pid)

                async def animate(user: int, guild: int, channel: int, prompt: str):
                    att = fake.add_attachment("photo.png", photo_bytes(), "image/png", channel_id=channel)
                    return await fake.slash_command("animate", [{"name": "image", "value": att},
                                                                {"name": "prompt", "value": prompt}],
                                                    user_id=user, guild_id=guild, channel_id=channel)

                asked = [await animate(fake.user_id, fake.guild_id, fake.channel_id, "waves in the first shard"),
                         await animate(fake.user_id, guild_b, channel_b, "clouds in the second shard"),
                         await animate(fake.other_user_id, fake.guild_id, fake.channel_id, "rain in the first"),
                         await animate(fake.other_user_id, guild_b, channel_b, "snow in the second")]
                victims_jobs = [asked[0], asked[2]]   # in the victim's shard: it answered and follows them
                victims_session = fake._connection_for(fake.guild_id).session.id

                async def rendering():
                    return any(j.step >= 2 for j in await store.running())
                await eventually(rendering, 60, "a render to be under way")
                victim.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                victim.wait(10)

                # The survivor carries the victim's statuses on, then takes its shard and answers there.
                def survivor_edit():
                    tokens = [i.token for i in victims_jobs]
                    times = [r.time for r in fake.requests
                             if r.time > killed_at and any(t in r.path for t in tokens)]
                    return min(times) if times else None
                first_edit = await eventually(survivor_edit, 30, "the survivor to edit the victim's statuses")
                def shard_taken_over():
                    conn = fake._connection_for(fake.guild_id)
                    return conn is not None and conn.session.id != victims_session
                await eventually(shard_taken_over, 30, "the survivor to connect the victim's shard")
                shard_taken = time.monotonic()
                carol = fake.add_member("carol")
                asked.append(await animate(carol, fake.guild_id, fake.channel_id, "leaves after the takeover"))
                await eventually(lambda: all(any(m.attachments for m in i.followups) for i in asked), 150,
                                 "every job's result")
                print(f"takeover after SIGKILL (lease {LEASE_S:g} s): statuses {first_edit - killed_at:.2f} s, "
                      f"shard connected {shard_taken - killed_at:.2f} s")
                assert first_edit - killed_at <= LEASE_S + 1.0   # the lease, and the first edit after the takeover
            finally:
                await store.close()
                for proc in [*bots, worker]:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                for proc in [*bots, worker]:
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
            videos = results(fake)
            assert len(videos) == len(asked) and set(videos.values()) == {1}, (videos, logs[-4000:])
            for interaction in asked:   # the result notifies its owner: a followup with the video, once
                assert sum(bool(m.attachments) for m in interaction.followups) == 1
            assert "following it in place of a replica that stopped" in logs
