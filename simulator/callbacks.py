"""notifyHook delivery: a ticker notices status/progress changes and a few senders POST them, with faults.

Submit handlers never wait for a callback: they only touch the engine; the ticker (every ``TICK_S``) looks
at the tasks that can have moved (changed, running, stuck) and queues the full task JSON for each change of
(status, progress); ``SENDERS`` background coroutines deliver the queue with one pooled httpx client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from simulator.engine import TERMINAL, Engine, SimTask

TICK_S = 0.01
SENDERS = 8
SEND_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)


@dataclass
class Track:
    """What a task's hook was last told: (status, progress), the moment it described, and the body."""

    key: tuple[str, str]
    at: float
    body: dict[str, Any]


class CallbackDispatcher:
    """Sends the full task JSON to each task's hook on every status change and progress step.

    The engine's clock says exactly when each step happened, so a late tick still sends every step, in
    order, each body as the task looked at that moment: the callback sequence does not depend on load.
    """

    def __init__(self, engine: Engine, base_url: str) -> None:
        self.engine = engine
        self.base_url = base_url
        # (hook, body, an older body to send once this one is delivered: a reordered event)
        self.queue: asyncio.Queue[tuple[str, dict[str, Any], dict[str, Any] | None]] = asyncio.Queue()
        self.tracks: dict[str, Track] = {}
        self.workers: list[asyncio.Task[None]] = []
        self.client: httpx.AsyncClient | None = None
        # the task JSON in the server profile's wire shape (the app sets it; identity by default)
        self.shape: Callable[[SimTask, dict[str, Any]], dict[str, Any]] = lambda task, body: body

    async def start(self) -> None:
        self.client = httpx.AsyncClient(timeout=SEND_TIMEOUT_S,
                                        limits=httpx.Limits(max_connections=SENDERS * 2))
        self.workers = [asyncio.create_task(self._tick())]
        self.workers += [asyncio.create_task(self._send_loop()) for _ in range(SENDERS)]

    async def stop(self) -> None:
        for worker in self.workers:
            worker.cancel()
        for worker in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if self.client is not None:
            await self.client.aclose()

    def reset(self) -> None:
        self.tracks.clear()
        while not self.queue.empty():
            self.queue.get_nowait()

    def notice(self) -> None:
        """Queue a callback for every step each hooked task made since its last callback."""
        engine = self.engine
        now = time.time()
        engine.advance(now)
        for task_id in engine.watched():
            task = engine.tasks.get(task_id)
            if task is None or not task.hook:
                continue
            track = self.tracks.get(task_id)
            if track is None:
                body = self.shape(task, engine.view(task, self.base_url, task.created))
                track = self.tracks[task_id] = Track(engine.progress(task, task.created), task.created, body)
                self._emit(task.hook, body, None)
            moments = engine.checkpoints(task, track.at, now)
            for at in [*moments, now]:
                key = engine.progress(task, at)
                if key != track.key:
                    body = self.shape(task, engine.view(task, self.base_url, at))
                    self._emit(task.hook, body, track.body)
                    track.key, track.body = key, body
            track.at = now
            if track.key[0] in TERMINAL:
                del self.tracks[task_id]

    def _emit(self, hook: str, body: dict[str, Any], previous: dict[str, Any] | None) -> None:
        config = self.engine.config
        if config.drop_callback_rate and self.engine.rng.random() < config.drop_callback_rate:
            self.engine.callbacks_dropped += 1
            return
        # an older event arriving after the final one, as lossy relays deliver them: queued once the final one
        # is delivered, so it comes after it whatever the senders' timing
        stale = previous if config.reorder_callbacks and body["status"] in TERMINAL else None
        for copy in range(2 if config.duplicate_callbacks else 1):
            self.queue.put_nowait((hook, body, stale if copy == 0 else None))

    async def _tick(self) -> None:
        while True:
            try:
                self.notice()
            except Exception:  # a bug here must not stop every later callback
                log.exception("callback ticker failed")
            await asyncio.sleep(TICK_S)

    async def _send_loop(self) -> None:
        assert self.client is not None
        while True:
            hook, body, stale = await self.queue.get()
            if body.get("status") in TERMINAL:  # benchmarks measure from here to what the receiver does next
                self.engine.final_callback_at.setdefault(str(body.get("id")), time.time())
            try:
                await self.client.post(hook, json=body, headers={"X-Sim-Sent-At": f"{time.time():.6f}"})
                self.engine.callbacks_sent += 1
            except httpx.HTTPError:
                self.engine.callbacks_dropped += 1
            if stale is not None:
                self.queue.put_nowait((hook, stale, None))
