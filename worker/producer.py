"""Enqueue jobs and wait for them: the producer side shared by the CLI, the demo and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any

import tasks
from worker.app import app
from worker.batchfile import BatchJob
from worker.jobs.callbacks import check_callback
from worker.mjapi.errors import InvalidInput
from worker.pricing import PriceError, to_micros
from worker.reports.progress import Snapshot
from worker.settings import Settings, get_settings
from worker.store.connection import redis_client
from worker.store.ledger import Ledger


class UnknownBatch(LookupError):
    """No batch by that id in the ledger."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch {batch_id!r}")
        self.batch_id = batch_id


class Backend:
    """Ledger, controls and the producer API behind one small object (one Redis connection)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.redis = redis_client(self.settings)
        self.redis.ping()
        self.ledger = Ledger(self.redis)

    def close(self) -> None:
        self.redis.close()

    def batch(self, batch_id: str) -> dict[str, Any]:
        info = self.ledger.batch(batch_id)
        if not info or not (info.get("total") or info.get("planned") or info.get("counts")):
            raise UnknownBatch(batch_id)
        return dict(info)

    def snapshot(self, batch_id: str) -> Snapshot:
        return Snapshot.from_batch(batch_id, self.ledger.batch(batch_id) or {})

    def submit(self, kwargs: Mapping[str, Any], queue: str | None = None, producer: Any = None) -> str:
        """Enqueue one imagine job through the producer API (validated there); returns its job id.

        ``producer``: a kombu producer to reuse (``Backend.producer()``) instead of one per message.
        """
        options: dict[str, Any] = {"queue": queue} if queue else {}
        if producer is not None:
            options["producer"] = producer
        result = tasks.imagine.apply_async(kwargs=dict(kwargs), **options)
        return str(kwargs.get("job_id") or result.id)

    @contextmanager
    def producer(self) -> Iterator[Any]:
        """One broker connection and producer for many messages (a batch enqueues thousands)."""
        with app.producer_or_acquire() as producer:
            yield producer

    def unfinished(self, job_ids: Sequence[str]) -> int:
        """Jobs not yet through their finishing step (not terminal, or image still downloading)."""
        return self.ledger.unfinished(job_ids)

    def wait_finished(self, job_ids: Sequence[str], timeout_s: float | None = 60.0) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.unfinished(job_ids) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.3)


@contextmanager
def backend() -> Iterator[Backend]:
    handle = Backend()
    try:
        yield handle
    finally:
        handle.close()


CHUNK = 200  # jobs looked up in (and announced to) the ledger per Redis round trip


def configure_batch(
    handle: Backend,
    batch_id: str,
    *,
    budget: float | str | None = None,
    callback_url: str | None = None,
    callback_signer: str | None = None,
) -> None:
    """The batch options, checked first (``InvalidInput`` naming the field), then put on the batch record
    before any of its jobs can be admitted: ``budget`` (most the batch may spend, MJQ_CURRENCY) and
    ``callback_url`` (``batch.finished`` with the summary, once, signed with ``callback_signer``'s secret or
    MJQ_CALLBACK_SECRET)."""
    try:
        micros = to_micros(budget, "budget") if budget is not None else None
    except PriceError as exc:
        raise InvalidInput("budget", str(exc).removeprefix("budget: ")) from None
    if callback_url is not None:
        check_callback({"callback_url": callback_url, "callback_signer": callback_signer}, handle.settings)
    meta = {"callback_url": callback_url, "callback_signer": callback_signer} if callback_url else None
    handle.ledger.ensure_batch(batch_id, {k: v for k, v in (meta or {}).items() if v})
    if micros is not None:
        handle.ledger.set_budget(batch_id, micros)


@dataclass
class Enqueued:
    """Running counts of ``submit_jobs`` (read them after an interrupt: what was queued so far)."""

    submitted: int = 0
    skipped: int = 0


def submit_jobs(
    handle: Backend,
    jobs: Iterable[BatchJob],
    batch_id: str,
    on_progress: Callable[[int], None] | None = None,
    queue: str | None = None,
    tally: Enqueued | None = None,
    *,
    budget: float | str | None = None,
    callback_url: str | None = None,
    callback_signer: str | None = None,
) -> tuple[int, int]:
    """Enqueue jobs the ledger does not know yet; returns (submitted, skipped as already known).

    ``budget``, ``callback_url`` and ``callback_signer`` are batch options (``configure_batch``), set before the
    first job is sent.

    Every job sent is announced to the batch first (``Ledger.expect_jobs``), so progress and ETA count it before a
    worker creates its record, and the batch ends once exactly those jobs (and their follow-ups) ended: jobs
    already known, here or in another batch, and rows no longer in the file are never waited for. Jobs are
    looked up ``CHUNK`` at a time (one round trip), which keeps ``mjq batch`` close to raw ``apply_async``;
    ``jobs`` may be a stream (a huge file is read as it is sent).
    """
    configure_batch(handle, batch_id, budget=budget, callback_url=callback_url, callback_signer=callback_signer)
    tally = tally if tally is not None else Enqueued()
    stream = iter(jobs)
    start = 0
    with handle.producer() as producer:
        while chunk := list(islice(stream, CHUNK)):
            known = handle.ledger.existing([job.job_id for job in chunk])
            # announced before they are sent: a worker that creates a record removes it from the set, so the
            # set's size is the pending count (a send that comes first could be created before its announcement)
            announced = [job.job_id for job in chunk if job.job_id not in known]
            handle.ledger.expect_jobs(batch_id, announced)
            sent = 0
            try:
                for index, job in enumerate(chunk, start=start + 1):
                    if job.job_id in known:
                        tally.skipped += 1
                    else:
                        handle.submit(job.task_kwargs(batch_id), queue, producer)
                        sent += 1
                        tally.submitted += 1
                    if on_progress is not None:
                        on_progress(index)
            finally:  # also when interrupted: what was sent is expected, nothing else
                handle.ledger.unexpect_jobs(batch_id, announced[sent:])
            start += len(chunk)
    return tally.submitted, tally.skipped
