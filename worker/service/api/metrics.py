"""``GET /metrics``: Prometheus text read from the ledger at scrape time, plus the API's own request counts.

Read at scrape time (a custom collector) rather than counted in this process, so every API replica and every
worker's jobs are seen the same way. Spend is left out until the money issue (budgets) exists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import cast

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.mjapi.models import MODES
from worker.store import keys
from worker.store.runtime import Runtime


class LedgerCollector(Collector):
    """Jobs by state (over batches), batches by status, slots in use and waiting, today's submits, breaker."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        ledger, redis = self.rt.ledger, self.rt.redis
        batches = ledger.batches()
        jobs = GaugeMetricFamily("mjq_batch_jobs", "Jobs of all batches by state", labels=["state"])
        states: dict[str, int] = {}
        by_status: dict[str, int] = {}
        for info in batches:
            for state, n in (info.get("counts") or {}).items():
                states[state] = states.get(state, 0) + int(n)
            status = str(info.get("status") or "active")
            by_status[status] = by_status.get(status, 0) + 1
        for state, n in sorted(states.items()):
            jobs.add_metric([state], n)
        yield jobs
        status_family = GaugeMetricFamily("mjq_batches", "Batches by status", labels=["status"])
        for status, n in sorted(by_status.items()):
            status_family.add_metric([status], n)
        yield status_family
        slots = GaugeMetricFamily("mjq_slots_in_use", "Upstream slots held, by speed mode", labels=["mode"])
        size = GaugeMetricFamily("mjq_slots", "Upstream slots configured, by speed mode", labels=["mode"])
        waiting = GaugeMetricFamily("mjq_jobs_waiting", "Jobs parked for a slot, by speed mode", labels=["mode"])
        for mode in MODES:
            slots.add_metric([mode], self.rt.slots.in_use(mode))
            size.add_metric([mode], int(getattr(self.rt.settings, f"slots_{mode}")))
            waiting.add_metric([mode], ledger.waiting_count(mode))
        yield from (slots, size, waiting)
        day = time.strftime("%Y%m%d", time.gmtime())
        submits = cast(str | None, redis.get(keys.daily(day)))
        yield GaugeMetricFamily("mjq_submits_today", "Submits upstream this UTC day", value=int(submits or 0))
        yield GaugeMetricFamily(
            "mjq_jobs_in_flight", "Jobs accepted upstream and being tracked", value=int(redis.zcard(keys.INFLIGHT))
        )
        yield GaugeMetricFamily(
            "mjq_breaker_tripped", "1 while submitting is stopped (401/403/out of credit)",
            value=1 if ledger.breaker_tripped() else 0,
        )


class ApiMetrics:
    """The registry served at ``/metrics`` and the request counter the app increments."""

    def __init__(self, rt: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(LedgerCollector(rt))
        self.requests = Counter(
            "mjq_api_requests", "HTTP API requests by route and status", ["route", "status"], registry=self.registry
        )
        self.jobs_created = Counter(
            "mjq_api_jobs_created", "Jobs created through the HTTP API, by key name", ["key"], registry=self.registry
        )
