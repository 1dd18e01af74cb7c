"""`bot.replicas.Replica` over a real SQLite store: holds renewed by the heartbeat, a stalled replica's work
taken over (and it told so), a clean stop handing everything over at once, and a restarted bot taking back what
its killed predecessor on the same machine held."""

import asyncio
import os
import subprocess
import sys

import pytest

from bot.replicas import Replica
from engine.queue.redis_store import RedisStore
from engine.queue.resilient import resilient
from engine.queue.sqlite_store import SQLiteStore
from tests.redis_server import running_redis


@pytest.fixture
async def store(tmp_path):
    s = resilient(SQLiteStore(tmp_path / "jobs.sqlite3"))
    await s.open()
    yield s
    await s.close()


async def test_the_heartbeat_keeps_holds_and_a_stalled_replica_loses_them(store):
    a, b = Replica(store, lease_s=1.0), Replica(store, lease_s=1.0)
    lost = []
    await a.start()
    assert await a.take("follow:discord:j1", on_lost=lambda: lost.append("j1"))
    await asyncio.sleep(1.5)   # past one lease: renewed meanwhile
    assert not await b.take("follow:discord:j1")
    assert await b.orphans("follow:") == []
    await a.stop()   # stalled: no more renewals
    await asyncio.sleep(1.2)
    assert await b.orphans("follow:discord:") == ["follow:discord:j1"]
    assert await b.take("follow:discord:j1")
    await a.renew()   # its next heartbeat finds the hold gone: the work stops there
    assert lost == ["j1"] and not a.holds("follow:discord:j1")


async def test_a_clean_stop_hands_every_hold_over_at_once(store):
    a, b = Replica(store, lease_s=30.0), Replica(store, lease_s=30.0)
    await a.start()
    await a.take_many(["follow:telegram:j2", "telegram:poller"])
    await a.drop("follow:telegram:j2")   # its job is done: gone, not an orphan
    assert await b.orphans("") == []
    await a.close()
    assert await b.orphans("") == ["telegram:poller"]
    assert await b.take("telegram:poller")


async def test_checks_run_after_each_heartbeat(store):
    replica = Replica(store, lease_s=0.3)
    beats = []

    async def check():
        beats.append(replica.holds("discord:member:x"))
    await replica.take("discord:member:x")
    replica.every_beat(check)
    await replica.start()
    await asyncio.sleep(0.45)
    await replica.close()
    assert len(beats) >= 3 and all(beats)


async def test_a_restarted_bot_takes_back_what_its_killed_predecessor_held(store):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)   # a process of this machine that has ended
    old = Replica(store, lease_s=60.0)
    old.id = f"{old.host}/{dead_pid}/abcdef"
    await old.take_many(["follow:discord:j3", "discord:shard:0"])
    elsewhere = Replica(store, lease_s=60.0)
    elsewhere.id = f"another-host/{os.getpid()}/123456"   # alive as far as this machine can tell: kept
    await elsewhere.take("discord:shard:1")
    new = Replica(store, lease_s=60.0)
    await new.start()
    try:
        assert await new.orphans("") == ["discord:shard:0", "follow:discord:j3"]
        assert not await new.take("discord:shard:1")
    finally:
        await new.close()


async def test_after_a_store_outage_the_live_replicas_keep_what_they_hold():
    """Redis frozen past a hold's length: nobody could renew. The replica whose heartbeat was held up by the
    outage takes nothing over until the others, back a little later (their reconnect backoff), renewed theirs."""
    with running_redis() as server:
        store = resilient(RedisStore(server.url))
        await store.open()
        holder, other = Replica(store, lease_s=1.0), Replica(store, lease_s=1.0)
        taken = []

        async def take_over():
            for name in await other.orphans("telegram:"):
                if await other.take(name):
                    taken.append(name)
        try:
            assert await holder.take("telegram:poller")
            await other.take("discord:member:other")
            other.every_beat(take_over)
            await other.start()
            server.pause()
            await asyncio.sleep(1.2)   # longer than a hold lasts (0.75 s)
            server.resume()
            await asyncio.sleep(0.3)   # the other's heartbeat is back first
            for _ in range(3):         # the holder's heartbeat (by hand here), back a moment later
                await holder.renew()
                assert holder.holds("telegram:poller") and taken == []
                await asyncio.sleep(0.25)
        finally:
            await other.close()
            await store.close()
