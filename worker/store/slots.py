"""Cluster-wide admission: upstream slots held as leases in Redis, submit pacing and a daily cap.

A slot is a member of the sorted set ``mjq:slots:<mode>`` (member = job id, score = lease expiry). Both
scripts first drop expired leases, so a crashed worker's slot comes back after ``slot_lease_s``. A job that
cannot be admitted is *parked* in the ledger (no worker, no broker message); when a slot frees,
``admit_next`` pops the best parked jobs and gives each a lease on its behalf before its task is re-sent, so
no newcomer can take it, and ``mjq:expected`` holds each until its task starts (see ``worker.jobs.admission``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import redis

from worker.settings import Settings

MODES = ("fast", "relax", "turbo")

_LUA_GATES = """
local P = 'mjq:'
local function global_gate(now, interval, cap, day)
  if redis.call('HGET', P .. 'breaker', 'tripped') == '1' then return 'breaker' end
  if interval > 0 then
    local nxt = tonumber(redis.call('GET', P .. 'pace') or '0')
    if now < nxt then return 'pacing' end
  end
  if cap > 0 then
    local used = tonumber(redis.call('GET', P .. 'daily:' .. day) or '0')
    if used >= cap then return 'daily_cap' end
  end
  return nil
end
local function take(skey, jid, now, lease, interval, cap, day)
  redis.call('ZADD', skey, now + lease, jid)
  if interval > 0 then redis.call('SET', P .. 'pace', tostring(now + interval)) end
  if cap > 0 then
    redis.call('INCR', P .. 'daily:' .. day)
    redis.call('EXPIRE', P .. 'daily:' .. day, 172800)
  end
end
"""

# ARGV: mode, job_id, slots, now, lease_s, interval_s, daily_cap, day, score
# Returns {1, 'admitted'|'held'} or {0, reason[, retry_at]}; reasons: breaker, paused, cancelled, slots, queue,
# pacing, daily_cap. A job refused by the breaker, its batch or the daily cap loses any lease it held.
# A job that already holds a lease submits again (a retry) only through the pacing gates, like any submit;
# refused by pacing, it keeps its lease and gets the time the pace allows (retry_at). The first submit of a
# job admitted by admit_next passes without them: admit_next already took its turn (``admit_token``).
_LUA_TRY_ADMIT = (
    _LUA_GATES
    + """
local mode, jid = ARGV[1], ARGV[2]
local n, now, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local interval, cap, day, score = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local skey = P .. 'slots:' .. mode
local b = redis.call('HGET', P .. 'job:' .. jid, 'batch_id')
if b and b ~= '' then
  local bst = redis.call('HGET', P .. 'batch:' .. b, 'status')
  if bst == 'paused' or bst == 'cancelled' then
    redis.call('ZREM', skey, jid)
    return {0, bst}
  end
end
if redis.call('HGET', P .. 'breaker', 'tripped') == '1' then
  redis.call('ZREM', skey, jid)
  return {0, 'breaker'}
end
redis.call('ZREMRANGEBYSCORE', skey, '-inf', now)
if redis.call('ZSCORE', skey, jid) then
  local jkey = P .. 'job:' .. jid
  if redis.call('HDEL', jkey, 'admit_token') == 1 then
    redis.call('ZADD', skey, 'XX', now + lease, jid)
    return {1, 'held'}
  end
  local held_why = global_gate(now, interval, cap, day)
  if held_why == 'pacing' then
    redis.call('ZADD', skey, 'XX', now + lease, jid)
    return {0, 'pacing', redis.call('GET', P .. 'pace')}
  end
  if held_why then
    redis.call('ZREM', skey, jid)
    return {0, held_why}
  end
  take(skey, jid, now, lease, interval, cap, day)
  return {1, 'held'}
end
if redis.call('ZCARD', skey) >= n then return {0, 'slots'} end
local head = redis.call('ZRANGE', P .. 'waiting:' .. mode, 0, 0, 'WITHSCORES')
if head[1] and head[1] ~= jid and tonumber(head[2]) < score then return {0, 'queue'} end
local why = global_gate(now, interval, cap, day)
if why then return {0, why} end
take(skey, jid, now, lease, interval, cap, day)
redis.call('ZREM', P .. 'waiting:' .. mode, jid)
redis.call('HDEL', P .. 'job:' .. jid, 'admit_token')
return {1, 'admitted'}
"""
)

# ARGV: mode, slots, now, lease_s, interval_s, daily_cap, day, max
# Pops the best parked jobs while slots and gates allow, leasing a slot to each and expecting its task to
# start before the lease ends (``expected``); returns their ids.
_LUA_ADMIT_NEXT = (
    _LUA_GATES
    + """
