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

from worker.jobs.alerts import last_hour_outcomes
from worker.mjapi.models import MODES
from worker.store import keys
from worker.store.runtime import Runtime


class LedgerCollector(Collector):
    """Jobs by state (over batches), batches by status; per upstream: slots in use and waiting, today's submits,
    the last hour's outcomes, its stop."""

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
        yield from self.per_upstream()
        yield GaugeMetricFamily(
            "mjq_jobs_in_flight", "Jobs accepted upstream and being tracked", value=int(redis.zcard(keys.INFLIGHT))
        )

    def per_upstream(self) -> Iterator[Metric]:
        """Slots, parked jobs, today's submits, the last hour's outcomes and the stop of each upstream of the pool
        (label ``upstream``; one upstream: ``default``). ``sum by (mode)`` gives the pool's figures."""
        rt, ledger = self.rt, self.rt.ledger
        labels = ["upstream", "mode"]
        slots = GaugeMetricFamily("mjq_slots_in_use", "Upstream slots held, by upstream and speed mode", labels=labels)
        size = GaugeMetricFamily("mjq_slots", "Upstream slots configured, by upstream and speed mode", labels=labels)
        waiting = GaugeMetricFamily(
            "mjq_jobs_waiting", "Jobs parked for a slot, by speed mode (upstream \"\": any upstream of the mode;"
            " a name: pinned to it)", labels=labels)
        for mode in MODES:
            waiting.add_metric(["", mode], ledger.waiting_count(mode))
        day = keys.utc_day(time.time())
        submits = GaugeMetricFamily("mjq_submits_today", "Submits this UTC day, by upstream", labels=["upstream"])
        outcomes = GaugeMetricFamily("mjq_jobs_last_hour", "Jobs ended in the last hour, by upstream and outcome",
                                     labels=["upstream", "outcome"])
        stopped = GaugeMetricFamily(
            "mjq_breaker_tripped", "1 while submitting to the upstream is stopped (401/403/out of credit, timed"
            " stops and unreachable too)", labels=["upstream"])
        last_hour = last_hour_outcomes(rt)
        for up in rt.pool.upstreams:
            for mode in up.modes:
                slots.add_metric([up.name, mode], rt.slots.in_use(mode, up.name))
                size.add_metric([up.name, mode], up.slots.get(mode, 0))
                waiting.add_metric([up.name, mode], int(rt.redis.zcard(keys.pinned(up.name, mode))))
            submits.add_metric([up.name], int(cast(str | None, rt.redis.get(keys.daily_of(up.name, day))) or 0))
            seen = last_hour.get(up.name, {})
            outcomes.add_metric([up.name, "succeeded"], seen.get("ok", 0))
            outcomes.add_metric([up.name, "failed"], seen.get("failed", 0))
            stopped.add_metric([up.name], 1 if ledger.breaker_tripped(up.name) else 0)
        yield from (slots, size, waiting, submits, outcomes, stopped)


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
