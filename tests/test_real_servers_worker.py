"""Worker-side answers to real-server behaviour, against real Redis and the real simulator process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.sim import SimApi
from worker.jobs.settle import settle
from worker.mjapi import Task
from worker.settings import Settings
from worker.store.runtime import Runtime


@pytest.fixture
def rt(redis_url: str, sim: Any) -> Iterator[Runtime]:
    runtime = Runtime(Settings(redis_url=redis_url, api_base_url=sim.url, api_key=sim.api_key or ""))
    yield runtime
    runtime.client.close()


def test_a_timed_stop_resumes_by_itself_and_says_why(rt: Runtime) -> None:
    assert rt.ledger.trip_breaker("TemporarilyBlocked: HTTP 403", until=time.time() + 1.0)
    state = rt.ledger.breaker()
    assert state["tripped"] and "403" in state["reason"] and state["until"] is not None
    assert rt.ledger.breaker_tripped()
    deadline = time.time() + 30
    while rt.ledger.breaker_tripped() and time.time() < deadline:
        time.sleep(0.2)
    assert not rt.ledger.breaker_tripped()  # nobody ran `mjq resume`
    # a permanent stop over a timed one stays until `mjq resume`
    rt.ledger.trip_breaker("DailyLimitReached: 今日绘图次数已达上限", until=time.time() + 1.0)
    assert rt.ledger.trip_breaker("Unauthorized: 401")
    assert rt.ledger.breaker()["until"] is None and "401" in rt.ledger.breaker()["reason"]


def test_a_modal_wait_seen_by_a_poll_is_answered_once(rt: Runtime, sim: Any, sim_api: SimApi) -> None:
    sim.faults(remix=True)  # variations stop at the modal step
    grid = sim_api.finished("a lighthouse at dusk")
    answer = sim_api.action(grid["id"], sim_api.button(grid, "variation::1"))
    upstream = str(answer["result"])
    assert sim_api.fetch(upstream)["status"] == "MODAL"
    job_id = "late-modal"
    rt.ledger.create_job(job_id, {"kind": "action", "action": "VARIATION", "mode": "fast", "batch_id": "",
                                  "modal": {"prompt": "a lighthouse at dawn"}, "request": {}})  # fmt: skip
    ok, _, _ = rt.ledger.transition(job_id, "submitting", from_states=["queued"])
    ok, _, _ = rt.ledger.transition(job_id, "submitted", from_states=["submitting"], upstream=upstream)
    assert ok
    snapshot = Task.read(sim_api.fetch(upstream))
    settle(job_id, snapshot, "poll", rt)
    first_sent = rt.ledger.get_job(job_id)["modal_sent_at"]  # type: ignore[index]
    assert first_sent
    settle(job_id, snapshot, "webhook", rt)  # the same MODAL snapshot again: nothing more is sent
    assert rt.ledger.get_job(job_id)["modal_sent_at"] == first_sent  # type: ignore[index]
    finished = sim_api.wait(upstream)
    assert finished["status"] == "SUCCESS"


def test_an_empty_403_after_429s_is_a_block_for_every_worker(redis_url: str, sim: Any, sim_api: SimApi) -> None:
    """trueai's IP limiter: empty 429s, then empty 403s for a while. One worker's 429s are noted in Redis, so
    another worker meeting the 403 reads it as the temporary block too; a worker with only its own memory and
    no 429 reads it as a refusal (stop until `mjq resume`)."""
    from worker.mjapi import Forbidden, MidjourneyClient, RateLimited, TemporarilyBlocked

    sim.faults(profile="trueai", http_429_rate=1.0, ban_after_429s=2, ban_s=3000)  # 30 s at this time factor
    settings = Settings(redis_url=redis_url, api_base_url=sim.url, api_key=sim.api_key or "")
    first, second = Runtime(settings), Runtime(settings)
    alone = MidjourneyClient(sim.url, sim.api_key or "", profile="trueai")
    try:
        for _ in range(2):
            with pytest.raises(RateLimited):
                first.client.imagine("too fast")
        sim.faults(http_429_rate=0.0)
        with pytest.raises(TemporarilyBlocked):
            second.client.imagine("blocked")
        with pytest.raises(TemporarilyBlocked):
            second.client.fetch("1712345")
        with pytest.raises(Forbidden) as refused:
            alone.imagine("blocked, and no 429 seen here")
        assert type(refused.value) is Forbidden and "no 429 before it" in str(refused.value)
        assert first.observed.state()["last_429_at"] is not None
    finally:
        for rt_ in (first, second):
            rt_.client.close()
        alone.close()
    assert sim.stats()["accepted"] == 0


def test_trueai_remix_is_sent_with_enable_remix(sim: Any, sim_api: SimApi) -> None:
    """A remix account on trueai stops a variation at the remix modal only when the action asks for it."""
    from worker.mjapi import MidjourneyClient

    sim.faults(profile="trueai", remix=True)
    grid = sim_api.finished("a harbour at night")
    v1 = sim_api.button(grid, "variation::1")
    outcomes = {}
    for profile in ("trueai", "plus"):
        with MidjourneyClient(sim.url, sim.api_key or "", profile=profile) as client:
            outcomes[profile] = client.action(grid["id"], v1, account_filter={"remix": True}).outcome
    assert outcomes == {"trueai": "modal", "plus": "submitted"}, "without enableRemix trueai skips the remix prompt"


def test_callbacks_are_learnt_per_upstream(redis_url: str) -> None:
    from worker.store.observed import Observed

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    relay = Observed(client, "https://relay.example", missing_after=3)
    switched = [relay.finished_by_poll() for _ in range(5)]
    assert switched == [False, False, True, False, False], "said once, at the third job"
    assert relay.callbacks_missing() and relay.state()["finished_by_poll"] == 5
    other = Observed(client, "https://other.example", missing_after=3)
    assert not other.callbacks_missing(), "another upstream starts unknown"
    assert relay.callback_seen() is True and not relay.callbacks_missing(), "one callback switches back"
    assert relay.callback_seen() is False
    assert not any(relay.finished_by_poll() for _ in range(5)), "an upstream that sent callbacks is never switched"
    never = Observed(client, "https://never.example", missing_after=0)
    assert not any(never.finished_by_poll() for _ in range(10))
    client.close()
