"""Scenario 11: the batch behind the new-api relay (``--profile newapi``) with webhooks configured: no callback
ever comes (the relay deletes ``notifyHook``), 10 % HTTP 500 and 15 % HTTP 400 code 5 ``do_request_failed``
(the relay gave up waiting, the upstream has the task), 21/22 rewritten to 1, its own lagging task copy.

The polls finish the batch; after ``MJQ_CALLBACKS_MISSING_AFTER`` jobs the upstream goes on the polling
schedule, said once; a ``do_request_failed`` job ends ``needs_review`` and is never sent again; nothing is
paid twice. (Scenarios 1-10 run on the default ``plus`` profile.)
"""

from __future__ import annotations

from tests.reliability.conftest import Rel, unexpected_ends


def test_behind_the_newapi_relay(rel_hook: Rel, started: float) -> None:
    rel = rel_hook
    rel.sim.faults(profile="newapi", http_500_rate=0.1, do_request_failed_rate=0.15, fault_scope="submit",
                   seed=rel.fault_seed())  # fmt: skip
    switch = "switching to the polling schedule"
    said_before = rel.worker_log().count(switch)  # the worker log of this configuration outlives a scenario
    ids = rel.enqueue("newapi")
    rel.wait_finished("newapi", timeout=rel.timeout(90))
    stats = rel.sim.stats()
    faults: dict[str, int] = stats["faults"]
    switched = rel.worker_log().count(switch) - said_before
    fig = rel.audit("11 behind the new-api relay", ["newapi"], ids, started=started,
                    extra={"faults": faults, "callbacks_sent": stats["callbacks_sent"],
                           "switched": switched})  # fmt: skip
    assert fig.ok, fig.line()
    assert stats["callbacks_sent"] == 0, "new-api sends no callback"
    assert faults.get("do_request_failed", 0) > 0 and faults.get("http_500", 0) > 0, faults
    assert switched == 1, f"the switch to polling was said {switched} times"
    review = [rel.stack.job(j) for j in rel.stack.ledger.batch_job_ids("newapi")]
    review = [j for j in review if j.get("status") == "needs_review"]
    assert all("do_request_failed" in (j.get("fail_reason") or "") for j in review), review
    assert len(review) <= faults["do_request_failed"]
    assert not unexpected_ends(fig, ("succeeded", "needs_review")), unexpected_ends(fig)
