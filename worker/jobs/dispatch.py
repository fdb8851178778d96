"""Internal tasks sent by name (the task bodies live in ``tasks/``, above this layer): polls and finishing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from celery.utils.timer2 import Timer

from worker.app import FINISH_MANY_TASK, FINISH_TASK, POLL_TASK, TRACK, app

log = logging.getLogger("mjqueue.dispatch")


def send_poll(job_id: str, countdown: float = 0.0) -> None:
    """Check ``job_id`` upstream after ``countdown`` seconds (``tasks.track.poll``)."""
    app.send_task(POLL_TASK, args=(job_id,), countdown=countdown, queue=TRACK)


FINISH_CHUNK = 500  # jobs per ``tasks.track.finish_many`` message


def send_finishes(job_ids: Iterable[str]) -> int:
    """The finishing step of many ended jobs (a cancelled batch of thousands): one message per ``FINISH_CHUNK``
    jobs, since one message per job made `mjq cancel` of 16,000 jobs take half a minute. Returns the messages."""
    ids = list(job_ids)
    chunks = [ids[start : start + FINISH_CHUNK] for start in range(0, len(ids), FINISH_CHUNK)]
    with app.producer_or_acquire() as producer:
        for chunk in chunks:
            app.send_task(FINISH_MANY_TASK, args=(chunk,), queue=TRACK, producer=producer)
    return len(chunks)


def send_finish(job_id: str, countdown: float = 0.0) -> None:
    """Download, store the result and continue ``job_id`` (``tasks.track.finish``)."""
    app.send_task(FINISH_TASK, args=(job_id,), countdown=countdown, queue=TRACK)


def task_event_again(delay_s: float, still: Callable[[], bool], hostname: str | None, kind: str,
                     **fields: Any) -> None:  # fmt: skip
    """The event once more, ``delay_s`` later if ``still()`` holds: the worker's own ``task-started`` travels on
    another connection and, arriving after ours on a busy machine, would put Flower's state back to STARTED."""

    def again() -> None:
        try:
            if still():
                task_event(hostname, kind, **fields)
        except Exception:  # events are for Flower; a failed look never matters to the job
            log.debug("no second %s event", kind, exc_info=True)

    _later().call_after(delay_s, again)


@cache
def _later() -> Timer:
    """One timer thread for every delayed event (a thread per parked job cost its start-up at each park)."""
    return Timer()


def task_event(hostname: str | None, kind: str, **fields: Any) -> None:
    """A task event for Flower, sent as the worker that runs the step (a name of our own showed up in Flower
    as a worker that flips online and offline); none without a worker's name."""
    if not hostname:
        return
    try:
        with app.events.default_dispatcher(hostname=hostname) as dispatcher:
            dispatcher.send(kind, **fields)
    except Exception:  # events are for Flower; never fail a job because of them
        log.warning("could not send %s event", kind, exc_info=True)
