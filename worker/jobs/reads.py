"""The direct reads (``tasks.fetch_task``, ``tasks.list_tasks``, ``tasks.image_seed``): which upstream to ask.

An upstream task id exists only on the upstream that made it, so a read goes there: the upstream named by the
caller (checked against the pool), else the one recorded for the id (the ledger's upstream-id index leads to the
job, whose record names its upstream), else the first of the pool (an id made outside mjqueue).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.mjapi.errors import InvalidInput
from worker.store.runtime import Runtime


def checked_upstream(upstream: Any, rt: Runtime) -> str | None:
    """The caller's ``upstream`` (None or "": not given), or ``InvalidInput`` naming the field and the rule."""
    if upstream is None or upstream == "":
        return None
    if not isinstance(upstream, str):
        raise InvalidInput("upstream", f"must be an upstream name (a string), not {type(upstream).__name__}")
    if upstream not in rt.pool.by_name:
        raise InvalidInput("upstream", f"unknown upstream {upstream!r}; the pool has {', '.join(rt.pool.names)}")
    return upstream


def owner_of(task_id: str, rt: Runtime) -> str:
    """The upstream recorded for this upstream task id, else the pool's first."""
    job = rt.ledger.job_by_upstream(str(task_id)) or {}
    name = str(job.get("upstream") or job.get("upstream_pin") or "")
    return name if name in rt.pool.by_name else rt.pool.default.name


def upstream_for(task_id: str, upstream: Any, rt: Runtime) -> str:
    """Where a read of ``task_id`` goes: the caller's upstream, else its owner."""
    return checked_upstream(upstream, rt) or owner_of(task_id, rt)


def by_upstream(task_ids: Sequence[str], upstream: Any, rt: Runtime) -> dict[str, list[str]]:
    """The ids grouped by the upstream each read goes to (in pool order; ids keep their order)."""
    chosen = checked_upstream(upstream, rt)
    groups: dict[str, list[str]] = {}
    for task_id in task_ids:
        groups.setdefault(chosen or owner_of(task_id, rt), []).append(task_id)
    return {name: groups[name] for name in rt.pool.names if name in groups}
