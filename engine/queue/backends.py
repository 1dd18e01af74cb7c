"""Choosing a store backend from a URL: the one place that tells a Redis URL from a SQLite path."""

from __future__ import annotations

from engine.queue.store import Store

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
SQLITE_PREFIX = "sqlite:///"


def is_redis_url(url: str) -> bool:
    return url.startswith(REDIS_SCHEMES)


def open_store(url: str) -> Store:
    """A store for a URL: `redis://...` for several machines, anything else is a SQLite file path."""
    if is_redis_url(url):
        from engine.queue.redis_store import RedisStore
        return RedisStore(url)
    from engine.queue.sqlite_store import SQLiteStore
    return SQLiteStore(url.removeprefix(SQLITE_PREFIX))
