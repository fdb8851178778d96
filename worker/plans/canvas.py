"""How many jobs a task message still has ahead of it: the follow-ups in its chain, callbacks and plan.

A batch counts planned children up front (so totals and ETAs include them) and, when a job fails, counts
the children that will now never exist as skipped — that is how a batch finishes without giant chords.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from worker.app import app
from worker.plans.grammar import count_jobs


def _is_job_task(name: Any) -> bool:
    return bool(getattr(app.tasks.get(str(name)), "counts_as_job", False))


def count_signatures(signatures: Iterable[Any]) -> int:
    """Job tasks inside serialised signatures (chains, groups and chords are walked)."""
    total = 0
    for sig in signatures or ():
        if not isinstance(sig, Mapping):
            continue
        kwargs = sig.get("kwargs") or {}
        kind = sig.get("subtask_type")
        if kind in ("group", "chain"):
            total += count_signatures(kwargs.get("tasks") or [])
        elif kind == "chord":
            header = kwargs.get("header") or []
            header_sigs = header.get("kwargs", {}).get("tasks", []) if isinstance(header, Mapping) else header
            total += count_signatures(header_sigs) + count_signatures([kwargs.get("body")])
        elif _is_job_task(sig.get("task")):
            total += 1
            options = sig.get("options") or {}
            total += count_signatures(options.get("link") or [])
    return total


def pending_children(message: Mapping[str, Any] | None, then: str | None = None) -> int:
    """Jobs that will be created after this one succeeds: its chain, link callbacks and ``then`` plan."""
    count = 0
    if message:
        count += count_signatures(message.get("chain") or [])
        count += count_signatures(message.get("link") or [])
    if then:
        count += count_jobs(then)
    return count
