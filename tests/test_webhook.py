"""The webhook server over real HTTP: refusals, duplicates and out-of-order events change nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.stack import Stack


def hook_url(stack: Stack, job_id: str) -> str:
    from worker.jobs.kinds import webhook_url
    from worker.settings import get_settings

    url = webhook_url(job_id, get_settings())
    assert url is not None and url.startswith(stack.webhook_url)
    return url


def tracked_job(stack: Stack, job_id: str = "w1", upstream: str = "777") -> None:
    ledger = stack.ledger
    ledger.create_job(job_id, {"mode": "fast", "kind": "imagine", "batch_id": "wb"})
    ledger.transition(job_id, "submitting", from_states=["queued"])
    ledger.transition(job_id, "submitted", from_states=["submitting"], upstream=upstream, inflight=9e12)


def body(
    status: str, progress: str, job_id: str = "w1", upstream: str = "777", **extra: Any
) -> dict[str, Any]:
    return {"id": upstream, "state": job_id, "status": status, "progress": progress, **extra}


def test_refusals(hook_stack: Stack, sim: Any) -> None:
    tracked_job(hook_stack)
    url = hook_url(hook_stack, "w1")
    ok = body("IN_PROGRESS", "10%")
    assert httpx.post(url[:-4] + "0000", json=ok).status_code == 403
    assert httpx.post(hook_url(hook_stack, "nope"), json=ok).status_code == 404
    assert (
        httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    )
    huge = json.dumps({**ok, "pad": "x" * 1_100_000}).encode()
    assert httpx.post(url, content=huge).status_code == 413
    assert httpx.post(url, json=body("IN_PROGRESS", "10%", upstream="999")).status_code == 409
    assert httpx.post(url, json=body("IN_PROGRESS", "10%", job_id="someone-else")).status_code == 409
    assert hook_stack.job("w1")["status"] == "submitted"
    assert httpx.get(f"{hook_stack.webhook_url}/healthz").json() == {"ok": True}


def test_duplicates_and_out_of_order_events_change_nothing(hook_stack: Stack, sim: Any) -> None:
    tracked_job(hook_stack)
    url = hook_url(hook_stack, "w1")
    assert httpx.post(url, json=body("IN_PROGRESS", "40%")).json()["outcome"] == "updated"
    assert httpx.post(url, json=body("IN_PROGRESS", "40%")).json()["outcome"] == "ignored"
    assert httpx.post(url, json=body("IN_PROGRESS", "20%")).json()["outcome"] == "ignored"
    assert hook_stack.job("w1")["progress"] == "40%"
    done = body("SUCCESS", "100%", imageUrl=f"{sim.url}/images/none.png", buttons=[])
    assert httpx.post(url, json=done).json()["outcome"] == "finished"
    assert httpx.post(url, json=done).json()["outcome"] == "ignored"
    assert httpx.post(url, json=body("IN_PROGRESS", "90%")).json()["outcome"] == "ignored"
    assert httpx.post(url, json=body("FAILURE", "90%", failReason="late")).json()["outcome"] == "ignored"
    job = hook_stack.job("w1")
    assert job["status"] == "succeeded" and job["settled_by"] == "webhook"
    assert hook_stack.ledger.batch("wb")["counts"]["succeeded"] == 1


def test_callback_before_the_submit_answer_reconciles_the_job(hook_stack: Stack, sim: Any) -> None:
    ledger = hook_stack.ledger
    ledger.create_job("w2", {"mode": "fast", "kind": "imagine"})
    ledger.transition("w2", "submitting", from_states=["queued"])
    url = hook_url(hook_stack, "w2")
    assert httpx.post(url, json=body("SUBMITTED", "0%", job_id="w2", upstream="555")).status_code == 200
    job = hook_stack.job("w2")
    assert job["status"] == "submitted" and job["upstream_id"] == "555"
