"""The job ledger in Redis: jobs, batches, the upstream-id index, in-flight and waiting sets, the breaker.

Every state change is ONE Lua script call, so two paths (a webhook and a poll, or two redelivered copies of a
task) can never both win a transition, and batch counters move in the same step as the job they count.

Keys (all prefixed ``mjq:``; the scripts build key names themselves, so this needs one Redis, not a cluster):

- ``job:<id>``           hash: the job record (result fields, request, stored task message, attempts, ...)
- ``batch:<id>``         hash: status (active|paused|cancelled), total, planned, ``n:<state>`` counters, meta
- ``batch:<id>:jobs``    zset: job ids by creation time;  ``batches``: zset of batch ids by creation time
- ``batch:<id>:expect``  set: jobs enqueued into the batch whose record no worker has created yet
- ``children:<job>``     zset: follow-up jobs of a job
- ``upstream``           hash: upstream task id -> job id
- ``inflight``           zset: accepted jobs being tracked, score = next check time
- ``waiting:<mode>``     zset: parked jobs waiting for a slot, score = priority * 1e13 + created (ms)
- ``held:<batch>``       zset: parked jobs of a paused batch (moved back to ``waiting`` on resume)
- ``slots:<mode>``       zset: slot leases, member = job id, score = lease expiry (see ``worker.store.slots``)
- ``expected``           zset: tasks that must start by the score, else their message was lost (``worker.store.slots``)
- ``finishing``          zset: jobs whose terminal transition won but whose finishing step has not run yet
- ``breaker``            hash: the global stop after 401/403/out of credit (tripped, reason, at)
- ``img:<sha256>``       input images stored once by the producer (see ``worker.store.images``)
- ``imgjobs``            zset: unfinished jobs that refer to stored images (their TTL is kept, ``imagestore``)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import redis

PREFIX = "mjq:"

STATES = (
    "queued",
    "submitting",
    "submitted",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "needs_review",
    "skipped",
)
TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "needs_review", "skipped"})
ACTIVE = frozenset({"submitting", "submitted", "running"})

# Fields kept as JSON in the hash; every other field is a plain string.
JSON_FIELDS = frozenset({"buttons", "extra", "request", "message", "modal", "meta"})
FLOAT_FIELDS = frozenset(
    {
        "created_at",
        "root_created_at",
        "submitted_at",
        "submitting_at",
        "started_at",
        "finished_at",
        "updated_at",
        "deadline_at",
        "duration_s",
    }
)
INT_FIELDS = frozenset(
    {"image_bytes", "image_width", "image_height", "attempts", "polls", "priority", "busy_answers", "redelivered"}
)

# The image of a finished job: the upstream URL and the downloaded copy.
IMAGE_FIELDS = ("image_url", "image_path", "image_sha256", "image_bytes", "image_width", "image_height")

RESULT_KEYS = (
    "job_id",
    "upstream_id",
    "batch_id",
    "action",
    "mode",
    "priority",
    "status",
    "prompt",
    "final_prompt",
    *IMAGE_FIELDS,
    "download",
    "buttons",
    "progress",
    "fail_reason",
    "parent_job",
    "root_job",
    "created_at",
    "submitted_at",
    "started_at",
    "finished_at",
    "duration_s",
    "extra",
)

# Shared Lua prelude: key helpers and state tables.
_LUA_PRELUDE = """
local P = 'mjq:'
local TERMINAL = {succeeded=true, failed=true, timed_out=true, cancelled=true, needs_review=true,
                  skipped=true}
local RANK = {queued=0, submitting=1, submitted=2, running=3}
local function count_move(jkey, from, to, now)
  if from == to then return end
  local b = redis.call('HGET', jkey, 'batch_id')
  if b and b ~= '' then
    local bk = P .. 'batch:' .. b
    if from then redis.call('HINCRBY', bk, 'n:' .. from, -1) end
    redis.call('HINCRBY', bk, 'n:' .. to, 1)
    redis.call('HSET', bk, 'updated_at', now)
  end
