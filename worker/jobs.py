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

import contextlib
import hashlib
import hmac
import inspect
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis
from celery import Task, group, signature
from celery.app.task import Context
from celery.exceptions import Ignore
from celery.result import AsyncResult

from worker.app import app
from worker.canvas import pending_children
from worker.ledger import TERMINAL, Ledger, result_of
from worker.mjapi import MidjourneyClient, validate_request
from worker.mjapi.errors import (
    AnswerLost,
    InvalidInput,
    MJError,
    NotSent,
    Rejected,
    RetryLater,
    StopSubmitting,
)
from worker.settings import Settings, get_settings
from worker.slots import MODES, Slots

log = logging.getLogger("mjqueue.jobs")

# --------------------------------------------------------------------------------------------------------
# Request kinds: which fields carry images, which accept accountFilter / notifyHook / state.


@dataclass(frozen=True)
class Kind:
    name: str  # our kind == the kind name given to ``validate_request``
    action: str  # upstream action recorded in the job (IMAGINE, BLEND, ...)
    image_fields: tuple[str, ...] = ()
    hooked: bool = True  # accepts accountFilter, notifyHook and state
    tracked: bool = True  # produces an upstream task followed to its end
    needs_slot: bool = True


KINDS: dict[str, Kind] = {
    "imagine": Kind("imagine", "IMAGINE", ("base64_array",)),
    "blend": Kind("blend", "BLEND", ("base64_array",)),
    "describe": Kind("describe", "DESCRIBE", ("base64",)),
    "swap_face": Kind("swap_face", "SWAP_FACE", ("source_base64", "target_base64")),
    "action": Kind("action", "ACTION"),
    "modal": Kind("modal", "MODAL", ("mask_base64",), hooked=False),
    "upload": Kind("upload", "UPLOAD", ("base64_array",), hooked=False, tracked=False, needs_slot=False),
}
OURS = ("notify_hook", "state")  # fields mjqueue sets itself; callers may not
IMAGE_REF = "img:"


class JobFailed(Exception):
    """The Celery failure of a job task: message first, the job result dict second (JSON round-trips)."""

    def __init__(self, message: str, result: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, dict(result or {}))
        self.result = dict(result or {})

    def __str__(self) -> str:
        return str(self.args[0])


