"""The per-process runtime: settings, Redis, ledger, the upstream pool with its slots, and one client per
upstream, made once, thread-safe."""

from __future__ import annotations

import os
import threading

import httpx

from worker.mjapi import MidjourneyClient
from worker.settings import Settings, get_settings
from worker.store.connection import redis_client
from worker.store.ledger import Ledger
from worker.store.observed import Observed
from worker.store.slots import Slots
from worker.upstreams.pool import Pool, Upstream


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_client(settings)
        self.ledger = Ledger(self.redis)
        self.pool = Pool.from_settings(settings)
        self.slots = Slots(self.redis, settings, self.pool)
        self._clients: dict[str, MidjourneyClient] = {}
        self._download: tuple[int, httpx.Client] | None = None
        self._lock = threading.Lock()

    def upstream(self, name: str | None) -> Upstream:
        """The pool's upstream ``name`` (None or empty: the first); an upstream no longer in the pool file is
        the first (its jobs' records still name it)."""
        return self.pool.by_name.get(name or "") or self.pool.default

    def observed_for(self, name: str | None = None) -> Observed:
        """What answers taught us about one upstream (callbacks seen, recent 429s)."""
        return Observed(self.redis, self.upstream(name).base_url, self.settings.callbacks_missing_after)

    @property
    def observed(self) -> Observed:
        return self.observed_for(None)

    def client_for(self, name: str | None) -> MidjourneyClient:
        """The HTTP client of one upstream (made on first use, kept for the process)."""
        up = self.upstream(name)
        with self._lock:
            client = self._clients.get(up.name)
            if client is None:
                client = MidjourneyClient(**up.client_options(self.settings), rate_limits=self.observed_for(up.name))
                self._clients[up.name] = client
            return client

    def download_http(self) -> httpx.Client:
        """The HTTP client of image downloads, made once per process and kept (connections reused). A client per
        download built a TLS context each time: over a third of a busy worker's CPU (bench ``8 pool``)."""
        pid = os.getpid()
        with self._lock:
            if self._download is None or self._download[0] != pid:  # a forked child makes its own
                self._download = (pid, httpx.Client(timeout=self.settings.http_timeout_s, follow_redirects=True))
            return self._download[1]

    @property
    def client(self) -> MidjourneyClient:
        """The first upstream's client (requests that belong to no job: raw fetches, ``mjq doctor``)."""
        return self.client_for(None)


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
