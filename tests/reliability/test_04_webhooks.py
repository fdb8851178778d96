"""Scenario 4: every callback dropped (the safety-net polls finish the batch), then every callback
duplicated and an older one re-sent after the final one (nothing regresses, nothing finishes twice)."""

from __future__ import annotations

from tests.reliability.audit import audit
from tests.reliability.conftest import Rel


def test_all_callbacks_dropped(rel_hook: Rel, started: float) -> None:
    rel = rel_hook
    rel.sim.faults(drop_callback_rate=1.0)
    ids = rel.enqueue("hooks-dropped")
    rel.wait_finished("hooks-dropped", timeout=120 if rel.full else 60)
    stats = rel.sim.stats()
    fig = audit(rel.stack, rel.sim, "4a all webhooks dropped", ["hooks-dropped"], ids, started=started,
                full=rel.full, extra={"callbacks_sent": stats["callbacks_sent"]})
    assert fig.ok, fig.line()
    assert stats["callbacks_sent"] == 0 and stats["callbacks_dropped"] > 0
    assert fig.by_status == {"succeeded": fig.jobs}


def test_all_callbacks_duplicated_and_reordered(rel_hook: Rel, started: float) -> None:
    rel = rel_hook
    rel.sim.faults(duplicate_callbacks=True, reorder_callbacks=True)
    ids = rel.enqueue("hooks-dup")
    rel.wait_finished("hooks-dup", timeout=120 if rel.full else 60)
    stats = rel.sim.stats()
    fig = audit(rel.stack, rel.sim, "4b webhooks duplicated+reordered", ["hooks-dup"], ids, started=started,
                full=rel.full, extra={"callbacks_sent": stats["callbacks_sent"]})
    assert fig.ok, fig.line()
    assert stats["callbacks_sent"] >= 2 * fig.jobs
    assert fig.by_status == {"succeeded": fig.jobs}
    settled = {j.get("settled_by") for j in (rel.stack.job(i) for i in ids)}
    assert "webhook" in settled