end
"""

# Create a job (idempotent on its id). ARGV: job_id, fields JSON, now.
_LUA_CREATE = (
    _LUA_PRELUDE
    + """
local jid = ARGV[1]
local f = cjson.decode(ARGV[2])
local now = ARGV[3]
local jkey = P .. 'job:' .. jid
local cur = redis.call('HGET', jkey, 'status')
if cur then return {0, cur} end
for k, v in pairs(f) do redis.call('HSET', jkey, k, v) end
redis.call('HSET', jkey, 'job_id', jid, 'status', 'queued', 'created_at', now, 'updated_at', now)
local b = f['batch_id']
if b and b ~= '' then
  local bk = P .. 'batch:' .. b
  if redis.call('HSETNX', bk, 'batch_id', b) == 1 then
    redis.call('HSET', bk, 'status', 'active', 'created_at', now)
    redis.call('ZADD', P .. 'batches', now, b)
  end
  redis.call('HINCRBY', bk, 'total', 1)
  if f['parent_job'] and f['parent_job'] ~= '' then
    local planned = tonumber(redis.call('HGET', bk, 'planned') or '0')
    if planned > 0 then redis.call('HINCRBY', bk, 'planned', -1) end
  end
  redis.call('ZADD', bk .. ':jobs', now, jid)
  count_move(jkey, nil, 'queued', now)
end
if f['parent_job'] and f['parent_job'] ~= '' then
  redis.call('ZADD', P .. 'children:' .. f['parent_job'], now, jid)
end
return {1, 'queued'}
"""
)

# The one transition script. ARGV: job_id, spec JSON. Spec keys:
#   to (state), now, from (list of allowed current states), forward (settle rules: no regressions, terminal
#   is final), reconcile (needs_review may move on), progress (number), gate (refuse when the breaker is
#   tripped or the batch paused/cancelled), require_no_upstream, fields {k: v}, delete [k], incr {k: n},
#   upstream (id to record and index), inflight (absolute next-check score), lease_until (slot lease kept
#   until), release (free the slot).
# Returns {1, previous_state} when applied, {0, current_state, why} when refused.
_LUA_TRANSITION = (
    _LUA_PRELUDE
    + """
local jid = ARGV[1]
local s = cjson.decode(ARGV[2])
local jkey = P .. 'job:' .. jid
local cur = redis.call('HGET', jkey, 'status')
if not cur then return {0, '', 'unknown'} end
local to = s['to']
local now = s['now']
if s['from'] then
  local ok = false
  for _, st in ipairs(s['from']) do if st == cur then ok = true end end
  if not ok then return {0, cur, 'state'} end
end
if s['forward'] then
  if TERMINAL[cur] and not (cur == 'needs_review' and s['reconcile']) then return {0, cur, 'final'} end
  if not TERMINAL[to] and cur ~= 'needs_review' then
    if RANK[to] < RANK[cur] then return {0, cur, 'regression'} end
    if to == cur then
      local p = tonumber(redis.call('HGET', jkey, 'progress_pct') or '0') or 0
      if (tonumber(s['progress']) or 0) <= p then return {0, cur, 'stale'} end
    end
  end
end
if s['require_no_upstream'] and redis.call('HEXISTS', jkey, 'upstream_id') == 1 then
  return {0, cur, 'upstream'}
end
if s['gate'] then
  local br = redis.call('HGET', P .. 'breaker', 'tripped')
  if br == '1' then return {0, cur, 'breaker'} end
  local b = redis.call('HGET', jkey, 'batch_id')
  if b and b ~= '' then
    local bst = redis.call('HGET', P .. 'batch:' .. b, 'status')
    if bst == 'paused' or bst == 'cancelled' then return {0, cur, bst} end
  end