# --------------------------------------------------------------------------------------------------------
# Per-process runtime: settings, Redis, ledger, slots and the upstream client (made once, thread-safe).


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
        self.ledger = Ledger(self.redis)
        self.slots = Slots(self.redis, settings)
        self._client: MidjourneyClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> MidjourneyClient:
        with self._lock:
            if self._client is None:
                self._client = MidjourneyClient.from_settings(self.settings)
            return self._client


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """The process-wide runtime (built from ``get_settings()`` on first use)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def reset_runtime() -> None:
    """Forget the runtime (tests, after changing settings)."""
    global _runtime
    with _runtime_lock:
        _runtime = None


# --------------------------------------------------------------------------------------------------------
# Input images: stored once in Redis by content hash, messages carry ``img:<sha256>`` only.


def store_image(value: str, rt: Runtime | None = None) -> str:
    """Keep a data URI in Redis (TTL ``image_ttl_s``) and return its reference; references pass through."""
    if value.startswith(IMAGE_REF):
        return value
    rt = rt or runtime()
    digest = hashlib.sha256(value.encode()).hexdigest()
    rt.redis.set(f"mjq:img:{digest}", value, ex=int(rt.settings.image_ttl_s), nx=True)
    rt.redis.expire(f"mjq:img:{digest}", int(rt.settings.image_ttl_s))
    return IMAGE_REF + digest


def load_image(value: str, field: str, rt: Runtime | None = None) -> str:
    """The data URI behind a reference (or the value itself); a lost reference is invalid input."""
    if not value.startswith(IMAGE_REF):
        return value
    rt = rt or runtime()
    data = cast(str | None, rt.redis.get(f"mjq:img:{value[len(IMAGE_REF) :]}"))
    if data is None:
        raise InvalidInput(f"field '{field}': image reference expired or unknown (kept image_ttl_s)")
    return data


def _map_images(kind: Kind, payload: Mapping[str, Any], fn: Callable[[str, str], str]) -> dict[str, Any]:
    out = dict(payload)
    for name in kind.image_fields:
        value = out.get(name)
        if isinstance(value, str) and value:
            out[name] = fn(value, name)
        elif isinstance(value, list | tuple):
            out[name] = [fn(v, f"{name}[{i}]") if isinstance(v, str) else v for i, v in enumerate(value)]
    return out


def resolve_images(kind: Kind, payload: Mapping[str, Any], rt: Runtime | None = None) -> dict[str, Any]:
    return _map_images(kind, payload, lambda v, f: load_image(v, f, rt))


def lighten_images(kind: Kind, payload: Mapping[str, Any], rt: Runtime | None = None) -> dict[str, Any]:
    return _map_images(kind, payload, lambda v, _f: store_image(v, rt))


def image_values(kind: Kind, payload: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name in kind.image_fields:
        value = payload.get(name)
        if isinstance(value, str) and value:
            out.append(value)
        elif isinstance(value, list | tuple):
            out.extend(v for v in value if isinstance(v, str))
    return out


# --------------------------------------------------------------------------------------------------------
# Requests: mode, validation and the wire model.


def job_mode(kind: Kind, payload: Mapping[str, Any], mode: str | None) -> str:
    """fast | relax | turbo: the ``mode`` keyword, else accountFilter.modes[0], else a prompt flag."""
    if mode:
        value = str(getattr(mode, "value", mode)).lower()
        if value not in MODES:
            raise InvalidInput(f"field 'mode': must be one of {', '.join(MODES)}")
        return value
    af = payload.get("account_filter")
    modes = (af or {}).get("modes") if isinstance(af, Mapping) else getattr(af, "modes", None)
    if modes:
        first = modes[0]
        return str(getattr(first, "value", first)).lower()
    prompt = str(payload.get("prompt") or "")
    for candidate in MODES:
        if f"--{candidate}" in prompt:
            return candidate
    return "fast"


def check_caller_fields(payload: Mapping[str, Any]) -> None:
    for name in OURS:
        if payload.get(name) not in (None, ""):
            raise InvalidInput(f"field '{name}': set by mjqueue (our job id / webhook URL); do not pass it")


JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_job_options(options: Mapping[str, Any]) -> None:
    """Job options (not request fields) checked like the request: ids, priority and the follow-up plan.

    Ids become Redis keys and URL path segments (webhook), so they are short and safe; priority is a Redis
    transport priority 0-9; the plan is parsed by the plan compiler itself.
    """
    for name in ("job_id", "batch_id"):
        value = options.get(name)
        if value not in (None, "") and (not isinstance(value, str) or not JOB_ID_RE.match(value)):
            raise InvalidInput(
                f"field '{name}': must be 1-128 characters of letters, digits and . _ : - "
                f"(starting with a letter or digit), not {str(value)[:60]!r}"
            )
    priority = options.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9
    ):
        raise InvalidInput(f"field 'priority': must be a whole number 0-9, not {str(priority)[:20]!r}")
    then = options.get("then")
    if then is not None:
        if not isinstance(then, str):
            raise InvalidInput(f"field 'then': must be a plan text like 'U1-4', not {type(then).__name__}")
        from tasks.pipelines import parse as parse_plan  # the plan grammar lives with the tasks that run it

        parse_plan(then)  # PlanError is an InvalidInput naming the field 'then'


def webhook_token(job_id: str, settings: Settings) -> str:
    """Unguessable per-job token: HMAC-SHA256 of the job id with the webhook secret, 32 hex chars."""
    secret = settings.webhook_secret.get_secret_value().encode()
    return hmac.new(secret, job_id.encode(), hashlib.sha256).hexdigest()[:32]


def webhook_url(job_id: str, settings: Settings) -> str | None:
    if not settings.webhook_base_url:
        return None
    return f"{settings.webhook_base_url}/hook/{job_id}/{webhook_token(job_id, settings)}"


def build_request(
    kind: Kind, payload: Mapping[str, Any], job_id: str | None, mode: str, rt: Runtime | None = None
) -> Any:
    """The validated request model (images resolved; our accountFilter mode, notifyHook and state added)."""
    data = resolve_images(kind, payload, rt)
    data = {k: v for k, v in data.items() if v is not None}
    if kind.hooked:
        af = dict(data.get("account_filter") or {})
        if not af.get("modes"):
            af["modes"] = [mode.upper()]
        data["account_filter"] = af
        if job_id is not None:
            settings = (rt or runtime()).settings
            hook = webhook_url(job_id, settings)
            if hook:
                data["notify_hook"] = hook
            data["state"] = job_id
    return validate_request(kind.name, data)


# --------------------------------------------------------------------------------------------------------
# Reprs for Flower: short, never keys or base64.


def short_repr(kind: Kind, payload: Mapping[str, Any], options: Mapping[str, Any]) -> str:
    from worker.media import describe_images

    parts: list[str] = []
    for name in ("prompt", "task_id", "custom_id"):
        value = payload.get(name)
        if value:
            text = str(value)
            parts.append(f"{name}={(text[:40] + '…') if len(text) > 40 else text!r}")
    images = image_values(kind, payload)
    if images:
        full = [v for v in images if not v.startswith(IMAGE_REF)]
        parts.append(
            f"images={describe_images(full)}" if len(full) == len(images) else f"images={len(images)}"
        )
    for name in ("mode", "batch_id", "job_id"):
        if options.get(name):
            parts.append(f"{name}={options[name]}")
    return "{" + ", ".join(parts) + "}"


# --------------------------------------------------------------------------------------------------------
# Task messages: what a parked job needs to be re-sent exactly as it was.

MESSAGE_OPTIONS = ("chain", "link", "link_error", "root_id", "parent_id", "group_id", "group_index", "chord")


def message_from_request(task: Task[Any, Any], kind: Kind | None = None) -> dict[str, Any]:
    """The current task message (light: images by reference) in a form ``resend`` can publish again."""
    req = task.request
    kwargs = dict(req.kwargs or {})
    if kind is not None:
        kwargs = lighten_images(kind, kwargs)
    delivery = req.delivery_info or {}
    return {
        "task": task.name,
        "id": req.id,
        "args": list(req.args or []),
        "kwargs": kwargs,
        "chain": req.chain,
        "link": req.callbacks,
        "link_error": req.errbacks,
        "root_id": req.root_id,
        "parent_id": req.parent_id,
        "group_id": req.group,
        "group_index": req.group_index,
        "chord": req.chord,
        "queue": delivery.get("routing_key") or task.queue or "interactive",
        "priority": delivery.get("priority"),
        "argsrepr": getattr(req, "argsrepr", None),
        "kwargsrepr": getattr(req, "kwargsrepr", None),
    }


def resend(message: Mapping[str, Any], countdown: float | None = None) -> None:
    """Publish a stored task message again: same task id, chain, callbacks and group membership."""
    options = {k: message.get(k) for k in MESSAGE_OPTIONS if message.get(k) is not None}
    app.send_task(
        str(message["task"]),
        args=list(message.get("args") or []),
        kwargs=dict(message.get("kwargs") or {}),
        task_id=str(message["id"]),
        queue=message.get("queue") or "interactive",
        priority=message.get("priority"),
        argsrepr=message.get("argsrepr"),
        kwargsrepr=message.get("kwargsrepr"),
        add_to_parent=False,
        countdown=countdown,
        **options,
    )


def context_from_message(message: Mapping[str, Any]) -> Context:
    """A request context for the result backend (chords, groups, extended results) from a stored message."""
    return Context(
        id=message.get("id"),
        task=message.get("task"),
        args=message.get("args") or [],
        kwargs=message.get("kwargs") or {},
        chain=message.get("chain"),
        callbacks=message.get("link"),
        errbacks=message.get("link_error"),
        root_id=message.get("root_id"),
        parent_id=message.get("parent_id"),
        group=message.get("group_id"),
        group_index=message.get("group_index"),
        chord=message.get("chord"),
        delivery_info={"routing_key": message.get("queue"), "priority": message.get("priority")},
        ignore_result=False,
        retries=0,
    )


# --------------------------------------------------------------------------------------------------------
# Admission and parking.


def queue_score(priority: int, created_at: float) -> float:
    """Waiting-set order: priority first (0 = most urgent), then enqueue time."""
    return priority * 1e13 + created_at * 1000.0


def admit_parked(modes: Iterable[str] = MODES, rt: Runtime | None = None) -> int:
    """Admit parked jobs for which a slot is free now and re-send their tasks; returns how many."""
    rt = rt or runtime()
    sent = 0
    for mode in modes:
        for job_id in rt.slots.admit_next(mode):
            job = rt.ledger.get_job(job_id)
            message = (job or {}).get("message")
            if not isinstance(message, dict):
                rt.slots.release(mode, job_id)
                log.warning("parked job %s has no stored task message; released its slot", job_id)
                continue
            resend(message)
            sent += 1
    return sent


def _park(task: Task[Any, Any], kind: Kind | None, job: Mapping[str, Any], rt: Runtime) -> None:
    """Store the message, add the job to its waiting set, then let the best parked job take any free slot."""
    score = queue_score(int(job.get("priority") or 0), float(job.get("created_at") or time.time()))
    where = rt.ledger.park(str(job["job_id"]), message_from_request(task, kind), score)
    if where == "cancelled":
        cancel_job(str(job["job_id"]), "batch cancelled", rt)
    elif where in ("parked",):
        admit_parked([str(job.get("mode") or "fast")], rt)
    raise Ignore()


# --------------------------------------------------------------------------------------------------------
# The pipeline entry point.


def start_job(
    task: Task[Any, Any],
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
    rt = runtime()
    spec = KINDS.get(kind)
    if spec is None:
        raise InvalidInput(f"field 'kind': unknown request kind {kind!r}")
    req = task.request
    job_id = job_id or str(req.id)
    job = rt.ledger.get_job(job_id)
    if job is None:
        job = _create(
            task, spec, payload, job_id, mode, batch_id, priority, parent_result, then, modal, meta, rt
        )
    if job.get("task_id") and job.get("task_id") != req.id:
        if job.get("status") in TERMINAL:
            return result_of(job)
        log.warning("job %s already runs under task %s; ignoring task %s", job_id, job.get("task_id"), req.id)
        raise Ignore()
    return _advance(task, spec, job, rt)


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
) -> dict[str, Any]:
    check_caller_fields(payload)
    if parent is not None:
        batch_id = batch_id or parent.get("batch_id")
        mode = mode or parent.get("mode")
    resolved_mode = job_mode(spec, payload, mode)
    try:
        build_request(spec, payload, None, resolved_mode, rt)  # validation (worker side, for send_task users)
        if modal:
            build_request(KINDS["modal"], {"task_id": "0", **modal}, None, resolved_mode, rt)
    except InvalidInput as exc:
        log.info("job %s refused: %s", job_id, exc)
        raise
    light = lighten_images(spec, payload, rt)
    if modal:
        modal = lighten_images(KINDS["modal"], modal, rt)
    if priority is None:
        priority = (
            int(parent.get("priority") or 0) if parent and parent.get("priority") else (5 if batch_id else 2)
        )
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
        "message": message_from_request(task, spec),
    }
    if spec.name == "action":
        fields["action"] = str(light.get("custom_id") or "ACTION")
    if parent is not None:
        fields["parent_job"] = parent.get("job_id")
        fields["root_job"] = parent.get("root_job") or parent.get("job_id")
    created, _ = rt.ledger.create_job(job_id, fields)
    if created and parent is None and batch_id:
        planned = pending_children(fields["message"], then)
        if planned:
            rt.ledger.add_planned(batch_id, planned)
    job = rt.ledger.get_job(job_id)
    assert job is not None
    return job


def _advance(task: Task[Any, Any], spec: Kind, job: dict[str, Any], rt: Runtime) -> dict[str, Any]:
    job_id = str(job["job_id"])
    status = job.get("status")
    if status == "queued":
        _admit_and_submit(task, spec, job, rt)
    elif status == "submitting":
        if job.get("upstream_id"):
            _ensure_tracking(job, rt)
        else:
            settings = rt.settings
            window = settings.http_timeout_s + settings.http_connect_timeout_s + 1.0
            age = time.time() - float(job.get("submitting_at") or 0.0)
            if age < window:
                # Another copy of this task may still be inside its POST: look again once it must be over.
                resend(message_from_request(task, spec), countdown=window - age + 0.2)
            else:
                # Crash between the POST and recording its answer: never a second POST.
                mark_needs_review(job_id, "submit interrupted before the answer was recorded", rt)
    elif status in ("submitted", "running"):
        _ensure_tracking(job, rt)
    elif status in TERMINAL and not rt.ledger.continued(job_id):
        send_finish(job_id)
    raise Ignore()


def _admit_and_submit(task: Task[Any, Any], spec: Kind, job: dict[str, Any], rt: Runtime) -> None:
    job_id, mode = str(job["job_id"]), str(job.get("mode") or "fast")
    if spec.needs_slot:
        score = queue_score(int(job.get("priority") or 0), float(job.get("created_at") or time.time()))
        adm = rt.slots.try_admit(mode, job_id, score)
        if adm.reason == "cancelled":
            cancel_job(job_id, "batch cancelled", rt)
            raise Ignore()
        if not adm.admitted:
            _park(task, spec, job, rt)
    ok, _current, why = rt.ledger.transition(
        job_id,
        "submitting",
        from_states=["queued"],
        gate=True,
        incr={"attempts": 1},
        fields={"submitting_at": time.time()},
    )
    if not ok:
        if why in ("breaker", "paused"):
            rt.slots.release(mode, job_id)
            _park(task, spec, job, rt)
        elif why == "cancelled":
            rt.slots.release(mode, job_id)
            cancel_job(job_id, "batch cancelled", rt)
        raise Ignore()
    _submit(task, spec, job, rt)


def _submit(task: Task[Any, Any], spec: Kind, job: dict[str, Any], rt: Runtime) -> None:
    """The one POST of a job (already ``submitting``, slot held) and what its answer means."""
    job_id, mode = str(job["job_id"]), str(job.get("mode") or "fast")
    try:
        request = build_request(spec, job.get("request") or {}, job_id, mode, rt)
        if spec.name == "upload":
            urls = rt.client.upload_discord_images(
                request.base64_array, filter=getattr(request, "filter", None)
            )
            finish_now(job_id, "succeeded", {"extra": {"urls": urls}, "progress": "100%"}, rt)
            return
        answer = rt.client.submit(request)
        if answer.outcome == "modal" and job.get("modal"):
            modal_payload = {"task_id": answer.task_id, **(job.get("modal") or {})}
            answer = rt.client.submit(build_request(KINDS["modal"], modal_payload, None, mode, rt))
    except InvalidInput as exc:
        finish_now(job_id, "failed", {"fail_reason": f"invalid input: {exc}"}, rt, release=True)
    except Rejected as exc:
        finish_now(job_id, "failed", {"fail_reason": _reason(exc)}, rt, release=True)
    except StopSubmitting as exc:
        tripped = rt.ledger.trip_breaker(f"{type(exc).__name__}: {_reason(exc)}")
        log.error("submitting stopped (%s): %s", "tripped" if tripped else "already tripped", _reason(exc))
        rt.ledger.transition(job_id, "queued", from_states=["submitting"], release=True)
        fresh = rt.ledger.get_job(job_id) or job
        _park(task, spec, fresh, rt)
    except AnswerLost as exc:
        mark_needs_review(job_id, f"answer lost after sending: {_reason(exc)}", rt)
    except (RetryLater, NotSent) as exc:
        _retry_later(task, job_id, mode, exc, rt)
    except MJError as exc:
        if getattr(exc, "retryable", False):
            _retry_later(task, job_id, mode, exc, rt)
        mark_needs_review(job_id, f"unexpected answer: {_reason(exc)}", rt)
    else:
        _accepted(job_id, mode, answer, rt)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    word = getattr(exc, "banned_word", None)
    return f"{text} (banned word: {word})" if word and str(word) not in text else text


def _retry_later(task: Task[Any, Any], job_id: str, mode: str, exc: Exception, rt: Runtime) -> None:
    """Queue full / 429 / 5xx / not sent: back to queued, keep the slot, retry with backoff and jitter."""
    settings = rt.settings
    job = rt.ledger.get_job(job_id) or {}
    attempts = int(job.get("attempts") or 1)
    if attempts >= settings.submit_max_attempts:
        finish_now(
            job_id,
            "failed",
            {"fail_reason": f"gave up after {attempts} attempts: {_reason(exc)}"},
            rt,
            release=True,
        )
        return
    cap = settings.submit_retry_max_s
    delay = min(cap, 0.5 * cap * 2 ** (attempts - 4)) if attempts < 4 else cap
    delay = max(delay, min(cap, float(getattr(exc, "retry_after", None) or 0.0)))
    delay *= 1.0 + random.uniform(0.0, settings.poll_jitter)
    delay = min(delay, cap)
    rt.ledger.transition(job_id, "queued", from_states=["submitting"], fields={"last_error": _reason(exc)})
    rt.slots.renew(mode, job_id, max(settings.slot_lease_s, delay + 30.0))
    log.info("job %s: %s; retry %d in %.2fs", job_id, _reason(exc), attempts, delay)
    raise task.retry(countdown=delay, max_retries=None, exc=exc)


def _accepted(job_id: str, mode: str, answer: Any, rt: Runtime) -> None:
    """Record the upstream id (submitted) and schedule the first poll."""
    upstream = str(answer.task_id) if answer.task_id is not None else None
    if not upstream:
        mark_needs_review(job_id, f"accepted without a task id: {answer.description}", rt)
        return
    now = time.time()
    if answer.outcome == "modal":
        # The action waits for its modal step, which is another request (tasks.modal): this job is done.
        extra = {"awaiting_modal": True, "properties": dict(getattr(answer, "properties", None) or {})}
        ok, _prev, _ = rt.ledger.transition(
            job_id,
            "succeeded",
            from_states=["submitting"],
            upstream=upstream,
            release=True,
            fields={"submitted_at": now, "submit_outcome": "modal", "progress": "MODAL", "extra": extra},
        )
        if ok:
            after_terminal(job_id, mode, rt)
        return
    delay = first_poll_delay(mode, rt.settings)
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
            rt.redis.hsetnx(f"mjq:job:{job_id}", "upstream_id", upstream)
            rt.ledger.schedule(job_id, now + delay)
        else:
            return
    from tasks.track import poll

    poll.apply_async((job_id,), countdown=delay)


def _ensure_tracking(job: Mapping[str, Any], rt: Runtime) -> None:
    """Redelivered while tracked: make sure the job is in flight with a poll coming."""
    job_id = str(job["job_id"])
    if job.get("status") == "submitting":
        rt.ledger.transition(job_id, "submitted", from_states=["submitting"], inflight=time.time())
    rt.ledger.schedule(job_id, time.time())
    from tasks.track import poll

    poll.apply_async((job_id,), countdown=0)


# --------------------------------------------------------------------------------------------------------
# Tracking: poll delays and the one settle.


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


STATUS_MAP = {
    "NOT_START": "submitted",
    "SUBMITTED": "submitted",
    "MODAL": "running",
    "IN_PROGRESS": "running",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "CANCEL": "cancelled",
}


def _get(task: Any, name: str, alias: str | None = None) -> Any:
    if isinstance(task, Mapping):
        return task.get(name, task.get(alias) if alias else None)
    return getattr(task, name, None)


def _progress_pct(progress: Any) -> int:
    try:
        return max(0, min(100, int(float(str(progress or "0").strip().rstrip("%")))))
    except (ValueError, OverflowError):  # "nan%", "inf%": a hint we cannot use, not a crash
        return 0


def _buttons(task: Any) -> list[dict[str, Any]]:
    out = []
    for b in _get(task, "buttons") or []:
        out.append(
            {
                "custom_id": _get(b, "custom_id", "customId"),
                "label": _get(b, "label"),
                "emoji": _get(b, "emoji"),
                "style": _get(b, "style"),
                "type": _get(b, "type"),
            }
        )
    return out


def _describe_prompts(text: str) -> list[str]:
    import re

    parts = re.split(r"\s*[1-4]️⃣\s*", text)
    return [p.strip() for p in parts if p.strip()]


def _fields_from_task(task: Any, to: str, source: str) -> dict[str, Any]:
    props = _get(task, "properties") or {}
    fields: dict[str, Any] = {"settled_by": source}
    progress = _get(task, "progress")
    if progress:
        fields["progress"] = progress
    final = props.get("finalPrompt") or props.get("final_prompt") or _get(task, "prompt_en", "promptEn")
    if final:
        fields["final_prompt"] = final
    start = _get(task, "start_time", "startTime")
    if isinstance(start, int | float) and not isinstance(start, bool) and 0 < start < 1e14:
        fields["started_at"] = float(start) / 1000.0
    image_url = _get(task, "image_url", "imageUrl")
    if image_url:
        fields["image_url"] = image_url
    if to == "succeeded":
        fields["buttons"] = _buttons(task)
        fields["progress"] = "100%"
        action = _get(task, "action")
        if str(action or "").upper() == "DESCRIBE":
            text = str(final or _get(task, "prompt") or "")
            fields["extra"] = {"prompts": _describe_prompts(text)}
        if props.get("seed"):
            fields.setdefault("extra", {})["seed"] = props.get("seed")
    if to == "failed":
        fields["fail_reason"] = _get(task, "fail_reason", "failReason") or "upstream FAILURE"
    if to == "cancelled":
        fields["fail_reason"] = _get(task, "fail_reason", "failReason") or "cancelled upstream"
    return fields


def settle(job_id: str, upstream_task: Any, source: str = "poll", rt: Runtime | None = None) -> str:
    """Apply an upstream task snapshot (poll or webhook) to its job. The first terminal transition wins.

    Returns ``unknown`` (no such job), ``mismatch`` (id/state do not belong to the job), ``ignored``
    (duplicate, regression or after the end), ``updated`` or ``finished`` (this call won the terminal step).
    """
    rt = rt or runtime()
    job = rt.ledger.get_job(job_id)
    if job is None:
        return "unknown"
    task_id = _get(task := upstream_task, "id")
    state = _get(task, "state")
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
    to = STATUS_MAP.get(str(_get(task, "status") or "").upper())
    if to is None:
        return "ignored"
    fields = _fields_from_task(task, to, source)
    extra: dict[str, Any] = {}
    if reconcile:
        now = time.time()
        mode = str(job.get("mode") or "fast")
        fields.setdefault("submitted_at", now)
        fields["deadline_at"] = now + rt.settings.deadline_s(mode)
        extra = {"upstream": str(task_id), "inflight": now}
    ok, _prev, _why = rt.ledger.transition(
        job_id,
        to,
        forward=True,
        reconcile=reconcile,
        progress=_progress_pct(_get(task, "progress")),
        fields=fields,
        release=to in TERMINAL,
        **extra,
    )
    if not ok:
        return "ignored"
    if to in TERMINAL:
        after_terminal(job_id, str(job.get("mode") or "fast"), rt)
        return "finished"
    return "updated"


def after_terminal(job_id: str, mode: str, rt: Runtime) -> None:
    """The winner of a terminal transition: admit the next parked jobs and send the finishing step."""
    admit_parked([mode], rt)
    send_finish(job_id)


def finish_now(
    job_id: str, to: str, fields: Mapping[str, Any], rt: Runtime, *, release: bool = False
) -> bool:
    """A terminal transition decided by us (failed at submit, timed out, cancelled); False if too late."""
    job = rt.ledger.get_job(job_id) or {}
    ok, _prev, _ = rt.ledger.transition(job_id, to, forward=True, fields=fields, release=release)
    if ok:
        after_terminal(job_id, str(job.get("mode") or "fast"), rt)
    return ok


def mark_needs_review(job_id: str, reason: str, rt: Runtime) -> None:
    """Ambiguous submit: flag it. The slot stays leased for one expected duration (the job may be running)."""
    job = rt.ledger.get_job(job_id) or {}
    mode = str(job.get("mode") or "fast")
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
            _ensure_tracking(fresh, rt)


def cancel_job(job_id: str, reason: str, rt: Runtime | None = None) -> bool:
    """Cancel a job that has not been submitted (queued); its task completes as REVOKED."""
    rt = rt or runtime()
    job = rt.ledger.get_job(job_id) or {}
    ok, _prev, _ = rt.ledger.transition(
        job_id, "cancelled", from_states=["queued"], fields={"fail_reason": reason}, release=True
    )
    if ok:
        rt.slots.release(str(job.get("mode") or "fast"), job_id)
        send_finish(job_id)
    return ok


def send_finish(job_id: str, countdown: float = 0.0) -> None:
    from tasks.track import finish

    finish.apply_async((job_id,), countdown=countdown)


def poll_jobs(job_id: str, rt: Runtime | None = None) -> int:
    """One poll: claim this job (and other due jobs), fetch them, settle, schedule the next polls."""
    from tasks.track import poll

    rt = rt or runtime()
    settings = rt.settings
    now = time.time()
    ids = rt.ledger.claim_due(job_id, now, max(30.0, 2 * settings.poll_max_s), settings.poll_batch_size)
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
                found[str(_get(item, "id"))] = item
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
        polls = int(rt.redis.hincrby(f"mjq:job:{jid}", "polls", 1))
        delay = next_poll_delay(polls, mode, settings)
        if deadline:
            delay = max(0.01, min(delay, deadline - time.time() + 0.01))
        rt.ledger.schedule(jid, time.time() + delay)
        rt.slots.renew(mode, jid)
        poll.apply_async((jid,), countdown=delay)
    return len(jobs)


def housekeeping(rt: Runtime | None = None) -> dict[str, int]:
    """Beat entry (one at a time by a Redis lock): admit parked jobs, re-poll overdue jobs, re-finish."""
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
        grace = max(1.0, min(10.0, 2 * settings.poll_max_s))
        overdue = rt.ledger.overdue(now - grace)
        for jid in overdue:
            rt.ledger.schedule(jid, now)
            poll.apply_async((jid,), countdown=0)
        stale = rt.ledger.finishing_stale(now - settings.finish_stale_s)
        for jid in stale:
            send_finish(jid)
        return {"admitted": admitted, "overdue": len(overdue), "refinished": len(stale)}
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()


# --------------------------------------------------------------------------------------------------------
# Finishing: download, result, completion of the original task, continuation once.

FINISH_HOOKS: list[Callable[[dict[str, Any]], None]] = []


def register_finish_hook(hook: Callable[[dict[str, Any]], None]) -> None:
    """Called with the job result after a job finished (follow-up plans use it); must be idempotent."""
    if hook not in FINISH_HOOKS:
        FINISH_HOOKS.append(hook)


def finish_job(task: Task[Any, Any], job_id: str, rt: Runtime | None = None) -> dict[str, Any] | None:
    rt = rt or runtime()
    job = rt.ledger.get_job(job_id)
    if job is None or job.get("status") not in TERMINAL:
        return None
    wants_image = job.get("status") == "succeeded" and rt.settings.download_images and job.get("image_url")
    if wants_image and job.get("download") not in ("ok", "failed"):
        _download(task, job, rt)
    result = rt.ledger.job_result(job_id)
    complete_task(job, result, rt)
    rt.ledger.finished(job_id)
    for hook in FINISH_HOOKS:
        try:
            hook(result)
        except Exception:
            log.exception("finish hook %r failed for job %s", hook, job_id)
    return result


def _download(task: Task[Any, Any], job: Mapping[str, Any], rt: Runtime) -> None:
    from worker.media import DownloadError, download_image

    job_id = str(job["job_id"])
    try:
        saved = download_image(
            str(job["image_url"]),
            rt.settings.media_dir / (str(job.get("batch_id") or "") or "_single"),
            job_id,
            timeout=rt.settings.http_timeout_s,
        )
    except DownloadError as exc:
        retries = int(task.request.retries or 0)
        if exc.transient and retries + 1 < rt.settings.download_attempts:
            raise task.retry(countdown=min(5.0, 0.2 * 2**retries), max_retries=None) from exc
        rt.ledger.update(job_id, {"download": "failed", "download_error": str(exc)})
        return
    rt.ledger.update(
        job_id,
        {
            "download": "ok",
            "image_path": str(saved.path),
            "image_sha256": saved.sha256,
            "image_bytes": saved.size,
            "image_width": saved.width,
            "image_height": saved.height,
        },
    )


def complete_task(job: Mapping[str, Any], result: dict[str, Any], rt: Runtime) -> None:
    """Store the result under the original task id, tell Flower, fire the continuation once."""
    message = job.get("message")
    if not isinstance(message, dict) or not message.get("id"):
        return
    task_id = str(message["id"])
    ctx = context_from_message(message)
    status = str(job.get("status"))
    runtime_s = float(result.get("duration_s") or 0.0)
    first = rt.ledger.mark_continued(str(job["job_id"]))
    backend = app.backend
    if status == "succeeded":
        backend.store_result(task_id, result, "SUCCESS", request=ctx)
        _event("task-succeeded", uuid=task_id, result=_result_repr(result), runtime=runtime_s)
        if first:
            if ctx.chord:
                backend.on_chord_part_return(ctx, "SUCCESS", result)
            _continue(message, result, task_id)
    else:
        exc = JobFailed(f"{status}: {result.get('fail_reason') or ''}".strip(), result)
        if first:
            backend.mark_as_failure(task_id, exc, request=ctx)  # also fails the chain and calls errbacks
            never = pending_children(message, job.get("then"))
            rt.ledger.mark_skipped(job.get("batch_id") or None, never, f"parent job {job['job_id']} {status}")
        else:
            backend.store_result(task_id, exc, "FAILURE", request=ctx)
        if status == "cancelled":
            _event("task-revoked", uuid=task_id, terminated=False, signum=None, expired=False)
        else:
            _event("task-failed", uuid=task_id, exception=repr(exc), traceback="")


def _result_repr(result: Mapping[str, Any]) -> str:
    keys = ("status", "upstream_id", "image_path", "image_url", "fail_reason")
    return repr({k: result.get(k) for k in keys if result.get(k)})[:400]


def _event(kind: str, **fields: Any) -> None:
    try:
        with app.events.default_dispatcher(hostname="mjqueue-finisher") as dispatcher:
            dispatcher.send(kind, **fields)
    except Exception:  # events are for Flower; never fail a job because of them
        log.warning("could not send %s event", kind, exc_info=True)


def _continue(message: Mapping[str, Any], result: dict[str, Any], task_id: str) -> None:
    """Exactly what Celery's tracer does on success: link callbacks, then the next chain link."""
    root_id = message.get("root_id") or task_id
    for cb in message.get("link") or []:
        sig = signature(cb, app=app)
        if isinstance(sig, group):
            sig.apply_async((result,), parent_id=task_id, root_id=root_id)
        else:
            sig.apply_async((result,), parent_id=task_id, root_id=root_id)
    chain = list(message.get("chain") or [])
    if chain:
        nxt = signature(chain[-1], app=app)
        nxt.apply_async((result,), chain=chain[:-1], parent_id=task_id, root_id=root_id)


