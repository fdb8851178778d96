"""Cluster-wide admission: upstream slots held as leases in Redis, submit pacing and daily caps, per upstream.

A slot is a member of the sorted set ``mjq:slots:<mode>`` (``:<upstream>`` for an upstream of the pool other
than ``default``; member = job id, score = lease expiry). A root job that names no upstream is routed by the
admission script itself: it takes the first candidate with room, in the pool's routing order. Both
scripts first drop expired leases, so a crashed worker's slot comes back after ``slot_lease_s`` — except a
job tracked upstream (``mjq:inflight``), which occupies the account until it ends: its lease is renewed. A job that
cannot be admitted is *parked* in the ledger (no worker, no broker message); when a slot frees,
``admit_next`` pops the best parked jobs and gives each a lease on its behalf before its task is re-sent, so
no newcomer can take it, and ``mjq:expected`` holds each until its task starts (see ``worker.jobs.admission``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from worker.pricing import to_micros
from worker.settings import Settings
from worker.store import keys
from worker.store.scripts import register
from worker.upstreams.pool import Pool, Upstream, route_order


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str
    retry_at: float | None = None  # refused by pacing while holding a lease: the epoch second it may submit
    upstream: str | None = None  # admitted: the upstream whose slot the job holds


def gate_table(up: Upstream, mode: str) -> dict[str, Any]:
    """An upstream's gate parameters for one mode, as the Lua gates read them (``lua/gates.lua``)."""
    tables = up.price_tables
    prices = {**(tables.get("") or {}), **(tables.get(mode) or {})}
    return {
        "name": up.name, "limit": up.admission_limit(mode), "interval": up.draw_interval(),
        "cap": up.daily_cap, "cap_mode": int(up.daily_cap_modes.get(mode, 0)), "budget": up.budget_daily_micros,
        "prices": prices, "charges": 1 if up.charges_failures else 0,
    }


class Slots:
    """Leased semaphores per upstream and speed mode plus the pacing gates, all evaluated inside Redis."""

    def __init__(self, client: redis.Redis, settings: Settings, pool: Pool | None = None) -> None:
        self.redis = client
        self.settings = settings
        self.pool = pool or Pool.from_settings(settings)
        self._try = register(client, "prelude", "gates", "try_admit")
        self._next = register(client, "prelude", "gates", "admit_next")
        self._post = register(client, "prelude", "gates", "pace_post")

    def _daily_budget(self) -> int:
        """MJQ_BUDGET_DAILY in micros (0 = none): checked with the slot lease, in one script (gates.lua)."""
        return to_micros(self.settings.budget_daily, "MJQ_BUDGET_DAILY")

    def used_today(self, now: float | None = None) -> dict[str, int]:
        """Submits to each upstream this UTC day (all modes)."""
        day = keys.utc_day(now if now is not None else time.time())
        names = self.pool.names
        values = cast(list[str | None], self.redis.mget([keys.daily_of(n, day) for n in names]))
        return {n: int(v or 0) for n, v in zip(names, values, strict=True)}

    def candidates(self, mode: str, pin: str | None, current: str | None = None,
                   now: float | None = None) -> list[Upstream]:
        """Where a job of ``mode`` may go now: its pinned upstream, or every upstream serving the mode inside its
        work window in routing order (``worker.upstreams.pool.route_order``); the one whose slot it holds first."""
        now = time.time() if now is None else now
        if pin:
            up = self.pool.by_name.get(pin)
            return [up] if up is not None and up.serves(mode) and up.open_at(now) else []
        open_ = [u for u in self.pool.serving(mode) if u.open_at(now)]
        if len(open_) > 1:
            open_ = route_order(open_, self.used_today(now))
        if current:
            open_.sort(key=lambda u: u.name != current)
        return open_

    def room_tables(self, mode: str, pin: str | None) -> list[dict[str, Any]]:
        """Where a parked job of ``mode`` could start ({name, limit} each, no Redis read): what ``Ledger.park``
        checks for a slot freed while the job was on its way to its waiting set."""
        ups = [self.pool.by_name[pin]] if pin and pin in self.pool.by_name else self.pool.serving(mode)
        return [{"name": u.name, "limit": u.admission_limit(mode)} for u in ups if u.serves(mode)]

    def try_admit(
        self, mode: str, job_id: str, score: float, candidates: Sequence[Upstream] | None = None
    ) -> Admission:
        """Admit this job now on the first candidate that has room (or confirm the lease it already holds),
        unless a better job is waiting there; ``candidates`` None: routed over the pool."""
        now = time.time()
        if candidates is None:
            candidates = self.candidates(mode, None, now=now)
        res = self._try(args=[
            mode, job_id, repr(now), repr(self.settings.slot_lease_s), keys.utc_day(now), repr(score),
            self._daily_budget(), ",".join(self.pool.names), json.dumps([gate_table(u, mode) for u in candidates]),
        ])
        ok = bool(int(res[0]))
        retry = float(res[2]) if len(res) > 2 and res[2] else None
        return Admission(ok, str(res[1]), retry, str(res[3]) if ok and len(res) > 3 else None)

    def pace_post(self, job_id: str, up: Upstream | None = None) -> float | None:
        """Claim the submit pace of ``up`` for this job's POST now, or the epoch second it may post (pacing
        counts from the real submits, not from admissions: a POST can come well after its admission)."""
        up = up or self.pool.default
        if up.interval_s <= 0:
            return None
        later = self._post(args=[job_id, repr(time.time()), repr(up.draw_interval()), up.name])
        return float(later) if later else None

    def admit_next(self, mode: str, limit: int = 50, up: Upstream | None = None) -> list[str]:
        """Pop parked jobs that may start on ``up`` (default: the first upstream) now; each already holds its
        slot lease when returned."""
        up = up or self.pool.default
        now = time.time()
        res = self._next(args=[
            json.dumps(gate_table(up, mode)), mode, repr(now), repr(self.settings.slot_lease_s), keys.utc_day(now),
            limit, self._daily_budget(), ",".join(self.pool.names),
        ])
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

    def renew(self, mode: str, job_id: str, seconds: float | None = None,
              upstream: str = keys.DEFAULT_UPSTREAM) -> None:
        """Extend a held lease (tracking renews at every poll); does nothing if the lease is gone."""
        until = time.time() + (seconds if seconds is not None else self.settings.slot_lease_s)
        self.redis.zadd(keys.slots_of(upstream, mode), {job_id: until}, xx=True)

    def release(self, mode: str, job_id: str, upstream: str = keys.DEFAULT_UPSTREAM) -> None:
        self.redis.zrem(keys.slots_of(upstream, mode), job_id)

    def holders(self, mode: str, upstream: str = keys.DEFAULT_UPSTREAM) -> list[str]:
        """Jobs holding an unexpired lease."""
        return cast(list[str], self.redis.zrangebyscore(keys.slots_of(upstream, mode), time.time(), "+inf"))

    def in_use(self, mode: str, upstream: str | None = None) -> int:
        """Leases held now on one upstream, or (None) over the pool."""
        names = [upstream] if upstream else self.pool.names
        now = time.time()
        return sum(int(self.redis.zcount(keys.slots_of(n, mode), now, "+inf")) for n in names)
