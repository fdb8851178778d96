"""Scenario 3: upstream faults on 30 % of calls — HTTP 500, 429 with Retry-After, read timeouts after the
task was created — plus queue-full answers (code 23) from an upstream smaller than our slots.

Retries POST again (counted as resubmits), but a job is accepted at most once; an answer lost after the
task was created ends ``needs_review`` or is reconciled by its callback (it carries our job id in ``state``).
"""

from __future__ import annotations

from tests.reliability.audit import audit
from tests.reliability.conftest import Rel


def test_thirty_percent_upstream_faults(rel_hook: Rel, started: float) -> None:
    rel = rel_hook
    rel.sim.faults(
        http_500_rate=0.1,
        http_429_rate=0.1,
        retry_after_s=0.2,
        read_delay_rate=0.1,
        read_delay_s=2.5,  # beyond the worker's 1.5 s read timeout: the task exists, the answer is lost
        concurrency={"FAST": 2, "RELAX": 2, "TURBO": 2},
        queue_size=0,  # our 3 slots per mode against 2 upstream: code 23 "queue full" answers
        seed=3,
    )
    ids = rel.enqueue("faults")
    rel.wait_finished("faults", timeout=150 if rel.full else 75)
    stats = rel.sim.stats()
    # ambiguous: the submit answer was lost; its job is flagged, or its callback (state = job id) told us the
    # upstream id first (then the submit answer never recorded an outcome)
    records = [rel.stack.job(j) for j in rel.stack.ledger.batch_job_ids("faults")]
    ambiguous = [j for j in records if "answer lost" in (j.get("fail_reason") or "")
                 or (j.get("upstream_id") and not j.get("submit_outcome"))]
    reconciled = [j for j in ambiguous if j["status"] != "needs_review"]
    fig = audit(
        rel.stack, rel.sim, "3 upstream faults 30%", ["faults"], ids, started=started, full=rel.full,
        extra={"queue_full_answers": stats["queue_full"], "ambiguous": len(ambiguous),
               "reconciled": len(reconciled)},
    )
    assert fig.ok, fig.line()
    assert fig.resubmits > 0 and stats["queue_full"] > 0, "the faults did not happen"
    assert ambiguous, "no read timeout happened"
    assert all(j["status"] == "needs_review" or j["upstream_id"] for j in ambiguous)
