"""What bot replicas share through the store, on both backends (a real SQLite file, a real redis-server): holds
that one owner has at a time and that a dead owner's holds can be found, notes (taken once), and turns of a
shared pacer spaced across processes."""

import asyncio

import pytest

from engine.queue.redis_store import RedisStore
from engine.queue.sqlite_store import SQLiteStore
from tests import redis_server as real_redis

redis_server, redis_url = real_redis.redis_server, real_redis.redis_url


@pytest.fixture(params=["sqlite", "redis"])
async def stores(request, tmp_path):
    """Two connections to one store, as two bot replicas hold."""
    if request.param == "sqlite":
        made = [SQLiteStore(tmp_path / "jobs.sqlite3") for _ in range(2)]
    else:
        url = request.getfixturevalue("redis_url")
        made = [RedisStore(url) for _ in range(2)]
    for s in made:
        await s.open()
    yield made
    for s in made:
        await s.close()


async def test_a_hold_has_one_owner_until_it_expires_or_is_released(stores):
    a, b = stores
    assert await a.hold(["follow:j1", "follow:j2"], "A", 0.6) == ["follow:j1", "follow:j2"]
    assert await b.hold(["follow:j1", "follow:j3"], "B", 0.6) == ["follow:j3"]
    assert await a.hold(["follow:j1"], "A", 0.6) == ["follow:j1"]   # renewed by its owner
    listed = await b.holders("follow:")
    assert {n: (h.owner, h.live) for n, h in listed.items()} == {
        "follow:j1": ("A", True), "follow:j2": ("A", True), "follow:j3": ("B", True)}
    assert await b.holders("shard:") == {}
    await a.release(["follow:j2", "follow:j3"], "A")   # only its own
    assert set(await b.holders("follow:")) == {"follow:j1", "follow:j3"}
    await asyncio.sleep(0.8)
    # Expired, the hold is still listed (a dead owner's work can be found), and anyone may take it.
    dead = await b.holders("follow:")
    assert dead["follow:j1"].owner == "A" and not dead["follow:j1"].live
    assert await b.hold(["follow:j1"], "B", 5) == ["follow:j1"]
    assert await a.hold(["follow:j1"], "A", 5) == []
    assert (await a.holders("follow:j1"))["follow:j1"].owner == "B"


async def test_a_note_is_taken_once_and_only_new_keeps_the_first(stores):
    a, b = stores
    assert await a.put_note("ask:1:2", "a cat", 5)
    assert await b.take_note("ask:1:2") == "a cat"
    assert await a.take_note("ask:1:2") is None
    assert await a.put_note("album:9", "1", 5, only_new=True)
    assert not await b.put_note("album:9", "1", 5, only_new=True)
    assert await a.put_note("short", "x", 0.2)
    await asyncio.sleep(0.4)
    assert await b.take_note("short") is None
    assert await b.put_note("short", "y", 5, only_new=True)   # an expired note does not block a new one


async def test_turns_are_spaced_across_connections(stores):
    a, b = stores
    waits = [await s.next_turn("chat:-5", 0.5) for s in (a, b, a)]
    assert waits[0] == pytest.approx(0, abs=0.05)
    assert waits[1] == pytest.approx(0.5, abs=0.1) and waits[2] == pytest.approx(1.0, abs=0.1)
    await b.push_turn("chat:-5", 3.0)   # flood control: nothing in this chat for 3 s
    assert await a.next_turn("chat:-5", 0.5) == pytest.approx(3.0, abs=0.1)
    assert await a.next_turn("chat:other", 0.5) == pytest.approx(0, abs=0.05)
