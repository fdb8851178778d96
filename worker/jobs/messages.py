"""Task messages of parked jobs: what a job needs to be re-sent exactly as it was (same id, chain, links)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Task
from celery.app.task import Context

from worker.app import INTERACTIVE, TRACK, app
from worker.jobs.kinds import Kind, lighten_images
from worker.jobs.reprs import task_reprs
from worker.store.runtime import Runtime

MESSAGE_OPTIONS = ("chain", "link", "link_error", "root_id", "parent_id", "group_id", "group_index", "chord")


def message_from_request(task: Task[Any, Any], rt: Runtime, kind: Kind | None = None) -> dict[str, Any]:
    """The current task message (light: images by reference) in a form ``resend`` can publish again."""
    req = task.request
    kwargs = dict(req.kwargs or {})
    if kind is not None:
        kwargs = lighten_images(kind, kwargs, rt)
    argsrepr, kwargsrepr = task_reprs(task, req.args, kwargs, rt)
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
        "queue": delivery.get("routing_key") or task.queue or INTERACTIVE,
        "priority": delivery.get("priority"),
        "argsrepr": argsrepr,
        "kwargsrepr": kwargsrepr,
    }


# Work of jobs already under way (a job just admitted to a slot, a follow-up of a batch job) travels on this
# queue: workers read it before ``batch``, where the rest of a batch file may wait by the thousand to be parked
# (found by the benchmarks: at the start of a 2,000-prompt batch, admitted jobs waited behind the batch's own
# messages and the account sat idle for seconds; follow-ups waited up to a second to start).
UNDERWAY_QUEUE = TRACK


def resend(message: Mapping[str, Any], countdown: float | None = None, *, admitted: bool = False) -> None:
    """Publish a stored task message again: same task id, chain, callbacks and group membership.

    ``admitted``: the job holds a slot now, so its message goes ahead of queued batch work (``UNDERWAY_QUEUE``)
    unless it came from the interactive queue, which is read first anyway.
    """
    options = {k: message.get(k) for k in MESSAGE_OPTIONS if message.get(k) is not None}
    queue = str(message.get("queue") or INTERACTIVE)
    app.send_task(
        str(message["task"]),
        args=list(message.get("args") or []),
        kwargs=dict(message.get("kwargs") or {}),
        task_id=str(message["id"]),
        queue=UNDERWAY_QUEUE if admitted and queue != INTERACTIVE else queue,
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
