"""What the HTTP API and the dashboard share: the service (settings, ledger backend, keys, records, metrics)
and who may see which job or batch (a key sees its own jobs and batches, an admin key everything)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.keyfile import KeyRing, ServiceKey
from worker.producer import Backend
from worker.service.api.metrics import ApiMetrics
from worker.settings import Settings
from worker.store.clients import ClientRecords
from worker.store.runtime import Runtime, runtime


class Service:
    """What the routes share: settings, the ledger backend, controls' runtime, keys, records and metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyRing(settings.serve_keys_file)
        self._backend: Backend | None = None
        self._metrics: ApiMetrics | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = Backend(self.settings)
        return self._backend

    @property
    def rt(self) -> Runtime:
        return runtime()

    @property
    def records(self) -> ClientRecords:
        return ClientRecords(self.backend.redis)

    @property
    def metrics(self) -> ApiMetrics:
        if self._metrics is None:
            self._metrics = ApiMetrics(self.rt)
        return self._metrics


def may_see_job(svc: Service, key: ServiceKey, job_id: str, job: Mapping[str, Any] | None) -> bool:
    """Whether ``key`` may see this job: its own, one of its jobs' follow-ups, or a job of its batch."""
    if key.admin:
        return job is not None or svc.records.owner("job", job_id) is not None
    records = svc.records
    if records.owner("job", job_id) == key.name:
        return True
    if job is None:
        return False
    root = job.get("root_job")
    if root and records.owner("job", str(root)) == key.name:
        return True
    batch = job.get("batch_id")
    return bool(batch) and records.owner("batch", str(batch)) == key.name


def may_see_batch(svc: Service, key: ServiceKey, batch_id: str) -> bool:
    """Whether ``key`` may see the batch (an admin key sees every batch)."""
    return key.admin or svc.records.owner("batch", batch_id) == key.name
