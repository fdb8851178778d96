"""Scenario 3: upstream faults on 30 % of calls — HTTP 500, 429 with Retry-After, read timeouts after the
task was created — plus queue-full answers (code 23) from an upstream smaller than our slots; then (3b)
connections refused by a relay in front of the simulator and vendor "system error" answers.

Retries POST again (counted as resubmits), but a job is accepted at most once; an answer lost after the task
was created ends ``needs_review`` or is reconciled by its callback (it carries our job id in ``state``), and is
never sent again. The simulator's submit log (every submit request with its ``state``, faulted ones too) shows
when each job was sent: a retry after a 429 comes no sooner than its Retry-After.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from tests.reliability.conftest import Rel, unexpected_ends
from tests.reliability.faultproxy import FaultProxy

RETRY_AFTER_S = 0.2


def submits_by_state(rel: Rel) -> dict[str, list[tuple[float, str]]]:
    """The simulator's submit log: state -> [(epoch s, injected fault or ""), ...] in arrival order."""
    out: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for at, state, fault in rel.sim.submits():
        out[state].append((at, fault))
    return out


def early_retries(log: dict[str, list[tuple[float, str]]], retry_after_s: float) -> list[str]:
    """Submits sent again sooner than the Retry-After of the 429 answer before them."""
    early = []
    for state, sends in log.items():
        for (at, fault), (again, _) in itertools.pairwise(sends):
            if fault == "http_429" and again - at < retry_after_s:
                early.append(f"{state}: again after {again - at:.3f}s")
    return early


def retried_after_429(log: dict[str, list[tuple[float, str]]]) -> int:
    """429 answers after which the same job was sent again (the Retry-After check has something to look at)."""
    return sum(1 for sends in log.values() for at, fault in sends[:-1] if fault == "http_429")


def sent_after(log: dict[str, list[tuple[float, str]]], state: str, moment: float) -> list[float]:
    """When the job with this ``state`` was sent after ``moment`` (epoch s)."""
    return [at for at, _ in log.get(state, []) if at > moment]


def test_thirty_percent_upstream_faults(rel_hook: Rel, started: float) -> None:
    rel = rel_hook
    rel.sim.faults(
        http_500_rate=0.1,
        http_429_rate=0.1,
        retry_after_s=RETRY_AFTER_S,
        read_delay_rate=0.1,
        read_delay_s=2.5,  # beyond the worker's 1.5 s read timeout: the task exists, the answer is lost
        concurrency={"FAST": 2, "RELAX": 2, "TURBO": 2},
        queue_size=0,  # our 3 slots per mode against 2 upstream: code 23 "queue full" answers
        seed=rel.fault_seed(),
    )
    ids = rel.enqueue("faults")
    rel.wait_finished("faults", timeout=rel.timeout(75))
    stats = rel.sim.stats()
    faults: dict[str, int] = stats["faults"]
    log = submits_by_state(rel)
    tasks = {str(t["state"]): t for t in rel.sim.tasks() if t.get("state")}
    # ambiguous: the submit answer was lost; its job is flagged, or its callback (state = job id) told us the
    # upstream id first (then the submit answer never recorded an outcome)
    records = [rel.stack.job(j) for j in rel.stack.ledger.batch_job_ids("faults")]
    ambiguous = [j for j in records if "answer lost" in (j.get("fail_reason") or "")
                 or (j.get("upstream_id") and not j.get("submit_outcome"))]
    reconciled = [j for j in ambiguous if j["status"] != "needs_review"]
    # submitTime is in whole ms and the log entry of the late submit itself precedes the task by a moment; a
    # second send would come seconds later (after the 1.5 s read timeout)
    resent = {j["job_id"]: sent_after(log, j["job_id"], float(tasks[j["job_id"]]["submitTime"]) / 1000.0 + 0.01)
              for j in ambiguous if j["job_id"] in tasks}
    early = early_retries(log, RETRY_AFTER_S)
    fig = rel.audit(
        "3 upstream faults 30%", ["faults"], ids, started=started,
        extra={"faults": faults, "queue_full_answers": stats["queue_full"], "ambiguous": len(ambiguous),
               "reconciled": len(reconciled), "retried_after_429": retried_after_429(log)},
    )
    assert fig.ok, fig.line()
    assert min(faults.get(k, 0) for k in ("http_500", "http_429", "late_answer")) > 0, f"a fault was missing: {faults}"
    assert stats["queue_full"] > 0 and fig.resubmits > 0, "no queue-full answer / no retry happened"
    assert retried_after_429(log) > 0 and not early, f"retried sooner than Retry-After ({RETRY_AFTER_S}s): {early[:5]}"
    # every late answer left an ambiguous job, and none of them was sent again after it. There may be more
    # ambiguous jobs than injected late answers on a busy machine: an answer that comes after the worker's read
    # timeout because the machine was slow is as ambiguous as an injected one, and a callback may reconcile a
    # job before its answer is recorded; either way the job is accepted once and never sent again (below)
    assert len(ambiguous) >= faults["late_answer"], (len(ambiguous), faults)
    assert len(resent) == len(ambiguous), "an ambiguous job has no upstream task"
    assert not any(resent.values()), {k: v for k, v in resent.items() if v}
    assert all(j["status"] == "needs_review" or j["upstream_id"] for j in ambiguous)
    assert not unexpected_ends(fig, ("succeeded", "needs_review")), unexpected_ends(fig)
    assert fig.needs_review <= len(ambiguous), "a job ended in review without a lost answer"


