"""Redis job store: the same `Store` as SQLiteStore, shared by front ends and workers on several machines.

Keys (prefix "animabot:" by default; `RedisStore(url, prefix=...)` or `redis://host/0?prefix=name:`):

    job:<id>            hash, one field per Job attribute, each value JSON: always the job's full state
    queue:<user>        sorted set of the user's waiting job ids, scored by created_at (FIFO per user; a job
                        put back after its worker died regains its place)
    users               set of users with waiting jobs
    running             set of running job ids
    active:<user>       set of the user's waiting and running job ids (the per-user limit)
    submissions:<user>  sorted set of the user's submissions in the last hour (the hourly limit)
    jobs, user_jobs:<user>  sorted sets of every job id by created_at (listing)
    served              hash user -> when a worker last took one of their jobs (fair order)
    seq                 change counter (INCR); changes: sorted set job id -> seq of its last write
    lease:<owner>       hash pid, state, heartbeat_at, job; leases: set of owners
    preview:<id>        "<step>:<base64 GIF>" of a rendering job, expiring (previews are small: ~256 px)
    messages            hash front end's message key -> job id (a result or status message's job)
    meta                hash key -> JSON; step:<shape> list of [step_s, overhead_s]; step_keys: set
    hold:<name>         "<expires_at> <owner>": a bot replica's hold (kept after it expires, until taken or
                        released, so a dead replica's holds can be found)
    note:<key>          a short-lived note (expiring); turn:<key> the next free turn of a shared pacer

Every state change runs in one Lua script, so the indexes above never disagree with the job hashes, and a
claim takes the next job in `fair_order` however many workers ask at once. Claims, heartbeats and lease
expiry use the Redis server's clock, so machines with skewed clocks still agree on order and on who is dead.

Each job write is also published on the channel `<prefix>events` as JSON {"id", "seq", "state", "step"};
`RedisStore.notifications()` yields them. Front ends may use it to wake their watcher instead of waiting
for the next `changes_since` poll; polling alone is complete, the channel only cuts latency.

The scripts name keys that depend on stored data (a user's queue), so this store needs a single Redis
server (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import base64
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Collection, Iterable
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.jobs import Job, JobState
from engine.queue.store import (
    HOUR_S,
    LEASE_TTL_S,
    STEP_SAMPLES,
    Hold,
    Limits,
    WorkerInfo,
    fair_order,
    recovery_fields,
    refusal_error,
)

DEFAULT_PREFIX = "animabot:"
LEASE_FORGET_S = 3600.0     # a lease dead this long is dropped from the worker list
FETCH_CHUNK = 500           # job hashes read per round trip when listing
PREVIEW_TTL_S = 3600        # a preview outlives its job by at most this (a worker that died mid-render)
SOCKET_TIMEOUT_S = 5.0      # a call, or a connection, that gets no answer within this fails

# Shared by every script. ARGV[1] is always the key prefix.
_PRELUDE = r"""
local P = ARGV[1]
local QUEUED, RUNNING, CANCELLED = '"queued"', '"running"', '"cancelled"'
local HOLD_KEEP_S = 86400   -- an expired hold nobody took is dropped after a day
local FINAL = {['"done"'] = true, ['"failed"'] = true, ['"cancelled"'] = true}

local function jkey(id) return P .. 'job:' .. id end

local function server_now()
  local t = redis.call('TIME')
  return string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
end

local function job_reply(id) return {'ok', redis.call('HGETALL', jkey(id))} end

-- Keep the queue, running and per-user indexes in step with a job's state change (new = nil: deleted).
local function move(id, old, new)
  if old == new then return end
  local user = cjson.decode(redis.call('HGET', jkey(id), 'user'))
  local queue = P .. 'queue:' .. user
  if old == QUEUED then
    redis.call('ZREM', queue, id)
    if redis.call('ZCARD', queue) == 0 then redis.call('SREM', P .. 'users', user) end
  elseif old == RUNNING then
    redis.call('SREM', P .. 'running', id)
  end
  if new == QUEUED then
    redis.call('ZADD', queue, redis.call('HGET', jkey(id), 'created_at'), id)
    redis.call('SADD', P .. 'users', user)
  elseif new == RUNNING then
    redis.call('SADD', P .. 'running', id)
  end
  if new == QUEUED or new == RUNNING then
    redis.call('SADD', P .. 'active:' .. user, id)
  else
    redis.call('SREM', P .. 'active:' .. user, id)
  end
