"""notifyHook delivery: a ticker notices status/progress changes and a few senders POST them, with faults."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx

from simulator.engine import TERMINAL, Engine

TICK_S = 0.01
SENDERS = 8


class CallbackDispatcher:
    """Sends the full task JSON to each task's hook on every status change and progress step."""

    def __init__(self, engine: Engine, base_url: str) -> None:
        self.engine = engine
        self.base_url = base_url
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.last_sent: dict[str, tuple[str, str]] = {}
        self.last_body: dict[str, dict[str, Any]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self.client = httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_connections=SENDERS * 2))
        self.tasks = [asyncio.create_task(self._tick())] + [
            asyncio.create_task(self._send_loop()) for _ in range(SENDERS)
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.client is not None:
            await self.client.aclose()

    def reset(self) -> None:
        self.last_sent.clear()
        self.last_body.clear()
        while not self.queue.empty():
            self.queue.get_nowait()

    def notice(self) -> None:
        """Queue a callback for every watched task whose (status, progress) changed since the last one."""
        engine = self.engine
        engine.advance()
        now = time.time()
        watched = engine.changed | {t for t in self.last_sent if t in engine.tasks}
        engine.changed = set()
        for task_id in list(watched):
            task = engine.tasks.get(task_id)
            if task is None or not task.hook:
                self.last_sent.pop(task_id, None)
                continue
            key = engine.progress(task, now)
            if self.last_sent.get(task_id) == key:
                continue
            body = engine.view(task, self.base_url, now)
            previous = self.last_body.get(task_id)
            self.last_sent[task_id], self.last_body[task_id] = key, body
            self._emit(task.hook, body, previous)
            if key[0] in TERMINAL:
                self.last_sent.pop(task_id, None)
                self.last_body.pop(task_id, None)

    def _emit(self, hook: str, body: dict[str, Any], previous: dict[str, Any] | None) -> None:
        config = self.engine.config
        if self.engine.rng.random() < config.drop_callback_rate:
            self.engine.callbacks_dropped += 1
            return
        copies = 2 if config.duplicate_callbacks else 1
        for _ in range(copies):
            self.queue.put_nowait((hook, body))
        if config.reorder_callbacks and previous is not None and body["status"] in TERMINAL:
            # an older event arriving after the final one, as lossy relays deliver them
            self.queue.put_nowait((hook, previous))

    async def _tick(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.notice()
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