# --------------------------------------------------------------------------------------------------------
# Producer side: the base class of every job task.


class JobTask(Task):  # type: ignore[misc]
    """Validates before anything is queued, stores images once, sets a short repr and the queue.

    ``.delay()``/``.apply_async()`` with bad input raise ``InvalidInput`` in the producer. The task id is the
    job id (``job_id`` keyword if given), so ``AsyncResult(job_id)`` resolves to the job result.
    """

    kind: str = ""
    counts_as_job = True  # batches count these (worker.canvas)
    acks_late = True
    reject_on_worker_lost = True
    max_retries = None
    typing = False  # we bind positional arguments ourselves

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
        spec = KINDS[self.kind]
        job_opts = {k: call.get(k) for k in ("mode", "batch_id", "job_id")}
        check_caller_fields(call)
        check_job_options(call)
        payload = {k: v for k, v in call.items() if k not in JOB_OPTIONS}
        mode = job_mode(spec, payload, call.get("mode"))
        build_request(spec, payload, None, mode)  # raises InvalidInput before anything is queued
        if call.get("modal"):
            build_request(KINDS["modal"], {"task_id": "0", **call["modal"]}, None, mode)
        options.setdefault("kwargsrepr", short_repr(spec, payload, job_opts))
        options.setdefault("argsrepr", "()")
        light = lighten_images(spec, call)
        if call.get("modal"):
            light["modal"] = lighten_images(KINDS["modal"], call["modal"])
        task_id = task_id or call.get("job_id") or str(uuid.uuid4())
        if "queue" not in options and "routing_key" not in options:
            options["queue"] = "batch" if call.get("batch_id") else "interactive"
        return super().apply_async((), light, task_id=task_id, **options)

    def _bind(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            bound = inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidInput(f"field 'arguments': {exc}") from None
        return {k: v for k, v in bound.arguments.items() if v is not None}


JOB_OPTIONS = ("mode", "batch_id", "priority", "job_id", "then", "modal")


def run_job_task(task: Task[Any, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Body of the root job tasks: split job options from the request payload and start the job."""
    kind = str(getattr(task, "kind", ""))
    check_job_options(kwargs)  # send_task producers skip JobTask.apply_async: refuse here, before any record
    payload = {k: v for k, v in kwargs.items() if k not in JOB_OPTIONS and v is not None}
    priority = kwargs.get("priority")
    return start_job(
        task,
        kind,
        payload,
        job_id=kwargs.get("job_id") or None,
        mode=kwargs.get("mode") or None,
        batch_id=kwargs.get("batch_id") or None,
        priority=int(priority) if priority is not None else None,
        then=kwargs.get("then") or None,
        modal=kwargs.get("modal") or None,
    )