end

-- Set the JSON field/value pairs ARGV[first..]; returns the state among them, if any.
local function set_fields(id, first)
  local state = nil
  for i = first, #ARGV, 2 do
    redis.call('HSET', jkey(id), ARGV[i], ARGV[i + 1])
    if ARGV[i] == 'state' then state = ARGV[i + 1] end
  end
  return state
end

-- Every job write: the next seq on the job and in the change log, and a notification.
local function touch(id)
  local key = jkey(id)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('HSET', key, 'seq', seq)
  redis.call('ZADD', P .. 'changes', seq, id)
  redis.call('PUBLISH', P .. 'events', cjson.encode({
    id = id, seq = seq, state = cjson.decode(redis.call('HGET', key, 'state')),
    step = tonumber(redis.call('HGET', key, 'step')) or 0}))
end
"""

# ARGV: prefix, id, user, created_at, now, per_user, max_length, jobs_per_hour, field, value, ...
_SUBMIT = r"""
local id, user, created, now = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local state = redis.call('HGET', jkey(id), 'state')
if (state == QUEUED or state == RUNNING) and cjson.decode(redis.call('HGET', jkey(id), 'user')) == user then
  return job_reply(id)   -- a submit sent again after its reply was lost (a dropped connection): it is in
end
local per_user, max_length, per_hour = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if max_length > 0 then
  local waiting = 0
  for _, u in ipairs(redis.call('SMEMBERS', P .. 'users')) do
    waiting = waiting + redis.call('ZCARD', P .. 'queue:' .. u)
  end
  if waiting >= max_length then return {'queue_full'} end
end
if per_user > 0 and redis.call('SCARD', P .. 'active:' .. user) >= per_user then return {'user_limit'} end
local subs = P .. 'submissions:' .. user
redis.call('ZREMRANGEBYSCORE', subs, '-inf', string.format('%.6f', now - 3600))
if per_hour > 0 and redis.call('ZCARD', subs) >= per_hour then
  return {'rate_limited', redis.call('ZRANGE', subs, 0, 0, 'WITHSCORES')[2]}
end
redis.call('ZADD', subs, ARGV[5], id)
redis.call('EXPIRE', subs, 3600)
local key = jkey(id)
if redis.call('EXISTS', key) == 1 then
  move(id, redis.call('HGET', key, 'state'), nil)
  redis.call('DEL', key)
end
set_fields(id, 9)
redis.call('HSET', key, 'state', QUEUED)
move(id, nil, QUEUED)
redis.call('ZADD', P .. 'jobs', created, id)
redis.call('ZADD', P .. 'user_jobs:' .. user, created, id)
touch(id)
return job_reply(id)
"""

# ARGV: prefix, id, user, created_at, field, value, ... A job kept as it is, outside the queue (a refusal).
_RECORD = r"""
local id, user, created = ARGV[2], ARGV[3], ARGV[4]
set_fields(id, 5)
redis.call('ZADD', P .. 'jobs', created, id)
redis.call('ZADD', P .. 'user_jobs:' .. user, created, id)
touch(id)
return job_reply(id)
"""

# ARGV: prefix, worker (JSON), presets (a JSON list of JSON-encoded preset names, or "" for any). Round-robin
# across users: least recently served first (never served = 0), then the user whose oldest waiting job is
# oldest; FIFO per user. The same order as store.fair_order. With presets, each user's first job of those
# presets stands for the user (a worker takes only what its model renders).
_CLAIM = r"""
if redis.call('HGET', P .. 'meta', 'paused') == 'true' then return {'none'} end
local wanted = nil
if ARGV[3] ~= '' then
  wanted = {}
  for _, name in ipairs(cjson.decode(ARGV[3])) do wanted[name] = true end
