"""Follow-up tasks: each takes the parent job result as its first argument and presses the right button.

They compose as Celery canvases::

    imagine.s("a red fox") | group(upscale.s(i) for i in range(1, 5))
    imagine.s(p) | upscale.s(2) | zoom.s(2.0)
    imagine.s(p) | vary.s(3, strength="strong")

Each child is a job of its own (same slots, submit-once, tracking and settle as a root job) with
``parent_job``/``root_job`` lineage, in the parent's batch and on the parent's queue (``batch`` for a job of a
batch, ``interactive`` otherwise).  Whatever stops a child before it is sent (a button the parent does not
offer, an argument that fails validation, a modal step it was given no input for) fails only that child, as
a job in the ledger with the reason: its batch counts it and skips the rest of its branch.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from celery import group
from celery.canvas import Signature, _chain
from celery.exceptions import Ignore

from worker.app import task
from worker.jobs.admission import register_expect_hook
from worker.jobs.finishing import complete_task, register_finish_hook
from worker.jobs.messages import UNDERWAY_QUEUE, message_from_request
from worker.jobs.start import JobTask, start_job
from worker.media import MAX_IMAGE_BYTES, parse_data_uri, to_data_uri
from worker.mjapi.errors import InvalidInput
from worker.plans.buttons import Want, custom_id, offers, resolve
from worker.store.images import IMAGE_REF, store_image
from worker.store.ledger import TERMINAL
from worker.store.runtime import Runtime, runtime

log = logging.getLogger("mjqueue.followups")


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
        return super().s(*_light(args), **{k: _light_one(v) for k, v in kwargs.items()})

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any) -> Any:
        light_args = _light(tuple(args or ()))
        light_kwargs = {k: _light_one(v) for k, v in (kwargs or {}).items()}
        if "queue" not in options and "routing_key" not in options:  # a retry keeps its routing key
            options["queue"] = queue_of(light_args[0] if light_args else None)
        options.setdefault("argsrepr", follow_up_repr(light_args))
        options.setdefault("kwargsrepr", "{" + ", ".join(f"{k}={_short(v)}" for k, v in light_kwargs.items()) + "}")
        return super().apply_async(light_args, light_kwargs, task_id=task_id, **options)


def _short(value: Any) -> str:
    if isinstance(value, str) and value.startswith(IMAGE_REF):
        return "image"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def follow_up_repr(args: tuple[Any, ...]) -> str:
    """What Flower shows of a follow-up's arguments: the parent job's id, not its whole result, and no
    ``img:`` keys (a Vary (Region) mask)."""
    shown = []
    for value in args:
        if isinstance(value, Mapping) and "job_id" in value:
            shown.append(f"parent={value.get('job_id')} ({value.get('status')})")
        else:
            shown.append(_short(value))
    return "(" + ", ".join(shown) + ")"


def queue_of(parent: Any) -> str:
    """The queue of a follow-up of ``parent`` (a job result): in a batch, the queue of work under way (read
    before the batch's roots still waiting to be parked), else ``interactive``."""
    return UNDERWAY_QUEUE if isinstance(parent, Mapping) and parent.get("batch_id") else "interactive"


def _light_one(value: Any) -> Any:
    return store_image(value) if isinstance(value, str) and value.startswith("data:") else value


def _light(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_light_one(a) for a in args)


def mask_path(mask: str, base_dir: Path | None = None) -> Path | None:
    """The file a mask names (relative to ``base_dir``, default the current directory), or None for a data URI
    or an ``img:`` reference."""
    if mask.startswith((IMAGE_REF, "data:")):
        return None
    path = Path(mask).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def load_mask(mask: str, field: str = "mask", base_dir: Path | None = None) -> str:
    """A mask as a checked data URI (an image file is read); ``img:`` references pass unchanged.

    ``InvalidInput`` naming ``field`` for a file that cannot be read or is not an image, or a bad data URI.
    """
    path = mask_path(mask, base_dir)
    if path is None:
        if not mask.startswith(IMAGE_REF):
            parse_data_uri(mask, field)
        return mask
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise InvalidInput(field, f"{mask!r}: {size} bytes, more than {MAX_IMAGE_BYTES}")
        uri = to_data_uri(path.read_bytes())
    except OSError as exc:
        raise InvalidInput(field, f"{mask!r}: cannot read {path} ({exc.strerror or exc})") from None
    try:
        parse_data_uri(uri, field)
    except InvalidInput as exc:
        raise InvalidInput(field, f"{mask!r}: {exc.rule}") from None
    return uri


def mask_reference(mask: str, field: str = "mask", base_dir: Path | None = None) -> str:
    """Store a mask (data URI, ``img:`` reference or image file path) once in Redis; return its reference."""
    return store_image(load_mask(mask, field, base_dir))


def _parent(parent: Any) -> Mapping[str, Any]:
    if not isinstance(parent, Mapping) or not parent.get("job_id"):
        raise InvalidInput("parent", "a follow-up needs the parent job result as its first argument")
    return parent


def _refuse(self: JobTask, parent: Mapping[str, Any], want: Want, reason: str) -> dict[str, Any]:
    """Record this child as a failed job (so the batch counts it and skips the rest of its branch) and fail its
    Celery task; siblings go on."""
    rt = runtime()
    job_id = str(self.request.id)
    if rt.ledger.get_job(job_id) is None:
        rt.ledger.create_job(
            job_id,
            {
                "task_id": job_id,
                "task_name": self.name,
                "kind": "action",
                "action": want.describe(),
                "mode": parent.get("mode") or "fast",
                "batch_id": parent.get("batch_id") or "",
                "priority": int(parent.get("priority") or 0),
                "prompt": parent.get("prompt"),
                "parent_job": parent.get("job_id"),
                "root_job": parent.get("root_job") or parent.get("job_id"),
                "message": message_from_request(self),
            },
        )
    rt.ledger.transition(job_id, "failed", from_states=["queued"], fields={"fail_reason": reason})
    job = rt.ledger.get_job(job_id)
    if job is not None and job.get("status") in TERMINAL:  # else a copy of this task runs the job: leave it
        complete_task(job, rt.ledger.job_result(job_id), rt)
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
    parent = _parent(parent)
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
                return _refuse(self, _parent(parent), Want(name, arg=_arguments(args, kwargs)), str(exc))

        return task(bind=True, base=FollowUpTask, name=f"tasks.followups.{name}")(run)

    return declare


@follow_up("upscale")
def upscale(self: JobTask, parent: Any, index: int) -> dict[str, Any]:
    """U1–U4: upscale one image of a grid."""
    return press_button(self, parent, Want("upscale", index=_index(index)))


@follow_up("vary")
def vary(self: JobTask, parent: Any, index: int | None = None, strength: str = "subtle") -> dict[str, Any]:
    """V1–V4 after a grid (``index``); Vary (Subtle/Strong) after an upscale (no index).

    A grid has one V<i> button whose strength is the account's variation mode, so there the requested strength
    cannot be pressed: it is recorded with the child (``meta.strength``, ``meta.strength_from`` = ``account``)
    rather than silently dropped. After an upscale it picks the button (``strength_from`` = ``button``).
    """
    if strength not in ("subtle", "strong"):
        raise InvalidInput("strength", f"must be 'subtle' or 'strong', not {strength!r}")
    if index:
        want, decided_by = Want("vary", index=_index(index), arg=strength), "account"
    else:
        want, decided_by = Want("vary", arg=strength), "button"
    return press_button(self, parent, want, meta={"strength": strength, "strength_from": decided_by})


@follow_up("reroll")
def reroll(self: JobTask, parent: Any) -> dict[str, Any]:
    """🔄: the same prompt again."""
    return press_button(self, parent, Want("reroll"))


@follow_up("zoom")
def zoom(self: JobTask, parent: Any, factor: float = 2.0) -> dict[str, Any]:
    """Zoom Out 2x or 1.5x of an upscaled image."""
    key = f"{_number(factor, 'factor'):g}"
    if key not in ("2", "1.5"):
        raise InvalidInput("factor", f"zoom out is 2 or 1.5 (use custom_zoom for {factor!r})")
    return press_button(self, parent, Want("zoom", arg=key))


@follow_up("custom_zoom")
def custom_zoom(self: JobTask, parent: Any, prompt: str | None = None, factor: float = 1.5) -> dict[str, Any]:
    """Custom Zoom: the modal step with ``<prompt> --zoom <factor>`` (the parent's prompt when none is given)."""
    number = _number(factor, "factor")
    if not 1.0 <= number <= 2.0:
        raise InvalidInput("factor", f"custom zoom takes 1.0 to 2.0, not {factor!r}")
    base = prompt or (_parent(parent).get("final_prompt") or _parent(parent).get("prompt") or "")
    return press_button(self, parent, Want("custom_zoom"), modal={"prompt": f"{base} --zoom {number:g}".strip()})


@follow_up("pan")
def pan(self: JobTask, parent: Any, direction: str) -> dict[str, Any]:
    """Pan left, right, up or down."""
    if direction not in ("left", "right", "up", "down"):
        raise InvalidInput("direction", f"must be left, right, up or down, not {direction!r}")
    return press_button(self, parent, Want("pan", arg=direction))


@follow_up("upscale_more")
def upscale_more(self: JobTask, parent: Any, kind: str = "subtle") -> dict[str, Any]:
    """The upscale buttons an upscaled image offers: 2x, 4x (v5), subtle, creative (v6)."""
    if kind not in ("2x", "4x", "subtle", "creative"):
        raise InvalidInput("kind", f"must be 2x, 4x, subtle or creative, not {kind!r}")
    return press_button(self, parent, Want("upscale_more", arg=kind))


@follow_up("vary_region")
def vary_region(self: JobTask, parent: Any, mask: str, prompt: str | None = None) -> dict[str, Any]:
    """Vary (Region): the modal step with a mask (``mask_reference()`` keeps it out of the broker)."""
    if not isinstance(mask, str) or not mask:
        raise InvalidInput("mask", "Vary (Region) needs a mask (data URI, img: reference or image file)")
    return press_button(self, parent, Want("vary_region"), modal=_modal(prompt, mask))


@follow_up("remix")
def remix(self: JobTask, parent: Any, prompt: str, index: int | None = None) -> dict[str, Any]:
    """A variation with a new prompt, through remix mode: V``index`` (default V1) of a grid, Vary (Strong) of
    an upscaled image (which has no V<i>; an index there fails listing what it offers)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput("prompt", "remix needs a new prompt")
    if index is not None:
        want = Want("vary", index=_index(index))
    elif offers(_parent(parent).get("buttons") or [], Want("vary", index=1)):
        want = Want("vary", index=1)
    else:
        want = Want("vary", arg="strong")
    return press_button(self, parent, want, modal={"prompt": prompt.strip()}, account_filter={"remix": True})


@follow_up("press")
def press(
    self: JobTask, parent: Any, label_or_custom_id: str, prompt: str | None = None, mask: str | None = None
) -> dict[str, Any]:
    """Escape hatch: press the button with this exact label, emoji or customId.

    ``prompt``/``mask`` answer its modal step (Custom Zoom, Vary (Region), anything on a remix account);
    without them such a button fails the child with "needs the modal step".
    """
    if not isinstance(label_or_custom_id, str) or not label_or_custom_id.strip():
        raise InvalidInput("label_or_custom_id", "give a button label, emoji or customId")
    return press_button(self, parent, Want("press", arg=label_or_custom_id), modal=_modal(prompt, mask) or None)


def _modal(prompt: str | None, mask: str | None) -> dict[str, Any]:
    modal: dict[str, Any] = {}
    if mask:
        modal["mask_base64"] = mask_reference(mask)
    if prompt:
        modal["prompt"] = prompt
    return modal


def _number(value: Any, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(field, f"must be a number, not {value!r}") from None


def _index(index: Any) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= 4:
        raise InvalidInput("index", f"must be 1, 2, 3 or 4, not {index!r}")
    return index


FOLLOW_UP_TASKS = (upscale, vary, reroll, zoom, custom_zoom, pan, upscale_more, vary_region, remix, press)


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
    same jobs instead of paying for new ones. It is sent again when it may have been lost: a worker killed
    between the finish step and the send, or a message popped by a worker killed before it recorded it (found
    by the worker-kill scenario of tests/reliability: the follow-up was never created and the batch never
    finished). Housekeeping calls this again once ``slot_lease_s`` passed without every follow-up existing.
    """
    from tasks.pipelines import compile as compile_plan
    from tasks.pipelines import store_masks

    job = rt.ledger.get_job(parent_id)
    if not job or not job.get("then") or job.get("status") != "succeeded":
        return False
    then = str(job["then"])
    try:
        canvas = compile_plan(store_masks(then, files=False))  # the worker never reads mask files
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
    from tasks.pipelines import count_jobs

    job_id = str(job["job_id"])
    log.error("job %s: plan %r not started: %s", job_id, then, exc)
    if not rt.ledger.set_once(job_id, "plan_error", str(exc)):
        return
    try:
        never = count_jobs(then)
    except InvalidInput:
        return  # a plan that does not parse was never counted as planned
    rt.ledger.mark_skipped(job.get("batch_id") or None, never, f"plan of {job_id} not started: {exc}")


def run_plan(result: dict[str, Any]) -> None:
    """Finish hook: a job created with ``then="U1-4"`` starts its plan once it succeeded."""
    if result.get("status") == "succeeded" and result.get("job_id"):
        start_plan(str(result["job_id"]), runtime(), result)


register_finish_hook(run_plan)
register_expect_hook(PLAN, start_plan)