end
if s['fields'] then for k, v in pairs(s['fields']) do redis.call('HSET', jkey, k, v) end end
if s['delete'] then for _, k in ipairs(s['delete']) do redis.call('HDEL', jkey, k) end end
if s['incr'] then for k, v in pairs(s['incr']) do redis.call('HINCRBY', jkey, k, v) end end
if s['progress'] then redis.call('HSET', jkey, 'progress_pct', s['progress']) end
redis.call('HSET', jkey, 'status', to, 'updated_at', now)
count_move(jkey, cur, to, now)
local mode = redis.call('HGET', jkey, 'mode') or 'fast'
if s['upstream'] then
  redis.call('HSET', jkey, 'upstream_id', s['upstream'])
  redis.call('HSETNX', P .. 'upstream', s['upstream'], jid)
end
if TERMINAL[to] then
  redis.call('ZREM', P .. 'inflight', jid)
  redis.call('ZREM', P .. 'waiting:' .. mode, jid)
  local b = redis.call('HGET', jkey, 'batch_id')
  if b and b ~= '' then redis.call('ZREM', P .. 'held:' .. b, jid) end
  redis.call('ZADD', P .. 'finishing', now, jid)
  redis.call('HSET', jkey, 'finished_at', now)
elseif s['inflight'] then
  redis.call('ZADD', P .. 'inflight', s['inflight'], jid)
end
if s['release'] then redis.call('ZREM', P .. 'slots:' .. mode, jid) end
if s['lease_until'] then redis.call('ZADD', P .. 'slots:' .. mode, 'XX', s['lease_until'], jid) end
return {1, cur}
"""
)

# Park a queued job: store its task message and put it in its mode's waiting set (or its paused batch's
# held set). ARGV: job_id, message JSON, score. Returns 'parked' | 'held' | 'cancelled' | <status>.
_LUA_PARK = (
    _LUA_PRELUDE
    + """
local jid = ARGV[1]
local jkey = P .. 'job:' .. jid
local cur = redis.call('HGET', jkey, 'status')
if cur ~= 'queued' then return cur or '' end
if ARGV[2] ~= '' then redis.call('HSET', jkey, 'message', ARGV[2]) end
local mode = redis.call('HGET', jkey, 'mode') or 'fast'
local b = redis.call('HGET', jkey, 'batch_id')
if b and b ~= '' then
  local bst = redis.call('HGET', P .. 'batch:' .. b, 'status')
  if bst == 'cancelled' then return 'cancelled' end
  if bst == 'paused' then
    redis.call('ZADD', P .. 'held:' .. b, ARGV[3], jid)
    return 'held'
  end
end
redis.call('ZADD', P .. 'waiting:' .. mode, ARGV[3], jid)
return 'parked'
"""
)

# Pause / resume a batch, moving its parked jobs between waiting:<mode> and held:<batch>.
# ARGV: batch_id, new status ('paused' | 'active'). Returns the number of jobs moved.
_LUA_BATCH_STATUS = (
    _LUA_PRELUDE
    + """
local b = ARGV[1]
local bk = P .. 'batch:' .. b
if redis.call('HSETNX', bk, 'batch_id', b) == 1 then
  redis.call('HSET', bk, 'created_at', ARGV[3])
  redis.call('ZADD', P .. 'batches', ARGV[3], b)
end
local cur = redis.call('HGET', bk, 'status')
if cur == 'cancelled' then return -1 end
redis.call('HSET', bk, 'status', ARGV[2])
local moved = 0
local held = P .. 'held:' .. b
if ARGV[2] == 'paused' then
  local ids = redis.call('ZRANGE', bk .. ':jobs', 0, -1)
  for _, jid in ipairs(ids) do
    local mode = redis.call('HGET', P .. 'job:' .. jid, 'mode') or 'fast'
    local score = redis.call('ZSCORE', P .. 'waiting:' .. mode, jid)
    if score then
      redis.call('ZREM', P .. 'waiting:' .. mode, jid)
      redis.call('ZADD', held, score, jid)
      moved = moved + 1
    end
  end
