"""Operator controls (``mjq pause/resume/cancel/requeue``): batches and the global submit breaker.

Every function works on the Redis of the process settings; pass ``rt`` to use another runtime (tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from worker.app import app
from worker.jobs.admission import admit_parked
from worker.jobs.messages import resend
from worker.jobs.settle import cancel_job
from worker.mjapi.models import MODES
from worker.pricing import to_micros
from worker.store import keys
from worker.store.runtime import Runtime

REQUEUABLE = frozenset({"failed", "timed_out", "cancelled", "needs_review"})


def pause_batch(batch_id: str, rt: Runtime) -> int:
    """Submit nothing more from this batch (jobs already submitted finish); returns parked jobs held."""
    return max(0, rt.ledger.set_batch_status(batch_id, "paused"))


def resume_batch(batch_id: str, rt: Runtime) -> int:
    """Let a paused batch submit again; its parked jobs go back to waiting and start as slots free."""
    moved = rt.ledger.set_batch_status(batch_id, "active")
    admit_parked(MODES, rt)
    return max(0, moved)


def set_budget(batch_id: str, amount: str | float, rt: Runtime) -> int:
    """Set (raise) a batch's budget; jobs its budget held start again as slots free. Returns how many."""
    moved = rt.ledger.set_budget(batch_id, to_micros(amount, "budget"))
    admit_parked(MODES, rt)
    return moved


def cancel_batch(batch_id: str, rt: Runtime) -> int:
    """Cancel every job of the batch not yet submitted (their tasks complete as cancelled); returns how many.

    Jobs already accepted upstream run to their end (they are paid for). Jobs whose task message has not run
    yet are cancelled when it does.
    """
    ids = rt.ledger.cancel_batch_record(batch_id)
    return sum(1 for job_id in ids if cancel_job(job_id, "batch cancelled", rt))


def requeue(
    batch_id: str, statuses: Iterable[str] = ("failed", "timed_out"), *, rt: Runtime
) -> int:
    """Run again the jobs of a batch in ``statuses`` (failed, timed_out, cancelled, needs_review).

    Each job goes back to ``queued`` with its result cleared and its original task message is sent again
    (same task id, same chain), so it passes admission and submit-once like a new job. Returns how many.
    """
    wanted = set(statuses)
    bad = wanted - REQUEUABLE
    if bad:
        raise ValueError(f"cannot requeue jobs in {sorted(bad)}; allowed: {sorted(REQUEUABLE)}")
    jobs = [j for j in rt.ledger.batch_jobs(batch_id) if j.get("status") in wanted]
    if not jobs:
        return 0
    if rt.ledger.batch_status(batch_id) == "cancelled":
        rt.redis.hset(keys.batch(batch_id), "status", "active")
    ids = [str(j["job_id"]) for j in jobs]
    count = rt.ledger.requeue_jobs(ids)
    for job_id in ids:
        job = rt.ledger.get_job(job_id) or {}
        message = job.get("message")
        if job.get("status") == "queued" and isinstance(message, dict):
            app.backend.forget(str(message["id"]))  # the old outcome must not answer .get() for the new run
            rt.slots.expect(job_id, time.time() + rt.settings.slot_lease_s)  # sent again if this one is lost
            resend(message)
    return count


def resume_submitting(rt: Runtime, upstream: str | None = None) -> dict[str, Any]:
    """Clear an upstream's stop (after fixing the key or adding credit; None: every upstream's) and start parked
    jobs at once. Returns the stop that was cleared (the first upstream's when all were)."""
    names = [rt.pool.get(upstream).name] if upstream else rt.pool.names
    before = {name: rt.ledger.breaker(name) for name in names}
    for name in names:
        rt.ledger.clear_breaker(name)
    admit_parked(MODES, rt)
    return before[names[0]]


def breaker_status(rt: Runtime) -> dict[str, Any]:
    """{"tripped": bool, "reason": str, "at": epoch seconds | None, ...}: the first upstream's stop; with a pool,
    ``tripped`` only when every upstream is stopped, and ``upstreams`` holds each one's."""
    if len(rt.pool.upstreams) == 1:
        return rt.ledger.breaker(rt.pool.default.name)
    each = {name: rt.ledger.breaker(name) for name in rt.pool.names}
    stopped = [name for name, stop in each.items() if stop["tripped"]]
    summary = {
        "tripped": len(stopped) == len(each),
        "reason": "; ".join(f"{name}: {each[name]['reason']}" for name in stopped),
        "at": max((each[n]["at"] or 0.0 for n in stopped), default=None),
        "until": None if any(each[n]["until"] is None for n in stopped) else
        min((each[n]["until"] or 0.0 for n in stopped), default=None),
        "kind": "unreachable" if any(each[n]["kind"] == "unreachable" for n in stopped) else "stop",
        "upstreams": each,
    }
    return summary