def test_connect_errors_and_system_errors(rel_faults: Rel, fault_proxy: FaultProxy, started: float) -> None:
    """The rest of the 30 %: connections refused (the relay in front of the simulator closes its port for part
    of every second) and system-error answers (vendor dialect code 23, from an upstream smaller than our slots).
    A refused connection sent nothing, so it is retried freely; nothing may be paid twice."""
    rel = rel_faults
    rel.sim.faults(
        http_500_rate=0.1,
        concurrency={"FAST": 2, "RELAX": 2, "TURBO": 2},
        queue_size=0,
        seed=rel.fault_seed(),
    )
    windows, closed = fault_proxy.down_windows, fault_proxy.idle_closed
    before = rel.worker_log().count("nothing was sent")
    fault_proxy.hold_down()  # the first submits meet a closed port for sure, however the windows fall
    try:
        ids = rel.enqueue("connect")
        rel.stack.wait(lambda: rel.worker_log().count("nothing was sent") > before, rel.timeout(60),
                       "a submit to meet the closed port")
    finally:
        fault_proxy.release()
    # code 23 (queue full, from an upstream smaller than our slots) needs three submits in flight at once, which a
    # busy machine may never line up: a code 9 system error is made sure of the same way as the closed port
    rel.sim.faults(system_error=True)
    try:
        rel.stack.wait(lambda: rel.sim.stats()["faults"].get("system_error", 0) > 0, rel.timeout(60),
                       "a submit to meet a system error")
    finally:
        rel.sim.faults(system_error=False)
    rel.wait_finished("connect", timeout=rel.timeout(75))
    stats = rel.sim.stats()
    refused = rel.worker_log().count("nothing was sent") - before
    log = submits_by_state(rel)
    jobs = rel.stack.ledger.batch_jobs("connect")
    review: list[dict[str, Any]] = [rel.stack.job(j["job_id"]) for j in jobs if j["status"] == "needs_review"]
    cut = fault_proxy.idle_closed - closed
    fig = rel.audit(
        "3b connect errors + system errors", ["connect"], ids, started=started,
        extra={"down_windows": fault_proxy.down_windows - windows,
               "system_error_answers": stats["queue_full"] + stats["faults"].get("system_error", 0),
               "connect_errors_logged": refused, "idle_connections_cut": cut, "faults": stats["faults"]},
    )
    assert fig.ok, fig.line()
    assert fault_proxy.down_windows > windows, "the relay never went down"
    assert refused > 0, "the worker never met a refused connection"
    assert stats["faults"].get("system_error", 0) > 0 and stats["faults"].get("http_500", 0) > 0, \
        "no system error / HTTP 500 happened"
    # A refused connection sent nothing and is retried. The relay also closes idle kept-alive connections when
    # it goes down; a request written at that very moment is cut without an answer ("server disconnected"),
    # which is ambiguous for a POST: such a job may end in review — but only if its request provably never
    # reached the upstream (no submit of it after its last attempt began), and never paid.
    assert all("answer lost" in (j.get("fail_reason") or "") for j in review), review
    reached = {j["job_id"]: sent_after(log, j["job_id"], float(j["submitting_at"])) for j in review}
    assert not any(reached.values()), f"jobs in review whose request did reach the upstream: {reached}"
    assert fig.needs_review_paid == 0 and len(review) <= cut, (len(review), cut)
    assert not unexpected_ends(fig, ("succeeded", "needs_review")), unexpected_ends(fig)
