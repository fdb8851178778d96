"""The request body of ``POST /v1/jobs`` and its translation into the keyword arguments of our job tasks.

The model checks only shapes (types, unknown fields); the rules of each request are those of the producer API
(``tasks.<kind>.apply_async`` raises ``InvalidInput``), so a job refused here is refused the same way in Python.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.batchfile import parse_bot, validate_plan
from worker.mjapi.errors import InvalidInput

Kind = Literal["imagine", "blend", "describe", "swap_face", "upload", "action", "modal"]
TASKS: dict[str, str] = {
    "imagine": "imagine",
    "blend": "blend",
    "describe": "describe",
    "swap_face": "swap_face",
    "upload": "upload_images",
    "action": "action",
    "modal": "modal",
}


class JobIn(BaseModel):
    """One job, as every job option of the Python API (``tasks.imagine.delay(...)`` and the other kinds)."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field("imagine", description="imagine | blend | describe | swap_face | upload | action | modal")
    prompt: str | None = Field(None, description="imagine: the prompt; modal: the new prompt (remix, custom zoom)")
    images: list[str] = Field(
        default_factory=list,
        description="data URIs (or, for imagine, http(s) URLs put in front of the prompt as image prompts);"
        " blend 2-5, describe 1, swap_face 2 (source, target), upload 1 or more",
    )
    mask: str | None = Field(None, description="modal: the region mask as a data URI (vary region)")
    task_id: str | None = Field(None, description="action/modal: the upstream task id")
    custom_id: str | None = Field(None, description="action: the button's custom id")
    dimensions: str | None = Field(None, description="blend: PORTRAIT | SQUARE | LANDSCAPE")
    bot: str | None = Field(None, description="mj | niji")
    mode: str | None = Field(None, description="fast | relax | turbo")
    then: str | None = Field(None, description='a follow-up plan, e.g. "U1-4" or "U2>zoom:2x"')
    priority: int | None = Field(None, description="0 (most urgent) - 9; default 2, or 5 in a batch")
    tags: list[str] | None = Field(None, description="up to 20 labels kept with the job")
    batch: str | None = Field(None, description="a batch id (counts, pause/resume/cancel, manifest)")
    job_id: str | None = Field(None, description="your idempotency key: the same id never makes a second job")
    upstream: str | None = Field(None, description="run on this upstream of the pool only (default: routed)")
    split_grid: bool | None = Field(
        None, description="a finished grid's four images as files (image_paths), with no U1-4 to pay for"
    )
    budget: float | str | None = Field(
        None, description="with batch: the most the batch may spend (MJQ_CURRENCY); a job that would cross it waits"
    )
    callback_url: str | None = Field(
        None, description="POST the signed job result there when the job ends (Standard Webhooks)"
    )
    callback_events: list[str] | None = Field(
        None,
        description='which events to call back: "finished" (default), "started" (accepted upstream),'
        ' "progress" (progress changes, throttled)',
    )

    def body_hash(self) -> str:
        """The same request, however its JSON was spelled, hashes the same (idempotency conflicts)."""
        text = json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _no_unsupported(job: JobIn) -> None:
    if job.budget is not None and not job.batch:
        raise InvalidInput("budget", "a budget is a batch's: give batch too")


def _count(job: JobIn, low: int, high: int | None) -> None:
    n = len(job.images)
    if n < low or (high is not None and n > high):
        want = f"{low}" if high == low else f"{low} to {high}" if high is not None else f"{low} or more"
        raise InvalidInput("images", f"{job.kind} takes {want} image(s), got {n}")


def task_call(job: JobIn, job_id: str) -> tuple[str, dict[str, Any]]:
    """(task name under ``tasks``, keyword arguments) of a job; raises ``InvalidInput`` naming the field."""
    _no_unsupported(job)
    for i, image in enumerate(job.images):
        if not image.startswith(("data:", "http://", "https://")):
            raise InvalidInput(f"images[{i}]", "give a data URI or an http(s) URL")
    kw: dict[str, Any] = {"job_id": job_id}
    if job.kind == "imagine":
        urls = [i for i in job.images if not i.startswith("data:")]
        inline = [i for i in job.images if i.startswith("data:")]
        prompt = job.prompt or ""
        kw["prompt"] = " ".join([*urls, prompt]) if urls and prompt.strip() else prompt
        if inline:
            kw["base64_array"] = inline
    elif job.kind in ("blend", "upload"):
        _count(job, 2 if job.kind == "blend" else 1, 5 if job.kind == "blend" else None)
        kw["base64_array"] = list(job.images)
        if job.dimensions:
            kw["dimensions"] = job.dimensions
    elif job.kind == "describe":
        _count(job, 1, 1)
        kw["base64"] = job.images[0]
    elif job.kind == "swap_face":
        _count(job, 2, 2)
        kw["source_base64"], kw["target_base64"] = job.images
    elif job.kind == "action":
        kw.update(task_id=job.task_id, custom_id=job.custom_id)
    elif job.kind == "modal":
        kw.update(task_id=job.task_id, prompt=job.prompt, mask_base64=job.mask)
    if job.bot and job.kind in ("imagine", "blend", "describe"):
        try:
            kw["bot_type"] = parse_bot(job.bot)
        except ValueError as exc:
            raise InvalidInput("bot", getattr(exc, "reason", str(exc))) from None
    if job.then is not None:
        try:
            kw["then"] = validate_plan(job.then, files=False)  # a mask path would name the server's files
        except ValueError as exc:
            raise InvalidInput("then", getattr(exc, "reason", str(exc))) from None
    optional = {
        "mode": job.mode, "priority": job.priority, "tags": job.tags, "batch_id": job.batch,
        "callback_url": job.callback_url, "callback_events": job.callback_events, "budget": job.budget,
        "split_grid": job.split_grid or None, "upstream": job.upstream,
    }
    kw.update({k: v for k, v in optional.items() if v is not None})
    return TASKS[job.kind], {k: v for k, v in kw.items() if v is not None}
