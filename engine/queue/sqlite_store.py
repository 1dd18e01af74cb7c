"""SQLite job store: one file shared by the bot process and the worker process on one machine.

WAL, `BEGIN IMMEDIATE` for writes, a busy timeout and retries when another process holds the lock. The rules
(limits, fair order, recovery) come from `engine.queue.store`; this module only stores.

Every write bumps a store-wide change counter (`seq`) and stamps it on the job it touched, so a front end
polls `changes_since(seq)` with one indexed query, however many jobs it watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from engine.jobs import Job, JobState
from engine.queue.store import (
    HOUR_S,
    LEASE_TTL_S,
    STEP_SAMPLES,
    Hold,
    Limits,
    WorkerInfo,
    fair_order,
    limit_refusal,
    recovery_fields,
    refusal_error,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user, state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    owner TEXT PRIMARY KEY, pid INTEGER, state TEXT, heartbeat_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS step_times (key TEXT PRIMARY KEY, samples TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS served (user TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS submissions (user TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS submissions_user ON submissions(user, at);
CREATE TABLE IF NOT EXISTS messages (key TEXT PRIMARY KEY, job TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS previews (job TEXT PRIMARY KEY, step INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS messages_job ON messages(job);
CREATE TABLE IF NOT EXISTS holds (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL NOT NULL);
"""


TURN_KEEP_S = 60.0     # a pacing turn is forgotten this long after it passed
CHANGE_POLL_S = 0.01   # how often an idle waiter looks for another process's commit (wait_for_change)
SQLITE_HEADER = b"SQLite format 3\x00"


