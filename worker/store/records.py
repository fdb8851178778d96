"""What a job record is: its states, and a typed view of the ledger hash (``Ledger.get_job``)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from worker.mjapi.models import MODES


class JobState(StrEnum):
    """``queued -> submitting -> submitted -> running -> succeeded | failed | timed_out | cancelled``, plus
    ``needs_review`` (an ambiguous submit, never resent) and ``skipped`` (a planned child that will never exist)."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    NEEDS_REVIEW = "needs_review"
    SKIPPED = "skipped"


STATES = tuple(JobState)
TERMINAL = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.NEEDS_REVIEW,
     JobState.SKIPPED}
)
ACTIVE = frozenset({JobState.SUBMITTING, JobState.SUBMITTED, JobState.RUNNING})
DEFAULT_MODE = MODES[0]


class Job:
    """A typed view of a job record: the fields every layer reads, with their defaults in one place."""

    __slots__ = ("record",)

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record

    @property
    def id(self) -> str:
        return str(self.record["job_id"])

    @property
    def status(self) -> JobState | None:
        value = self.record.get("status")
        return JobState(value) if value in STATES else None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def mode(self) -> str:
        return str(self.record.get("mode") or DEFAULT_MODE)

    @property
    def kind(self) -> str:
        return str(self.record.get("kind") or "imagine")

    @property
    def batch_id(self) -> str | None:
        return str(self.record.get("batch_id") or "") or None

    @property
    def priority(self) -> int:
        return int(self.record.get("priority") or 0)

    @property
    def upstream(self) -> str:
        """The pool upstream the job runs on (or is pinned to); ``default`` before it is routed."""
        return str(self.record.get("upstream") or self.record.get("upstream_pin") or "default")

    @property
    def upstream_id(self) -> str | None:
        return str(self.record.get("upstream_id") or "") or None

    @property
    def root_job(self) -> str:
        return str(self.record.get("root_job") or self.record["job_id"])
