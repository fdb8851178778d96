"""What the HTTP API keeps about its callers: who owns a job or batch, idempotent requests, daily quotas.

A service key sees only what it created (admin keys see everything), so each job and batch created through the
API records its owner. Follow-ups and batch jobs are owned through their root job or their batch, so a batch
of 10,000 rows writes one owner entry, not 10,000.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from worker.store import keys

DAY_S = 86_400


@dataclass(frozen=True)
class Claim:
    """The answer of ``claim_request``: whether this request is the first with its key, and what it recorded."""

    first: bool
    body_hash: str
    job_ids: list[str]


class ClientRecords:
    """Owners, idempotency records and quotas of service keys (``redis`` must decode responses)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    # ---------------------------------------------------------------- owners
    def owner(self, kind: str, ident: str) -> str | None:
        """The key name that created ``kind`` (``job`` | ``batch``) ``ident``; None when not made by the API."""
        return cast(str | None, self.redis.hget(keys.API_OWNER, f"{kind}:{ident}"))

    def claim_batch(self, batch_id: str, owner: str) -> str:
        """Make ``owner`` the batch's owner unless it has one; returns the owner now recorded."""
        self.redis.hsetnx(keys.API_OWNER, f"batch:{batch_id}", owner)
        return cast(str, self.redis.hget(keys.API_OWNER, f"batch:{batch_id}"))

    def claim_jobs(self, owner: str, job_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Make ``owner`` the owner of each job id that has none (atomic per id, so two keys sending one id at
        once cannot both get it, whether or not a worker recorded the job yet); returns (claimed now, ids
        another key owns)."""
        if not job_ids:
            return [], []
        pipe = self.redis.pipeline()
        for job_id in job_ids:
            pipe.hsetnx(keys.API_OWNER, f"job:{job_id}", owner)
        got = pipe.execute()
        claimed = [job_id for job_id, new in zip(job_ids, got, strict=True) if new]
        others = [job_id for job_id, new in zip(job_ids, got, strict=True) if not new]
        taken = [job_id for job_id in others if self.owner("job", job_id) != owner]
        return claimed, taken

    def release_jobs(self, job_ids: Sequence[str]) -> None:
        """Give up owner entries ``claim_jobs`` made for a request that was then refused."""
        if job_ids:
            self.redis.hdel(keys.API_OWNER, *[f"job:{job_id}" for job_id in job_ids])

    def add_jobs(self, owner: str, job_ids: Sequence[str]) -> None:
        """Record single jobs created by ``owner`` (listed by ``GET /v1/jobs``)."""
        if not job_ids:
            return
        now = time.time()
        scores = {job_id: now + i * 1e-6 for i, job_id in enumerate(job_ids)}
        pipe = self.redis.pipeline()
        pipe.hset(keys.API_OWNER, mapping={f"job:{job_id}": owner for job_id in job_ids})
        pipe.zadd(keys.api_jobs(owner), scores, nx=True)
        pipe.zadd(keys.API_JOBS, scores, nx=True)
        pipe.execute()

    def job_ids(self, owner: str | None, start: int, count: int) -> list[str]:
        """API jobs by creation time (``owner`` None: every key's), ``count`` from position ``start``."""
        key = keys.API_JOBS if owner is None else keys.api_jobs(owner)
        return cast(list[str], self.redis.zrange(key, start, start + count - 1))

    # ---------------------------------------------------------------- idempotency
    def claim_request(self, owner: str, key: str, body_hash: str, job_ids: Sequence[str]) -> Claim:
        """Record ``key`` -> (body hash, job ids) if no request of ``owner`` used it; else what was recorded."""
        name = keys.api_idempotency(f"{owner}:{key}")
        record = json.dumps({"hash": body_hash, "jobs": list(job_ids)})
        if self.redis.set(name, record, nx=True):
            return Claim(True, body_hash, list(job_ids))
        stored: Mapping[str, Any] = json.loads(cast(str, self.redis.get(name)) or "{}")
        return Claim(False, str(stored.get("hash") or ""), [str(j) for j in stored.get("jobs") or []])

    def forget_request(self, owner: str, key: str) -> None:
        """Drop an idempotency record whose request was refused (so a corrected retry can use the key)."""
        self.redis.delete(keys.api_idempotency(f"{owner}:{key}"))

    # ---------------------------------------------------------------- quotas
    def take_quota(self, owner: str, n: int, limit: int, now: float | None = None) -> bool:
        """Count ``n`` new jobs against ``owner``'s daily ``limit`` (0 = none); False (nothing counted) if over."""
        if n <= 0 or limit <= 0:
            return True
        day = time.strftime("%Y%m%d", time.gmtime(now if now is not None else time.time()))
        name = keys.api_daily(f"{owner}:{day}")
        pipe = self.redis.pipeline()
        pipe.incrby(name, n)
        pipe.expire(name, 2 * DAY_S)
        used = int(pipe.execute()[0])
        if used > limit:
            self.redis.decrby(name, n)
            return False
        return True

    def quota_used(self, owner: str, now: float | None = None) -> int:
        day = time.strftime("%Y%m%d", time.gmtime(now if now is not None else time.time()))
        return int(cast(str | None, self.redis.get(keys.api_daily(f"{owner}:{day}"))) or 0)