end
local function first_wanted(u)
  if wanted == nil then return redis.call('ZRANGE', P .. 'queue:' .. u, 0, 0, 'WITHSCORES') end
  local all = redis.call('ZRANGE', P .. 'queue:' .. u, 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    if wanted[redis.call('HGET', jkey(all[i]), 'preset') or ''] then return {all[i], all[i + 1]} end
  end
  return {}
end
local best_user, best_id, best_served, best_created
for _, u in ipairs(redis.call('SMEMBERS', P .. 'users')) do
  local head = first_wanted(u)
  if #head == 0 then
    if redis.call('ZCARD', P .. 'queue:' .. u) == 0 then redis.call('SREM', P .. 'users', u) end
  else
    local served = tonumber(redis.call('HGET', P .. 'served', u) or '0')
    local created = tonumber(head[2])
    if best_user == nil or served < best_served
        or (served == best_served and (created < best_created
            or (created == best_created and head[1] < best_id))) then
      best_user, best_id, best_served, best_created = u, head[1], served, created
    end
  end
end
if best_user == nil then return {'none'} end
local id, key, now = best_id, jkey(best_id), server_now()
move(id, QUEUED, RUNNING)
redis.call('HSET', key, 'state', RUNNING, 'worker', ARGV[2], 'started_at', now, 'step', '0')
redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', P .. 'served', best_user, now)
local worker = cjson.decode(ARGV[2])
if redis.call('EXISTS', P .. 'lease:' .. worker) == 1 then
  redis.call('HSET', P .. 'lease:' .. worker, 'job', id)
end
touch(id)
return job_reply(id)
"""

# ARGV: prefix, id, field, value, ...
_UPDATE = r"""
local id = ARGV[2]
if redis.call('EXISTS', jkey(id)) == 0 then return {'missing'} end
local old = redis.call('HGET', jkey(id), 'state')
move(id, old, set_fields(id, 3) or old)
touch(id)
return job_reply(id)
"""

# ARGV: prefix, id, state (JSON), finished_at (JSON), field, value, ...
_FINISH = r"""
local id = ARGV[2]
if redis.call('EXISTS', jkey(id)) == 0 then return {'missing'} end
local old = redis.call('HGET', jkey(id), 'state')
if FINAL[old] then return job_reply(id) end
set_fields(id, 5)
redis.call('HSET', jkey(id), 'state', ARGV[3], 'finished_at', ARGV[4])
move(id, old, ARGV[3])
touch(id)
return job_reply(id)
"""

# ARGV: prefix, id, step, data (base64), ttl_s. Only while the job renders; then the job announces it.
_PREVIEW = r"""
local id, key = ARGV[2], jkey(ARGV[2])
if redis.call('HGET', key, 'state') ~= RUNNING then return 'gone' end
redis.call('SET', P .. 'preview:' .. id, ARGV[3] .. ':' .. ARGV[4], 'EX', tonumber(ARGV[5]))
redis.call('HSET', key, 'preview_step', ARGV[3])
touch(id)
return 'ok'
"""

# ARGV: prefix, id, now (JSON)
_CANCEL = r"""
local id = ARGV[2]
if redis.call('EXISTS', jkey(id)) == 0 then return {'missing'} end
local old = redis.call('HGET', jkey(id), 'state')
if old == QUEUED then
  redis.call('HSET', jkey(id), 'state', CANCELLED, 'finished_at', ARGV[3], 'cancel_requested', 'true')
  move(id, old, CANCELLED)
elseif old == RUNNING then
  redis.call('HSET', jkey(id), 'cancel_requested', 'true')
else
  return job_reply(id)
end
touch(id)
return job_reply(id)
"""

# ARGV: prefix, id, seq seen, check lease ('1'/'0'), lease ttl, field, value, ...
# Applies the recovery only if the job is unchanged since it was read and (when asked) its worker is dead:
# no heartbeat within the ttl, or a live worker that has since claimed another job (its claim reply was lost).
_RECOVER = r"""
local id, key = ARGV[2], jkey(ARGV[2])
if redis.call('HGET', key, 'seq') ~= ARGV[3] or redis.call('HGET', key, 'state') ~= RUNNING then
  return {'changed'}
end
if ARGV[4] == '1' then
  local lease = P .. 'lease:' .. cjson.decode(redis.call('HGET', key, 'worker'))
  local beat = redis.call('HGET', lease, 'heartbeat_at')
  local holding = redis.call('HGET', lease, 'job')
  if beat and tonumber(server_now()) - tonumber(beat) < tonumber(ARGV[5]) and (not holding or holding == id) then
    return {'alive'}
  end
end
move(id, RUNNING, set_fields(id, 6) or RUNNING)
touch(id)
return job_reply(id)
"""

# ARGV: prefix, id, ...
_DELETE = r"""
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = jkey(id)
  if redis.call('EXISTS', key) == 1 then
    local user = cjson.decode(redis.call('HGET', key, 'user'))
    move(id, redis.call('HGET', key, 'state'), nil)
    redis.call('DEL', key)
    redis.call('ZREM', P .. 'changes', id)
    redis.call('ZREM', P .. 'jobs', id)
    redis.call('ZREM', P .. 'user_jobs:' .. user, id)
    redis.call('DEL', P .. 'preview:' .. id)
  end
end
return 'ok'
"""

# ARGV: prefix, seq. Read in one step, so the returned seq never skips a change made meanwhile.
_CHANGES = r"""
local rows = redis.call('ZRANGEBYSCORE', P .. 'changes', '(' .. ARGV[2], '+inf', 'WITHSCORES')
-- The store-wide counter too: a settings change (pause) bumps it without touching a job.
local top = math.max(tonumber(ARGV[2]), tonumber(redis.call('GET', P .. 'seq') or '0'))
local out = {''}
for i = 1, #rows, 2 do
  top = math.max(top, tonumber(rows[i + 1]))
  table.insert(out, redis.call('HGETALL', jkey(rows[i])))
end
out[1] = string.format('%d', top)
return out
"""

# ARGV: prefix. Every waiting job and the served times, read in one step.
_QUEUED = r"""
local out = {redis.call('HGETALL', P .. 'served')}
for _, u in ipairs(redis.call('SMEMBERS', P .. 'users')) do
  for _, id in ipairs(redis.call('ZRANGE', P .. 'queue:' .. u, 0, -1)) do
    table.insert(out, redis.call('HGETALL', jkey(id)))
  end
end
return out
"""

# ARGV: prefix, owner, pid, exclusive ('1'/'0'), ttl
_ACQUIRE = r"""
local owner, now = ARGV[2], server_now()
local owners = redis.call('SMEMBERS', P .. 'leases')
if ARGV[4] == '1' then
  for _, o in ipairs(owners) do
    local beat = redis.call('HGET', P .. 'lease:' .. o, 'heartbeat_at')
    if o ~= owner and beat and tonumber(now) - tonumber(beat) < tonumber(ARGV[5]) then return 0 end
  end
  for _, o in ipairs(owners) do
    if o ~= owner then
      redis.call('DEL', P .. 'lease:' .. o)
      redis.call('SREM', P .. 'leases', o)
    end
  end
end
redis.call('DEL', P .. 'lease:' .. owner)
redis.call('HSET', P .. 'lease:' .. owner, 'pid', ARGV[3], 'state', 'loading', 'heartbeat_at', now)
redis.call('SADD', P .. 'leases', owner)
return 1
"""

# ARGV: prefix, owner, state. Like SQLite's UPDATE: a released or forgotten lease is not revived.
_HEARTBEAT = r"""
local lease = P .. 'lease:' .. ARGV[2]
if redis.call('EXISTS', lease) == 1 then
  redis.call('HSET', lease, 'state', ARGV[3], 'heartbeat_at', server_now())
end
return 'ok'
"""

# ARGV: prefix, seconds. Drops leases whose last heartbeat is older than that.
_FORGET_LEASES = r"""
local now = tonumber(server_now())
for _, o in ipairs(redis.call('SMEMBERS', P .. 'leases')) do
  local beat = redis.call('HGET', P .. 'lease:' .. o, 'heartbeat_at')
  if not beat or now - tonumber(beat) > tonumber(ARGV[2]) then
    redis.call('DEL', P .. 'lease:' .. o)
    redis.call('SREM', P .. 'leases', o)
  end
end
return 'ok'
"""

# ARGV: prefix, owner, ttl_s, name, ... Takes or renews each hold that is free, expired or the owner's.
_HOLD = r"""
local owner, now = ARGV[2], tonumber(server_now())
local ttl = tonumber(ARGV[3])
local held = {}
for i = 4, #ARGV do
  local key = P .. 'hold:' .. ARGV[i]
  local cur = redis.call('GET', key)
  local until_at, who = nil, nil
  if cur then until_at, who = string.match(cur, '^(%S+) (.*)$') end
  if not cur or who == owner or tonumber(until_at) <= now then
    redis.call('SET', key, string.format('%.6f', now + ttl) .. ' ' .. owner, 'EX', HOLD_KEEP_S)
    held[#held + 1] = ARGV[i]
  end
end
return held
"""

# ARGV: prefix, owner, name, ...
_RELEASE = r"""
for i = 3, #ARGV do
  local key = P .. 'hold:' .. ARGV[i]
  local cur = redis.call('GET', key)
  if cur and string.match(cur, '^%S+ (.*)$') == ARGV[2] then redis.call('DEL', key) end
end
return 'ok'
"""

# ARGV: prefix, key, interval_s (next) or delay_s (push), mode. Returns the wait before the reserved turn.
_TURN = r"""
local key, now, span = P .. 'turn:' .. ARGV[2], tonumber(server_now()), tonumber(ARGV[3])
local nxt = tonumber(redis.call('GET', key) or '0')
local at, wait = math.max(now, nxt), 0
if ARGV[4] == 'next' then
  wait = at - now
  at = at + span
else
  at = math.max(nxt, now + span)
end
redis.call('SET', key, string.format('%.6f', at), 'PX', math.ceil((at - now) * 1000) + 60000)
return string.format('%.6f', wait)
"""

_SCRIPTS = {
    "submit": _SUBMIT, "record": _RECORD, "claim": _CLAIM, "update": _UPDATE, "finish": _FINISH, "cancel": _CANCEL,
    "recover": _RECOVER, "delete": _DELETE, "changes": _CHANGES, "queued": _QUEUED, "acquire": _ACQUIRE,
    "heartbeat": _HEARTBEAT, "forget_leases": _FORGET_LEASES, "preview": _PREVIEW, "hold": _HOLD,
    "release": _RELEASE, "turn": _TURN, "now": "return server_now()",
}


def _enc(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _pairs(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        if k not in Job.__dataclass_fields__:
            raise AttributeError(f"Job has no field {k!r}")
        out += [k, _enc(v)]
    return out


def _job(flat: list[str]) -> Job | None:
    """A job from a flat HGETALL reply (field, value, ...); None for a missing hash."""
    if not flat:
        return None
    return Job.from_dict({flat[i]: json.loads(flat[i + 1]) for i in range(0, len(flat), 2)})


def _ok_job(flat: list[str]) -> Job:
    """The job of an 'ok' script reply: the script read the hash in the same atomic step that found or wrote
    it, so it is never missing."""
    job = _job(flat)
    assert job is not None
    return job


def _split_prefix(url: str, prefix: str | None) -> tuple[str, str]:
    """Take an optional `prefix` query parameter off the URL (redis-py refuses unknown ones)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = [v for k, v in query if k == "prefix"]
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix or (from_url[-1] if from_url else DEFAULT_PREFIX)


class RedisStore:
    """Jobs, leases and measurements in one Redis server, shared by any number of workers and front ends."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str | None = None,
                 lease_ttl_s: float = LEASE_TTL_S):
        self.url, self.prefix = _split_prefix(url, prefix)
        self.lease_ttl_s = lease_ttl_s
        self._r: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._changes: Any = None   # a subscription to the events channel, for wait_for_change

    # ---- connection ----

    async def open(self) -> None:
        await self.close()   # a try after a failed one starts clean
        # A server that stops answering (hung, or a network partition) fails a call within the timeouts rather
        # than hanging it, and a call on a dead connection is tried once more on a new one (a restarted
        # server); longer outages are waited out above the store (engine.queue.resilient). The URL may set
        # other timeouts (`?socket_timeout=1&socket_connect_timeout=1`).
        self._r = aioredis.from_url(self.url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S,
                                    socket_connect_timeout=SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 1))
        await self._r.ping()
        self._scripts = {name: self._r.register_script(_PRELUDE + body) for name, body in _SCRIPTS.items()}

    async def server_id(self) -> str:
        """The Redis server process's run id: another one after a restart, whose data may be older than what
        was read before (`ResilientStore.notice_restart`)."""
        info = await self.redis.info("server")
        return str(info.get("run_id", ""))

    async def close(self) -> None:
        await self._drop_changes()
        if self._r is not None:
            r, self._r = self._r, None
            await r.aclose()

    # The client decodes replies (decode_responses=True), so keys and values read back are str; redis-py types
    # them `bytes | str` as it cannot know that, hence the casts on what is read directly.
    @property
    def redis(self) -> aioredis.Redis:
        if self._r is None:
            raise RuntimeError("store is not open")
        return self._r

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _run(self, name: str, *args: Any) -> Any:
        if self._r is None:
            raise RuntimeError("store is not open")
        return await self._scripts[name](keys=[], args=[self.prefix, *map(str, args)])

    async def _job_reply(self, name: str, job_id: str, *args: Any) -> Job:
        reply = await self._run(name, job_id, *args)
        if reply[0] == "missing":
            raise KeyError(job_id)
        return _ok_job(reply[1])

    async def _fetch(self, ids: list[str]) -> list[Job]:
        """Jobs by id, in that order; ids deleted meanwhile are skipped."""
        out: list[Job] = []
        for i in range(0, len(ids), FETCH_CHUNK):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids[i:i + FETCH_CHUNK]:
                pipe.hgetall(self.key("job", job_id))
            for raw in await pipe.execute():
                if raw:
                    out.append(Job.from_dict({k: json.loads(v) for k, v in raw.items()}))
        return out

    # ---- jobs ----

    async def submit(self, job: Job, limits: Limits) -> Job:
        job.state = JobState.QUEUED
        fields = job.to_dict()
        fields.pop("state")
        reply = await self._run(
            "submit", job.id, job.user, repr(float(job.created_at)), repr(time.time()),
            limits.per_user, limits.max_length, limits.jobs_per_hour, *_pairs(fields))
        if reply[0] != "ok":
            raise refusal_error(reply[0], limits, float(reply[1]) if len(reply) > 1 else None)
        return _ok_job(reply[1])

    async def record(self, job: Job) -> Job:
        reply = await self._run("record", job.id, job.user, repr(float(job.created_at)), *_pairs(job.to_dict()))
        return _ok_job(reply[1])

    async def get(self, job_id: str) -> Job | None:
        raw = cast("dict[str, str]", await self.redis.hgetall(self.key("job", job_id)))
        return Job.from_dict({k: json.loads(v) for k, v in raw.items()}) if raw else None

    async def update(self, job_id: str, **fields: Any) -> Job:
        return await self._job_reply("update", job_id, *_pairs(fields))

    async def claim(self, worker: str, presets: Collection[str] | None = None) -> Job | None:
        """Atomically take the next job in fair order across every worker (of the given presets only: those
        the worker's model renders), unless the queue is paused."""
        wanted = json.dumps([_enc(name) for name in sorted(presets)]) if presets is not None else ""
        reply = await self._run("claim", _enc(worker), wanted)
        return _job(reply[1]) if reply[0] == "ok" else None

    async def finish(self, job_id: str, state: JobState, **fields: Any) -> Job:
        """Move a job to a final state once; a job already final keeps its first outcome."""
        return await self._job_reply("finish", job_id, _enc(state), _enc(time.time()), *_pairs(fields))

    async def cancel(self, job_id: str) -> Job:
        """A queued job leaves the queue now; a running one is flagged, and the worker holding it (on any
        machine) sees the flag at its next progress poll and stops at a step boundary."""
        return await self._job_reply("cancel", job_id, _enc(time.time()))

    async def queued(self) -> list[Job]:
        reply = await self._run("queued")
        served = {reply[0][i]: float(reply[0][i + 1]) for i in range(0, len(reply[0]), 2)}
        return fair_order([j for j in map(_job, reply[1:]) if j is not None], served)

    async def running(self) -> list[Job]:
        jobs = await self._fetch(sorted(cast("set[str]", await self.redis.smembers(self.key("running")))))
        return [j for j in jobs if j.state == JobState.RUNNING]

    async def jobs(self, user: str | None = None, states: Iterable[JobState] | None = None,
                   limit: int = 1000) -> list[Job]:
        index = self.key("user_jobs", user) if user is not None else self.key("jobs")
        wanted = {JobState(s) for s in states} if states is not None else None
        out: list[Job] = []
        start = 0
        while len(out) < limit:
            ids = cast("list[str]", await self.redis.zrange(index, start, start + FETCH_CHUNK - 1))
            if not ids:
                break
            start += len(ids)
            out += [j for j in await self._fetch(ids) if wanted is None or j.state in wanted]
        return sorted(out[:limit], key=lambda j: (j.created_at, j.id))

    async def changes_since(self, seq: int) -> tuple[list[Job], int]:
        reply = await self._run("changes", int(seq))
        return [j for j in map(_job, reply[1:]) if j is not None], int(reply[0])

    async def recover(self, dead_worker: str | None = None) -> list[Job]:
        """Jobs whose worker died: retried once, then failed. Returns the jobs it touched.

        dead_worker=None: only jobs whose worker's lease has expired (no heartbeat for lease_ttl_s), or whose
        live worker has moved on to another job; jobs of live workers are never touched, so every worker may
        call this periodically. dead_worker=name: every running job of that worker.
        """
        touched = []
        for job in await self.running():
            if dead_worker is not None and job.worker != dead_worker:
                continue
            if (done := await self._recover_one(job, check_lease=dead_worker is None)) is not None:
                touched.append(done)
        await self._run("forget_leases", LEASE_FORGET_S)
        return touched

    async def _recover_one(self, job: Job, check_lease: bool, tries: int = 3) -> Job | None:
        for _ in range(tries):
            reply = await self._run("recover", job.id, job.seq, "1" if check_lease else "0", self.lease_ttl_s,
                                    *_pairs(recovery_fields(job)))
            if reply[0] == "ok":
                return _job(reply[1])
            if reply[0] == "alive":
                return None
            # Changed since read (progress, a cancel): decide again on the current state.
            latest = await self.get(job.id)
            if latest is None or latest.state != JobState.RUNNING or latest.worker != job.worker:
                return None
            job = latest
        return None

    async def delete_jobs(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        for i in range(0, len(ids), FETCH_CHUNK):
            await self._run("delete", *ids[i:i + FETCH_CHUNK])

    # ---- previews ----

    async def put_preview(self, job_id: str, step: int, data: bytes) -> None:
        await self._run("preview", job_id, int(step), base64.b64encode(data).decode("ascii"), PREVIEW_TTL_S)

    async def get_preview(self, job_id: str) -> tuple[int, bytes] | None:
        raw = cast("str | None", await self.redis.get(self.key("preview", job_id)))
        if not raw:
            return None
        step, _, data = raw.partition(":")
        return int(step), base64.b64decode(data)

    async def drop_preview(self, job_id: str) -> None:
        await self.redis.delete(self.key("preview", job_id))

    # ---- chat messages -> jobs ----

    async def link_message(self, key: str, job_id: str) -> None:
        await self.redis.hset(self.key("messages"), key, job_id)

    async def message_job(self, key: str) -> str | None:
        return cast("str | None", await self.redis.hget(self.key("messages"), key))

    async def wait_for_change(self, timeout: float) -> bool:
        """Return as soon as any job is written (the events channel every write publishes on), or after
        `timeout`; True if one was."""
        try:
            if self._changes is None:
                self._changes = self.redis.pubsub(ignore_subscribe_messages=True)
                await self._changes.subscribe(self.key("events"))
            message = await self._changes.get_message(timeout=timeout)
            changed = message is not None
            while message is not None:   # several writes at once wake the waiter once
                message = await self._changes.get_message(timeout=0)
        except (RedisConnectionError, RedisTimeoutError):
            await self._drop_changes()   # the next call subscribes again, on a new connection
            raise
        return changed

    async def _drop_changes(self) -> None:
        changes, self._changes = self._changes, None
        if changes is not None:
            with contextlib.suppress(Exception):
                await changes.aclose()

    async def notifications(self) -> AsyncIterator[dict[str, Any]]:
        """Job writes as they happen: {"id", "seq", "state", "step"} from the `<prefix>events` channel."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.key("events"))
        try:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    yield json.loads(message["data"])
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()

    # ---- worker leases ----

    async def acquire_lease(self, owner: str, pid: int, exclusive: bool = False) -> bool:
        """Take a worker lease. Several workers share a Redis store; exclusive=True refuses while another lives."""
        return bool(await self._run("acquire", owner, int(pid), "1" if exclusive else "0", self.lease_ttl_s))

    async def heartbeat(self, owner: str, state: str) -> None:
        await self._run("heartbeat", owner, state)

    async def release_lease(self, owner: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key("lease", owner))
        pipe.srem(self.key("leases"), owner)
        await pipe.execute()

    async def workers(self) -> list[WorkerInfo]:
        owners = sorted(cast("set[str]", await self.redis.smembers(self.key("leases"))))
        pipe = self.redis.pipeline(transaction=False)
        for owner in owners:
            pipe.hgetall(self.key("lease", owner))
        return [WorkerInfo(owner, raw.get("state", ""), float(raw["heartbeat_at"]), int(raw.get("pid") or 0))
                for owner, raw in zip(owners, await pipe.execute(), strict=True) if raw.get("heartbeat_at")]

    # ---- meta, ETA measurements, fairness bookkeeping ----

    async def get_meta(self, key: str, default: Any = None) -> Any:
        if key == "seq":  # the change counter lives in its own key (INCR), read as SQLite's meta 'seq'
            value = await self.redis.get(self.key("seq"))
            return int(value) if value is not None else default
        raw = await self.redis.hget(self.key("meta"), key)
        return json.loads(raw) if raw is not None else default

    async def set_meta(self, key: str, value: Any) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key("meta"), key, _enc(value))
        pipe.incr(self.key("seq"))  # a settings change (pause, bans) is a change front ends may notice
        await pipe.execute()

    async def record_step_time(self, key: str, step_s: float, overhead_s: float) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(self.key("step", key), _enc([step_s, overhead_s]))
        pipe.ltrim(self.key("step", key), -STEP_SAMPLES, -1)
        pipe.sadd(self.key("step_keys"), key)
        await pipe.execute()

    async def step_times(self) -> dict[str, tuple[float, float]]:
        """Median (seconds per step, seconds outside the steps) per shape key."""
        keys = sorted(cast("set[str]", await self.redis.smembers(self.key("step_keys"))))
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(self.key("step", key), 0, -1)
        out = {}
        for key, raw in zip(keys, await pipe.execute(), strict=True):
            samples = [json.loads(s) for s in raw]
            if samples:
                out[key] = (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
        return out

    async def last_served(self) -> dict[str, float]:
        served = cast("dict[str, str]", await self.redis.hgetall(self.key("served")))
        return {u: float(t) for u, t in served.items()}

    async def hour_usage(self, user: str) -> tuple[int, float | None]:
        recent = cast("list[tuple[str, float]]", await self.redis.zrangebyscore(
            self.key("submissions", user), time.time() - HOUR_S, "+inf", withscores=True))
        return len(recent), (min(float(score) for _, score in recent) if recent else None)

    # ---- bot replicas: holds, notes, turns ----

    async def hold(self, names: Collection[str], owner: str, ttl_s: float) -> list[str]:
        """Take or renew each named hold that is free, expired or already `owner`'s; returns those now held."""
        return list(await self._run("hold", owner, ttl_s, *names)) if names else []

    async def release(self, names: Collection[str], owner: str) -> None:
        if names:
            await self._run("release", owner, *names)

    async def holders(self, prefix: str) -> dict[str, Hold]:
        start = len(self.key("hold", ""))
        keys = [k async for k in self.redis.scan_iter(match=self.key("hold", _glob_escape(prefix)) + "*", count=500)]
        if not keys:
            return {}
        now = float(await self._run("now"))
        out = {}
        for key, raw in zip(keys, await self.redis.mget(keys), strict=True):
            if raw:
                until, _, owner = cast(str, raw).partition(" ")
                out[cast(str, key)[start:]] = Hold(owner, float(until), float(until) > now)
        return out

    async def put_note(self, key: str, value: str, ttl_s: float, only_new: bool = False) -> bool:
        """Keep `value` under `key` for `ttl_s`; with only_new, only if no note has that key (True if written)."""
        return bool(await self.redis.set(self.key("note", key), value, px=max(1, int(ttl_s * 1000)), nx=only_new))

    async def take_note(self, key: str) -> str | None:
        return cast("str | None", await self.redis.getdel(self.key("note", key)))

    async def next_turn(self, key: str, interval_s: float) -> float:
        """Reserve the next turn of `key` (turns at least `interval_s` apart, across processes and machines, by
        the Redis server's clock); returns how long to wait for it."""
        return float(await self._run("turn", key, interval_s, "next"))

    async def push_turn(self, key: str, delay_s: float) -> None:
        await self._run("turn", key, delay_s, "push")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
