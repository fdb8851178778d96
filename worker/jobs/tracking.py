"""Tracking submitted jobs without holding a worker: backoff polls (coalesced per due batch) and housekeeping."""

from __future__ import annotations

import contextlib
import logging
import random
import time

import redis

from worker.jobs.admission import admit_parked, resend_overdue
from worker.jobs.dispatch import send_finish, send_poll
from worker.jobs.hooks_seen import callbacks_missing
from worker.jobs.settle import finish_now, hold_slot, settle
from worker.mjapi.errors import MJError, NotSent
from worker.mjapi.models import MODES, Task
from worker.mjapi.profiles import PROFILES
from worker.reports.archive import archive_expired
from worker.settings import Settings
from worker.store import keys
from worker.store.images import sweep_images
from worker.store.records import TERMINAL, Job
from worker.store.runtime import Runtime

log = logging.getLogger("mjqueue.tracking")


def _jitter(delay: float, settings: Settings) -> float:
    return max(0.01, delay * (1.0 + random.uniform(-settings.poll_jitter, settings.poll_jitter)))


def callbacks_expected(settings: Settings, missing: bool = False) -> bool:
    """Webhooks are on and the upstream sends callbacks: not a relay that drops ``notifyHook`` (the new-api
    profile), nor an upstream found sending none (``missing``: ``worker.store.observed``)."""
    return (
        bool(settings.webhook_base_url)
        and PROFILES[settings.api_profile_name].callbacks is not False
        and not missing
    )


def first_poll_delay(
    mode: str, settings: Settings, queue_position: int | None = None, *, missing: bool = False
) -> float:
    """Delay from an accepted submit to the job's first poll.

    A job is rarely done before its mode's expected duration (longer when the upstream queued it behind
    ``queue_position`` others), and every early poll is an upstream request: polling only, the first poll waits
    for that (``MJQ_POLL_FROM_EXPECTED``); with webhooks the callbacks should have settled the job by then, so
    the safety net comes one ``MJQ_WEBHOOK_POLL_S`` later still.
    """
    slots = max(1, settings.slots_for(mode))
    expected = settings.expected_duration_s(mode) * (1.0 + max(0, queue_position or 0) / slots)
    expected = min(expected, settings.deadline_s(mode))  # an absurd queue position never delays past the deadline
    if callbacks_expected(settings, missing):
        return _jitter(expected + settings.webhook_poll_s, settings)
    if settings.poll_from_expected:
        return _jitter(expected, settings)
    return _jitter(settings.poll_initial_s, settings)


def next_poll_delay(polls: int, mode: str, settings: Settings, *, missing: bool = False) -> float:
    """Delay after the ``polls``-th poll: poll_initial_s growing to poll_max_s (webhooks: webhook_poll_s)."""
    if callbacks_expected(settings, missing):
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
    return max(2 * settings.poll_max_s, settings.submit_answer_window_s)


def poll_jobs(job_id: str, rt: Runtime) -> int:
    """One poll: claim this job (and other due jobs), fetch them, settle, schedule the next polls."""

    settings = rt.settings
    now = time.time()
    ids = rt.ledger.claim_due(job_id, now, claim_seconds(settings), settings.poll_batch_size)
    if not ids:
        return 0
    jobs = {i: j for i in ids if (j := rt.ledger.get_job(i)) is not None}
    by_upstream: dict[str, list[str]] = {}
    for job in jobs.values():
        if job.get("upstream_id"):
            by_upstream.setdefault(Job(job).upstream, []).append(str(job["upstream_id"]))
    found: dict[tuple[str, str], Task] = {}
    for name, wanted in by_upstream.items():  # a task id exists only on the upstream that made it
        found.update({(name, task_id): task for task_id, task in _fetch(rt, name, wanted).items()})
    missing = {name: callbacks_missing(rt, name) for name in {Job(j).upstream for j in jobs.values()}}
    for jid, job in jobs.items():
        if job.get("status") in TERMINAL:
            continue
        where = (Job(job).upstream, str(job.get("upstream_id") or ""))
        if where in found:
            settle(jid, found[where], "poll", rt)
        mode = Job(job).mode
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
        delay = next_poll_delay(polls, mode, settings, missing=missing[Job(job).upstream])
        if deadline:
            delay = max(0.01, min(delay, deadline - time.time() + 0.01))
        rt.ledger.schedule(jid, time.time() + delay)
        hold_slot(jid, mode, time.time() + delay, rt, Job(job).upstream)
        send_poll(jid, countdown=delay)
    return len(jobs)


def _fetch(rt: Runtime, upstream: str, wanted: list[str]) -> dict[str, Task]:
    """The upstream's tasks among ``wanted`` (one fetch, or one list-by-condition for several)."""
    found: dict[str, Task] = {}
    client = rt.client_for(upstream)
    try:
        if len(wanted) == 1:
            one = client.fetch(wanted[0])
            if one is not None:
                found[wanted[0]] = one
        elif wanted:
            for item in client.list_by_condition(wanted):
                found[item.id] = item
    except MJError as exc:
        log.warning("poll of %d jobs on %s failed: %s", len(wanted), upstream, exc)
    return found


def probe_unreachable(rt: Runtime) -> int:
    """Probe each upstream marked unreachable whose probe is due: an answer (any HTTP status) clears its stop
    and its parked jobs start; no answer doubles the gap (up to ``MJQ_UNREACHABLE_PROBE_MAX_S``)."""
    now = time.time()
    probed = 0
    for up in rt.pool.upstreams:
        stop = rt.ledger.breaker(up.name)
        if stop.get("kind") != "unreachable" or (stop.get("probe_at") or 0) > now:
            continue
        probed += 1
        try:
            rt.client_for(up.name).list_by_condition(["mjq-probe"])
        except NotSent as exc:
            gap = min(rt.settings.unreachable_probe_max_s, 2 * float(stop.get("probe_s") or 1.0))
            rt.ledger.set_probe(up.name, now + gap, gap)
            log.info("upstream %s still unreachable (%s); next probe in %.0fs", up.name, exc, gap)
            continue
        except MJError:
            pass  # it answered: reachable again
        rt.ledger.clear_breaker(up.name)
        log.warning("upstream %s answers again: its submits resume", up.name)
    return probed


def housekeeping(rt: Runtime) -> dict[str, int]:
    """Beat entry (one at a time by a Redis lock): admit parked jobs, re-send lost tasks, re-poll overdue jobs,
    re-finish."""

    settings = rt.settings
    lock = rt.redis.lock(
        keys.HOUSEKEEPING_LOCK, timeout=max(10.0, 5 * settings.housekeeping_interval_s), blocking=False
    )
    if not lock.acquire():
        return {"skipped": 1}
    try:
        probed = probe_unreachable(rt)
        admitted = admit_parked(MODES, rt)
        now = time.time()
        resent = resend_overdue(rt)
        grace = max(1.0, min(10.0, 2 * settings.poll_max_s))
        overdue = rt.ledger.overdue(now - grace)
        for jid in overdue:
            rt.ledger.schedule(jid, now)
            send_poll(jid)
        stale = rt.ledger.finishing_stale(now - settings.finish_stale_s)
        for jid in stale:
            send_finish(jid)
        images = sweep_images(rt)  # parked jobs may wait longer than their images' TTL
        archived = archive_expired(rt)  # batches past MJQ_RETENTION_DAYS leave Redis
        return {
            "admitted": admitted,
            "resent": resent,
            "overdue": len(overdue),
            "refinished": len(stale),
            "images_kept": images,
            "archived": archived,
            "probed": probed,
        }
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()
