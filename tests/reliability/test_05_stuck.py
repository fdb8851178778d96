"""Scenario 5: upstream tasks that never finish reach their deadline: ``timed_out``, slot freed, batch ends."""

from __future__ import annotations

from tests.reliability.audit import audit
from tests.reliability.conftest import Rel


def test_stuck_tasks_time_out_and_free_their_slots(rel_poll: Rel, started: float) -> None:
    rel = rel_poll
    rel.sim.faults(stuck_rate=0.2, seed=5)
    ids = rel.enqueue("stuck", modes=("fast", "turbo"))  # deadline 3 s (relax would wait 6 s)
    rel.wait_finished("stuck", timeout=120 if rel.full else 60)
    stats = rel.sim.stats()
    fig = audit(rel.stack, rel.sim, "5 stuck upstream tasks", ["stuck"], ids, started=started, full=rel.full,
                extra={"stuck_upstream": stats["stuck"]})
    assert fig.ok, fig.line()
    assert stats["stuck"] > 0
    assert fig.by_status.get("timed_out") == stats["stuck"], fig.by_status
    timed_out = [j for j in rel.stack.ledger.batch_jobs("stuck") if j["status"] == "timed_out"]
    assert all("no result within" in (j["fail_reason"] or "") for j in timed_out)
