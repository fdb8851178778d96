"""When a job's first poll comes: after its expected duration (polling only), later still with webhooks on."""

from __future__ import annotations

from typing import Any

import pytest

from worker.jobs.tracking import first_poll_delay
from worker.settings import Settings


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {"poll_jitter": 0.0, "expected_fast_s": 60.0, "slots_fast": 3}
    return Settings(_env_file=None, **{**base, **values})


def test_polling_only_waits_for_the_expected_duration() -> None:
    assert first_poll_delay("fast", settings()) == pytest.approx(60.0)
    assert first_poll_delay("relax", settings(expected_relax_s=300.0)) == pytest.approx(300.0)


def test_a_job_queued_upstream_is_expected_later() -> None:
    # three ahead of it with three slots: one more duration
    assert first_poll_delay("fast", settings(), queue_position=3) == pytest.approx(120.0)


def test_the_backoff_can_start_at_submit() -> None:
    assert first_poll_delay("fast", settings(poll_from_expected=False, poll_initial_s=5.0)) == pytest.approx(5.0)


def test_with_webhooks_the_safety_net_comes_after_the_callbacks_should_have() -> None:
    hooked = settings(webhook_base_url="https://hooks.example.com", webhook_secret="s" * 32, webhook_poll_s=30.0)
    assert first_poll_delay("fast", hooked) == pytest.approx(90.0)


def test_jitter_spreads_the_first_polls() -> None:
    delays = {round(first_poll_delay("fast", settings(poll_jitter=0.2)), 6) for _ in range(50)}
    assert len(delays) > 10 and all(48.0 <= d <= 72.0 for d in delays)


def test_a_deep_upstream_queue_never_delays_the_first_poll_past_the_deadline() -> None:
    assert first_poll_delay("fast", settings(job_deadline_s=120.0), queue_position=10_000) == pytest.approx(120.0)
