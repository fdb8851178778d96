"""Where the delivery state of an outgoing callback lives on its job or batch record, and how it reads.

Written by ``worker.jobs.callbacks``; read by results (``Ledger.job_result``), ``mjq status``/``mjq job``, the
HTTP API and the manifest, which sit on both sides of the jobs layer: so the names are spelled here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

BATCH_EVENT = "batch.finished"
JOB_EVENTS = ("finished", "started", "progress")  # the values of the job option callback_events


@dataclass(frozen=True)
class Fields:
    """The record fields of one event's delivery."""

    state: str  # retrying | delivered | gave up
    attempts: str
    since: str  # when the first attempt was sent (the retry window counts from it)
    error: str  # the last failure (an HTTP status or a connection error)
    at: str  # when it was delivered


@cache  # read for every job of an export: the names of an event never change
def fields(event: str) -> Fields:
    if event in ("finished", BATCH_EVENT):  # the job's end keeps the names results have always shown
        since = "callback_started" if event == "finished" else "callback_since"
        return Fields("callback", "callback_attempts", since, "callback_error", "callback_at")
    p = f"cb_{event}"
    return Fields(p, f"{p}_attempts", f"{p}_since", f"{p}_error", f"{p}_at")


def delivery_view(record: Mapping[str, Any], event: str = "finished") -> dict[str, Any] | None:
    """``{"state", "attempts"[, "error"]}`` of an event, None when it was never asked for."""
    f = fields(event)
    state = record.get(f.state)
    if not state:
        return None
    out: dict[str, Any] = {"state": str(state), "attempts": int(record.get(f.attempts) or 0)}
    if state != "delivered" and record.get(f.error):
        out["error"] = str(record[f.error])
    return out


def job_callback(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``callback`` of a job result: its end's delivery, plus ``started``/``progress`` when asked for."""
    out = delivery_view(record, "finished")
    for event in ("started", "progress"):
        view = delivery_view(record, event)
        if view is not None:
            out = {**(out or {}), event: view}
    return out


def batch_callbacks(info: Mapping[str, Any]) -> dict[str, Any]:
    """The callback states of a batch: its jobs' end callbacks (counts) and its own batch callback."""
    asked = int(info.get("callbacks:asked") or 0)
    delivered = int(info.get("callbacks:delivered") or 0)
    gave_up = int(info.get("callbacks:gave up") or 0)
    return {
        "jobs": {"delivered": delivered, "retrying": max(0, asked - delivered - gave_up), "gave up": gave_up},
        "batch": delivery_view(info, BATCH_EVENT),
    }
