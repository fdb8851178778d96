"""Admission of parked jobs: the waiting-set order and re-sending a parked task once a slot is free."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from worker.jobs.alerts import budget_reached
from worker.jobs.messages import resend
from worker.plans.runner import PLAN, start_plan
from worker.store.runtime import Runtime
from worker.upstreams.pool import Upstream, route_order

log = logging.getLogger("mjqueue.admission")


def queue_score(priority: int, created_at: float) -> float:
    """Waiting-set order: priority first (0 = most urgent), then enqueue time."""
    return priority * 1e13 + created_at * 1000.0


def waiting_score(job: Mapping[str, Any]) -> float:
    """A job's place among parked jobs: its priority, then the age of its root job, so a follow-up waits behind
    what was enqueued before its root, not behind the whole rest of a batch (depth first: a prompt's upscales
    come soon after its grid, while its buttons and CDN links are fresh)."""
    age = job.get("root_created_at") or job.get("created_at") or time.time()
    return queue_score(int(job.get("priority") or 0), float(age))


def admit_parked(modes: Iterable[str], rt: Runtime) -> int:
    """Admit parked jobs for which a slot is free now, on every upstream serving their mode inside its work
    window (its pinned jobs and its mode's), and re-send their tasks; returns how many."""
    sent = 0
    now = time.time()
    for mode in modes:
        ups = [u for u in rt.pool.serving(mode) if u.open_at(now)]
        if len(ups) > 1:
            ups = route_order(ups, rt.slots.used_today(now))
        for up in ups:
            sent += _admit_on(up, mode, rt)
    try:
        budget_reached(rt)  # a budget that held a head job just now is told (once per cause)
    except Exception:  # an alert is for people; never stop admissions because of it
        log.exception("budget alert bookkeeping failed")
    return sent


def _admit_on(up: Upstream, mode: str, rt: Runtime) -> int:
    sent = 0
    for job_id in rt.slots.admit_next(mode, up=up):  # each is now expected to start within its lease
        job = rt.ledger.get_job(job_id)
        message = (job or {}).get("message")
        if not isinstance(message, dict):
            rt.slots.release(mode, job_id, up.name)
            rt.slots.arrived(job_id)
            log.warning("parked job %s has no stored task message; released its slot", job_id)
            continue
        resend(message, admitted=True)
        sent += 1
    return sent


def resend_overdue(rt: Runtime) -> int:
    """Send again the tasks that were expected to start and did not; returns how many were sent.

    Task messages can be lost although every task acks late: the Redis transport pops a message before it
    records it as unacknowledged, and a worker killed in between loses it; so does a worker killed after
    ``admit_next`` took a job out of its waiting set but before its message was re-sent. Such a job sat in
    ``queued`` forever (found by the worker-kill scenario of tests/reliability). Whoever sends a message a job
    depends on records an expectation (``Slots.expect``); the task removes it when it starts; here the
    stored message of a job still waiting for it is sent again. A second copy is harmless: it has the same
    task id, and a job that already left ``queued`` is not submitted again.
    """
    now = time.time()
    again = 0
    for member in rt.slots.overdue_expected(now):
        kind, sep, ident = member.partition("/")  # job ids cannot contain "/"
        if sep:
            rt.slots.arrived(member)
            if kind == PLAN and start_plan(ident, rt):  # sends what is missing, and expects it again
                again += 1
            continue
        job = rt.ledger.get_job(member) or {}
        message = job.get("message")
        status = job.get("status")
        waiting = status == "queued" or (status == "submitting" and not job.get("upstream_id"))
        if waiting and isinstance(message, dict):
            log.warning("job %s: its task did not start in time (message lost?); sending it again", member)
            rt.slots.expect(member, now + rt.settings.slot_lease_s)
            resend(message, admitted=True)  # most often an admitted job whose message was lost: it holds a slot
            again += 1
        else:
            rt.slots.arrived(member)
    return again
