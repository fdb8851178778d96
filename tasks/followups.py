"""Follow-up tasks: each takes the parent job result as its first argument and presses the right button.

They compose as Celery canvases::

    imagine.s("a red fox") | group(upscale.s(i) for i in range(1, 5))
    imagine.s(p) | upscale.s(2) | zoom.s(2.0)
    imagine.s(p) | vary.s(3, strength="strong")

Each child is a job of its own (same slots, submit-once, tracking and settle as a root job) with
``parent_job``/``root_job`` lineage, in the parent's batch.  A button the parent does not offer fails only that
child, with a message listing what the parent offers.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import group
from celery.canvas import Signature, _chain
from celery.exceptions import Ignore

from worker.admission import register_expect_hook
from worker.app import task
from worker.buttons import Want, custom_id, resolve
from worker.finishing import complete_task, register_finish_hook
from worker.imagestore import store_image
from worker.jobs import JobTask, start_job
from worker.media import parse_data_uri, sniff_mime
from worker.messages import message_from_request
from worker.mjapi.errors import InvalidInput
from worker.runtime import Runtime, runtime


class FollowUpTask(JobTask):
    """A job task whose first argument is the parent job result (no producer-side request validation).

    Image arguments (a Vary (Region) mask) are stored once in Redis when the signature or message is made,
    so the broker and Flower only ever see a short reference.
    """

    kind = ""

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return super().s(*_light(args), **{k: _light_one(v) for k, v in kwargs.items()})

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any) -> Any:
        light_kwargs = {k: _light_one(v) for k, v in (kwargs or {}).items()}
        return super().apply_async(_light(tuple(args or ())), light_kwargs, task_id=task_id, **options)


def _light_one(value: Any) -> Any:
    return store_image(value) if isinstance(value, str) and value.startswith("data:") else value


def _light(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_light_one(a) for a in args)


def mask_reference(mask: str) -> str:
    """Store a mask (data URI, ``img:`` reference or image file path) once in Redis; return its reference."""
    if mask.startswith("img:"):
        return mask
    if not mask.startswith("data:"):
        path = Path(mask)
        if not path.is_file():
            raise InvalidInput("mask", f"{mask!r} is neither a data URI nor a readable image file")
        data = path.read_bytes()
        mime = sniff_mime(data)
        if mime is None:
            raise InvalidInput("mask", f"{mask!r} is not a JPEG, PNG, GIF or WEBP image")
        mask = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    parse_data_uri(mask, "mask")
    return store_image(mask)


def _parent(parent: Any) -> Mapping[str, Any]:
    if not isinstance(parent, Mapping) or not parent.get("job_id"):
        raise InvalidInput("parent", "a follow-up needs the parent job result as its first argument")
    return parent


def _refuse(self: JobTask, parent: Mapping[str, Any], want: Want, reason: str) -> dict[str, Any]:
    """Record this child as a failed job (so the batch counts it) and fail its Celery task; siblings go on."""
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
    assert job is not None
    complete_task(job, rt.ledger.job_result(job_id), rt)
    raise Ignore()


def press_button(
    self: JobTask,
    parent: Any,
    want: Want,
    *,
    modal: Mapping[str, Any] | None = None,
    account_filter: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one body of every follow-up: check the parent, resolve the button, run the action as a job."""
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
    return start_job(self, "action", payload, parent_result=parent, modal=modal, meta={"follow_up": want.describe()})


@task(bind=True, base=FollowUpTask, name="tasks.followups.upscale")
def upscale(self: JobTask, parent: Any, index: int) -> dict[str, Any]:
    """U1–U4: upscale one image of a grid."""
    return press_button(self, parent, Want("upscale", index=_index(index)))


@task(bind=True, base=FollowUpTask, name="tasks.followups.vary")
def vary(self: JobTask, parent: Any, index: int | None = None, strength: str = "subtle") -> dict[str, Any]:
    """V1–V4 after a grid (``index``); Vary (Subtle/Strong) after an upscale (no index)."""
    if strength not in ("subtle", "strong"):
        raise InvalidInput("strength", f"must be 'subtle' or 'strong', not {strength!r}")
    if index:
        return press_button(self, parent, Want("vary", index=_index(index), arg=strength))
    return press_button(self, parent, Want("vary", arg=strength))


@task(bind=True, base=FollowUpTask, name="tasks.followups.reroll")
def reroll(self: JobTask, parent: Any) -> dict[str, Any]:
    """🔄: the same prompt again."""
    return press_button(self, parent, Want("reroll"))


