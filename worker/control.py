"""Operator controls (``mjq pause/resume/cancel/requeue``): batches and the global submit breaker.

Every function works on the Redis of the process settings; pass ``rt`` to use another runtime (tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, cast

from worker.app import app
from worker.jobs.admission import admit_parked
from worker.jobs.messages import resend
from worker.jobs.settle import cancel_job
from worker.mjapi.models import MODES
from worker.pricing import to_micros
from worker.reports.dashboard import failure_reason
from worker.reports.progress import FAILED
from worker.store import keys
from worker.store.ledger import result_of
from worker.store.runtime import Runtime

REQUEUABLE = frozenset({"failed", "timed_out", "cancelled", "needs_review"})
IN_FAILED_INDEX = frozenset(FAILED)  # end states kept in ``batch:<id>:failed`` (prelude.lua)


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
    batch_id: str, statuses: Iterable[str] = ("failed", "timed_out"), *, rt: Runtime, reason: str | None = None
) -> int:
    """Run again the jobs of a batch in ``statuses`` (failed, timed_out, cancelled, needs_review).

    Each job goes back to ``queued`` with its result cleared and its original task message is sent again
    (same task id, same chain), so it passes admission and submit-once like a new job. ``reason`` keeps only
    the jobs of one failure group (their fail reason, or their end state when they have none: the grouping of
    ``worker.reports.dashboard.failure_reason``). Failed end states are read from the batch's ``:failed``
    index, so a large batch is not read whole. Returns how many.
    """
    wanted = set(statuses)
    bad = wanted - REQUEUABLE
    if bad:
        raise ValueError(f"cannot requeue jobs in {sorted(bad)}; allowed: {sorted(REQUEUABLE)}")
    if wanted <= IN_FAILED_INDEX:
        ids = cast(list[str], rt.redis.zrange(keys.batch_failed(batch_id), 0, -1))
        jobs = [result_of(j) for j in rt.ledger.get_jobs(ids)]
    else:
        jobs = rt.ledger.batch_jobs(batch_id)
    jobs = [j for j in jobs if j.get("status") in wanted]
    if reason is not None:
        jobs = [j for j in jobs if failure_reason(j) == reason]
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


def resume_submitting(rt: Runtime) -> dict[str, Any]:
    """Clear the global breaker (after fixing the key or adding credit) and start parked jobs at once."""
    before = rt.ledger.breaker()
    rt.ledger.clear_breaker()
    admit_parked(MODES, rt)
    return before


def breaker_status(rt: Runtime) -> dict[str, Any]:
    """{"tripped": bool, "reason": str, "at": epoch seconds | None}."""
    return rt.ledger.breaker()
