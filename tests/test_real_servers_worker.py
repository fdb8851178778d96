"""Worker-side answers to real-server behaviour, against real Redis and the real simulator process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

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
