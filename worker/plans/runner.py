"""Starting a succeeded job's plan (``then="U1-4"``): called by finishing, and again by housekeeping when the
plan's first follow-ups did not all come to exist in time."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from celery import group
from celery.canvas import Signature, _chain

from worker.mjapi.errors import InvalidInput
from worker.plans.grammar import compile as compile_plan
from worker.plans.grammar import count_jobs, store_masks
from worker.store.runtime import Runtime

log = logging.getLogger("mjqueue.plans")

PLAN = "plan"  # expectations ``plan/<parent job id>`` (worker.jobs.admission)


def _plan_ids(sig: Signature, parent_id: str, path: str = "0") -> list[str]:
    """Give every task of a compiled plan an id derived from the parent job and its place in the plan;
    return the ids of the tasks sent first (the parent's direct follow-ups)."""
    if isinstance(sig, group):
        return [i for n, member in enumerate(sig.tasks) for i in _plan_ids(member, parent_id, f"{path}.{n}")]
    if isinstance(sig, _chain):
        first = _plan_ids(sig.tasks[0], parent_id, f"{path}.0")
        for n, link in enumerate(sig.tasks[1:], 1):
            _plan_ids(link, parent_id, f"{path}.{n}")
        return first
    task_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mjq-plan:{parent_id}:{path}"))
    sig.set(task_id=task_id)
    return [task_id]


def start_plan(parent_id: str, rt: Runtime, result: dict[str, Any] | None = None) -> bool:
    """Send the follow-ups of a succeeded job's plan unless they all exist; True when sent.

    The follow-ups' task (and job) ids come from the parent job id, so sending the plan again re-sends the
    same jobs instead of paying for new ones. It is sent again when it may have been lost (a worker killed
    between the finish step and the send, or a message popped by a worker killed before it recorded it):
    housekeeping calls this again once ``slot_lease_s`` passed without every follow-up existing.
    """
    job = rt.ledger.get_job(parent_id)
    if not job or not job.get("then") or job.get("status") != "succeeded":
        return False
    then = str(job["then"])
    try:
        canvas = compile_plan(store_masks(then, rt, files=False), rt)  # the worker never reads mask files
    except InvalidInput as exc:
        _plan_refused(job, then, exc, rt)
        return False
    first = _plan_ids(canvas, parent_id)
    if all(rt.ledger.status(i) is not None for i in first):
        return False
    rt.slots.expect(f"{PLAN}/{parent_id}", time.time() + rt.settings.slot_lease_s)
    canvas.apply_async((result or rt.ledger.job_result(parent_id),), root_id=job.get("task_id"),
                       parent_id=job.get("task_id"))
    return True


def _plan_refused(job: Mapping[str, Any], then: str, exc: InvalidInput, rt: Runtime) -> None:
    """A stored plan that cannot start (plans are checked and their masks stored where they are given, so this
    is a record made some other way): its planned children will never exist, so they are counted skipped once
    — otherwise the batch waits for them forever."""
    job_id = str(job["job_id"])
    log.error("job %s: plan %r not started: %s", job_id, then, exc)
    if not rt.ledger.set_once(job_id, "plan_error", str(exc)):
        return
    try:
        never = count_jobs(then)
    except InvalidInput:
        return  # a plan that does not parse was never counted as planned
    rt.ledger.mark_skipped(job.get("batch_id") or None, never, f"plan of {job_id} not started: {exc}")