@task(bind=True, base=FollowUpTask, name="tasks.followups.zoom")
def zoom(self: JobTask, parent: Any, factor: float = 2.0) -> dict[str, Any]:
    """Zoom Out 2x or 1.5x of an upscaled image."""
    key = f"{float(factor):g}"
    if key not in ("2", "1.5"):
        raise InvalidInput("factor", f"zoom out is 2 or 1.5 (use custom_zoom for {factor!r})")
    return press_button(self, parent, Want("zoom", arg=key))


@task(bind=True, base=FollowUpTask, name="tasks.followups.custom_zoom")
def custom_zoom(self: JobTask, parent: Any, prompt: str | None = None, factor: float = 1.5) -> dict[str, Any]:
    """Custom Zoom: the modal step with ``<prompt> --zoom <factor>`` (the parent's prompt when none is given)."""
    if not 1.0 <= float(factor) <= 2.0:
        raise InvalidInput("factor", f"custom zoom takes 1.0 to 2.0, not {factor!r}")
    base = prompt or (_parent(parent).get("final_prompt") or _parent(parent).get("prompt") or "")
    return press_button(self, parent, Want("custom_zoom"), modal={"prompt": f"{base} --zoom {float(factor):g}".strip()})


@task(bind=True, base=FollowUpTask, name="tasks.followups.pan")
def pan(self: JobTask, parent: Any, direction: str) -> dict[str, Any]:
    """Pan left, right, up or down."""
    if direction not in ("left", "right", "up", "down"):
        raise InvalidInput("direction", f"must be left, right, up or down, not {direction!r}")
    return press_button(self, parent, Want("pan", arg=direction))


@task(bind=True, base=FollowUpTask, name="tasks.followups.upscale_more")
def upscale_more(self: JobTask, parent: Any, kind: str = "subtle") -> dict[str, Any]:
    """The upscale buttons an upscaled image offers: 2x, 4x (v5), subtle, creative (v6)."""
    if kind not in ("2x", "4x", "subtle", "creative"):
        raise InvalidInput("kind", f"must be 2x, 4x, subtle or creative, not {kind!r}")
    return press_button(self, parent, Want("upscale_more", arg=kind))


@task(bind=True, base=FollowUpTask, name="tasks.followups.vary_region")
def vary_region(self: JobTask, parent: Any, mask: str, prompt: str | None = None) -> dict[str, Any]:
    """Vary (Region): the modal step with a mask (``mask_reference()`` keeps it out of the broker)."""
    modal: dict[str, Any] = {"mask_base64": mask_reference(mask)}
    if prompt:
        modal["prompt"] = prompt
    return press_button(self, parent, Want("vary_region"), modal=modal)


@task(bind=True, base=FollowUpTask, name="tasks.followups.remix")
def remix(self: JobTask, parent: Any, prompt: str, index: int | None = None) -> dict[str, Any]:
    """A variation (V``index``, or Vary Strong after an upscale) with a new prompt, through remix mode."""
    if not prompt or not prompt.strip():
        raise InvalidInput("prompt", "remix needs a new prompt")
    want = Want("vary", index=_index(index), arg="strong") if index else Want("vary", arg="strong")
    return press_button(self, parent, want, modal={"prompt": prompt.strip()}, account_filter={"remix": True})


@task(bind=True, base=FollowUpTask, name="tasks.followups.press")
def press(self: JobTask, parent: Any, label_or_custom_id: str) -> dict[str, Any]:
    """Escape hatch: press the button with this exact label, emoji or customId."""
    return press_button(self, parent, Want("press", arg=label_or_custom_id))


def _index(index: int | None) -> int:
    if not isinstance(index, int) or not 1 <= index <= 4:
        raise InvalidInput("index", f"must be 1, 2, 3 or 4, not {index!r}")
    return index


FOLLOW_UP_TASKS = (upscale, vary, reroll, zoom, custom_zoom, pan, upscale_more, vary_region, remix, press)


PLAN = "plan"  # expectations ``plan/<parent job id>`` (worker.admission)


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

    job = rt.ledger.get_job(parent_id)
    if not job or not job.get("then") or job.get("status") != "succeeded":
        return False
    canvas = compile_plan(str(job["then"]))
    first = _plan_ids(canvas, parent_id)
    if all(rt.ledger.status(i) is not None for i in first):
        return False
    rt.slots.expect(f"{PLAN}/{parent_id}", time.time() + rt.settings.slot_lease_s)
    canvas.apply_async((result or rt.ledger.job_result(parent_id),), root_id=job.get("task_id"),
                       parent_id=job.get("task_id"))
    return True


def run_plan(result: dict[str, Any]) -> None:
    """Finish hook: a job created with ``then="U1-4"`` starts its plan once it succeeded."""
    if result.get("status") == "succeeded" and result.get("job_id"):
        start_plan(str(result["job_id"]), runtime(), result)


register_finish_hook(run_plan)
register_expect_hook(PLAN, start_plan)
