"""The audit itself: fed a ledger and an upstream that disagree in every way it checks, it reports each one.

Without this, a scenario could pass because the audit looks at nothing. The records are written directly
(no task runs them), so the worker of the stack has nothing to act on.
"""

from __future__ import annotations

import time

import httpx

from tests.reliability.audit import audit
from tests.reliability.conftest import Rel
from tests.support.sim import SIM_KEY


def test_audit_reports_every_kind_of_problem(rel_poll: Rel, started: float) -> None:
    rel, ledger, client = rel_poll, rel_poll.stack.ledger, rel_poll.stack.redis
    with httpx.Client(base_url=rel.sim.url, headers={"mj-api-secret": SIM_KEY}, timeout=5) as http:

        def accept(state: str) -> str:
            answer = http.post("/mj/submit/imagine", json={"prompt": f"audit {state}", "state": state}).json()
            assert answer["code"] in (1, 22), answer
            return str(answer["result"])

        paid_twice = accept("ghost-twice")
        accept("ghost-twice")  # the same job accepted a second time: paid twice
        unrecorded = accept("ghost-unrecorded")  # accepted upstream, the ledger never learnt its id
    for job_id, fields in (
        ("ghost-open", {}),
        ("ghost-twice", {"then": "U1"}),
        ("ghost-unrecorded", {}),
    ):
        ledger.create_job(job_id, {"batch_id": "audit-self", "mode": "fast", "task_id": job_id, **fields})
    ledger.transition("ghost-twice", "succeeded", upstream=paid_twice)  # and its U1 follow-up never came
    ledger.transition("ghost-unrecorded", "failed", fields={"fail_reason": "pretend"})
    client.hincrby("mjq:batch:audit-self", "n:succeeded", 1)  # a counter that no longer matches a recount
    client.zrem("mjq:finishing", "ghost-twice", "ghost-unrecorded")  # nothing for housekeeping to re-finish
    client.zadd("mjq:slots:fast", {"ghost-lease": time.time() + 60})  # a slot never released

    ids = ["ghost-open", "ghost-twice", "ghost-unrecorded"]
    fig = audit(rel.stack, rel.sim, "0 audit self-test", ["audit-self"], ids, started=started, quiet_s=0.5,
                keep=False)
    client.zrem("mjq:slots:fast", "ghost-lease")
    text = " | ".join(fig.problems)
    assert not fig.ok
    assert fig.duplicate_submits == 1 and "paid twice" in text
    assert fig.lost == 1 and "not terminal" in text
    assert "never stored (PENDING)" in text
    assert f"accepted upstream as {unrecorded}" in text
    assert "wrong follow-ups" in text and "1 follow-ups" not in text
    assert "counters" in text and "recount" in text
    assert "left behind" in text and "slots:fast" in text
