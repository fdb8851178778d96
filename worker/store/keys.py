"""Every Redis key mjqueue writes, spelled once (Celery's own keys are Celery's).

All are prefixed ``mjq:``. The Lua scripts (``worker/store/lua``) build key names from the same prefix, which
``worker.store.scripts`` gives them as ``P``, so this needs one Redis (or a Sentinel-kept primary), not a cluster.

- ``job:<id>``           hash: the job record (result fields, request, stored task message, attempts, ...); once
  it succeeded and finished: no message, request nor deadline, and the message's ``queue`` (``Ledger.shed_spent``)
- ``batch:<id>``         hash: status (active|paused|cancelled), total, planned, ``n:<state>`` counters, meta
- ``batch:<id>:jobs``    zset: job ids by creation time;  ``batches``: zset of batch ids by creation time
- ``batch:<id>:expect``  set: jobs enqueued into the batch whose record no worker has created yet
- ``batch:<id>:failed``  zset: its jobs in a failed end state (failed, timed_out, needs_review), by when
- ``children:<job>``     zset: follow-up jobs of a job
- ``joblog:<job>``       list: the job's last 50 transitions (JSON: at, from, to, reason), ``mjq logs JOB``
- ``workers``            hash: worker hostname -> JSON {settings hash, at}: what settings each live worker runs with
- ``upstream``           hash: upstream task id -> job id
- ``inflight``           zset: accepted jobs being tracked, score = next check time
- ``waiting:<mode>``     zset: parked jobs waiting for a slot on any upstream serving the mode, score =
  priority * 1e13 + created (ms); ``waiting:<mode>:<upstream>``: parked jobs pinned to one upstream (follow-ups,
  ``upstream=``)
- ``held:<batch>``       zset: parked jobs of a paused batch (moved back to ``waiting`` on resume)
- ``slots:<mode>``       zset: slot leases, member = job id, score = lease expiry (``worker.store.slots``), of the
  upstream ``default``; ``slots:<mode>:<upstream>`` of another upstream of the pool (``worker.upstreams``)
- ``expected``           zset: tasks that must start by the score, else their message was lost
- ``finishing``          zset: jobs whose terminal transition won but whose finishing step has not run yet
- ``breaker``            hash: the stop of the upstream ``default`` after 401/403/out of credit/unreachable
  (tripped, reason, at, until, kind, probe_at, probe_s); ``breaker:<upstream>`` the stop of another upstream
- ``pace``, ``pace_by``, ``daily:<day>``  submit pacing of ``default`` (next allowed submit, the job that claimed
  it) and its daily submit count; ``pace:<upstream>``, ``pace_by:<upstream>``, ``daily:<day>:<upstream>`` of
  another; ``daily:<day>:<upstream>:<mode>`` the day's submits of one mode (every upstream, ``default`` too)
- ``lasterr:<upstream>`` hash: the upstream's last submit error (at, error), for ``mjq upstreams``
- ``down:<upstream>``    string: since when submits to the upstream fail to connect (unreachable after a minute)
- ``img:<sha256>``       input images stored once by the producer (``worker.store.images``)
- ``imgjobs``            zset: unfinished jobs that refer to stored images (their TTL is kept)
- ``seen:<upstream>``    hash: what answers taught us about the upstream (``worker.store.observed``): callbacks
  seen (seen_at), jobs finished by polling with none (polled), polling schedule since (missing_at), last 429
  (last_429_at); ``<upstream>`` is a short hash of its base URL, so another upstream starts unknown
- ``lock:<name>``        short locks: one housekeeping runner, one image sweep at a time, and
  ``lock:retention``: held until housekeeping next looks for batches past ``MJQ_RETENTION_DAYS``
- ``archived``           hash: batch id -> summary of a batch moved out of Redis (``worker.reports.archive``)
- ``spent:<upstream>:<day>``  money spent (micros) on that upstream that UTC day;
  per batch: ``spent_micros``, ``budget_micros``, ``charged_failed_n``/``_micros`` and ``hold_reason`` on
  ``batch:<id>``; per job: ``price_micros``, ``price_key``, ``cost_micros`` (see ``worker.pricing``)

Celery's result of a task (``celery-task-meta-<task id>``) is Celery's key; archiving a batch deletes it too.
- ``api:owner``          hash: ``job:<id>`` / ``batch:<id>`` -> name of the service key that created it
- ``api:jobs``, ``api:jobs:<key name>``  zsets: jobs created through the HTTP API (all, per key), by time
- ``api:idem:<key name>:<idempotency key>``  string: the request hash and job ids of an idempotent request
- ``api:daily:<key name>:<day>``  jobs a service key created that UTC day (its ``daily_jobs`` quota)
- ``alert:<cause>``      an alert already sent for this cause (once per cause, kept a week)
- ``outcomes:<bucket>``  hash: jobs ended / failed in one 5-minute bucket (the failure rate of the last hour), and
  per upstream ``ok:<upstream>`` / ``failed:<upstream>`` (``mjq upstreams``)
- ``budget_hits``        set: batch ids whose budget held a job (``*daily`` for MJQ_BUDGET_DAILY), written by the
  Lua gates and drained by the budget alert (``worker.jobs.alerts``)
- ``cbpace:<job>``       the throttle of a job's progress callbacks (one per MJQ_CALLBACK_PROGRESS_INTERVAL_S)
- ``cbtry:<id>:<event>:<n>``  callback attempt n claimed (a redelivered copy of its message makes no second try)
- callback delivery state: on ``job:<id>`` (``callback``, ``callback_attempts``, ``callback_started``,
  ``callback_error``; ``cb_started*``, ``cb_progress*`` for those events) and on ``batch:<id>`` (``callback*`` of
  the batch callback; ``callbacks:asked|delivered|gave up`` counts its jobs' callbacks)

The per-upstream names above are built by the functions below and, in Lua, by ``ukey``/``slots_key``/
``breaker_key``/``pinned_key`` in ``lua/prelude.lua`` (the same spelling): the upstream ``default`` keeps the
names of the one-upstream days, so a single-account setup reads and writes what it always did.
"""

