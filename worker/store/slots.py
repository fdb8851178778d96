"""Cluster-wide admission: upstream slots held as leases in Redis, submit pacing and a daily cap.

A slot is a member of the sorted set ``mjq:slots:<mode>`` (member = job id, score = lease expiry). Both
scripts first drop expired leases, so a crashed worker's slot comes back after ``slot_lease_s`` — except a
job tracked upstream (``mjq:inflight``), which occupies the account until it ends: its lease is renewed. A job that
cannot be admitted is *parked* in the ledger (no worker, no broker message); when a slot frees,
``admit_next`` pops the best parked jobs and gives each a lease on its behalf before its task is re-sent, so
no newcomer can take it, and ``mjq:expected`` holds each until its task starts (see ``worker.jobs.admission``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import redis

from worker.pricing import to_micros
from worker.settings import Settings
from worker.store import keys
from worker.store.scripts import register


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str
    retry_at: float | None = None  # refused by pacing while holding a lease: the epoch second it may submit


class Slots:
    """Leased semaphores per speed mode plus the pacing gates, all evaluated inside Redis."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._try = register(client, "gates", "try_admit")
        self._next = register(client, "gates", "admit_next")
        self._post = register(client, "gates", "pace_post")

    def _gates(self, mode: str, now: float) -> list[str | int | float]:
        """The arguments both scripts share: slots, now, lease, pacing interval, daily cap, UTC day."""
        settings = self.settings
        return [settings.admission_limit(mode), repr(now), repr(settings.slot_lease_s),
                repr(settings.submit_interval_s), settings.daily_cap, keys.utc_day(now)]

    def _daily_budget(self) -> int:
        """MJQ_BUDGET_DAILY in micros (0 = none): checked with the slot lease, in one script (gates.lua)."""
        return to_micros(self.settings.budget_daily, "MJQ_BUDGET_DAILY")

    def try_admit(self, mode: str, job_id: str, score: float) -> Admission:
        """Admit this job now (or confirm the lease it already holds), unless a better job is waiting."""
        res = self._try(args=[mode, job_id, *self._gates(mode, time.time()), repr(score), self._daily_budget()])
        return Admission(bool(int(res[0])), str(res[1]), float(res[2]) if len(res) > 2 and res[2] else None)

    def pace_post(self, job_id: str) -> float | None:
        """Claim the submit pace for this job's POST now, or the epoch second it may post (pacing counts from
        the real submits, not from admissions: a POST can come well after its admission)."""
        if self.settings.submit_interval_s <= 0:
            return None
        later = self._post(args=[job_id, repr(time.time()), repr(self.settings.submit_interval_s)])
        return float(later) if later else None

    def admit_next(self, mode: str, limit: int = 50) -> list[str]:
        """Pop parked jobs that may start now; each already holds its slot lease when returned."""
        res = self._next(args=[mode, *self._gates(mode, time.time()), limit, self._daily_budget()])
        return [str(x) for x in res]

    def expect(self, member: str, by: float) -> None:
        """A task for ``member`` (a job id, or ``<kind>/<job id>``) must start before ``by`` (epoch seconds)."""
        self.redis.zadd(keys.EXPECTED, {member: by})

    def arrived(self, member: str) -> None:
        """The expected task started (or is no longer needed)."""
        self.redis.zrem(keys.EXPECTED, member)

    def overdue_expected(self, now: float, limit: int = 100) -> list[str]:
        """Expected tasks that did not start in time: their message was lost (see ``worker.jobs.admission``)."""
        return cast(list[str], self.redis.zrangebyscore(keys.EXPECTED, "-inf", now, start=0, num=limit))

    def renew(self, mode: str, job_id: str, seconds: float | None = None) -> None:
        """Extend a held lease (tracking renews at every poll); does nothing if the lease is gone."""
        until = time.time() + (seconds if seconds is not None else self.settings.slot_lease_s)
        self.redis.zadd(keys.slots(mode), {job_id: until}, xx=True)

    def release(self, mode: str, job_id: str) -> None:
        self.redis.zrem(keys.slots(mode), job_id)

    def holders(self, mode: str) -> list[str]:
        """Jobs holding an unexpired lease."""
        return cast(list[str], self.redis.zrangebyscore(keys.slots(mode), time.time(), "+inf"))

    def in_use(self, mode: str) -> int:
        return int(self.redis.zcount(keys.slots(mode), time.time(), "+inf"))
