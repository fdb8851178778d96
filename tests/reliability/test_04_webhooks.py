"""Scenario 4: every callback dropped (the safety-net polls finish the batch), then every callback
duplicated and an older one re-sent after the final one (nothing regresses, nothing finishes twice)."""

from __future__ import annotations

from tests.reliability.conftest import Rel


def test_all_callbacks_dropped(rel_hook: Rel, started: float) -> None:
    rel = rel_hook
    rel.sim.faults(drop_callback_rate=1.0, seed=rel.fault_seed())
    ids = rel.enqueue("hooks-dropped")
    rel.wait_finished("hooks-dropped", timeout=rel.timeout(60))
    stats = rel.sim.stats()
    fig = rel.audit("4a all webhooks dropped", ["hooks-dropped"], ids, started=started,
                    extra={"callbacks_sent": stats["callbacks_sent"]})
    assert fig.ok, fig.line()
    assert stats["callbacks_sent"] == 0 and stats["callbacks_dropped"] > 0
    assert fig.by_status == {"succeeded": fig.jobs}


def test_all_callbacks_duplicated_and_reordered(rel_hook: Rel, started: float) -> None:
    rel = rel_hook
    rel.sim.faults(duplicate_callbacks=True, reorder_callbacks=True, seed=rel.fault_seed())
    ids = rel.enqueue("hooks-dup")
    rel.wait_finished("hooks-dup", timeout=rel.timeout(60))
    stats = rel.sim.stats()
    fig = rel.audit("4b webhooks duplicated+reordered", ["hooks-dup"], ids, started=started,
                    extra={"callbacks_sent": stats["callbacks_sent"]})
    assert fig.ok, fig.line()
    assert stats["callbacks_sent"] >= 2 * fig.jobs
    assert fig.by_status == {"succeeded": fig.jobs}
    settled = {j.get("settled_by") for j in (rel.stack.job(i) for i in ids)}
    assert "webhook" in settled
