"""The audit itself: fed a ledger and an upstream that disagree in every way it checks, it reports each one.

Without this, a scenario could pass because the audit looks at nothing. The records are written directly (no
task runs them) and shaped so the worker's housekeeping leaves them alone: leftover entries are due far in the
future, and the relax slots are full of leaked leases, so the parked entry is not popped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.reliability.audit import audit
from tests.reliability.conftest import Rel
from tests.support.sim import SIM_KEY

BATCH = "audit-self"
U1 = "MJ::JOB::upsample::1::audit"


@pytest.fixture
def accept(rel_crash: Rel) -> Iterator[Any]:
    """Submit an imagine straight to the simulator (optionally with a ``state``); returns the upstream id."""
    with httpx.Client(base_url=rel_crash.sim.url, headers={"mj-api-secret": SIM_KEY}, timeout=5) as http:

        def submit(state: str | None, prompt: str = "audit") -> str:
            body = {"prompt": prompt, **({"state": state} if state else {})}
            answer = http.post("/mj/submit/imagine", json=body).json()
            assert answer["code"] in (1, 22), answer
            return str(answer["result"])

        yield submit


def test_audit_reports_every_kind_of_problem(rel_crash: Rel, accept: Any) -> None:
    """On the crash configuration (it runs next): the audit is told this is no crash scenario."""
    from worker.app import app
    from worker.settings import get_settings

    rel, ledger, client = rel_crash, rel_crash.stack.ledger, rel_crash.stack.redis
    paid_twice = accept("ghost-twice")
    accept("ghost-twice")  # the same job accepted a second time: paid twice
    unrecorded = accept("ghost-unrecorded")  # accepted upstream, the ledger never learnt its id
    owned = accept("ghost-owner")
    done = accept("ghost-failed-success")  # finishes SUCCESS; the ledger says failed
    early = accept("ghost-late-timeout")  # finishes SUCCESS long before the ledger timed it out
    foreign = accept("stranger")  # a task whose state is no job of ours
    accept(None)  # a task without any state
    sibling = accept("ghost-sibling")
    rel.sim.faults(stuck_rate=1.0)
    stuck = accept("ghost-mismatch")  # never finishes; the ledger says succeeded
    rel.sim.faults(stuck_rate=0.0)
    time.sleep(0.5)  # the finishing ones are SUCCESS by now (0.12 s at this time factor)

    jobs: dict[str, dict[str, Any]] = {
        "ghost-open": {},
        "ghost-twice": {"then": "U1"},
        "ghost-unrecorded": {},
        "ghost-owner": {},
        "ghost-unknown-up": {},
        "ghost-other-up": {},
        "ghost-mismatch": {},
        "ghost-failed-success": {},
        "ghost-late-timeout": {},
        "ghost-sibling": {"parent_job": "ghost-parent", "action": U1},
        "ghost-exists-ok": {"parent_job": "ghost-parent", "action": U1},
        "ghost-exists-bad": {"parent_job": "ghost-parent", "action": U1},
        "ghost-review": {},
    }
    for job_id, fields in jobs.items():
        ledger.create_job(job_id, {"batch_id": BATCH, "mode": "fast", "task_id": job_id, **fields})
    ends: list[tuple[str, str, str | None, dict[str, Any]]] = [
        ("ghost-twice", "succeeded", paid_twice, {}),  # ... and its U1 follow-up never came
        ("ghost-unrecorded", "failed", None, {"fail_reason": "pretend"}),
        ("ghost-owner", "succeeded", owned, {}),
        ("ghost-unknown-up", "succeeded", "424242", {}),
        ("ghost-other-up", "succeeded", owned, {}),
        ("ghost-mismatch", "succeeded", stuck, {}),
        ("ghost-failed-success", "failed", done, {"fail_reason": "pretend"}),
        ("ghost-late-timeout", "timed_out", early, {"deadline_at": time.time() + 100}),
        ("ghost-sibling", "succeeded", sibling, {}),
        ("ghost-exists-ok", "succeeded", sibling, {"submit_outcome": "exists"}),  # the same button: fine
        ("ghost-exists-bad", "succeeded", foreign, {"submit_outcome": "exists"}),  # someone else's task
        ("ghost-review", "needs_review", None, {"fail_reason": "pretend"}),
    ]
    for job_id, status, upstream, fields in ends:
        ok, _prev, why = ledger.transition(job_id, status, upstream=upstream, fields=fields)
        assert ok, (job_id, why)
    app.backend.mark_as_failure("ghost-twice", RuntimeError("pretend"))  # job succeeded, its task failed
    client.delete("mjq:finishing")  # nothing for housekeeping to re-finish
    client.hincrby(f"mjq:batch:{BATCH}", "n:succeeded", 1)  # a counter that no longer matches a recount
    client.hincrby(f"mjq:batch:{BATCH}", "planned", 1)  # a planned follow-up that never came
    later = time.time() + 600
    client.zadd("mjq:slots:relax", {f"ghost-lease-{i}": later for i in range(3)})  # slots never released
    client.zadd("mjq:slots:fast", {"ghost-review": time.time() + 0.8})  # a review job's short hold: allowed
    client.zadd("mjq:waiting:relax", {"ghost-parked": 1.0})  # stays parked: the relax slots are full
    client.zadd("mjq:inflight", {"ghost-open": later})
    client.zadd("mjq:finishing", {"ghost-owner": later})
    client.zadd("mjq:expected", {"ghost-expected": later})
    client.zadd(f"mjq:held:{BATCH}", {"ghost-held": 1.0})

    ids = [*jobs, "ghost-missing"]
    ran = get_settings().slot_lease_s + 1  # pretend the scenario outran its leases
    fig = audit(rel.stack, rel.sim, "0 audit self-test", [BATCH], ids, started=time.monotonic() - ran, quiet_s=0.5,
                keep=False)
    client.delete("mjq:slots:relax", "mjq:waiting:relax", "mjq:inflight", "mjq:finishing", "mjq:expected")
    text = " | ".join(fig.problems)
    expected = {
        "paid twice": "duplicate accepted submits (paid twice): ['ghost-twice']",
        "not terminal": "not terminal {'queued': 1}: ['ghost-open']",
        "missing": "missing from the ledger: ['ghost-missing']",
        "PENDING": "never stored (PENDING)",
        "outcome contradicts job": "ghost-twice: job succeeded, task FAILURE",
        "unrecorded": f"ghost-unrecorded (failed): accepted upstream as {unrecorded}",
        "unknown upstream": "ghost-unknown-up: upstream 424242 unknown to the simulator",
        "another job's upstream": f"ghost-other-up: upstream {owned} belongs to ghost-owner",
        "status mismatch": "ghost-mismatch: succeeded, upstream ",
        "failed but SUCCESS": "ghost-failed-success: failed, upstream SUCCESS",
        "timed out a finished job": "ghost-late-timeout: timed out, upstream SUCCESS",
        "exists of a stranger": f"ghost-exists-bad: 'exists' points at upstream {foreign} of stranger",
        "foreign state": "state is no job of ours: ['stranger']",
        "no state": "upstream tasks without a state",
        "total accepted": "the simulator accepted 10 tasks in all, 8 for these jobs",
        "ledger vs simulator": "ledger has 7 upstream ids (+0 in review) but the simulator accepted 8 tasks",
        "follow-up missing": "ghost-twice (succeeded): 0 follow-ups, planned 1",
        "planned never created": f"batch {BATCH}: 1 planned follow-ups never created",
        "counters": f"batch {BATCH} counters",
        "leaked lease": "slots:relax ghost-lease-0 (None",
        "lease longer than scenario": "longer than the slot lease",
        "in flight": "'inflight': 1",
        "finishing": "'finishing': 1",
        "expected": "'expected': 1",
        "waiting": "'waiting:relax': 1",
        "held": f"'held:{BATCH}': 1",
    }
    missed = {name: phrase for name, phrase in expected.items() if phrase not in text}
    assert not missed, f"the audit did not report {missed}\n--- it reported ---\n" + "\n".join(fig.problems)
    assert not fig.ok and fig.duplicate_submits == 1 and fig.lost == 1 + 1 + 1  # open, missing, planned
    assert fig.leaked_leases == 3, fig.problems  # the review job's hold is not a leak
    assert "ghost-exists-ok" not in text and "ghost-sibling" not in text and "ghost-review" not in text, text
