"""Baseline Celery apps: how jobs usually wait for a slot, and a no-op task for the raw enqueue rate.

``celery -A bench.naive worker`` runs the *naive waiter*: a task that finds no free slot and asks Celery to
run it again later (``self.retry(countdown=...)``), the common way to wait. Its broker messages are held in
the worker's memory while they count down, and every retry is a new message.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, Task

RETRY_EVERY_S = float(os.environ.get("BENCH_NAIVE_RETRY_S", "60"))
BROKER_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RUNS = "bench:naive:runs"  # how many times the waiters looked for a slot

app = Celery("bench-naive", broker=BROKER_URL)
slots = redis.Redis.from_url(BROKER_URL)
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
    slots.incr(RUNS)
    if int(slots.get(slot_key) or 0) <= 0:
        raise self.retry(countdown=RETRY_EVERY_S)
    slots.decr(slot_key)
