"""Input images stored once in Redis by content hash, so task messages carry ``img:<sha256>`` only.

Base64 images never travel through the broker or show in Flower: producers store them here and pass the
reference; the worker resolves references just before the request is sent upstream.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from typing import Any, cast

from worker.mjapi.errors import (
    InvalidInput,
)
from worker.mjapi.images import peek_head
from worker.store import keys
from worker.store.records import TERMINAL
from worker.store.runtime import Runtime

IMAGE_REF = "img:"
_REF = re.compile(r"img:([0-9a-f]{64})")
JOBS_WITH_IMAGES = keys.IMAGE_JOBS  # zset: unfinished jobs whose request names stored images (score: created)


def _key(digest: str) -> str:
    return keys.image(digest)


def _ttl_ms(rt: Runtime) -> int:
    return max(1, int(rt.settings.image_ttl_s * 1000))


def store_image(value: str, rt: Runtime) -> str:
    """Keep a data URI in Redis (TTL ``image_ttl_s``) and return its reference; references pass through."""
    if value.startswith(IMAGE_REF):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()
    rt.redis.set(_key(digest), value, px=_ttl_ms(rt), nx=True)
    rt.redis.pexpire(_key(digest), _ttl_ms(rt))
    return IMAGE_REF + digest


def image_refs(*values: Any) -> list[str]:
    """The digests of the stored images named anywhere in ``values`` (a request, modal input, a plan's masks)."""
    return sorted(set(_REF.findall(json.dumps(values, default=str))))


def _job_refs(job: Mapping[str, Any]) -> list[str]:
    return image_refs(job.get("request"), job.get("modal"), job.get("then"))


def _keep(digests: list[str], rt: Runtime) -> int:
    pipe = rt.redis.pipeline(transaction=False)
    for digest in digests:
        pipe.pexpire(_key(digest), _ttl_ms(rt))
    return sum(1 for kept in pipe.execute() if kept)


def keep_images(job: Mapping[str, Any], rt: Runtime) -> int:
    """Start the TTL of a job's stored images again: it is parked, admitted or retried, so it still needs them.

    Returns how many still exist. A new job with images is also remembered for ``sweep_images``.
    """
    digests = _job_refs(job)
    if not digests:
        return 0
    rt.redis.zadd(JOBS_WITH_IMAGES, {str(job["job_id"]): float(job.get("created_at") or time.time())}, nx=True)
    return _keep(digests, rt)


def sweep_images(rt: Runtime) -> int:
    """Keep the images of every unfinished job that has some, and forget finished jobs; returns images kept.

    A job parked for longer than ``image_ttl_s`` (a long batch behind few slots, a tripped breaker) sees no
    other event that would keep its images, so housekeeping calls this; it does the work once per quarter TTL
    (a lock in Redis), a few commands per job with images.
    """
    period_ms = max(int(rt.settings.housekeeping_interval_s * 1000), _ttl_ms(rt) // 4)
    if not rt.redis.set(keys.IMAGE_SWEEP_LOCK, "1", px=period_ms, nx=True):
        return 0
    ids = cast(list[str], rt.redis.zrange(JOBS_WITH_IMAGES, 0, -1))
    kept = 0
    for start in range(0, len(ids), 200):
        chunk = ids[start : start + 200]
        pipe = rt.redis.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hmget(keys.job(job_id), ["status", "request", "modal", "then"])
        digests: list[str] = []
        done: list[str] = []
        for job_id, (status, *values) in zip(chunk, pipe.execute(), strict=True):
            if status is None or status in TERMINAL:
                done.append(job_id)
            else:
                digests.extend(image_refs(*values))
        if done:
            rt.redis.zrem(JOBS_WITH_IMAGES, *done)
        if digests:
            kept += _keep(sorted(set(digests)), rt)
    return kept


def peek_image(value: str, rt: Runtime) -> tuple[str, int] | None:
    """(type label, approximate size) of a stored image from its first bytes and length, None if unknown."""
    match = _REF.fullmatch(value)
    if match is None:
        return None
    pipe = rt.redis.pipeline(transaction=False)
    pipe.strlen(_key(match.group(1)))
    pipe.getrange(_key(match.group(1)), 0, 127)
    length, head = pipe.execute()
    return peek_head(str(head), int(length)) if length else None


def load_image(value: str, field: str, rt: Runtime) -> str:
    """The data URI behind a reference (or the value itself); a lost reference is invalid input."""
    if not value.startswith(IMAGE_REF):
        return value
    data = cast(str | None, rt.redis.get(_key(value[len(IMAGE_REF) :])))
    if data is None:
        raise InvalidInput(f"field '{field}': image reference expired or unknown (kept image_ttl_s)")
    return data
