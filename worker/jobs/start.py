"""The job pipeline shared by every job task (root requests and follow-ups).

``start_job`` runs inside a task body: validate -> ledger record (idempotent) -> admission (slot, pacing,
daily cap, breaker, batch state) -> submit once -> hand over to tracking. A job that cannot start now is
*parked*: its task message is stored in the ledger and the task ends with ``Ignore``; whoever frees a slot
re-sends the same message (same task id, same chain and callbacks). ``settle`` is the one step that webhooks
and polls call; the winning terminal transition frees the slot, admits the next parked job and sends
``tasks.track.finish``, which downloads the image, stores the result under the ORIGINAL task id and fires
the continuation once.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn, TypedDict

from celery import Task
from celery.exceptions import Ignore
from celery.result import AsyncResult
from celery.worker import state as worker_state

from worker.app import BATCH, INTERACTIVE
from worker.jobs.admission import admit_parked, waiting_score
from worker.jobs.alerts import breaker_tripped, budget_reached
from worker.jobs.callbacks import check_callback, job_started
from worker.jobs.dispatch import send_finish, send_poll, task_event, task_event_again
from worker.jobs.finishing import JobFailed
from worker.jobs.hooks_seen import callbacks_missing
from worker.jobs.kinds import (
    KINDS,
    Kind,
    build_request,
    check_caller_fields,
    check_id,
    check_job_options,
    job_mode,
    lighten_images,
)
from worker.jobs.messages import message_from_request, resend
from worker.jobs.reprs import short_repr, task_reprs
from worker.jobs.settle import (
    after_terminal,
    cancel_job,
    ensure_tracking,
    finish_now,
    hold_slot,
    mark_needs_review,
)
from worker.jobs.tracking import first_poll_delay
from worker.mjapi.errors import (
    AnswerLost,
    Busy,
    InvalidInput,
    MJError,
    NotSent,
    Rejected,
    RetryLater,
    StopSubmitting,
)
from worker.mjapi.models import action_kind
from worker.plans.canvas import pending_children
from worker.plans.grammar import store_masks
from worker.pricing import price_key, price_of, to_micros
from worker.store.images import keep_images
from worker.store.keys import DEFAULT_UPSTREAM
from worker.store.ledger import result_of
from worker.store.records import TERMINAL, Job
from worker.store.runtime import Runtime, reset_runtime, runtime

__all__ = ["JobFailed", "JobTask", "reset_runtime", "run_job_task", "runtime", "start_job"]

log = logging.getLogger("mjqueue.jobs")


def park(task: Task[Any, Any], kind: Kind | None, job: Mapping[str, Any], rt: Runtime) -> None:
    """Store the message and add the job to its waiting set; if a slot is free by then, let the best parked job
    take it (with none free, the next job to end admits: a park costs no admission round)."""
    score = waiting_score(job)
    mode = Job(job).mode
    room = rt.slots.room_tables(mode, job.get("upstream_pin"))
    where = rt.ledger.park(str(job["job_id"]), message_from_request(task, rt, kind), score, room)
    keep_images(job, rt)  # a parked job may wait long: its images must outlive the wait (also swept)
    if where == "cancelled":
        cancel_job(str(job["job_id"]), "batch cancelled", rt)
    elif where == "parked_room":  # a slot freed meanwhile: its admission round ran before this job waited
        admit_parked([mode], rt)
    if where in ("parked", "parked_room", "held"):  # Flower: RETRY "parked: …", not STARTED for hours
        why = "its batch is paused" if where == "held" else f"waiting for a {mode} slot"
        event = {"uuid": task.request.id, "exception": f"parked: {why}", "traceback": ""}
        task_event(task.request.hostname, "task-retried", **event)
        task_event_again(2.0, lambda: not _running_here(str(task.request.id)), task.request.hostname,
                         "task-retried", **event)  # fmt: skip
    raise Ignore()


def _running_here(task_id: str) -> bool:
    """Whether this worker holds the task again (admitted meanwhile): asked of the process, not of Redis, so
    parked jobs cost no command while they wait."""
    return any(r.id == task_id for r in [*worker_state.active_requests, *worker_state.reserved_requests])


KNOWN_TASK_KINDS = ("action", "modal")  # jobs that continue an upstream task given by its id


def pin_of(
    option: str | None, parent: Mapping[str, Any] | None, rt: Runtime, mode: str, task_id: Any = None
) -> str | None:
    """The upstream a job must run on: a follow-up's parent's (the parent's task id exists only there), the
    ``upstream`` option, or for an action or modal step on an upstream task (``task_id``) the upstream recorded
    for that task; None = routed at admission. ``InvalidInput`` when the pin cannot serve the job (an unknown
    name, a mode it does not serve), or when a pool of several upstreams for the mode cannot tell which one made
    the task the job continues."""
    if parent is not None:
        recorded = rt.ledger.get_job(str(parent.get("job_id"))) or {}
        inherited = recorded.get("upstream") or parent.get("upstream")
        if inherited:
            problem = rt.pool.pin_problem(str(inherited), mode)
            if problem:
                raise InvalidInput("upstream", f"the parent job ran on {inherited}: {problem}")
            return str(inherited)
    if option:
        check_upstream(option, rt, mode)
        return option
    if (parent is None and not task_id) or len(rt.pool.serving(mode)) <= 1:
        return None  # routed; with one upstream for the mode there is no wrong one
    if parent is None:
        owner = str((rt.ledger.job_by_upstream(str(task_id)) or {}).get("upstream") or "")
        if owner:
            check_upstream(owner, rt, mode)
            return owner
        what = f"task {task_id} was not made through mjqueue"
    else:  # recorded before the pool (no upstream field): the one upstream of those days
        if DEFAULT_UPSTREAM in rt.pool.by_name:
            return DEFAULT_UPSTREAM
        what = f"the parent job {parent.get('job_id')} records no upstream"
    names = ", ".join(u.name for u in rt.pool.serving(mode))
    raise InvalidInput("upstream", f"{what}, so the upstream that holds it is unknown; give upstream= one of {names}")


def check_pin(kind: str, call: Mapping[str, Any], rt: Runtime) -> None:
    """Producer side, before anything is queued: the upstream a job's options pin it to can serve it."""
    if call.get("parent_result") is not None:
        return  # a follow-up runs on its parent's upstream (checked by the worker: ``pin_of``)
    task_ref = call.get("task_id") if kind in KNOWN_TASK_KINDS else None
    if call.get("upstream") or task_ref:
        pin_of(call.get("upstream"), None, rt, job_mode(KINDS[kind], call, call.get("mode")), task_ref)


def check_upstream(name: object, rt: Runtime, mode: str | None = None) -> None:
    """The ``upstream`` option must name an upstream of the pool that serves the job's mode."""
    problem = rt.pool.pin_problem(name, mode)
    if problem:
        raise InvalidInput("upstream", problem)


def start_job(
    task: JobTask,
    kind: str,
    payload: Mapping[str, Any],
    *,
    job_id: str | None = None,
    mode: str | None = None,
    batch_id: str | None = None,
    priority: int | None = None,
    parent_result: Mapping[str, Any] | None = None,
    then: str | None = None,
    modal: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    budget: float | str | None = None,
    split_grid: bool = False,
    upstream: str | None = None,
) -> dict[str, Any]:
    """Run one job from inside a task body; the task completes later (``Ignore`` now, result on finish).

    ``kind``: imagine | blend | describe | swap_face | action | modal | upload. ``payload``: the client's
    keyword arguments in snake_case (images as data URIs or ``img:`` references; ``notify_hook`` and
    ``state`` are refused).
    ``job_id`` defaults to the task id. ``parent_result`` (a job result dict) sets lineage: parent_job,
    root_job, and batch/mode/priority defaults from the parent. ``modal`` ({"prompt", "mask_base64"}) is sent
    through ``/mj/submit/modal`` at once when an action answers "waiting for modal". ``then`` is stored for
    follow-up plans. Raises ``InvalidInput`` (the task FAILS, no retry) for bad input; returns the job result
    only when the job had already finished (a duplicate task with another id).
    """
    rt = task.runtime()
    spec = KINDS.get(kind)
    if spec is None:
        raise InvalidInput(f"field 'kind': unknown request kind {kind!r}")
    req = task.request
    job_id = job_id or str(req.id)
    check_id(job_id)  # a raw Celery task id (send_task(task_id=...)) becomes Redis keys and a media file name
    rt.slots.arrived(job_id)  # the task an admission or a retry expected has started (worker.jobs.admission)
    job = rt.ledger.get_job(job_id)
    if budget is not None and (batch_id or (parent_result or {}).get("batch_id")):
        rt.ledger.set_budget(str(batch_id or (parent_result or {})["batch_id"]), to_micros(budget, "budget"))
    if job is None:
        job = _create(task, spec, payload, job_id, mode, batch_id, priority, parent_result, then, modal, meta, rt,
                      split_grid, upstream)
    if job.get("task_id") and job.get("task_id") != req.id:
        if job.get("status") in TERMINAL:
            return result_of(job)
        log.warning("job %s already runs under task %s; ignoring task %s", job_id, job.get("task_id"), req.id)
        raise Ignore()
    try:
        return _advance(task, spec, job, rt)
    except Ignore:
        pass
    # Raised afresh, outside the handler: Celery formats the traceback of every ignored task, and a parked job's
    # went a dozen frames deep (formatting it took a fifth of a worker's parking time).
    raise Ignore()


def _create(
    task: Task[Any, Any],
    spec: Kind,
    payload: Mapping[str, Any],
    job_id: str,
    mode: str | None,
    batch_id: str | None,
    priority: int | None,
    parent: Mapping[str, Any] | None,
    then: str | None,
    modal: Mapping[str, Any] | None,
    meta: Mapping[str, Any] | None,
    rt: Runtime,
    split_grid: bool = False,
    upstream: str | None = None,
) -> dict[str, Any]:
    check_caller_fields(payload)
    if parent is not None:
        batch_id = batch_id or parent.get("batch_id")
        mode = mode or parent.get("mode")
    resolved_mode = job_mode(spec, payload, mode)
    try:
        task_ref = payload.get("task_id") if spec.name in KNOWN_TASK_KINDS else None
        pin = pin_of(upstream, parent, rt, resolved_mode, task_ref)
        build_request(spec, payload, None, resolved_mode, rt)  # validation (worker side, for send_task users)
        if modal:
            build_request(KINDS["modal"], {"task_id": "0", **modal}, None, resolved_mode, rt)
    except InvalidInput as exc:
        log.info("job %s refused: %s", job_id, exc)
        if batch_id and rt.ledger.is_expected(batch_id, job_id):
            _record_refused(task, spec, job_id, batch_id, resolved_mode, exc, rt)
        raise
    light = lighten_images(spec, payload, rt)
    if modal:
        modal = lighten_images(KINDS["modal"], modal, rt)
    if priority is None:  # a follow-up runs at its parent's priority (0, the most urgent, included)
        inherited = parent.get("priority") if parent is not None else None
        priority = int(inherited) if inherited is not None else (5 if batch_id else 2)
    fields: dict[str, Any] = {
        "task_id": task.request.id,
        "task_name": task.name,
        "kind": spec.name,
        "action": spec.action,
        "mode": resolved_mode,
        "batch_id": batch_id or "",
        "priority": priority,
        "prompt": light.get("prompt") or (modal or {}).get("prompt"),
        "request": light,
        "modal": modal,
        "then": then,
        "meta": dict(meta or {}),
        "message": message_from_request(task, rt, spec),
    }
    if spec.name == "action":
        fields["custom_id"] = str(light.get("custom_id") or "")
        fields["action"] = action_kind(fields["custom_id"])  # the upstream task's own action replaces it
    fields.update(price_fields(spec.name, fields["action"], resolved_mode, rt, pin))
    if pin:
        fields["upstream_pin"] = pin
    if split_grid:
        fields["split_grid"] = 1
    if parent is not None:
        fields["parent_job"] = parent.get("job_id")
        fields["root_job"] = parent.get("root_job") or parent.get("job_id")
        recorded = rt.ledger.get_job(str(parent.get("job_id"))) or {}
        fields["root_created_at"] = recorded.get("root_created_at") or recorded.get("created_at")
    created, _ = rt.ledger.create_job(job_id, fields)
    if created and parent is None and batch_id:
        planned = pending_children(fields["message"], then)
        if planned:
            rt.ledger.add_planned(batch_id, planned)
    job = rt.ledger.get_job(job_id)
    assert job is not None
    return job


def price_fields(kind: str, action: str | None, mode: str, rt: Runtime, upstream: str | None = None) -> dict[str, Any]:
    """The job's price at creation (micros; absent = unknown) and whether a failure after acceptance is charged:
    on its pinned upstream, else the first; admission sets those of the upstream it goes to (gates.lua)."""
    key = price_key(kind, action)
    up = rt.upstream(upstream)
    price = price_of(up.price_tables, key, mode)
    fields: dict[str, Any] = {"price_key": key, "charges_failures": "1" if up.charges_failures else "0"}
    if price is not None:
        fields["price_micros"] = price
    return fields


def _record_refused(
    task: Task[Any, Any], spec: Kind, job_id: str, batch_id: str, mode: str, exc: InvalidInput, rt: Runtime
) -> None:
    """A job its batch counts on, refused by the worker (an image reference that expired before it started):
    it is recorded as failed with the reason, so the batch still ends and ``mjq status`` says why."""
    fields = {"task_id": task.request.id, "task_name": task.name, "kind": spec.name, "action": spec.action,
              "mode": mode, "batch_id": batch_id, "message": message_from_request(task, rt, spec)}
    rt.ledger.create_job(job_id, fields)
    finish_now(job_id, "failed", {"fail_reason": f"invalid input: {exc}"}, rt)


def _advance(task: Task[Any, Any], spec: Kind, job: dict[str, Any], rt: Runtime) -> dict[str, Any]:
    job_id = str(job["job_id"])
    status = job.get("status")
    if status == "queued":
        _admit_and_submit(task, spec, job, rt)
    elif status == "submitting":
        if job.get("upstream_id"):
            _back_to_tracking(job, rt)
        else:
            settings = rt.settings
            window = settings.submit_answer_window_s
            age = time.time() - float(job.get("submitting_at") or 0.0)
            if age < window:
                # Another copy of this task may still be inside its POST: look again once it must be over.
                countdown = window - age + 0.2
                rt.slots.expect(job_id, time.time() + countdown + settings.slot_lease_s)  # if this message is lost
                resend(message_from_request(task, rt, spec), countdown=countdown)
            else:
                # Crash between the POST and recording its answer: never a second POST.
                mark_needs_review(job_id, "submit interrupted before the answer was recorded", rt)
    elif status in ("submitted", "running"):
        _back_to_tracking(job, rt)
    elif status in TERMINAL and not rt.ledger.continued(job_id):
        send_finish(job_id)
    raise Ignore()


def _back_to_tracking(job: Mapping[str, Any], rt: Runtime) -> None:
    """A copy of the task of a job that already has an upstream id: never a second POST, only tracking.

    Counted (``redelivered``) because a task that keeps coming back (a worker killed by it) must be visible.
    """
    rt.ledger.count(str(job["job_id"]), "redelivered")
    ensure_tracking(job, rt)


def _admit_and_submit(task: Task[Any, Any], spec: Kind, job: dict[str, Any], rt: Runtime) -> None:
    job_id, mode = str(job["job_id"]), Job(job).mode
    if spec.needs_slot:
        score = waiting_score(job)
        candidates = rt.slots.candidates(mode, job.get("upstream_pin"), current=job.get("upstream"))
        adm = rt.slots.try_admit(mode, job_id, score, candidates)
        if adm.upstream:
            job["upstream"] = adm.upstream
        if adm.reason == "cancelled":
            cancel_job(job_id, "batch cancelled", rt)
            raise Ignore()
        if adm.reason in ("budget", "budget_daily"):
            budget_reached(rt)  # told once per cause (worker.jobs.alerts)
        if adm.retry_at is not None:
            # A retry refused by the submit pacing: it keeps its slot and submits when the pace allows.
            _retry(task, spec, job, max(0.05, adm.retry_at - time.time()), rt)
        if not adm.admitted:
            park(task, spec, job, rt)
        keep_images(job, rt)
    ok, _current, why = rt.ledger.transition(
        job_id,
        "submitting",
        from_states=["queued"],
        gate=True,
        incr={"attempts": 1},
        fields={"submitting_at": time.time()},
    )
    if not ok:
        up_name = Job(job).upstream
        if why in ("breaker", "paused"):
            rt.slots.release(mode, job_id, up_name)
            park(task, spec, job, rt)
        elif why == "cancelled":
            rt.slots.release(mode, job_id, up_name)
            cancel_job(job_id, "batch cancelled", rt)
        raise Ignore()
    _submit(task, spec, job, rt)


def _submit(task: Task[Any, Any], spec: Kind, job: dict[str, Any], rt: Runtime) -> None:
    """The one POST of a job (already ``submitting``, slot held) and what its answer means."""
    job_id, mode = str(job["job_id"]), Job(job).mode
    up = rt.upstream(Job(job).upstream)
    client = rt.client_for(up.name)
    try:
        request = build_request(spec, job.get("request") or {}, job_id, mode, rt)
        if not up.webhooks and getattr(request, "notify_hook", None):
            request = request.model_copy(update={"notify_hook": None})  # it never calls back: poll only
        if rt.ledger.breaker_tripped(up.name):
            # Tripped since this job passed its gates (a concurrent submit's answer): the POST must not go out.
            _back_to_parked(task, spec, job_id, rt)
        later = rt.slots.pace_post(job_id, up) if spec.needs_slot else None
        if later is not None:  # another job's submit came first: this one waits for the pace, uncounted
            rt.ledger.transition(job_id, "queued", from_states=["submitting"], incr={"attempts": -1})
            _retry(task, spec, job, max(0.05, later - time.time()), rt)
        if spec.name == "upload":
            urls = client.upload_discord_images(request.base64_array, filter=getattr(request, "filter", None))
            finish_now(job_id, "succeeded", {"extra": {"urls": urls}, "progress": "100%"}, rt)
            return
        answer = client.submit(request)
        if answer.outcome == "modal" and job.get("modal"):
            modal_payload = {"task_id": answer.task_id, **(job.get("modal") or {})}
            answer = client.submit(build_request(KINDS["modal"], modal_payload, None, mode, rt))
    except InvalidInput as exc:
        finish_now(job_id, "failed", {"fail_reason": f"invalid input: {exc}"}, rt, release=True)
    except Rejected as exc:
        finish_now(job_id, "failed", {"fail_reason": reason_of(exc)}, rt, release=True)
    except StopSubmitting as exc:
        rt.ledger.reached(up.name)
        rt.ledger.note_upstream_error(up.name, f"{type(exc).__name__}: {reason_of(exc)}")
        until = stop_until(exc, rt.settings.block_cooldown_s)
        why = f"{type(exc).__name__}: {reason_of(exc)}"
        if until is not None:
            why += f" (resumes by itself at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))})"
        tripped = rt.ledger.trip_breaker(why, until, upstream=up.name)
        log.error("submitting to %s stopped (%s): %s", up.name, "tripped" if tripped else "already tripped", why)
        if tripped:
            breaker_tripped(why, rt, up.name)
        _back_to_parked(task, spec, job_id, rt)
    except AnswerLost as exc:
        mark_needs_review(job_id, f"answer lost after sending: {reason_of(exc)}", rt)
    except NotSent as exc:
        rt.ledger.note_upstream_error(up.name, reason_of(exc))
        _not_reached(task, spec, job_id, up.name, exc, rt)
    except RetryLater as exc:  # every retryable error is one of these (or NotSent)
        rt.ledger.reached(up.name)
        rt.ledger.note_upstream_error(up.name, reason_of(exc))
        _retry_later(task, spec, job_id, exc, rt)
    except MJError as exc:
        mark_needs_review(job_id, f"unexpected answer: {reason_of(exc)}", rt)
    else:
        rt.ledger.reached(up.name)
        _accepted(job_id, mode, answer, rt, job.get("meta"))


def _not_reached(task: Task[Any, Any], spec: Kind, job_id: str, upstream: str, exc: NotSent, rt: Runtime) -> NoReturn:
    """The POST never reached the upstream (refused, connect timeout): nothing was sent, so no attempt is used
    up. Once its submits have failed so for ``MJQ_UNREACHABLE_AFTER_S`` the upstream is marked *unreachable*:
    its submits pause (jobs park, unpinned ones go to the others) and housekeeping probes it until it answers."""
    now = time.time()
    since = rt.ledger.connect_failed(upstream, now)
    rt.ledger.transition(job_id, "submitting", from_states=["submitting"], incr={"attempts": -1})
    refused = rt.ledger.count(job_id, "connect_failures")
    if now - since >= rt.settings.unreachable_after_s:
        why = f"unreachable for {now - since:.0f}s: {reason_of(exc)}"
        if rt.ledger.trip_breaker(why, upstream=upstream, kind="unreachable"):
            rt.ledger.set_probe(upstream, now + 1.0, 1.0)
            log.error("upstream %s marked unreachable: %s", upstream, why)
            breaker_tripped(why, rt, upstream)
        _back_to_parked(task, spec, job_id, rt)
    _retry_later(task, spec, job_id, exc, rt, backoff_n=refused)


def _back_to_parked(task: Task[Any, Any], spec: Kind, job_id: str, rt: Runtime) -> NoReturn:
    """Its upstream's breaker is tripped: undo ``submitting`` (nothing was sent), free the slot and park the job
    (a root job that is not pinned waits for any upstream serving its mode)."""
    rt.ledger.transition(job_id, "queued", from_states=["submitting"], release=True)
    park(task, spec, rt.ledger.get_job(job_id) or {"job_id": job_id}, rt)
    raise Ignore()  # park always raises; this says so to the type checker


def stop_until(exc: StopSubmitting, cooldown_s: float, now: float | None = None) -> float | None:
    """When a stop ends by itself: the next UTC midnight for a daily limit, ``cooldown_s`` after a temporary
    block; ``None`` (until ``mjq resume``) for the rest (key, credit, account)."""
    now = time.time() if now is None else now
    resume = getattr(exc, "resume", None)
    if resume == "next_utc_day":
        return (now // 86_400 + 1) * 86_400
    if resume == "cooldown":
        return now + cooldown_s
    return None


def reason_of(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    word = getattr(exc, "banned_word", None)
    return f"{text} (banned word: {word})" if word and str(word) not in text else text


def retry_delay(attempts: int, cap: float, jitter: float, retry_after: float | None = None) -> float:
    """Seconds before submit attempt ``attempts + 1``: cap/16, cap/8, cap/4, then the cap, jittered downwards.

    Jitter is applied after capping, so even capped retries spread out (within ``[cap * (1 - jitter), cap]``)
    instead of a whole batch retrying in step; a Retry-After is honoured up to the cap.
    """
    base = 0.5 * cap * 2 ** (attempts - 4) if attempts < 4 else cap
    delay = base * (1.0 - random.uniform(0.0, jitter))
    return min(cap, max(delay, float(retry_after or 0.0)))


def _retry_later(
    task: Task[Any, Any], spec: Kind, job_id: str, exc: Exception, rt: Runtime, backoff_n: int | None = None
) -> NoReturn:
    """Queue full / 429 / 5xx / not sent: back to queued, keep the slot, retry with backoff and jitter
    (``backoff_n``: the step of the backoff when the attempts are not counted, as for a refused connection)."""
    settings = rt.settings
    job = rt.ledger.get_job(job_id) or {"job_id": job_id}
    attempts = int(job.get("attempts") or 1)
    gave_up = None if backoff_n is not None else _give_up(job_id, job, attempts, exc, rt)
    if gave_up:
        finish_now(job_id, "failed", {"fail_reason": f"{gave_up}: {reason_of(exc)}"}, rt, release=True)
        raise Ignore()
    delay = retry_delay(backoff_n or attempts, settings.submit_retry_max_s, settings.poll_jitter,
                        getattr(exc, "retry_after", None))
    rt.ledger.transition(job_id, "queued", from_states=["submitting"], fields={"last_error": reason_of(exc)})
    log.info("job %s: %s; retry %d in %.2fs", job_id, reason_of(exc), attempts, delay)
    _retry(task, spec, job, delay, rt, exc)


def _retry(
    task: Task[Any, Any], spec: Kind, job: Mapping[str, Any], delay: float, rt: Runtime, exc: Exception | None = None
) -> NoReturn:
    """Run this task again in ``delay`` seconds holding the job's slot, its images and its short Flower repr.

    ``task.retry`` rebuilds the message from the request, and without our reprs Celery shows the full prompt
    and the ``img:`` keys.
    """
    job_id, mode = str(job["job_id"]), Job(job).mode
    lease = rt.settings.slot_lease_s
    recorded = rt.ledger.get_job(job_id) or job
    rt.slots.renew(mode, job_id, delay + lease, Job(recorded).upstream)
    rt.slots.expect(job_id, time.time() + delay + lease)  # the retry message may be lost
    keep_images(job, rt)
    kwargs = lighten_images(spec, dict(task.request.kwargs or {}), rt)
    argsrepr, kwargsrepr = task_reprs(task, task.request.args, kwargs, rt)
    raise task.retry(
        args=task.request.args,
        kwargs=kwargs,  # a send_task producer's base64 goes no further than its first message
        countdown=delay,
        max_retries=None,
        exc=exc,
        argsrepr=argsrepr,
        kwargsrepr=kwargsrepr,
    )


def _give_up(job_id: str, job: Mapping[str, Any], attempts: int, exc: Exception, rt: Runtime) -> str | None:
    """Why a submit that must be retried is given up instead, or None to retry.

    A *busy* answer (``Busy``: queue full, per-user concurrency/queue limits, a saturated group, 429) says the
    upstream has no room now, not that the request is at fault: a shared account or a slot setting above the
    account's capacity makes them routine during a long night, so they do not use up ``submit_max_attempts``
    (found by the connect/system-error scenario of tests/reliability, where a job failed after 8 busy answers).
    They are bounded in time instead (``MJQ_SUBMIT_BUSY_MAX_S``, hours by default: waiting costs nothing, and
    the job deadline is about a running task, not a full queue). Upstream trouble ("系统异常", "服务暂不可用",
    5xx) and not-sent errors are counted.
    """
    settings = rt.settings
    if isinstance(exc, Busy):
        rt.ledger.set_once(job_id, "busy_since", str(time.time()))
        busy_answers = rt.ledger.count(job_id, "busy_answers")
        busy_for = time.time() - float(job.get("busy_since") or time.time())
        if settings.submit_busy_max_s and busy_for > settings.submit_busy_max_s:
            return f"upstream busy for {busy_for:.0f}s ({busy_answers} busy answers)"
        return None
    errors = attempts - int(job.get("busy_answers") or 0)
    return f"gave up after {errors} failed attempts" if errors >= settings.submit_max_attempts else None


def _accepted(job_id: str, mode: str, answer: Any, rt: Runtime, meta: Mapping[str, Any] | None = None) -> None:
    """Record the upstream id (submitted), schedule the first poll, call ``job.started`` back if asked."""
    upstream = str(answer.task_id) if answer.task_id is not None else None
    if not upstream:
        mark_needs_review(job_id, f"accepted without a task id: {answer.description}", rt)
        return
    now = time.time()
    if answer.outcome == "modal":
        # The action waits for its modal step and this job has no input for it. A raw ``tasks.action`` job is
        # done: the modal is another request (``tasks.modal``), its result says ``awaiting_modal``. A follow-up
        # (press, or vary/reroll/pan on a remix account with no prompt) fails: "succeeded" with no image would
        # hand its chain a result without buttons.
        extra = {"awaiting_modal": True, "properties": dict(getattr(answer, "properties", None) or {})}
        fields = {"submitted_at": now, "submit_outcome": "modal", "progress": "MODAL", "extra": extra}
        follow_up = ((rt.ledger.get_job(job_id) or {}).get("meta") or {}).get("follow_up")
        if follow_up:
            fields["fail_reason"] = (
                f"{follow_up!r} needs the modal step: give a prompt/mask for it (press(..., prompt=, mask=), "
                f"custom_zoom, vary_region, remix); upstream task {upstream} waits in MODAL"
            )
        ok, _prev, _ = rt.ledger.transition(
            job_id,
            "failed" if follow_up else "succeeded",
            from_states=["submitting"],
            upstream=upstream,
            release=True,
            fields=fields,
        )
        if ok:
            after_terminal(job_id, mode, rt)
        return
    recorded = rt.ledger.get_job(job_id) or {}
    delay = first_poll_delay(
        mode, rt.settings, getattr(answer, "queue_position", None),
        missing=callbacks_missing(rt, Job(recorded).upstream),
    )
    fields = {
        "submitted_at": now,
        "deadline_at": now + rt.settings.deadline_s(mode),
        "submit_outcome": answer.outcome,
        "queue_position": getattr(answer, "queue_position", None),
    }
    if answer.outcome == "exists":
        existing = rt.ledger.job_by_upstream(upstream)
        fields["existing_job"] = existing.get("job_id") if existing else None
    ok, current, _ = rt.ledger.transition(
        job_id,
        "submitted",
        from_states=["submitting"],
        fields=fields,
        upstream=upstream,
        inflight=now + delay,
    )
    if not ok:
        # A webhook reconciled the job first (it carries our job id in `state`): keep its state.
        if current not in TERMINAL:
            rt.ledger.update(job_id, {k: v for k, v in fields.items() if k != "submitted_at"})
            rt.ledger.set_once(job_id, "upstream_id", upstream)
            rt.ledger.schedule(job_id, now + delay)
        else:
            return
    hold_slot(job_id, mode, now + delay, rt, Job(recorded).upstream)  # the first poll may come long after the lease
    send_poll(job_id, countdown=delay)
    job_started(job_id, meta, rt)  # its own task: a dead receiver never delays the job


class JobTask(Task):  # type: ignore[misc]
    """Validates before anything is queued, stores images once, sets a short repr and the queue.

    ``.delay()``/``.apply_async()`` with bad input raise ``InvalidInput`` in the producer. The task id is the
    job id (``job_id`` keyword if given), so ``AsyncResult(job_id)`` resolves to the job result.
    """

    kind: str = ""
    counts_as_job = True  # batches count these (worker.plans.canvas)
    acks_late = True
    reject_on_worker_lost = True
    max_retries = None
    typing = False  # we bind positional arguments ourselves

    def runtime(self) -> Runtime:
        """The process's runtime: where Celery calls into us (task bodies, producer-side hooks) it comes from
        here, and is passed on explicitly below."""
        return runtime()

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        if options.get("retries") or not self.kind:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        call = self._bind(list(args or []), dict(kwargs or {}))
        rt = self.runtime()
        spec = KINDS[self.kind]
        job_opts = {k: call.get(k) for k in ("mode", "batch_id", "job_id")}
        check_caller_fields(call)
        check_job_options(call)
        check_callback(call, rt.settings)
        payload = {k: v for k, v in call.items() if k not in JOB_OPTIONS}
        mode = job_mode(spec, payload, call.get("mode"))
        check_pin(self.kind, call, rt)
        build_request(spec, payload, None, mode, rt)  # raises InvalidInput before anything is queued
        if call.get("modal"):
            build_request(KINDS["modal"], {"task_id": "0", **call["modal"]}, None, mode, rt)
        options.setdefault("kwargsrepr", short_repr(spec, payload, job_opts, rt))
        options.setdefault("argsrepr", "()")
        light = lighten_images(spec, call, rt)
        if call.get("modal"):
            light["modal"] = lighten_images(KINDS["modal"], call["modal"], rt)
        if call.get("then"):
            light["then"] = store_masks(str(call["then"]), rt)  # region masks are read here, where the plan is given
        task_id = task_id or call.get("job_id") or str(uuid.uuid4())
        check_id(task_id)  # the task id is the job id
        if "queue" not in options and "routing_key" not in options:
            options["queue"] = BATCH if call.get("batch_id") else INTERACTIVE
        return super().apply_async((), light, task_id=task_id, **options)

    def _bind(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        signature_ = inspect.signature(self.run)
        try:
            bound = signature_.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidInput(f"field 'arguments': {exc}") from None
        call: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            if signature_.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                call.update(value)  # the job options (and anything unknown, refused by validation)
            else:
                call[name] = value
        return {k: v for k, v in call.items() if v is not None}


class JobOptions(TypedDict, total=False):
    """Keyword options of every job task: how the job runs, never sent upstream."""

    mode: str  # fast | relax | turbo (default: accountFilter.modes[0], a --fast/--relax/--turbo flag, fast)
    batch_id: str  # counts, pause/resume/cancel and the media folder of a batch
    priority: int  # 0 (most urgent) - 9; default 2, or 5 in a batch
    job_id: str  # your id for the job (and its Celery task id); default a new UUID
    then: str  # a follow-up plan such as "U1-4" or "U2 > zoom:2x" (tasks.pipelines)
    tags: list[str]  # your labels, kept with the job and in its result, exports and gallery
    row: int  # the prompt-file row the job came from (1-based), kept in its result and the manifest
    callback_url: str  # POST the result there when the job ends (signed; worker.jobs.callbacks)
    callback_events: list[str]  # which events to call back: finished (default), started, progress
    callback_signer: str  # the API key whose own callback secret signs (set by the HTTP API; a name, no secret)
    budget: float  # most money the job's batch may spend (MJQ_CURRENCY); a job that would cross it waits
    split_grid: bool  # a finished grid's four images as files (image_paths), with no U1-4 to pay for
    upstream: str  # run on this upstream of the pool only (default: routed; a follow-up runs on its parent's)


JOB_OPTIONS = (*JobOptions.__annotations__, "modal")


def job_meta(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The caller's labels kept with the job (results, exports, gallery): tags and the prompt-file row."""
    meta: dict[str, Any] = {}
    if options.get("tags"):
        meta["tags"] = list(options["tags"])
    if options.get("row"):
        meta["row"] = int(options["row"])
    if options.get("callback_url"):
        meta["callback_url"] = str(options["callback_url"])
        for name in ("callback_events", "callback_signer"):
            if options.get(name):
                meta[name] = options[name]
    return meta or None


def run_job_task(task: JobTask, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Body of the root job tasks: split job options from the request payload and start the job."""
    try:
        return _run_job_task(task, kwargs)
    except Ignore:
        pass
    raise Ignore()  # afresh, as in ``start_job``: two frames fewer to format


def _run_job_task(task: JobTask, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(getattr(task, "kind", ""))
    check_job_options(kwargs)  # send_task producers skip JobTask.apply_async: refuse here, before any record
    check_callback(kwargs, task.runtime().settings)
    payload = {k: v for k, v in kwargs.items() if k not in JOB_OPTIONS and v is not None}
    priority = kwargs.get("priority")
    then = kwargs.get("then") or None
    if then:
        # sent by name: masks as data URIs or img: references only
        then = store_masks(str(then), task.runtime(), files=False)
    return start_job(
        task,
        kind,
        payload,
        job_id=kwargs.get("job_id") or None,
        mode=kwargs.get("mode") or None,
        batch_id=kwargs.get("batch_id") or None,
        priority=int(priority) if priority is not None else None,
        then=then,
        modal=kwargs.get("modal") or None,
        meta=job_meta(kwargs),
        budget=kwargs.get("budget"),
        split_grid=bool(kwargs.get("split_grid")),
        upstream=kwargs.get("upstream") or None,
    )
