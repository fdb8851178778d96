"""Follow-up jobs: the task class and the one body every follow-up shares (check the parent, resolve the button,
run the action as a job). The task bodies themselves are in ``tasks.followups``.

Each child is a job of its own (same slots, submit-once, tracking and settle as a root job) with
``parent_job``/``root_job`` lineage, in the parent's batch and on the parent's queue (``track`` for a job of a
batch, ``interactive`` otherwise). Whatever stops a child before it is sent (a button the parent does not
offer, an argument that fails validation, a modal step it was given no input for) fails only that child, as
a job in the ledger with the reason: its batch counts it and skips the rest of its branch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from celery.canvas import Signature
from celery.exceptions import Ignore

from worker.app import INTERACTIVE, task
from worker.jobs.dispatch import send_finish
from worker.jobs.messages import UNDERWAY_QUEUE, message_from_request
from worker.jobs.reprs import args_repr, followup_repr
from worker.jobs.start import JobTask, start_job
from worker.mjapi.errors import InvalidInput
from worker.plans.buttons import Want, custom_id, resolve
from worker.plans.masks import mask_reference
from worker.store.images import store_image
from worker.store.records import DEFAULT_MODE
from worker.store.runtime import Runtime


class FollowUpTask(JobTask):
    """A job task whose first argument is the parent job result (no producer-side request validation).

    Image arguments (a Vary (Region) mask) are stored once in Redis when the signature or message is made,
    so the broker and Flower only ever see a short reference. The queue follows the parent: a follow-up is sent
    when its parent finishes (``worker.jobs.finishing``), where no ``batch_id`` keyword is there for
    ``JobTask.apply_async`` to pick the queue by, so without this every follow-up of a batch went to
    ``interactive`` and competed with single requests.
    """

    kind = ""

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        rt = self.runtime()
        return super().s(*_light(args, rt), **{k: _light_one(v, rt) for k, v in kwargs.items()})

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any) -> Any:
        rt = self.runtime()
        light_args = _light(tuple(args or ()), rt)
        light_kwargs = {k: _light_one(v, rt) for k, v in (kwargs or {}).items()}
        if "queue" not in options and "routing_key" not in options:  # a retry keeps its routing key
            options["queue"] = queue_of(light_args[0] if light_args else None)
        options.setdefault("argsrepr", args_repr(light_args))
        options.setdefault("kwargsrepr", followup_repr(light_kwargs, light_args[0] if light_args else None))
        return super().apply_async(light_args, light_kwargs, task_id=task_id, **options)


def queue_of(parent: Any) -> str:
    """The queue of a follow-up of ``parent`` (a job result): in a batch, the queue of work under way (read
    before the batch's roots still waiting to be parked), else ``interactive``."""
    return UNDERWAY_QUEUE if isinstance(parent, Mapping) and parent.get("batch_id") else INTERACTIVE


def _light_one(value: Any, rt: Runtime) -> Any:
    return store_image(value, rt) if isinstance(value, str) and value.startswith("data:") else value


def _light(args: tuple[Any, ...], rt: Runtime) -> tuple[Any, ...]:
    return tuple(_light_one(a, rt) for a in args)


def parent_of(parent: Any) -> Mapping[str, Any]:
    if not isinstance(parent, Mapping) or not parent.get("job_id"):
        raise InvalidInput("parent", "a follow-up needs the parent job result as its first argument")
    return parent


def _refuse(self: JobTask, parent: Mapping[str, Any], want: Want, reason: str) -> dict[str, Any]:
    """Record this child as a failed job (so the batch counts it and skips the rest of its branch) and fail its
    Celery task; siblings go on."""
    rt = self.runtime()
    job_id = str(self.request.id)
    if rt.ledger.get_job(job_id) is None:
        rt.ledger.create_job(
            job_id,
            {
                "task_id": job_id,
                "task_name": self.name,
                "kind": "action",
                "action": want.describe(),
                "mode": parent.get("mode") or DEFAULT_MODE,
                "batch_id": parent.get("batch_id") or "",
                "priority": int(parent.get("priority") or 0),
                "prompt": parent.get("prompt"),
                "parent_job": parent.get("job_id"),
                "root_job": parent.get("root_job") or parent.get("job_id"),
                "message": message_from_request(self, rt),
            },
        )
    ok, _prev, _ = rt.ledger.transition(job_id, "failed", from_states=["queued"], fields={"fail_reason": reason})
    if ok:  # the finishing step every terminal job gets: result, callback, alerts (else a copy of this task won)
        send_finish(job_id)
    raise Ignore()


def press_button(
    self: JobTask,
    parent: Any,
    want: Want,
    *,
    modal: Mapping[str, Any] | None = None,
    account_filter: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one body of every follow-up: check the parent, resolve the button, run the action as a job.

    ``meta`` is kept with the child job (next to ``follow_up``, what was asked for). A follow-up that stops at
    the modal step without ``modal`` input fails (``worker.jobs.start``) instead of ending with no image.
    """
    parent = parent_of(parent)
    if parent.get("status") != "succeeded":
        return _refuse(self, parent, want, f"parent job {parent.get('job_id')} ended {parent.get('status')}")
    try:
        button = resolve(parent.get("buttons") or [], want)
    except InvalidInput as exc:
        return _refuse(self, parent, want, str(exc))
    payload: dict[str, Any] = {"task_id": str(parent["upstream_id"]), "custom_id": custom_id(button)}
    if account_filter:
        payload["account_filter"] = dict(account_filter)
    if modal is None:
        # remix accounts stop variations, rerolls and pans at the modal step: answer it with the same prompt
        prompt = parent.get("final_prompt") or parent.get("prompt")
        modal = {"prompt": prompt} if prompt and want.kind in ("vary", "reroll", "pan") else None
    meta = {"follow_up": want.describe(), **(meta or {})}
    return start_job(self, "action", payload, parent_result=parent, modal=modal, meta=meta)


def _arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """A short text of a follow-up's arguments, for the record of a child refused before its button."""
    parts = [*(repr(a) for a in args), *(f"{k}={v!r}" for k, v in kwargs.items() if v is not None)]
    return " ".join(p if len(p) <= 40 else p[:39] + "…" for p in parts)


def follow_up(name: str) -> Callable[[Callable[..., dict[str, Any]]], Any]:
    """Declare the follow-up task ``tasks.followups.<name>`` (bound, parent result first).

    Any ``InvalidInput`` of its body (a bad index, factor, direction or mask, a lost image reference, a modal
    text the upstream would refuse) fails the child through ``_refuse``: recorded as a failed job with the
    reason, counted by its batch, the rest of its branch skipped. Raised before any record, it left the batch's
    planned count up for good and the batch never finished.
    """

    def declare(body: Callable[..., dict[str, Any]]) -> Any:
        @functools.wraps(body)
        def run(self: JobTask, parent: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            try:
                return body(self, parent, *args, **kwargs)
            except InvalidInput as exc:
                return _refuse(self, parent_of(parent), Want(name, arg=_arguments(args, kwargs)), str(exc))

        return task(bind=True, base=FollowUpTask, name=f"tasks.followups.{name}")(run)

    return declare


def modal_input(self: JobTask, prompt: str | None, mask: str | None) -> dict[str, Any]:
    """The modal step's input (Vary (Region), Custom Zoom, a remix): the mask is stored once, by reference."""
    modal: dict[str, Any] = {}
    if mask:
        modal["mask_base64"] = mask_reference(mask, self.runtime())
    if prompt:
        modal["prompt"] = prompt
    return modal


def number(value: Any, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(field, f"must be a number, not {value!r}") from None


def one_of(value: Any, options: tuple[str, ...], field: str) -> str:
    """``value`` when it is one of ``options`` (the follow-up vocabulary), else ``InvalidInput`` listing them."""
    if value not in options:
        raise InvalidInput(field, f"must be {', '.join(options[:-1])} or {options[-1]}, not {value!r}")
    return str(value)


def index_of(index: Any) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= 4:
        raise InvalidInput("index", f"must be 1, 2, 3 or 4, not {index!r}")
    return index


