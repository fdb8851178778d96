"""Tracking tasks on the ``track`` queue: per-job polls (coalesced with list-by-condition), the finishing
step that completes the original task, housekeeping (beat), and the read-only helpers."""

from __future__ import annotations

from typing import Any

from celery import Task

from worker.app import ALERT_TASK, CALLBACK_TASK, FINISH_MANY_TASK, FINISH_TASK, HOUSEKEEPING_TASK, POLL_TASK, task
from worker.jobs import alerts, callbacks, finishing, reads, tracking
from worker.store.runtime import runtime


@task(name=POLL_TASK, acks_late=True, ignore_result=True, send_events=False)
def poll(job_id: str) -> int:
    """Check one due job (and any other due jobs, in one list-by-condition call)."""
    return tracking.poll_jobs(job_id, runtime())


@task(bind=True, name=FINISH_TASK, acks_late=True, ignore_result=True, max_retries=None, send_events=False)
def finish(self: Task[Any, Any], job_id: str) -> None:
    """Download the image, write the result, complete the original task, fire its continuation once."""
    finishing.finish_job(self, job_id, runtime())


@task(bind=True, name=FINISH_MANY_TASK, acks_late=True, ignore_result=True, send_events=False)
def finish_many(self: Task[Any, Any], job_ids: list[str]) -> int:
    """The finishing step of a chunk of cancelled jobs (one message for hundreds, so `mjq cancel` returns fast)."""
    return finishing.finish_jobs(self, [str(j) for j in job_ids], runtime())


@task(name=CALLBACK_TASK, acks_late=True, ignore_result=True, send_events=False)
def callback(ident: str, event: str = "finished", attempt: int | None = None) -> str:
    """POST a job's event (finished, started, progress) or a batch's summary (batch.finished, ``ident`` is the
    batch id) to its callback_url, signed; schedules its own retries (``attempt`` numbers them)."""
    return callbacks.deliver(ident, runtime(), event, attempt)


@task(name=ALERT_TASK, acks_late=True, ignore_result=True, send_events=False)
def alert(title: str, body: str) -> bool:
    """Send one operator alert through Apprise to every MJQ_ALERT_URLS entry."""
    return alerts.notify(title, body, runtime().settings)


@task(name=HOUSEKEEPING_TASK, ignore_result=True, send_events=False)
def housekeeping() -> dict[str, int]:
    """Admit parked jobs, re-send lost tasks, re-poll overdue jobs, re-finish (one runner at a time)."""
    return tracking.housekeeping(runtime())


@task(name="tasks.fetch_task")
def fetch_task(task_id: str, upstream: str | None = None) -> dict[str, Any] | None:
    """The upstream task as JSON (snake_case keys), or None when unknown; asked of ``upstream`` (a pool name),
    by default the upstream that made it."""
    rt = runtime()
    task = rt.client_for(reads.upstream_for(str(task_id), upstream, rt)).fetch(str(task_id))
    return None if task is None else task.model_dump(mode="json")


@task(name="tasks.list_tasks")
def list_tasks(ids: list[str], upstream: str | None = None) -> list[dict[str, Any]]:
    """Upstream tasks by ids (unknown ids are missing from the answer); each id asked of ``upstream``, by default
    of the upstream that made it."""
    rt = runtime()
    groups = reads.by_upstream([str(i) for i in ids], upstream, rt)
    return [t.model_dump(mode="json") for name, group in groups.items()
            for t in rt.client_for(name).list_by_condition(group)]


@task(name="tasks.image_seed")
def image_seed(task_id: str, upstream: str | None = None) -> str:
    """The seed of a finished image task, asked of ``upstream``, by default the upstream that made it."""
    rt = runtime()
    return str(rt.client_for(reads.upstream_for(str(task_id), upstream, rt)).image_seed(str(task_id)))
