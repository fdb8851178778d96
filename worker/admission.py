"""Admission of parked jobs: the waiting-set order and re-sending a parked task once a slot is free."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from worker.messages import resend
from worker.runtime import Runtime, runtime
from worker.slots import MODES

log = logging.getLogger("mjqueue.admission")


def queue_score(priority: int, created_at: float) -> float:
    """Waiting-set order: priority first (0 = most urgent), then enqueue time."""
    return priority * 1e13 + created_at * 1000.0


def admit_parked(modes: Iterable[str] = MODES, rt: Runtime | None = None) -> int:
    """Admit parked jobs for which a slot is free now and re-send their tasks; returns how many."""
    rt = rt or runtime()
    sent = 0
    for mode in modes:
        for job_id in rt.slots.admit_next(mode):
            job = rt.ledger.get_job(job_id)
            message = (job or {}).get("message")
            if not isinstance(message, dict):
                rt.slots.release(mode, job_id)
                log.warning("parked job %s has no stored task message; released its slot", job_id)
                continue
            resend(message)
            sent += 1
    return sent
