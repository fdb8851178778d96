"""State changes of a submitted job: settle an upstream snapshot, end a job ourselves, flag ambiguity.

``settle`` is the one step webhooks and polls share; the winner of a terminal transition frees the slot,
admits the next parked job and sends ``tasks.track.finish``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from worker.jobs.admission import admit_parked
from worker.jobs.callbacks import job_progress
from worker.jobs.dispatch import send_finish, send_poll
from worker.jobs.hooks_seen import finished_by_poll
from worker.jobs.kinds import KINDS, build_request
from worker.mjapi.errors import MJError
from worker.mjapi.models import Task
from worker.store.records import TERMINAL, Job
from worker.store.runtime import Runtime

log = logging.getLogger("mjqueue.jobs")

STATUS_MAP = {
    "NOT_START": "submitted",
    "SUBMITTED": "submitted",
    "MODAL": "running",
    "IN_PROGRESS": "running",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "CANCEL": "cancelled",
}


def _progress_pct(progress: Any) -> int:
    try:
        return max(0, min(100, int(float(str(progress or "0").strip().rstrip("%")))))
    except (ValueError, OverflowError):  # "nan%", "inf%": a hint we cannot use, not a crash
        return 0


def _buttons(task: Task) -> list[dict[str, Any]]:
    return [b.model_dump(include={"custom_id", "label", "emoji", "style", "type"}) for b in task.buttons]


def _describe_prompts(text: str) -> list[str]:

    parts = re.split(r"\s*[1-4]️⃣\s*", text)
    return [p.strip() for p in parts if p.strip()]


def _fields_from_task(task: Task, to: str, source: str) -> dict[str, Any]:
    props = task.properties
    fields: dict[str, Any] = {"settled_by": source}
    if task.progress:
        fields["progress"] = task.progress
    final = props.get("finalPrompt") or props.get("final_prompt") or task.prompt_en
    if final:
        fields["final_prompt"] = final
    if task.start_time and 0 < task.start_time < 1e14:
        fields["started_at"] = float(task.start_time) / 1000.0
    if task.image_url:
        fields["image_url"] = task.image_url
    if task.action and task.action.upper() not in ("", "ACTION"):
        fields["action"] = task.action.upper()  # what the job made (UPSCALE, ZOOM...), as the upstream says
    if to == "succeeded":
        fields["buttons"] = _buttons(task)
        fields["progress"] = "100%"
        if str(task.action or "").upper() == "DESCRIBE":
            fields["extra"] = {"prompts": _describe_prompts(str(final or task.prompt or ""))}
        if props.get("seed"):
            fields.setdefault("extra", {})["seed"] = props.get("seed")
        if task.image_urls:  # trueai: the four grid images, one URL each
            fields.setdefault("extra", {})["image_urls"] = list(task.image_urls)
    if to == "failed":
        fields["fail_reason"] = task.fail_reason or "upstream FAILURE"
    if to == "cancelled":
        fields["fail_reason"] = task.fail_reason or "cancelled upstream"
    return fields


def settle(job_id: str, task: Task, source: str, rt: Runtime) -> str:
    """Apply an upstream task snapshot (poll or webhook) to its job. The first terminal transition wins.

    Returns ``unknown`` (no such job), ``mismatch`` (id/state do not belong to the job), ``ignored``
    (duplicate, regression or after the end), ``updated`` or ``finished`` (this call won the terminal step).
    """
    job = rt.ledger.get_job(job_id)
    if job is None:
        return "unknown"
    task_id, state = task.id, task.state
    upstream = job.get("upstream_id")
    ours = KINDS.get(str(job.get("kind") or ""), KINDS["imagine"]).hooked  # did this job set `state`?
    if job.get("submit_outcome") == "exists":
        ours = False  # "already exists": we follow a task another job created, which carries its `state`
    if upstream:
        if str(task_id) != str(upstream) or (ours and state and state != job_id):
            return "mismatch"
        reconcile = job.get("status") == "needs_review"
    else:
        if state != job_id or not task_id:
            return "mismatch"
        reconcile = True
    to = STATUS_MAP.get(str(task.status or "").upper())
    if to is None:
        return "ignored"
    if str(task.status).upper() == "MODAL" and job.get("modal") and job.get("status") not in TERMINAL:
        send_modal_found_late(job_id, job, str(task_id), rt)
    fields = _fields_from_task(task, to, source)
    extra: dict[str, Any] = {}
    if reconcile:
        now = time.time()
        mode = Job(job).mode
        fields.setdefault("submitted_at", now)
        fields["deadline_at"] = now + rt.settings.deadline_s(mode)
        extra = {"upstream": str(task_id), "inflight": now}
    ok, _prev, _why = rt.ledger.transition(
        job_id,
        to,
        forward=True,
        reconcile=reconcile,
        progress=_progress_pct(task.progress),
        fields=fields,
        release=to in TERMINAL,
        **extra,
    )
    mode = Job(job).mode
    if not ok:
        if rt.ledger.status(job_id) not in TERMINAL:
            hold_slot(job_id, mode, rt.ledger.next_check(job_id) or time.time(), rt, Job(job).upstream)  # a duplicate
        return "ignored"
    if to in TERMINAL:
        after_terminal(job_id, mode, rt)
        if source == "poll":
            finished_by_poll(job, rt)
        return "finished"
    hold_slot(job_id, mode, rt.ledger.next_check(job_id) or time.time(), rt, Job(job).upstream)
    if fields.get("progress") and fields["progress"] != job.get("progress"):
        job_progress(job, fields["progress"], rt)  # throttled; its own task
    return "updated"


def send_modal_found_late(job_id: str, job: Mapping[str, Any], task_id: str, rt: Runtime) -> bool:
    """A poll or callback sees MODAL for a job that has input for the modal step: send it, once.

    The submit answer did not say so (new-api rewrites "窗口等待" to code 1; a remix account stops a variation
    at the modal step): without this the job would wait in MODAL until its deadline. The once-only claim is in
    the ledger (``modal_sent_at``), so a duplicate callback or a concurrent poll sends nothing more.
    """
    if not rt.ledger.set_once(job_id, "modal_sent_at", repr(time.time())):
        return False
    payload = {"task_id": task_id, **(job.get("modal") or {})}
    try:
        request = build_request(KINDS["modal"], payload, None, Job(job).mode, rt)
        answer = rt.client_for(Job(job).upstream).submit(request)
    except MJError as exc:
        log.warning("job %s: the modal step found late could not be sent: %s", job_id, exc)
        rt.ledger.update(job_id, {"last_error": f"modal step: {exc}"})
        return False
    log.info("job %s: upstream task %s waits in MODAL; sent its modal step (%s)", job_id, task_id, answer.outcome)
    if answer.task_id and answer.task_id != task_id:
        rt.ledger.update(job_id, {"modal_task": answer.task_id})
    return True


def hold_slot(job_id: str, mode: str, next_check: float, rt: Runtime, upstream: str) -> None:
    """Keep a tracked job's slot lease until its next check and one lease period more (a check may be late).

    Renewed on accept, on every settle and at every poll: with webhooks the first poll comes after the expected
    duration, which may be longer than ``slot_lease_s``, and an expired lease lets another job take the slot
    of a job still running upstream.
    """
    rt.slots.renew(mode, job_id, max(0.0, next_check - time.time()) + rt.settings.slot_lease_s, upstream)


def after_terminal(job_id: str, mode: str, rt: Runtime) -> None:
    """The winner of a terminal transition: admit the next parked jobs and send the finishing step."""
    admit_parked([mode], rt)
    send_finish(job_id)


def finish_now(job_id: str, to: str, fields: Mapping[str, Any], rt: Runtime, *, release: bool = False) -> bool:
    """A terminal transition decided by us (failed at submit, timed out, cancelled); False if too late."""
    job = rt.ledger.get_job(job_id) or {}
    ok, _prev, _ = rt.ledger.transition(job_id, to, forward=True, fields=fields, release=release)
    if ok:
        after_terminal(job_id, Job(job).mode, rt)
    return ok


def mark_needs_review(job_id: str, reason: str, rt: Runtime) -> None:
    """Ambiguous submit: flag it. The slot stays leased for one expected duration (the job may be running)."""
    job = rt.ledger.get_job(job_id) or {}
    mode = Job(job).mode
    hold = time.time() + rt.settings.expected_duration_s(mode)
    ok, _prev, _ = rt.ledger.transition(
        job_id,
        "needs_review",
        from_states=["submitting", "queued"],
        require_no_upstream=True,
        fields={"fail_reason": reason},
        lease_until=hold,
    )
    if ok:
        send_finish(job_id)
    else:
        fresh = rt.ledger.get_job(job_id) or {}
        if fresh.get("upstream_id") and fresh.get("status") not in TERMINAL:
            ensure_tracking(fresh, rt)


def ensure_tracking(job: Mapping[str, Any], rt: Runtime) -> None:
    """Redelivered while tracked: make sure the job is in flight with a poll coming."""
    job_id = str(job["job_id"])
    if job.get("status") == "submitting":
        rt.ledger.transition(job_id, "submitted", from_states=["submitting"], inflight=time.time())
    rt.ledger.schedule(job_id, time.time())
    send_poll(job_id)


def cancel_job(job_id: str, reason: str, rt: Runtime) -> bool:
    """Cancel a job that has not been submitted (queued); its task completes as REVOKED."""
    job = rt.ledger.get_job(job_id) or {}
    ok, _prev, _ = rt.ledger.transition(
        job_id, "cancelled", from_states=["queued"], fields={"fail_reason": reason}, release=True
    )
    if ok:
        rt.slots.release(Job(job).mode, job_id, Job(job).upstream)
        send_finish(job_id)
    return ok

