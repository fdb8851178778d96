"""Scenario 6: the balance runs out mid-batch. Submitting stops at the answer that said so (only the submits
already in flight may still arrive), the rest wait parked; after a top-up ``resume_submitting()`` finishes it."""

from __future__ import annotations

import time

from tests.reliability.audit import audit
from tests.reliability.conftest import Rel

SLOTS = 9  # 3 per mode: the most submits that can be in flight when the breaker trips


def test_out_of_credit_stops_then_resume_finishes(rel_poll: Rel, started: float) -> None:
    from worker import control

    rel = rel_poll
    balance = rel.size // 2
    rel.sim.faults(balance=balance)
    ids = rel.enqueue("credit")
    rel.stack.wait(lambda: control.breaker_status()["tripped"], 30, "the breaker to trip")
    time.sleep(1.5)  # anything still coming would arrive now
    stats = rel.sim.stats()
    refused = stats["submissions"] - stats["accepted"]
    assert stats["accepted"] == balance
    assert 1 <= refused <= SLOTS, f"{refused} submits after the out-of-credit answer"
    breaker = control.breaker_status()
    assert "OutOfCredit" in breaker["reason"], breaker
    batch = rel.stack.ledger.batch("credit")
    assert batch["counts"]["failed"] == 0 and batch["status"] == "active"
    still = stats["submissions"]
    time.sleep(1.0)
    assert rel.sim.stats()["submissions"] == still, "submitting went on with the breaker tripped"

    rel.sim.faults(balance=1000)
    control.resume_submitting()
    rel.wait_finished("credit", timeout=120 if rel.full else 60)
    fig = audit(rel.stack, rel.sim, "6 out of credit + resume", ["credit"], ids, started=started,
                full=rel.full, extra={"refused_after_empty": refused, "balance": balance})
    assert fig.ok, fig.line()
    assert fig.by_status == {"succeeded": fig.jobs}
