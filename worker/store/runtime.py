"""The per-process runtime: settings, Redis, ledger, slots and the upstream client, made once, thread-safe."""

from __future__ import annotations

import threading

from worker.mjapi import MidjourneyClient
from worker.settings import Settings, get_settings
from worker.store.connection import redis_client
from worker.store.ledger import Ledger
from worker.store.observed import Observed
from worker.store.slots import Slots


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_client(settings)
        self.ledger = Ledger(self.redis)
        self.slots = Slots(self.redis, settings)
        self.observed = Observed(self.redis, settings.api_base_url, settings.callbacks_missing_after)
        self._client: MidjourneyClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> MidjourneyClient:
        with self._lock:
            if self._client is None:
                self._client = MidjourneyClient.from_settings(self.settings, rate_limits=self.observed)
            return self._client


_runtime: Runtime | None = None


_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """The process-wide runtime (built from ``get_settings()`` on first use)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def reset_runtime() -> None:
    """Forget the runtime (tests, after changing settings)."""
    global _runtime
    with _runtime_lock:
        _runtime = None
