"""Internal tasks sent by name (the task bodies live in ``tasks/``, above this layer): polls and finishing."""

from __future__ import annotations

from collections.abc import Iterable

from worker.app import FINISH_TASK, POLL_TASK, TRACK, app


def send_poll(job_id: str, countdown: float = 0.0) -> None:
    """Check ``job_id`` upstream after ``countdown`` seconds (``tasks.track.poll``)."""
    app.send_task(POLL_TASK, args=(job_id,), countdown=countdown, queue=TRACK)


def send_finishes(job_ids: Iterable[str]) -> None:
    """``send_finish`` of many jobs over one broker connection (a cancelled batch of thousands)."""
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(FINISH_TASK, args=(job_id,), queue=TRACK, producer=producer)


def send_finish(job_id: str, countdown: float = 0.0) -> None:
    """Download, store the result and continue ``job_id`` (``tasks.track.finish``)."""
    app.send_task(FINISH_TASK, args=(job_id,), countdown=countdown, queue=TRACK)
