"""Submit tasks, one per request kind. Thin: each delegates to ``worker.jobs.start`` (validate -> slot -> submit
once -> tracking). The return value (delivered when the job finishes) is the job result dict."""

from __future__ import annotations

from typing import Any, Unpack

from worker.app import task
from worker.jobs.start import JobOptions, JobTask, run_job_task

Opt = Any  # keyword arguments are validated by the request models, not by Celery

# ``kind`` (the request model, worker.jobs.kinds) becomes an attribute of each generated task class.


@task(bind=True, base=JobTask, kind="imagine", name="tasks.imagine")
def imagine(
    self: JobTask,
    prompt: str | None = None,
    *,
    bot_type: Opt = None,
    base64_array: list[str] | None = None,
    account_filter: Opt = None,
    **options: Unpack[JobOptions],
) -> dict[str, Any]:
    """Text (and optional image prompts) to a 2x2 grid."""
    return run_job_task(self, call_kwargs(locals()))


@task(bind=True, base=JobTask, kind="blend", name="tasks.blend")
def blend(
    self: JobTask,
    base64_array: list[str] | None = None,
    *,
    dimensions: Opt = None,
    bot_type: Opt = None,
    account_filter: Opt = None,
    **options: Unpack[JobOptions],
) -> dict[str, Any]:
    """Blend 2-5 images."""
    return run_job_task(self, call_kwargs(locals()))


@task(bind=True, base=JobTask, kind="describe", name="tasks.describe")
def describe(
    self: JobTask,
    base64: str | None = None,
    *,
    bot_type: Opt = None,
    account_filter: Opt = None,
    **options: Unpack[JobOptions],
) -> dict[str, Any]:
    """Four prompts for an image (``extra.prompts``)."""
    return run_job_task(self, call_kwargs(locals()))


@task(bind=True, base=JobTask, kind="swap_face", name="tasks.swap_face")
def swap_face(
    self: JobTask,
    source_base64: str | None = None,
    target_base64: str | None = None,
    *,
    account_filter: Opt = None,
    **options: Unpack[JobOptions],
) -> dict[str, Any]:
    """Put the face of ``source_base64`` into ``target_base64``."""
    return run_job_task(self, call_kwargs(locals()))


@task(bind=True, base=JobTask, kind="upload", name="tasks.upload_images")
def upload_images(
    self: JobTask,
    base64_array: list[str] | None = None,
    *,
    filter: Opt = None,
    **options: Unpack[JobOptions],
) -> dict[str, Any]:
    """Upload images to Discord; the URLs are in ``extra.urls``."""
    return run_job_task(self, call_kwargs(locals()))


@task(bind=True, base=JobTask, kind="action", name="tasks.action")
def action(
    self: JobTask,
    task_id: str | None = None,
    custom_id: str | None = None,
    *,
    choose_same_channel: Opt = None,
    account_filter: Opt = None,
    modal: dict[str, Any] | None = None,
    **options: Unpack[JobOptions],
) -> dict[str, Any]:
    """Press a button (``custom_id``) of an upstream task; ``modal`` answers a modal step at once."""
    return run_job_task(self, call_kwargs(locals()))


@task(bind=True, base=JobTask, kind="modal", name="tasks.modal")
def modal(
    self: JobTask,
    task_id: str | None = None,
    *,
    prompt: str | None = None,
    mask_base64: str | None = None,
    **options: Unpack[JobOptions],
) -> dict[str, Any]:
    """Complete an upstream action waiting in its modal step (remix prompt, custom zoom, vary region)."""
    return run_job_task(self, call_kwargs(locals()))


def call_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """The task body's ``locals()`` as one flat keyword dict: request fields plus the job ``options``."""
    flat = {k: v for k, v in values.items() if k not in ("self", "options")}
    flat.update(values.get("options") or {})
    return {k: v for k, v in flat.items() if v is not None}
