"""Scenario 1: ``kill -9`` of the worker at random moments, twice per batch; the batch completes.

acks_late + reject_on_worker_lost + a short visibility timeout (``MJQ_VISIBILITY_TIMEOUT_S``) bring every
unacknowledged message back; submit-once turns a submit cut in the middle into ``needs_review``, never a
second accepted POST.
"""

from __future__ import annotations

import time
from collections import Counter

from tests.reliability.audit import audit
from tests.reliability.conftest import Rel


def test_worker_killed_twice_mid_batch(rel_poll: Rel, started: float) -> None:
    rel = rel_poll
    ids = rel.enqueue("kill")
    phases = []
    for _ in range(2):
        time.sleep(rel.rng.uniform(0.8, 2.5))
        at_kill = Counter(j.get("status") for j in rel.stack.ledger.batch_jobs("kill"))
        phases.append({k: v for k, v in at_kill.items() if k in ("submitting", "submitted", "running")})
        phases[-1]["finishing"] = int(rel.stack.redis.zcard("mjq:finishing"))
        rel.kill_worker()
        rel.restart_worker()
    rel.wait_finished("kill", timeout=120 if rel.full else 60)
    fig = audit(
        rel.stack, rel.sim, "1 worker kill -9 x2", ["kill"], ids,
        started=started, full=rel.full, extra={"in_flight_at_kills": phases},
    )
    assert fig.ok, fig.line()
