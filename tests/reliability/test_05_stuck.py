"""Scenario 5: upstream tasks that never finish reach their deadline: ``timed_out``, slot freed, batch ends."""

from __future__ import annotations

from tests.reliability.conftest import Rel, unexpected_ends


def test_stuck_tasks_time_out_and_free_their_slots(rel_poll: Rel, started: float) -> None:
    rel = rel_poll
    rel.sim.faults(stuck_rate=0.2, seed=rel.fault_seed())
    ids = rel.enqueue("stuck", modes=("fast", "turbo"))  # deadline 3 s (relax would wait 6 s)
    rel.wait_finished("stuck", timeout=rel.timeout(60))
    stats = rel.sim.stats()
    fig = rel.audit("5 stuck upstream tasks", ["stuck"], ids, started=started,
                    extra={"stuck_upstream": stats["stuck"]})
    assert fig.ok, fig.line()
    assert not unexpected_ends(fig, ("succeeded", "timed_out")), unexpected_ends(fig)
    assert stats["stuck"] > 0
    assert fig.by_status.get("timed_out") == stats["stuck"], fig.by_status
    timed_out = [j for j in rel.stack.ledger.batch_jobs("stuck") if j["status"] == "timed_out"]
    assert all("no result within" in (j["fail_reason"] or "") for j in timed_out)
