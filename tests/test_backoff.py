"""Backoff of polls and submit retries (pure functions): growth, caps and jitter."""

from __future__ import annotations

import random
from typing import Any

import pytest

from worker.jobs.start import retry_delay
from worker.jobs.tracking import next_poll_delay
from worker.settings import Settings

SAMPLES = 300


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {"poll_initial_s": 5.0, "poll_factor": 1.5, "poll_max_s": 30.0, "poll_jitter": 0.2}
    return Settings(_env_file=None, **{**base, **values})


def test_poll_delays_grow_by_the_factor_up_to_the_cap() -> None:
    exact = settings(poll_jitter=0.0)
    delays = [next_poll_delay(n, "fast", exact) for n in range(8)]
    assert delays == pytest.approx([5.0, 7.5, 11.25, 16.875, 25.3125, 30.0, 30.0, 30.0])


def test_poll_jitter_spreads_each_delay_both_ways_within_its_bound() -> None:
    random.seed(3)
    jittered = settings()
    for polls, base in ((0, 5.0), (2, 11.25), (10, 30.0)):
        delays = [next_poll_delay(polls, "fast", jittered) for _ in range(SAMPLES)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays), (polls, min(delays), max(delays))
        assert min(delays) < base * 0.9 and max(delays) > base * 1.1, "jitter is not applied"


def test_with_webhooks_polls_come_at_the_safety_net_period() -> None:
    hooked = settings(webhook_base_url="https://hooks.example.com", webhook_secret="s" * 32, webhook_poll_s=60.0)
    delays = [next_poll_delay(n, "fast", hooked) for n in range(SAMPLES)]
    assert all(48.0 <= d <= 72.0 for d in delays) and max(delays) - min(delays) > 10.0


def test_submit_retries_double_then_stay_at_the_cap() -> None:
    cap = 60.0
    assert [retry_delay(n, cap, 0.0) for n in range(1, 7)] == pytest.approx([3.75, 7.5, 15.0, 60.0, 60.0, 60.0])


def test_capped_submit_retries_are_jittered_below_the_cap() -> None:
    """From the 4th attempt on the delay was exactly the cap: a batch refused together retried in step."""
    random.seed(5)
    for attempts in (4, 5, 12):
        delays = [retry_delay(attempts, 60.0, 0.2) for _ in range(SAMPLES)]
        assert all(48.0 <= d <= 60.0 for d in delays), (min(delays), max(delays))
        assert len(set(delays)) > SAMPLES // 2 and min(delays) < 51.0, "capped delays are not jittered"
    early = [retry_delay(1, 60.0, 0.2) for _ in range(SAMPLES)]
    assert all(3.0 <= d <= 3.75 for d in early) and len(set(early)) > 1


def test_a_retry_after_is_honoured_up_to_the_cap() -> None:
    assert all(retry_delay(1, 60.0, 0.2, retry_after=20.0) >= 20.0 for _ in range(50))
    assert retry_delay(1, 60.0, 0.2, retry_after=600.0) == 60.0
