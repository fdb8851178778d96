"""What Flower shows of a job task's arguments (``argsrepr``/``kwargsrepr``): short, never an image or its key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Task

from worker.jobs.kinds import KINDS, Kind, image_values
from worker.mjapi.images import describe_images
from worker.store.images import IMAGE_REF, peek_image
from worker.store.runtime import Runtime

_REPR_TEXT = 40


def safe_repr(value: Any, depth: int = 0) -> str:
    """A short repr that never shows an image (data URI or ``img:`` key) and cuts long texts."""
    if isinstance(value, Mapping):
        if value.get("job_id") and "status" in value:
            return f"parent={value['job_id']} ({value.get('status')})"  # a parent job result (follow-ups)
        if depth > 1:
            return "{…}"
        return "{" + ", ".join(f"{k}={safe_repr(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(safe_repr(v, depth + 1) for v in value[:5]) + (", …]" if len(value) > 5 else "]")
    if isinstance(value, str):
        if value.startswith(("data:", IMAGE_REF)):
            return "<image>"
        return repr(value[:_REPR_TEXT] + "…") if len(value) > _REPR_TEXT else repr(value)
    return repr(value)[:_REPR_TEXT]


def task_reprs(task: Task[Any, Any], args: Any, kwargs: Mapping[str, Any], rt: Runtime) -> tuple[str, str]:
    """``argsrepr``/``kwargsrepr`` of a job task message we send (re-sent, retried): what Flower shows.

    Celery builds a message without them from the full arguments (the prompt, ``img:`` keys, cut at 1 KB), so
    every message we publish again passes them.
    """
    spec = KINDS.get(str(getattr(task, "kind", "") or ""))
    parent = args[0] if args and isinstance(args[0], Mapping) else None
    options = {**kwargs, "batch_id": kwargs.get("batch_id") or (parent or {}).get("batch_id")}
    kwargsrepr = short_repr(spec, kwargs, options, rt) if spec is not None else followup_repr(kwargs, parent)
    return args_repr(tuple(args or ())), kwargsrepr


def followup_repr(kwargs: Mapping[str, Any], parent: Any) -> str:
    """A follow-up's keyword arguments with its parent's batch (``batch_id=…``), so searching Flower for a
    batch finds its follow-ups as well as its roots."""
    text = safe_repr(dict(kwargs))
    batch = parent.get("batch_id") if isinstance(parent, Mapping) else None
    if not batch or "batch_id" in kwargs:
        return text
    return text[:-1] + (", " if len(text) > 2 else "") + f"batch_id={batch}}}"


def short_repr(
    kind: Kind, payload: Mapping[str, Any], options: Mapping[str, Any], rt: Runtime
) -> str:
    """What Flower shows of a job task's arguments: ``{prompt='a red fox…', images=2×PNG 1.2MB, mode=fast}``.

    Never an image or its ``img:`` key (the size and type of a stored image are read from Redis, not the data).
    """
    parts: list[str] = []
    for name in ("prompt", "task_id", "custom_id"):
        value = payload.get(name)
        if value:
            text = str(value)
            parts.append(f"{name}={(text[:40] + '…') if len(text) > 40 else text!r}")
    images = image_values(kind, payload)
    if images:
        parts.append(f"images={describe_images(images, lambda ref: peek_image(ref, rt))}")
    for name in ("mode", "batch_id", "job_id"):
        if options.get(name):
            parts.append(f"{name}={options[name]}")
    return "{" + ", ".join(parts) + "}"


def args_repr(args: tuple[Any, ...]) -> str:
    """Positional arguments (a follow-up's first is the parent job: shown by its id, not its whole result)."""
    return "(" + ", ".join(safe_repr(a) for a in args) + ")"
