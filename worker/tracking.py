"""Tracking submitted jobs without holding a worker: backoff polls (coalesced per due batch) and housekeeping."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Any

import redis

from worker.admission import admit_parked, resend_overdue
from worker.ledger import TERMINAL
from worker.mjapi.errors import (
    MJError,
)
from worker.outcomes import field_of, finish_now, send_finish, settle
from worker.runtime import Runtime, runtime
from worker.settings import Settings
from worker.slots import MODES

log = logging.getLogger("mjqueue.tracking")


def _jitter(delay: float, settings: Settings) -> float:
    return max(0.01, delay * (1.0 + random.uniform(-settings.poll_jitter, settings.poll_jitter)))


def first_poll_delay(mode: str, settings: Settings) -> float:
    if settings.webhook_base_url:
        return _jitter(settings.expected_duration_s(mode), settings)
    return _jitter(settings.poll_initial_s, settings)


def next_poll_delay(polls: int, mode: str, settings: Settings) -> float:
    """Delay after the ``polls``-th poll: poll_initial_s growing to poll_max_s (webhooks: webhook_poll_s)."""
    if settings.webhook_base_url:
        return _jitter(settings.webhook_poll_s, settings)
    base = min(settings.poll_max_s, settings.poll_initial_s * settings.poll_factor ** max(0, polls))
    return _jitter(base, settings)


def claim_seconds(settings: Settings) -> float:
    """How long a poll holds the jobs it claimed: its own HTTP call, or two poll periods if longer.

    The claim only keeps a second poll off jobs being fetched right now (a second fetch would be harmless:
    settle is idempotent). If the worker dies mid-poll, the claimed jobs wait for this to run out before
    housekeeping re-polls them, so it follows the configured timeouts instead of a fixed 30 s floor (the
    worker-kill and Redis-restart scenarios of tests/reliability stalled 30 s on it whatever the settings).
    """
    return max(2 * settings.poll_max_s, settings.http_timeout_s + settings.http_connect_timeout_s + 1.0)


def poll_jobs(job_id: str, rt: Runtime | None = None) -> int:
    """One poll: claim this job (and other due jobs), fetch them, settle, schedule the next polls."""
    from tasks.track import poll

    rt = rt or runtime()
    settings = rt.settings
    now = time.time()
    ids = rt.ledger.claim_due(job_id, now, claim_seconds(settings), settings.poll_batch_size)
    if not ids:
        return 0
    jobs = {i: j for i in ids if (j := rt.ledger.get_job(i)) is not None}
    wanted = {str(j["upstream_id"]): i for i, j in jobs.items() if j.get("upstream_id")}
    found: dict[str, Any] = {}
    try:
        if len(wanted) == 1:
            (up,) = wanted
            one = rt.client.fetch(up)
            if one is not None:
                found[up] = one
        elif wanted:
            for item in rt.client.list_by_condition(list(wanted)):
                found[str(field_of(item, "id"))] = item
    except MJError as exc:
        log.warning("poll of %d jobs failed: %s", len(wanted), exc)
    for jid, job in jobs.items():
        if job.get("status") in TERMINAL:
            continue
        up = str(job.get("upstream_id") or "")
        if up in found:
            settle(jid, found[up], "poll", rt)
        mode = str(job.get("mode") or "fast")
        status = rt.ledger.status(jid)
        if status in TERMINAL or status is None:
            continue
        deadline = float(job.get("deadline_at") or 0)
        if deadline and time.time() >= deadline:
            finish_now(
                jid,
                "timed_out",
                {"fail_reason": f"no result within {settings.deadline_s(mode):.0f}s"},
                rt,
                release=True,
            )
            continue
        polls = rt.ledger.count(jid, "polls")
        delay = next_poll_delay(polls, mode, settings)
        if deadline:
            delay = max(0.01, min(delay, deadline - time.time() + 0.01))
        rt.ledger.schedule(jid, time.time() + delay)
        rt.slots.renew(mode, jid)
        poll.apply_async((jid,), countdown=delay)
    return len(jobs)


def housekeeping(rt: Runtime | None = None) -> dict[str, int]:
    """Beat entry (one at a time by a Redis lock): admit parked jobs, re-send lost tasks, re-poll overdue jobs,
    re-finish."""
    from tasks.track import poll

    rt = rt or runtime()
    settings = rt.settings
    lock = rt.redis.lock(
        "mjq:lock:housekeeping", timeout=max(10.0, 5 * settings.housekeeping_interval_s), blocking=False
    )
    if not lock.acquire():
        return {"skipped": 1}
    try:
        admitted = admit_parked(MODES, rt)
        now = time.time()
        resent = resend_overdue(rt)
        grace = max(1.0, min(10.0, 2 * settings.poll_max_s))
        overdue = rt.ledger.overdue(now - grace)
        for jid in overdue:
            rt.ledger.schedule(jid, now)
            poll.apply_async((jid,), countdown=0)
        stale = rt.ledger.finishing_stale(now - settings.finish_stale_s)
        for jid in stale:
            send_finish(jid)
        return {"admitted": admitted, "resent": resent, "overdue": len(overdue), "refinished": len(stale)}
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()