else
  local items = redis.call('ZRANGE', held, 0, -1, 'WITHSCORES')
  for i = 1, #items, 2 do
    local jid = items[i]
    local mode = redis.call('HGET', P .. 'job:' .. jid, 'mode') or 'fast'
    redis.call('ZADD', P .. 'waiting:' .. mode, items[i + 1], jid)
    moved = moved + 1
  end
  redis.call('DEL', held)
end
return moved
"""
)

# Claim due in-flight jobs for one poll. ARGV: job_id ('' = any), now, claim_until, limit, tolerance.
# The poll's own job must be due, else nothing is claimed (someone else re-scheduled it). Claimed jobs get
# score claim_until so no other poll takes them; the claimer schedules their next poll.
_LUA_CLAIM = """
local P = 'mjq:'
local key = P .. 'inflight'
local jid = ARGV[1]
local now = tonumber(ARGV[2])
local tol = tonumber(ARGV[5])
local out = {}
if jid ~= '' then
  local sc = redis.call('ZSCORE', key, jid)
  if not sc or tonumber(sc) > now + tol then return out end
  redis.call('ZADD', key, ARGV[3], jid)
  table.insert(out, jid)
end
local limit = tonumber(ARGV[4])
if limit > #out then
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit - #out)
  for _, other in ipairs(due) do
    if other ~= jid then
      redis.call('ZADD', key, ARGV[3], other)
      table.insert(out, other)
    end
  end
end
return out
"""

# A parent whose children were counted skipped (see mark_skipped) will have them after all: plan them again.
_LUA_REPLAN_FN = """
local function replan(jkey)
  local skipped = tonumber(redis.call('HGET', jkey, 'skipped_n') or '0') or 0
  local b = redis.call('HGET', jkey, 'batch_id')
  if skipped > 0 and b and b ~= '' then
    local bk = P .. 'batch:' .. b
    redis.call('HINCRBY', bk, 'total', -skipped)
    redis.call('HINCRBY', bk, 'n:skipped', -skipped)
    redis.call('HINCRBY', bk, 'planned', tonumber(redis.call('HGET', jkey, 'skipped_planned') or '0') or 0)
  end
  redis.call('HDEL', jkey, 'skipped_n', 'skipped_planned')
end
"""

# Replan the skipped children of one job. ARGV: job_id.
_LUA_REPLAN = _LUA_PRELUDE + _LUA_REPLAN_FN + "replan(P .. 'job:' .. ARGV[1])\nreturn 1\n"

# Reset jobs for a requeue. ARGV: now, reset-fields JSON list, job ids...
_LUA_REQUEUE = (
    _LUA_PRELUDE
    + _LUA_REPLAN_FN
    + """
local now = ARGV[1]
local drop = cjson.decode(ARGV[2])
local n = 0
for i = 3, #ARGV do
  local jid = ARGV[i]
  local jkey = P .. 'job:' .. jid
  local cur = redis.call('HGET', jkey, 'status')
  if cur and TERMINAL[cur] then
    local up = redis.call('HGET', jkey, 'upstream_id')
    if up then redis.call('HDEL', P .. 'upstream', up) end
    replan(jkey)  -- its never-run children are planned again: they exist once it succeeds
    for _, k in ipairs(drop) do redis.call('HDEL', jkey, k) end
    redis.call('HSET', jkey, 'status', 'queued', 'updated_at', now)
    redis.call('ZREM', P .. 'finishing', jid)
    count_move(jkey, cur, 'queued', now)
    n = n + 1
  end
end
return n
"""
)


def _key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """Hash field values as strings: JSON for structured fields, ``str`` for scalars, None dropped."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name in JSON_FIELDS or isinstance(value, dict | list):
            out[name] = _dump(value)
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        else:
            out[name] = str(value)
    return out


def decode_job(raw: Mapping[str, str]) -> dict[str, Any]:
    """A job hash turned back into typed values."""
    job: dict[str, Any] = {}
    for name, value in raw.items():
        if name in JSON_FIELDS:
            try:
                job[name] = json.loads(value)
            except ValueError:
                job[name] = value
        elif name in FLOAT_FIELDS:
            job[name] = float(value) if value else None
        elif name in INT_FIELDS:
            try:
                job[name] = int(float(value))
            except ValueError:
                job[name] = None
        else:
            job[name] = value
    return job


