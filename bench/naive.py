"""Baseline Celery apps: how jobs usually wait for a slot, and a no-op task for the raw enqueue rate.

``celery -A bench.naive worker`` runs the *naive waiter*: a task that finds no free slot and asks Celery to
run it again later (``self.retry(countdown=...)``), the common way to wait. Its broker messages are held in
the worker's memory while they count down, and every retry is a new message.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task

RETRY_EVERY_S = float(os.environ.get("BENCH_NAIVE_RETRY_S", "60"))

app = Celery("bench-naive", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_transport_options={"visibility_timeout": 4 * 3600},
    worker_hijack_root_logger=False,
)


@app.task(bind=True, name="bench.naive_wait", max_retries=None)  # type: ignore[untyped-decorator]
def naive_wait(self: Task[Any, Any], slot_key: str) -> None:
    """Wait for a slot the naive way: look, and if none is free, retry in RETRY_EVERY_S."""
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        if int(client.get(slot_key) or 0) <= 0:
            raise self.retry(countdown=RETRY_EVERY_S)
        client.decr(slot_key)
