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
from typing import Any

import httpx

from simulator.engine import TERMINAL, Engine

TICK_S = 0.01
SENDERS = 8
SEND_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)


class CallbackDispatcher:
    """Sends the full task JSON to each task's hook on every status change and progress step."""

    def __init__(self, engine: Engine, base_url: str) -> None:
        self.engine = engine
        self.base_url = base_url
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.last_sent: dict[str, tuple[str, str]] = {}
        self.last_body: dict[str, dict[str, Any]] = {}
        self.workers: list[asyncio.Task[None]] = []
        self.client: httpx.AsyncClient | None = None

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
        self.last_sent.clear()
        self.last_body.clear()
        while not self.queue.empty():
            self.queue.get_nowait()

    def notice(self) -> None:
        """Queue a callback for every hooked task whose (status, progress) moved since its last callback."""
        engine = self.engine
        engine.advance()
        now = time.time()
        for task_id in engine.watched():
            task = engine.tasks.get(task_id)
            if task is None or not task.hook:
                continue
            key = engine.progress(task, now)
            if self.last_sent.get(task_id) == key:
                continue
            body = engine.view(task, self.base_url, now)
            previous = self.last_body.get(task_id)
            if key[0] in TERMINAL:
                self.last_sent.pop(task_id, None)
                self.last_body.pop(task_id, None)
            else:
                self.last_sent[task_id], self.last_body[task_id] = key, body
            self._emit(task.hook, body, previous)

    def _emit(self, hook: str, body: dict[str, Any], previous: dict[str, Any] | None) -> None:
        config = self.engine.config
        if config.drop_callback_rate and self.engine.rng.random() < config.drop_callback_rate:
            self.engine.callbacks_dropped += 1
            return
        for _ in range(2 if config.duplicate_callbacks else 1):
            self.queue.put_nowait((hook, body))
        if config.reorder_callbacks and previous is not None and body["status"] in TERMINAL:
            self.queue.put_nowait((hook, previous))  # an older event after the final one, as relays do

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
            hook, body = await self.queue.get()
            try:
                await self.client.post(hook, json=body, headers={"X-Sim-Sent-At": f"{time.time():.6f}"})
                self.engine.callbacks_sent += 1
            except httpx.HTTPError:
                self.engine.callbacks_dropped += 1
