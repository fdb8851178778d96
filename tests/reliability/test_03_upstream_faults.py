"""Scenario 3: upstream faults on 30 % of calls — HTTP 500, 429 with Retry-After, read timeouts after the
task was created — plus queue-full answers (code 23) from an upstream smaller than our slots.

Retries POST again (counted as resubmits), but a job is accepted at most once; an answer lost after the
task was created ends ``needs_review`` or is reconciled by its callback (it carries our job id in ``state``).
"""

from __future__ import annotations

from tests.reliability.audit import audit
from tests.reliability.conftest import Rel
from tests.reliability.faultproxy import FaultProxy


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


def test_connect_errors_and_system_errors(rel_faults: Rel, fault_proxy: FaultProxy, started: float) -> None:
    """The rest of the 30 %: connections refused (the relay in front of the simulator closes its port for part
    of every second) and system-error answers (vendor dialect code 23, from an upstream smaller than our slots).
    A refused connection sent nothing, so it is retried freely; nothing may be paid twice or end in review."""
    rel = rel_faults
    rel.sim.faults(
        http_500_rate=0.1,
        concurrency={"FAST": 2, "RELAX": 2, "TURBO": 2},
        queue_size=0,
        seed=5,
    )
    windows = fault_proxy.down_windows
    ids = rel.enqueue("connect")
    rel.wait_finished("connect", timeout=rel.timeout(75))
    stats = rel.sim.stats()
    errors = rel.worker_log().count("nothing was sent")
    failed = [j.get("fail_reason") for j in rel.stack.ledger.batch_jobs("connect") if j["status"] == "failed"]
    fig = audit(
        rel.stack, rel.sim, "3b connect errors + system errors", ["connect"], ids, started=started, full=rel.full,
        extra={"down_windows": fault_proxy.down_windows - windows, "system_error_answers": stats["queue_full"],
               "connect_errors_logged": errors, "failed": failed},
    )
    assert fig.ok, fig.line()
    assert fault_proxy.down_windows > windows, "the relay never went down"
    assert stats["queue_full"] > 0, "no system-error answer happened"
    # A refused connection sent nothing and is retried. The relay also closes idle kept-alive connections when
    # it goes down; a request written at that very moment is cut without an answer ("server disconnected"),
    # which is ambiguous for a POST: such a job may end in review, but never paid and never sent twice.
    review = [j for j in rel.stack.ledger.batch_jobs("connect") if j["status"] == "needs_review"]
    assert all("answer lost" in (j["fail_reason"] or "") for j in review), review
    assert fig.needs_review_paid == 0 and len(review) <= 2, review
    assert not failed, f"every fault here is temporary, yet jobs failed: {failed}"