def _is_locked(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()


async def _one_row(cur: aiosqlite.Cursor) -> sqlite3.Row:
    """The row of a query that always yields exactly one: an aggregate, or an upsert's RETURNING."""
    row = await cur.fetchone()
    assert row is not None
    return row


class SQLiteStore:
    """One SQLite file shared by the bot process and the worker process on one machine."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 5.0, lock_retries: int = 20):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.lock_retries = lock_retries
        self._db: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()   # one transaction at a time on this connection
        self._seen_version: int | None = None   # data_version at the last wait_for_change
        self._identity: tuple[int, int] | None = None   # (device, inode) of the file opened
        # The file, opened once more to read its header (file_problem): kept open until the connection is
        # closed, as closing a descriptor of the file would drop the locks SQLite holds on it for this process.
        self._fd: int | None = None

    # ---- connection ----

    async def open(self) -> None:
        await self.close()   # a try after a failed one starts clean
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            self._db.row_factory = aiosqlite.Row
            await self._db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            await self._retry(self._init_schema)
        except BaseException:
            await self.close()
            raise
        self._fd = os.open(self.path, os.O_RDONLY)
        st = os.fstat(self._fd)
        self._identity = (st.st_dev, st.st_ino)
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass

    def file_problem(self) -> tuple[str, str] | None:
        """What is wrong with the file at `path`, if anything: ("orphaned", why) when it is not the database
        this store has open (deleted, or another file put in its place: the open one goes on working, but
        only this process sees it), ("broken", why) when its header is no longer SQLite's (overwritten: pages
        SQLite still has cached or in its WAL would hide that for a while)."""
        if self._identity is None or self._fd is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "orphaned", f"{self.path} was deleted"
        except OSError:
            return None   # unreadable for a moment: the next query says what is wrong
        if (st.st_dev, st.st_ino) != self._identity:
            return "orphaned", f"{self.path} was replaced by another file"
        try:
            head = os.pread(self._fd, len(SQLITE_HEADER), 0)
        except OSError as exc:
            return "broken", f"{self.path}: {exc.strerror}"
        if head != SQLITE_HEADER:
            return "broken", f"{self.path} is corrupted (no SQLite header)"
        return None

    async def integrity_problem(self) -> str | None:
        """What a fresh look finds wrong with the database, None when it is sound: a new connection (SQLite's
        own, so this process keeps its locks) runs `PRAGMA quick_check`. For a store that met corruption:
        whether it has been restored."""
        def check() -> str | None:
            if not self.path.exists():
                return f"{self.path} is missing"
            try:
                con = sqlite3.connect(self.path, timeout=self.busy_timeout_s)
                try:
                    row = con.execute("PRAGMA quick_check(1)").fetchone()
                finally:
                    con.close()
            except sqlite3.Error as exc:
                return f"{self.path}: {exc}"
            return None if row and row[0] == "ok" else f"{self.path}: {row[0] if row else 'no answer'}"
        return await asyncio.to_thread(check)

    async def save_and_close(self) -> Path:
        """Copy the open database to a new file, then close: for a database whose file was deleted or replaced
        while it was open (`file_problem`), so what it held is kept. The copy takes `path` when nothing is
        there (a restart then goes on from it), else `<path>.saved-<UTC time>`. Returns where it went."""
        tmp = self.path.with_name(f"{self.path.name}.saving-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        await self.db.execute("VACUUM INTO ?", (str(tmp),))   # the WAL's pages included
        await self.close()
        os.chmod(tmp, 0o600)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        if self.path.exists():
            target = self.path.with_name(f"{self.path.name}.saved-{stamp}")
        else:
            target = self.path
            # SQLite leaves the deleted database's WAL and shared-memory files behind; opened beside the copy,
            # that WAL would be replayed onto it. They are kept, under another name.
            for suffix in ("-wal", "-shm"):
                stale = Path(f"{self.path}{suffix}")
                if stale.exists():
                    os.replace(stale, Path(f"{self.path}{suffix}.orphaned-{stamp}"))
        os.replace(tmp, target)
        return target

    async def _init_schema(self) -> None:
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.executescript(SCHEMA)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db, self._identity = self._db, None, None
            with contextlib.suppress(sqlite3.Error):   # a corrupted file may refuse its final checkpoint
                await db.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def _retry(self, fn, *args):
        """Run fn, retrying while another process holds the database lock past the busy timeout."""
        delay = 0.05
        for attempt in range(self.lock_retries):
            try:
                return await fn(*args)
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or attempt == self.lock_retries - 1:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _write(self, fn, *args):
        """fn(*args) inside BEGIN IMMEDIATE ... COMMIT, serialized in-process and retried across processes."""
        async def tx():
            async with self._write_lock:
                # aiosqlite runs statements in order on its own thread, and a statement already queued still
                # runs when its awaiting caller is cancelled: so BEGIN sits inside the try, and any failure,
                # cancellation included, queues a ROLLBACK behind it.
                try:
                    await self.db.execute("BEGIN IMMEDIATE")
                    result = await fn(*args)
                    await self.db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        await self.db.execute("ROLLBACK")
                    raise
                return result
        return await self._retry(tx)

    async def _next_seq(self) -> int:
        cur = await self.db.execute(
            "INSERT INTO meta(key, value) VALUES('seq', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value")
        return int((await _one_row(cur))[0])

    async def _save(self, job: Job) -> Job:
        job.seq = await self._next_seq()
        await self.db.execute(
            "INSERT INTO jobs(id, user, state, created_at, seq, data) VALUES(?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET user=excluded.user, state=excluded.state, seq=excluded.seq, "
            "data=excluded.data",
            (job.id, job.user, str(job.state), job.created_at, job.seq, json.dumps(job.to_dict())))
        return job

    async def _load(self, job_id: str) -> Job | None:
        cur = await self.db.execute("SELECT data FROM jobs WHERE id=?", (job_id,))
        row = await cur.fetchone()
        return Job.from_dict(json.loads(row[0])) if row else None

    async def _select(self, sql: str, params: tuple = ()) -> list[Job]:
        cur = await self.db.execute(sql, params)
        return [Job.from_dict(json.loads(r[0])) for r in await cur.fetchall()]

    # ---- jobs ----

    async def submit(self, job: Job, limits: Limits) -> Job:
        async def tx():
            now = time.time()
            cur = await self.db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'")
            queued_total = (await _one_row(cur))[0]
            cur = await self.db.execute(
                "SELECT COUNT(*) FROM jobs WHERE user=? AND state IN ('queued','running')", (job.user,))
            user_active = (await _one_row(cur))[0]
            cur = await self.db.execute(
                "SELECT COUNT(*), MIN(at) FROM submissions WHERE user=? AND at>?", (job.user, now - HOUR_S))
            hour_count, hour_oldest = await _one_row(cur)
            refusal = limit_refusal(limits, queued_total=queued_total, user_active=user_active,
                                    hour_count=hour_count, hour_oldest_at=hour_oldest)
            if refusal:
                raise refusal_error(refusal, limits, hour_oldest, now)
            await self.db.execute("INSERT INTO submissions(user, at) VALUES(?, ?)", (job.user, now))
            await self.db.execute("DELETE FROM submissions WHERE at < ?", (now - HOUR_S,))
            job.state = JobState.QUEUED
            return await self._save(job)
        return await self._write(tx)

    async def record(self, job: Job) -> Job:
        return await self._write(self._save, job)

    async def get(self, job_id: str) -> Job | None:
        return await self._retry(self._load, job_id)

    async def update(self, job_id: str, **fields: Any) -> Job:
        async def tx():
            job = await self._load(job_id)
            if job is None:
                raise KeyError(job_id)
            for k, v in fields.items():
                setattr(job, k, v)
            return await self._save(job)
        return await self._write(tx)

    async def claim(self, worker: str, presets: Collection[str] | None = None) -> Job | None:
        """Atomically take the next job in fair order (of the given presets only: those the worker's model
        renders), unless the queue is paused."""
        async def tx():
            if await self._get_meta("paused", False):
                return None
            queued = await self._select("SELECT data FROM jobs WHERE state='queued'")
            if presets is not None:
                queued = [job for job in queued if job.preset in presets]
            if not queued:
                return None
            job = fair_order(queued, await self._last_served())[0]
            now = time.time()
            job.state, job.worker, job.started_at = JobState.RUNNING, worker, now
            job.attempts += 1
            job.step = 0
            await self.db.execute(
                "INSERT INTO served(user, at) VALUES(?, ?) ON CONFLICT(user) DO UPDATE SET at=excluded.at",
                (job.user, now))
            return await self._save(job)
        return await self._write(tx)

    async def finish(self, job_id: str, state: JobState, **fields: Any) -> Job:
        """Move a job to a final state once; a job already final keeps its first outcome."""
        async def tx():
            job = await self._load(job_id)
            if job is None:
                raise KeyError(job_id)
            if job.state.final:
                return job
            for k, v in fields.items():
                setattr(job, k, v)
            job.state, job.finished_at = state, time.time()
            return await self._save(job)
        return await self._write(tx)

    async def cancel(self, job_id: str) -> Job:
        """A queued job leaves the queue now; a running one is flagged and its worker stops at a step."""
        async def tx():
            job = await self._load(job_id)
            if job is None:
                raise KeyError(job_id)
            if job.state == JobState.QUEUED:
                job.state, job.finished_at, job.cancel_requested = JobState.CANCELLED, time.time(), True
            elif job.state == JobState.RUNNING:
                job.cancel_requested = True
            else:
                return job
            return await self._save(job)
        return await self._write(tx)

    async def queued(self) -> list[Job]:
        queued = await self._retry(self._select, "SELECT data FROM jobs WHERE state='queued'")
        return fair_order(queued, await self.last_served())

    async def running(self) -> list[Job]:
        return await self._retry(self._select, "SELECT data FROM jobs WHERE state='running'")

    async def jobs(self, user: str | None = None, states: Iterable[JobState] | None = None,
                   limit: int = 1000) -> list[Job]:
        sql = "SELECT data FROM jobs WHERE 1=1"
        params: list[str | int] = []
        if user is not None:
            sql += " AND user=?"
            params.append(user)
        if states is not None:
            names = [str(s) for s in states]
            sql += f" AND state IN ({','.join('?' * len(names))})"
            params.extend(names)
        sql += " ORDER BY created_at LIMIT ?"
        params.append(limit)
        return await self._retry(self._select, sql, tuple(params))

    async def changes_since(self, seq: int) -> tuple[list[Job], int]:
        """Jobs changed after seq, and the store-wide counter, which settings changes (pause) bump too. The
        counter is read first: a job saved in between then carries a higher seq and is in the list."""
        async def q():
            cur = await self.db.execute("SELECT value FROM meta WHERE key='seq'")
            row = await cur.fetchone()
            jobs = await self._select("SELECT data FROM jobs WHERE seq>? ORDER BY seq", (seq,))
            return jobs, max([seq, int(row[0]) if row else 0] + [j.seq for j in jobs])
        return await self._retry(q)

    async def recover(self, dead_worker: str | None = None) -> list[Job]:
        """Jobs left running by a dead worker: retried once, then failed. Returns the jobs it touched."""
        async def tx():
            touched = []
            for job in await self._select("SELECT data FROM jobs WHERE state='running'"):
                if dead_worker is not None and job.worker != dead_worker:
                    continue
                for k, v in recovery_fields(job).items():
                    setattr(job, k, v)
                touched.append(await self._save(job))
            return touched
        return await self._write(tx)

    async def delete_jobs(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)

        async def tx():
            await self.db.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i in ids])
            await self.db.executemany("DELETE FROM messages WHERE job=?", [(i,) for i in ids])
            await self.db.executemany("DELETE FROM previews WHERE job=?", [(i,) for i in ids])
        await self._write(tx)

    # ---- previews ----

    async def put_preview(self, job_id: str, step: int, data: bytes) -> None:
        async def tx():
            job = await self._load(job_id)
            if job is None or job.state != JobState.RUNNING:
                return   # finished (or deleted) meanwhile: a late preview is of no use
            await self.db.execute(
                "INSERT INTO previews(job, step, data) VALUES(?, ?, ?) "
                "ON CONFLICT(job) DO UPDATE SET step=excluded.step, data=excluded.data", (job_id, step, data))
            job.preview_step = step
            await self._save(job)
        await self._write(tx)

    async def get_preview(self, job_id: str) -> tuple[int, bytes] | None:
        async def q():
            cur = await self.db.execute("SELECT step, data FROM previews WHERE job=?", (job_id,))
            row = await cur.fetchone()
            return (int(row[0]), bytes(row[1])) if row else None
        return await self._retry(q)

    async def drop_preview(self, job_id: str) -> None:
        async def tx():
            await self.db.execute("DELETE FROM previews WHERE job=?", (job_id,))
        await self._write(tx)

    # ---- chat messages -> jobs ----

    async def link_message(self, key: str, job_id: str) -> None:
        async def tx():
            await self.db.execute(
                "INSERT INTO messages(key, job) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET job=excluded.job",
                (key, job_id))
        await self._write(tx)

    async def message_job(self, key: str) -> str | None:
        async def q():
            cur = await self.db.execute("SELECT job FROM messages WHERE key=?", (key,))
            row = await cur.fetchone()
            return row[0] if row else None
        return await self._retry(q)

    # ---- worker leases ----

    async def acquire_lease(self, owner: str, pid: int, exclusive: bool = True) -> bool:
        """Take a worker lease. With exclusive=True (SQLite: one GPU worker), refuse while another is alive."""
        async def tx():
            now = time.time()
            if exclusive:
                cur = await self.db.execute(
                    "SELECT owner FROM leases WHERE owner<>? AND heartbeat_at>?", (owner, now - LEASE_TTL_S))
                if await cur.fetchone():
                    return False
                await self.db.execute("DELETE FROM leases WHERE owner<>?", (owner,))
            await self.db.execute(
                "INSERT INTO leases(owner, pid, state, heartbeat_at) VALUES(?,?,?,?) "
                "ON CONFLICT(owner) DO UPDATE SET pid=excluded.pid, state=excluded.state, "
                "heartbeat_at=excluded.heartbeat_at", (owner, pid, "loading", now))
            return True
        return await self._write(tx)

    async def heartbeat(self, owner: str, state: str) -> None:
        async def tx():
            await self.db.execute("UPDATE leases SET heartbeat_at=?, state=? WHERE owner=?",
                                  (time.time(), state, owner))
        await self._write(tx)

    async def release_lease(self, owner: str) -> None:
        async def tx():
            await self.db.execute("DELETE FROM leases WHERE owner=?", (owner,))
        await self._write(tx)

    async def workers(self) -> list[WorkerInfo]:
        async def q():
            cur = await self.db.execute("SELECT owner, state, heartbeat_at, pid FROM leases")
            return [WorkerInfo(r[0], r[1], r[2], r[3] or 0) for r in await cur.fetchall()]
        return await self._retry(q)

    # ---- meta, ETA measurements, fairness bookkeeping ----

    async def _get_meta(self, key: str, default: Any = None) -> Any:
        cur = await self.db.execute("SELECT value FROM meta WHERE key=?", (key,))
        row = await cur.fetchone()
        return json.loads(row[0]) if row else default

    async def wait_for_change(self, timeout: float) -> bool:
        """Return as soon as another connection (the other process) commits, or after `timeout`; True if one
        did. SQLite's `data_version` moves on every such commit: reading it is a cheap query, every
        CHANGE_POLL_S, where a job and its rows would cost a read each time."""
        deadline = time.monotonic() + timeout
        while True:
            version = await self._data_version()
            if self._seen_version is not None and version != self._seen_version:
                self._seen_version = version
                return True
            self._seen_version = version
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(CHANGE_POLL_S, left))

    async def _data_version(self) -> int:
        cur = await self.db.execute("PRAGMA data_version")
        return int((await _one_row(cur))[0])

    async def get_meta(self, key: str, default: Any = None) -> Any:
        return await self._retry(self._get_meta, key, default)

    async def set_meta(self, key: str, value: Any) -> None:
        async def tx():
            await self.db.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, json.dumps(value)))
            # A settings change (pause, bans) is a change front ends may want to notice.
            await self._next_seq()
        await self._write(tx)

    async def record_step_time(self, key: str, step_s: float, overhead_s: float) -> None:
        async def tx():
            cur = await self.db.execute("SELECT samples FROM step_times WHERE key=?", (key,))
            row = await cur.fetchone()
            samples = json.loads(row[0]) if row else []
            samples = (samples + [[step_s, overhead_s]])[-STEP_SAMPLES:]
            await self.db.execute(
                "INSERT INTO step_times(key, samples) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET samples=excluded.samples", (key, json.dumps(samples)))
        await self._write(tx)

    async def step_times(self) -> dict[str, tuple[float, float]]:
        """Median (seconds per step, seconds outside the steps) per shape key."""
        async def q():
            cur = await self.db.execute("SELECT key, samples FROM step_times")
            out = {}
            for key, raw in await cur.fetchall():
                samples = json.loads(raw)
                out[key] = (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
            return out
        return await self._retry(q)

    async def _last_served(self) -> dict[str, float]:
        cur = await self.db.execute("SELECT user, at FROM served")
        return {r[0]: r[1] for r in await cur.fetchall()}

    async def last_served(self) -> dict[str, float]:
        return await self._retry(self._last_served)

    async def hour_usage(self, user: str) -> tuple[int, float | None]:
        async def q():
            cur = await self.db.execute("SELECT COUNT(*), MIN(at) FROM submissions WHERE user=? AND at>?",
                                        (user, time.time() - HOUR_S))
            count, oldest = await _one_row(cur)
            return int(count), oldest
        return await self._retry(q)

    # ---- bot replicas: holds, notes, turns ----

    async def hold(self, names: Collection[str], owner: str, ttl_s: float) -> list[str]:
        """Take or renew each named hold that is free, expired or already `owner`'s; returns those now held."""
        async def tx():
            now = time.time()
            held = []
            for name in names:
                cur = await self.db.execute(
                    "INSERT INTO holds(name, owner, expires_at) VALUES(?, ?, ?) ON CONFLICT(name) DO UPDATE "
                    "SET owner=excluded.owner, expires_at=excluded.expires_at "
                    "WHERE holds.owner=excluded.owner OR holds.expires_at<=? RETURNING name",
                    (name, owner, now + ttl_s, now))
                if await cur.fetchone():
                    held.append(name)
            return held
        return await self._write(tx) if names else []

    async def release(self, names: Collection[str], owner: str) -> None:
        async def tx():
            await self.db.executemany("DELETE FROM holds WHERE name=? AND owner=?", [(n, owner) for n in names])
        if names:
            await self._write(tx)

    async def holders(self, prefix: str) -> dict[str, Hold]:
        async def q():
            now = time.time()
            cur = await self.db.execute("SELECT name, owner, expires_at FROM holds WHERE substr(name, 1, ?)=?",
                                        (len(prefix), prefix))
            return {n: Hold(o, e, e > now) for n, o, e in await cur.fetchall()}
        return await self._retry(q)

    async def put_note(self, key: str, value: str, ttl_s: float, only_new: bool = False) -> bool:
        """Keep `value` under `key` for `ttl_s`; with only_new, only if no live note has that key (True if
        written)."""
        async def tx():
            now = time.time()
            await self.db.execute("DELETE FROM notes WHERE expires_at<=?", (now,))   # notes are few and short
            return await self._set_note(key, value, now + ttl_s, only_new)
        return await self._write(tx)

    async def _set_note(self, key: str, value: str, expires_at: float, only_new: bool = False) -> bool:
        """Write a note (with only_new, only where no note has that key); True if written."""
        conflict = "NOTHING" if only_new else "UPDATE SET value=excluded.value, expires_at=excluded.expires_at"
        cur = await self.db.execute(f"INSERT INTO notes(key, value, expires_at) VALUES(?, ?, ?) "
                                    f"ON CONFLICT(key) DO {conflict} RETURNING key", (key, value, expires_at))
        return await cur.fetchone() is not None

    async def take_note(self, key: str) -> str | None:
        async def tx():
            cur = await self.db.execute("DELETE FROM notes WHERE key=? RETURNING value, expires_at", (key,))
            row = await cur.fetchone()
            return row[0] if row and row[1] > time.time() else None
        return await self._write(tx)

    async def next_turn(self, key: str, interval_s: float) -> float:
        """Reserve the next turn of `key` (turns at least `interval_s` apart, across processes); returns how
        long to wait for it."""
        async def tx():
            now = time.time()
            at = max(now, await self._turn_at(key, now))
            await self._set_turn(key, at + interval_s)
            return at - now
        return await self._write(tx)

    async def push_turn(self, key: str, delay_s: float) -> None:
        async def tx():
            now = time.time()
            await self._set_turn(key, max(now + delay_s, await self._turn_at(key, now)))
        await self._write(tx)

    async def _turn_at(self, key: str, now: float) -> float:
        """When the next turn of `key` is free (0 when none is reserved)."""
        cur = await self.db.execute("SELECT value FROM notes WHERE key=? AND expires_at>?", (f"turn:{key}", now))
        row = await cur.fetchone()
        return float(row[0]) if row else 0.0

    async def _set_turn(self, key: str, at: float) -> None:
        await self._set_note(f"turn:{key}", repr(at), at + TURN_KEEP_S)