local mode = ARGV[1]
local n, now, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local interval, cap, day, max = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local skey = P .. 'slots:' .. mode
local wkey = P .. 'waiting:' .. mode
redis.call('ZREMRANGEBYSCORE', skey, '-inf', now)
local out = {}
while #out < max do
  if redis.call('ZCARD', skey) >= n then break end
  if global_gate(now, interval, cap, day) then break end
  local head = redis.call('ZPOPMIN', wkey)
  if not head[1] then break end
  local jid = head[1]
  if redis.call('HGET', P .. 'job:' .. jid, 'status') == 'queued' then
    take(skey, jid, now, lease, interval, cap, day)
    redis.call('HSET', P .. 'job:' .. jid, 'admit_token', '1')
    redis.call('ZADD', P .. 'expected', now + lease, jid)
    table.insert(out, jid)
    if interval > 0 then break end
  end
end
return out
"""
)


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str
    retry_at: float | None = None  # refused by pacing while holding a lease: the epoch second it may submit


class Slots:
    """Leased semaphores per speed mode plus the pacing gates, all evaluated inside Redis."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._try = client.register_script(_LUA_TRY_ADMIT)
        self._next = client.register_script(_LUA_ADMIT_NEXT)

    def _common(self, now: float) -> tuple[float, int, str]:
        day = time.strftime("%Y%m%d", time.gmtime(now))
        return self.settings.submit_interval_s, self.settings.daily_cap, day

    def try_admit(self, mode: str, job_id: str, score: float) -> Admission:
        """Admit this job now (or confirm the lease it already holds), unless a better job is waiting."""
        now = time.time()
        interval, cap, day = self._common(now)
        res = self._try(
            args=[
                mode,
                job_id,
                self.settings.admission_limit(mode),
                repr(now),
                repr(self.settings.slot_lease_s),
                repr(interval),
                cap,
                day,
                repr(score),
            ]
        )
        return Admission(bool(int(res[0])), str(res[1]), float(res[2]) if len(res) > 2 and res[2] else None)

    def admit_next(self, mode: str, limit: int = 50) -> list[str]:
        """Pop parked jobs that may start now; each already holds its slot lease when returned."""
        now = time.time()
        interval, cap, day = self._common(now)
        res = self._next(
            args=[
                mode,
                self.settings.admission_limit(mode),
                repr(now),
                repr(self.settings.slot_lease_s),
                repr(interval),
                cap,
                day,
                limit,
            ]
        )
        return [str(x) for x in res]

    def expect(self, member: str, by: float) -> None:
        """A task for ``member`` (a job id, or ``<kind>/<job id>``) must start before ``by`` (epoch seconds)."""
        self.redis.zadd("mjq:expected", {member: by})

    def arrived(self, member: str) -> None:
        """The expected task started (or is no longer needed)."""
        self.redis.zrem("mjq:expected", member)

    def overdue_expected(self, now: float, limit: int = 100) -> list[str]:
        """Expected tasks that did not start in time: their message was lost (see ``worker.jobs.admission``)."""
        return cast(list[str], self.redis.zrangebyscore("mjq:expected", "-inf", now, start=0, num=limit))

    def renew(self, mode: str, job_id: str, seconds: float | None = None) -> None:
        """Extend a held lease (tracking renews at every poll); does nothing if the lease is gone."""
        until = time.time() + (seconds if seconds is not None else self.settings.slot_lease_s)
        self.redis.zadd(f"mjq:slots:{mode}", {job_id: until}, xx=True)

    def release(self, mode: str, job_id: str) -> None:
        self.redis.zrem(f"mjq:slots:{mode}", job_id)

    def holders(self, mode: str) -> list[str]:
        """Jobs holding an unexpired lease."""
        return cast(list[str], self.redis.zrangebyscore(f"mjq:slots:{mode}", time.time(), "+inf"))

    def in_use(self, mode: str) -> int:
        return int(self.redis.zcount(f"mjq:slots:{mode}", time.time(), "+inf"))
