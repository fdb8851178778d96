"""Internal tasks sent by name (the task bodies live in ``tasks/``, above this layer): polls and finishing."""

from __future__ import annotations

from worker.app import TRACK, app

POLL = "tasks.track.poll"
FINISH = "tasks.track.finish"
HOUSEKEEPING = "tasks.track.housekeeping"


def send_poll(job_id: str, countdown: float = 0.0) -> None:
    """Check ``job_id`` upstream after ``countdown`` seconds (``tasks.track.poll``)."""
    app.send_task(POLL, args=(job_id,), countdown=countdown, queue=TRACK)


def send_finish(job_id: str, countdown: float = 0.0) -> None:
    """Download, store the result and continue ``job_id`` (``tasks.track.finish``)."""
    app.send_task(FINISH, args=(job_id,), countdown=countdown, queue=TRACK)