from __future__ import annotations

import time

PREFIX = "mjq:"

BATCHES = PREFIX + "batches"
UPSTREAM = PREFIX + "upstream"
INFLIGHT = PREFIX + "inflight"
EXPECTED = PREFIX + "expected"
FINISHING = PREFIX + "finishing"
BREAKER = PREFIX + "breaker"
IMAGE_JOBS = PREFIX + "imgjobs"
HOUSEKEEPING_LOCK = PREFIX + "lock:housekeeping"
IMAGE_SWEEP_LOCK = PREFIX + "lock:imagesweep"
ARCHIVED = PREFIX + "archived"
WORKERS = PREFIX + "workers"
RETENTION_NEXT = PREFIX + "lock:retention"


DEFAULT_UPSTREAM = "default"


def utc_day(epoch: float) -> str:
    """The UTC day of daily counters (``daily:<day>``, ``spent:<upstream>:<day>``)."""
    return time.strftime("%Y%m%d", time.gmtime(epoch))


def spent(day: str, upstream: str = DEFAULT_UPSTREAM) -> str:
    return f"{PREFIX}spent:{upstream}:{day}"


def _per_upstream(base: str, upstream: str) -> str:
    """``default`` keeps the one-upstream name; another upstream's name is appended (``lua/prelude.lua`` ukey)."""
    return PREFIX + base if upstream in ("", DEFAULT_UPSTREAM) else f"{PREFIX}{base}:{upstream}"


def slots_of(upstream: str, mode: str) -> str:
    return _per_upstream(f"slots:{mode}", upstream)


def breaker_of(upstream: str) -> str:
    return _per_upstream("breaker", upstream)


def pace_of(upstream: str) -> str:
    return _per_upstream("pace", upstream)


def daily_of(upstream: str, day: str, mode: str | None = None) -> str:
    """The day's submits to an upstream (all modes), or of one mode."""
    if mode:
        return f"{PREFIX}daily:{day}:{upstream or DEFAULT_UPSTREAM}:{mode}"
    return _per_upstream(f"daily:{day}", upstream)


def pinned(upstream: str, mode: str) -> str:
    """Parked jobs that may run on this upstream only."""
    return f"{PREFIX}waiting:{mode}:{upstream}"


def down_since(upstream: str) -> str:
    return f"{PREFIX}down:{upstream}"


def last_error(upstream: str) -> str:
    return f"{PREFIX}lasterr:{upstream}"


def celery_result(task_id: str) -> str:
    """Celery's result key of a task (the Redis backend's naming)."""
    return f"celery-task-meta-{task_id}"
BUDGET_HITS = PREFIX + "budget_hits"  # the Lua gates spell it too (P .. "budget_hits")
DAILY_BUDGET_HIT = "*daily"  # the member of BUDGET_HITS for MJQ_BUDGET_DAILY (not a batch id: ids start alnum)
API_OWNER = PREFIX + "api:owner"
API_JOBS = PREFIX + "api:jobs"


class _Family:
    """Keys of one kind, one per id: ``keys.job("abc")`` is ``mjq:job:abc``."""

    __slots__ = ("name", "suffix")

    def __init__(self, name: str, suffix: str = "") -> None:
        self.name, self.suffix = name, suffix

    def __call__(self, ident: str) -> str:
        return f"{PREFIX}{self.name}:{ident}{self.suffix}"


job = _Family("job")
batch = _Family("batch")
batch_jobs = _Family("batch", ":jobs")
batch_expect = _Family("batch", ":expect")
batch_failed = _Family("batch", ":failed")
children = _Family("children")
job_log = _Family("joblog")
waiting = _Family("waiting")
held = _Family("held")
slots = _Family("slots")
image = _Family("img")
observed = _Family("seen")
daily = _Family("daily")  # the Lua gates spell it too (P .. "daily:" .. day)
api_jobs = _Family("api:jobs")
api_idempotency = _Family("api:idem")
api_daily = _Family("api:daily")
alert = _Family("alert")
outcomes = _Family("outcomes")
callback_pace = _Family("cbpace")
callback_try = _Family("cbtry")
