"""Operator controls (``mjq pause/resume/cancel/requeue``): batches and the global submit breaker.

Every function works on the Redis of the process settings; pass ``rt`` to use another runtime (tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, cast

from worker.app import app
from worker.jobs.admission import admit_parked
from worker.jobs.dispatch import send_finishes, send_poll
from worker.jobs.messages import resend
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
    ids = rt.ledger.cancel_batch_record(batch_id)  # in bulk, in Redis: 16,000 jobs return in seconds
    send_finishes(ids)
    return len(ids)


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
    return requeue_ids([str(j["job_id"]) for j in jobs], rt)


def requeue_ids(ids: list[str], rt: Runtime, reason: str = "requeued") -> int:
    """Reset these terminal jobs to ``queued`` and send their stored task message again (same task id)."""
    count = rt.ledger.requeue_jobs(ids, reason)
    for job_id in ids:
        job = rt.ledger.get_job(job_id) or {}
        message = job.get("message")
        if job.get("status") == "queued" and isinstance(message, dict):
            app.backend.forget(str(message["id"]))  # the old outcome must not answer .get() for the new run
            rt.slots.expect(job_id, time.time() + rt.settings.slot_lease_s)  # sent again if this one is lost
            resend(message)
    return count


class RetryRefused(ValueError):
    """``mjq retry`` of a job that must not (or need not) be submitted again; the message says why."""


def retry_job(job_id: str, rt: Runtime, *, force: bool = False) -> str:
    """Run one failed / timed-out job again without paying twice; returns what was done.

    - never accepted upstream (no upstream id), or the upstream itself reported it failed: a new submit
      (requeued: same job id and task message, through admission and submit-once);
    - timed out while the upstream had it: it may still finish there, so it is tracked again (polled), not
      submitted again;
    - ``needs_review`` (the submit's outcome is unknown, it may have run and been paid): only with ``force``.
    """
    job = rt.ledger.get_job(job_id)
    if job is None:
        raise RetryRefused(f"no job {job_id!r}")
    status = str(job.get("status"))
    if status == "needs_review" and not force:
        raise RetryRefused(f"job {job_id} needs review: its submit may have run upstream (and been paid); check"
                           " upstream first, then `mjq retry --force` submits it again")  # fmt: skip
    if status not in ("failed", "timed_out", "needs_review"):
        raise RetryRefused(f"job {job_id} is {status}: only failed, timed_out (and needs_review with --force)"
                           " jobs are retried")  # fmt: skip
    if status == "timed_out" and job.get("upstream_id"):
        now = time.time()
        ok, _, _ = rt.ledger.transition(
            job_id, "submitted", from_states=["timed_out"], inflight=now, reason="retry: tracked again",
            fields={"deadline_at": now + rt.settings.deadline_s(str(job.get("mode") or "fast"))},
            delete=["fail_reason"],
        )
        if not ok:
            raise RetryRefused(f"job {job_id} changed meanwhile ({rt.ledger.status(job_id)}); nothing done")
        send_poll(job_id)
        return f"tracking {job_id} again: upstream task {job['upstream_id']} may still finish (nothing resubmitted)"
    if not isinstance(job.get("message"), dict):
        raise RetryRefused(f"job {job_id} has no stored task message to send again")
    batch_id = str(job.get("batch_id") or "")
    if batch_id and rt.ledger.batch_status(batch_id) == "cancelled":
        rt.redis.hset(keys.batch(batch_id), "status", "active")
    requeue_ids([job_id], rt, "retry" + (" --force" if force else ""))
    why = "forced" if force else "the old one was never accepted upstream, or the upstream failed it"
    return f"queued {job_id} again: a new submit ({why})"


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