class Ledger:
    """Jobs and batches in Redis. ``redis`` must decode responses (``decode_responses=True``)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._create = client.register_script(_LUA_CREATE)
        self._transition = client.register_script(_LUA_TRANSITION)
        self._park = client.register_script(_LUA_PARK)
        self._batch_status = client.register_script(_LUA_BATCH_STATUS)
        self._claim = client.register_script(_LUA_CLAIM)
        self._requeue = client.register_script(_LUA_REQUEUE)
        self._replan = client.register_script(_LUA_REPLAN)

    # ---------------------------------------------------------------- jobs
    def create_job(self, job_id: str, fields: Mapping[str, Any]) -> tuple[bool, str]:
        """Record a new job as ``queued``; idempotent: returns (created, current status)."""
        res = self._create(args=[job_id, _dump(encode_fields(fields)), repr(time.time())])
        return bool(int(res[0])), str(res[1])

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        raw = cast(dict[str, str], self.redis.hgetall(_key("job", job_id)))
        return decode_job(raw) if raw else None

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        """The ids among ``job_ids`` that have a job record (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(_key("job", job_id))
        return {job_id for job_id, found in zip(job_ids, pipe.execute(), strict=True) if found}

    def status(self, job_id: str) -> str | None:
        return cast(str | None, self.redis.hget(_key("job", job_id), "status"))

    def update(self, job_id: str, fields: Mapping[str, Any]) -> None:
        """Set non-state fields (download results, ...); never the status."""
        data = encode_fields(fields)
        if data:
            self.redis.hset(_key("job", job_id), mapping=cast(Mapping[Any, Any], data))

    def set_once(self, job_id: str, field_name: str, value: str) -> bool:
        """Set a non-state field only if it is unset; True when this call set it (a once-only claim)."""
        return bool(self.redis.hsetnx(_key("job", job_id), field_name, value))

    def count(self, job_id: str, field_name: str) -> int:
        """Add one to a counter field of the job (polls, ...) and return the new value."""
        return int(self.redis.hincrby(_key("job", job_id), field_name, 1))

    def transition(
        self,
        job_id: str,
        to: str,
        *,
        from_states: Iterable[str] | None = None,
        forward: bool = False,
        reconcile: bool = False,
        progress: int | None = None,
        gate: bool = False,
        require_no_upstream: bool = False,
        fields: Mapping[str, Any] | None = None,
        delete: Iterable[str] = (),
        incr: Mapping[str, int] | None = None,
        upstream: str | None = None,
        inflight: float | None = None,
        lease_until: float | None = None,
        release: bool = False,
    ) -> tuple[bool, str, str]:
        """Apply one atomic state change; returns (applied, previous-or-current status, refusal reason)."""
        spec: dict[str, Any] = {"to": to, "now": time.time()}
        if from_states is not None:
            spec["from"] = list(from_states)
        if forward:
            spec["forward"] = True
        if reconcile:
            spec["reconcile"] = True
        if progress is not None:
            spec["progress"] = progress
        if gate:
            spec["gate"] = True
        if require_no_upstream:
            spec["require_no_upstream"] = True
        if fields:
            spec["fields"] = encode_fields(fields)
        dels = list(delete)
        if dels:
            spec["delete"] = dels
        if incr:
            spec["incr"] = dict(incr)
        if upstream:
            spec["upstream"] = upstream
        if inflight is not None:
            spec["inflight"] = inflight
        if lease_until is not None:
            spec["lease_until"] = lease_until
        if release:
            spec["release"] = True
        res = self._transition(args=[job_id, _dump(spec)])
        applied = bool(int(res[0]))
        return applied, str(res[1]), "" if applied else str(res[2] if len(res) > 2 else "")

    def job_result(self, job_id: str) -> dict[str, Any]:
        """The job result dict (the value every job task returns and follow-ups receive)."""
        job = self.get_job(job_id)
        if job is None:
            raise KeyError(job_id)
        return result_of(job)

    def job_by_upstream(self, upstream_id: str) -> dict[str, Any] | None:
        job_id = cast(str | None, self.redis.hget(_key("upstream"), upstream_id))
        return self.get_job(job_id) if job_id else None

    def children(self, job_id: str) -> list[dict[str, Any]]:
        """Follow-up jobs created from this job, oldest first."""
        ids = cast(list[str], self.redis.zrange(_key("children", job_id), 0, -1))
        return [j for j in (self.get_job(i) for i in ids) if j is not None]

    # ---------------------------------------------------------------- waiting / in flight
    def park(self, job_id: str, message: Mapping[str, Any] | None, score: float) -> str:
        """Store the task message and add the job to its waiting set: 'parked'|'held'|'cancelled'|status."""
        return str(self._park(args=[job_id, _dump(message) if message else "", repr(score)]))

    def waiting_count(self, mode: str) -> int:
        return int(self.redis.zcard(_key("waiting", mode)))

    def claim_due(
        self, job_id: str, now: float, claim_s: float, limit: int, tolerance: float = 0.05
    ) -> list[str]:
        """Claim the poll's own job (if due) and up to ``limit`` due in-flight jobs in all."""
        res = self._claim(args=[job_id, repr(now), repr(now + claim_s), limit, repr(tolerance)])
        return [str(x) for x in res]

    def overdue(self, before: float, limit: int = 200) -> list[str]:
        return cast(list[str], self.redis.zrangebyscore(_key("inflight"), "-inf", before, start=0, num=limit))

    def next_check(self, job_id: str) -> float | None:
        """When an in-flight job is checked next (its score in ``inflight``), None when not in flight."""
        score = self.redis.zscore(_key("inflight"), job_id)
        return float(score) if score is not None else None

    def schedule(self, job_id: str, at: float) -> None:
        """Set the next check time of an in-flight job (only if it is still in flight)."""
        self.redis.zadd(_key("inflight"), {job_id: at}, xx=True)

    def unfinished(self, job_ids: Sequence[str]) -> int:
        """How many of ``job_ids`` are not through their finishing step (not terminal, or still downloading)."""
        pending = 0
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start : start + 500])
            pipe = self.redis.pipeline()
            for job_id in chunk:
                pipe.hget(_key("job", job_id), "status")
            pipe.zmscore(_key("finishing"), chunk)
            *statuses, finishing = pipe.execute()
            pending += sum(1 for status in statuses if status not in TERMINAL)
            pending += sum(1 for score in finishing if score is not None)
        return pending

    def finishing_stale(self, before: float, limit: int = 100) -> list[str]:
        return cast(
            list[str], self.redis.zrangebyscore(_key("finishing"), "-inf", before, start=0, num=limit)
        )

    def finished(self, job_id: str) -> None:
        self.redis.zrem(_key("finishing"), job_id)

    def mark_continued(self, job_id: str) -> bool:
        """Record that the job's continuation fired; False when it already had."""
        return bool(self.redis.hsetnx(_key("job", job_id), "continued", "1"))

    def continued(self, job_id: str) -> bool:
        return bool(self.redis.hexists(_key("job", job_id), "continued"))

    def replan_skipped(self, job_id: str) -> None:
        """The children counted skipped when this job failed will exist after all (it was reconciled)."""
        self._replan(args=[job_id])

    # ---------------------------------------------------------------- batches
    def ensure_batch(self, batch_id: str, meta: Mapping[str, Any] | None = None) -> None:
        """Create the batch record if missing (status active) and merge ``meta`` into it."""
        key = _key("batch", batch_id)
        now = time.time()
        if self.redis.hsetnx(key, "batch_id", batch_id):
            self.redis.hset(key, mapping={"status": "active", "created_at": repr(now)})
            self.redis.zadd(_key("batches"), {batch_id: now}, nx=True)
        if meta:
            current = self.redis.hget(key, "meta")
            merged = json.loads(cast(str, current)) if current else {}
            merged.update(meta)
            self.redis.hset(key, "meta", _dump(merged))

    def add_planned(self, batch_id: str, n: int) -> None:
        """Announce ``n`` jobs that will be created later (follow-ups), so totals and ETAs count them."""
        self.ensure_batch(batch_id)
        self.redis.hincrby(_key("batch", batch_id), "planned", n)

    def mark_skipped(self, batch_id: str | None, n: int = 1, reason: str = "", job_id: str | None = None) -> None:
        """Planned jobs that will never exist (children of a failed parent): planned -= n, skipped += n.

        With ``job_id`` (the parent) the counts are also kept on the parent, so requeueing it plans its
        children again instead of leaving them skipped (``requeue_jobs``).
        """
        if not batch_id or n <= 0:
            return
        key = _key("batch", batch_id)
        planned = int(cast(str | None, self.redis.hget(key, "planned")) or 0)
        take = min(n, planned)
        pipe = self.redis.pipeline()
        pipe.hincrby(key, "planned", -take)
        pipe.hincrby(key, "total", n)
        pipe.hincrby(key, "n:skipped", n)
        if reason:
            pipe.hset(key, "last_skip_reason", reason)
        if job_id:
            pipe.hincrby(_key("job", job_id), "skipped_n", n)
            pipe.hincrby(_key("job", job_id), "skipped_planned", take)
        pipe.execute()

    def expect_jobs(self, batch_id: str, job_ids: Iterable[str]) -> None:
        """Jobs just enqueued into the batch: it counts them (total, ETA, end) before a worker creates them."""
        ids = list(job_ids)
        if ids:
            self.redis.sadd(_key("batch", batch_id, "expect"), *ids)

    def is_expected(self, batch_id: str, job_id: str) -> bool:
        """Whether the batch counts on this job (enqueued by ``mjq batch``, no record yet)."""
        return bool(self.redis.sismember(_key("batch", batch_id, "expect"), job_id))

    def pending_jobs(self, batch_id: str) -> int:
        """Enqueued jobs of the batch with no record yet; those created meanwhile (here or, with the same id,
        in another batch) leave the set, so a batch expects exactly the jobs it will really get."""
        key = _key("batch", batch_id, "expect")
        ids = sorted(cast(set[str], self.redis.smembers(key)))
        if not ids:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(_key("job", job_id))
        created = [job_id for job_id, exists in zip(ids, pipe.execute(), strict=True) if exists]
        if created:
            self.redis.srem(key, *created)
        return len(ids) - len(created)

    def set_batch_status(self, batch_id: str, status: str) -> int:
        """'paused' | 'active' (moves parked jobs between waiting and held); -1 if the batch is cancelled."""
        return int(self._batch_status(args=[batch_id, status, repr(time.time())]))

    def cancel_batch_record(self, batch_id: str) -> list[str]:
        """Mark the batch cancelled and return the ids of its jobs still queued (waiting or not)."""
        self.ensure_batch(batch_id)
        key = _key("batch", batch_id)
        self.redis.hset(key, "status", "cancelled")
        self.redis.delete(_key("held", batch_id))
        return [j["job_id"] for j in self.batch_jobs(batch_id) if j.get("status") == "queued"]

    def batch(self, batch_id: str) -> dict[str, Any]:
        """Counts per state, total, planned, pending, meta and status (active | paused | cancelled | finished).

        ``pending`` (enqueued, not created yet) is read before the counters: a job created in between is then
        counted twice for one reading, never missed (a batch never looks finished early).
        """
        pending = self.pending_jobs(batch_id)
        raw = cast(dict[str, str], self.redis.hgetall(_key("batch", batch_id)))
        if not raw:
            return {}
        counts = {s: 0 for s in STATES}
        out: dict[str, Any] = {"batch_id": batch_id}
        for name, value in raw.items():
            if name.startswith("n:"):
                counts[name[2:]] = int(value)
            elif name in ("total", "planned"):
                out[name] = int(value)
            elif name in ("created_at", "updated_at"):
                out[name] = float(value)
            elif name == "meta":
                out[name] = json.loads(value)
            else:
                out[name] = value
        out.setdefault("total", 0)
        out.setdefault("planned", 0)
        out.setdefault("meta", {})
        out["pending"] = pending
        out["counts"] = counts
        finished = sum(counts[s] for s in TERMINAL)
        status = out.get("status", "active")
        ended = out["planned"] <= 0 and pending == 0 and finished >= out["total"]
        if status == "active" and out["total"] > 0 and ended:
            status = "finished"
        out["status"] = status
        out["finished"] = finished
        return out

    def batches(self) -> list[dict[str, Any]]:
        ids = cast(list[str], self.redis.zrange(_key("batches"), 0, -1))
        return [b for b in (self.batch(i) for i in ids) if b]

    def batch_job_ids(self, batch_id: str) -> list[str]:
        return cast(list[str], self.redis.zrange(_key("batch", batch_id, "jobs"), 0, -1))

    def batch_jobs(self, batch_id: str) -> list[dict[str, Any]]:
        """Job results of a batch in creation order."""
        ids = self.batch_job_ids(batch_id)
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(_key("job", job_id))
        return [result_of(decode_job(raw)) for raw in pipe.execute() if raw]

    def batch_status(self, batch_id: str | None) -> str:
        if not batch_id:
            return "active"
        return cast(str | None, self.redis.hget(_key("batch", batch_id), "status")) or "active"

    def requeue_jobs(self, job_ids: list[str]) -> int:
        """Put terminal jobs back to ``queued`` with their result fields cleared."""
        if not job_ids:
            return 0
        drop = [
            "upstream_id",
            "final_prompt",
            *IMAGE_FIELDS,
            "download",
            "buttons",
            "progress",
            "progress_pct",
            "fail_reason",
            "submitted_at",
            "started_at",
            "finished_at",
            "duration_s",
            "deadline_at",
            "attempts",
            "polls",
            "continued",
            "review_finished",
            "settled_by",
            "extra",
        ]
        return int(self._requeue(args=[repr(time.time()), _dump(drop), *job_ids]))

    # ---------------------------------------------------------------- breaker
    def trip_breaker(self, reason: str) -> bool:
        """Stop all submitting; True when this call tripped it (first reason wins)."""
        key = _key("breaker")
        tripped = bool(self.redis.hsetnx(key, "tripped", "1"))
        if tripped:
            self.redis.hset(key, mapping={"reason": reason, "at": repr(time.time())})
        return tripped

    def clear_breaker(self) -> None:
        self.redis.delete(_key("breaker"))

    def breaker_tripped(self) -> bool:
        """The one-command check made right before every submit POST."""
        return bool(self.redis.hget(_key("breaker"), "tripped") == "1")

    def breaker(self) -> dict[str, Any]:
        raw = cast(dict[str, str], self.redis.hgetall(_key("breaker")))
        return {
            "tripped": raw.get("tripped") == "1",
            "reason": raw.get("reason", ""),
            "at": float(raw["at"]) if raw.get("at") else None,
        }


def result_of(job: Mapping[str, Any]) -> dict[str, Any]:
    """The public job result (fixed keys) from a decoded job record."""
    out = {k: job.get(k) for k in RESULT_KEYS}
    out["buttons"] = job.get("buttons") or []
    out["extra"] = job.get("extra") or {}
    out["batch_id"] = job.get("batch_id") or None
    out["parent_job"] = job.get("parent_job") or None
    out["root_job"] = job.get("root_job") or job.get("job_id")
    out["tags"] = list((job.get("meta") or {}).get("tags") or [])
    out["row"] = (job.get("meta") or {}).get("row")
    if out["duration_s"] is None and job.get("finished_at") and job.get("created_at"):
        out["duration_s"] = round(float(job["finished_at"]) - float(job["created_at"]), 3)
    return out
