"""The Celery app's reliability options, as configured and as a running worker really uses them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support import patience
from tests.support.stack import Stack
from worker.app import celery_config
from worker.jobs.start import retry_delay
from worker.jobs.tracking import first_poll_delay, next_poll_delay
from worker.settings import Settings

RELIABILITY = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "worker_send_task_events": True,
    "task_send_sent_event": True,
}
HOOKED = {"webhook_base_url": "https://hooks.example.com", "webhook_secret": "s" * 32}


@pytest.mark.parametrize("values", [{}, HOOKED, {**HOOKED, "expected_relax_s": 2000.0, "poll_jitter": 0.5}])
def test_visibility_timeout_is_longer_than_every_countdown(values: dict[str, Any]) -> None:
    settings = Settings(_env_file=None, **values)
    conf = celery_config(settings)
    for name, value in RELIABILITY.items():
        assert conf[name] == value, name
    visibility = conf["broker_transport_options"]["visibility_timeout"]
    assert conf["result_backend_transport_options"]["visibility_timeout"] == visibility
    assert visibility > max(settings.countdowns().values())
    # and the countdowns really scheduled stay below it, jitter included
    scheduled = [
        *(first_poll_delay(m, settings) for m in ("fast", "relax", "turbo") for _ in range(100)),
        *(next_poll_delay(n, "relax", settings) for n in range(100)),
        *(retry_delay(n, settings.submit_retry_max_s, settings.poll_jitter, 10_000.0) for n in range(1, 20)),
        settings.download_retry_delay(settings.download_attempts - 2),
    ]
    assert max(scheduled) < visibility


def test_a_short_visibility_timeout_gets_a_short_restore_lock() -> None:
    """A worker killed while holding the redelivery sweep's lock must not stop redelivery for kombu's 300 s."""
    settings = Settings(_env_file=None, visibility_timeout_s=7200.0)
    assert celery_config(settings)["broker_transport_options"]["unacked_mutex_expire"] == 300
    shorter = settings.model_copy(update={"visibility_timeout_s": 4.0})  # as the reliability stacks run
    assert celery_config(shorter)["broker_transport_options"]["unacked_mutex_expire"] == 10


def test_every_job_task_acks_late() -> None:
    import tasks  # noqa: F401  (registers the tasks)
    from worker.app import app

    job_tasks = [t for name, t in app.tasks.items() if name.startswith("tasks.") and getattr(t, "counts_as_job", 0)]
    assert len(job_tasks) >= 7
    for job_task in job_tasks:
        assert job_task.acks_late and job_task.reject_on_worker_lost, job_task.name


def test_a_running_worker_uses_these_options(stack: Stack) -> None:
    from worker.app import app

    deadline = patience.deadline(30)
    replies: dict[str, Any] = {}
    while not replies and time.monotonic() < deadline:  # a worker started just now may not answer yet
        replies = app.control.inspect(timeout=2.0).conf(with_defaults=True) or {}
    assert len(replies) == 1, replies
    (conf,) = replies.values()
    for name, value in RELIABILITY.items():
        assert conf[name] == value, name
    visibility = conf["broker_transport_options"]["visibility_timeout"]
    from worker.settings import get_settings

    assert visibility > max(get_settings().countdowns().values())
