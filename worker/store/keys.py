"""Every Redis key mjqueue writes, spelled once (Celery's own keys are Celery's).

All are prefixed ``mjq:``. The Lua scripts (``worker/store/lua``) build key names from the same prefix, which
``worker.store.scripts`` gives them as ``P``, so this needs one Redis (or a Sentinel-kept primary), not a cluster.

- ``job:<id>``           hash: the job record (result fields, request, stored task message, attempts, ...)
- ``batch:<id>``         hash: status (active|paused|cancelled), total, planned, ``n:<state>`` counters, meta
- ``batch:<id>:jobs``    zset: job ids by creation time;  ``batches``: zset of batch ids by creation time
- ``batch:<id>:expect``  set: jobs enqueued into the batch whose record no worker has created yet
- ``children:<job>``     zset: follow-up jobs of a job
- ``upstream``           hash: upstream task id -> job id
- ``inflight``           zset: accepted jobs being tracked, score = next check time
- ``waiting:<mode>``     zset: parked jobs waiting for a slot, score = priority * 1e13 + created (ms)
- ``held:<batch>``       zset: parked jobs of a paused batch (moved back to ``waiting`` on resume)
- ``slots:<mode>``       zset: slot leases, member = job id, score = lease expiry (``worker.store.slots``)
- ``expected``           zset: tasks that must start by the score, else their message was lost
- ``finishing``          zset: jobs whose terminal transition won but whose finishing step has not run yet
- ``breaker``            hash: the global stop after 401/403/out of credit (tripped, reason, at)
- ``pace``, ``daily:<day>``  submit pacing (next allowed submit) and the daily submit count
- ``img:<sha256>``       input images stored once by the producer (``worker.store.images``)
- ``imgjobs``            zset: unfinished jobs that refer to stored images (their TTL is kept)
- ``lock:<name>``        short locks: one housekeeping runner, one image sweep at a time
"""

from __future__ import annotations

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


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def batch(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:jobs"


def batch_expect(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:expect"


def children(job_id: str) -> str:
    return f"{PREFIX}children:{job_id}"


def waiting(mode: str) -> str:
    return f"{PREFIX}waiting:{mode}"


def held(batch_id: str) -> str:
    return f"{PREFIX}held:{batch_id}"


def slots(mode: str) -> str:
    return f"{PREFIX}slots:{mode}"


def image(digest: str) -> str:
    return f"{PREFIX}img:{digest}"
