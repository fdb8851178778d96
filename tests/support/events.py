"""Celery task events exactly as Flower receives them: a real event receiver on the broker, in a thread."""

from __future__ import annotations

import threading
import time
import uuid
from types import TracebackType
from typing import Any

from celery import Celery

from tests.support import patience


class TaskEvents:
    """Record every event sent while the block runs (``with TaskEvents(app) as events: ...``).

    The receiver's queue is bound before the block starts (a marker event is sent and awaited), so no event of
    the block is missed; ``for_task(id)`` returns that task's events in arrival order.
    """

    def __init__(self, app: Celery, ready_timeout_s: float = 10.0) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._thread: threading.Thread | None = None
        self._marker = f"mjq-test-{uuid.uuid4()}"
        self._ready_timeout_s = ready_timeout_s

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(dict(event))

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self._on_event})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)
        self._thread.start()
        deadline = patience.deadline(self._ready_timeout_s)
        while not any(e.get("marker") == self._marker for e in self.snapshot()):
            if time.monotonic() > deadline:
                raise RuntimeError("the event receiver did not start")
            with self.app.events.default_dispatcher(hostname="mjq-test") as dispatcher:
                dispatcher.send("mjq-test-ready", marker=self._marker)
            time.sleep(0.1)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def for_task(self, task_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """This task's events (of one ``kind`` such as ``task-received``), oldest first."""
        return [e for e in self.snapshot() if e.get("uuid") == task_id and (kind is None or e.get("type") == kind)]

    def wait_for(self, task_id: str, kind: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        deadline = patience.deadline(timeout_s)
        while time.monotonic() < deadline:
            found = self.for_task(task_id, kind)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event for {task_id}")
