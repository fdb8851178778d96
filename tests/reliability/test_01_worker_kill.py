"""Scenario 1: ``kill -9`` of the worker twice per batch, at random points of its progress, each time at a
moment when work of a chosen phase is in flight: first while a submit POST is on the wire, then while images
are being downloaded (finishing steps pending); jobs are being tracked both times. The batch completes.

acks_late + reject_on_worker_lost + a short visibility timeout (``MJQ_VISIBILITY_TIMEOUT_S``) bring every
unacknowledged message back; submit-once turns a submit cut in the middle into ``needs_review`` (no webhooks
here to reconcile it), never a second accepted POST.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from tests.reliability.audit import audit
from tests.reliability.conftest import Rel

Phases = dict[str, int]


def phases(rel: Rel, batch_id: str) -> Phases:
    """What is in flight: POSTs without an answer, jobs tracked upstream, finished jobs not yet downloaded."""
    client = rel.stack.redis
    ids = cast(list[str], client.zrange(f"mjq:batch:{batch_id}:jobs", 0, -1))
    pipe = client.pipeline()
    for job_id in ids:
        pipe.hmget(f"mjq:job:{job_id}", "status", "download")
    pipe.zmscore("mjq:finishing", ids or ["-"])
    *records, finishing = pipe.execute()
    status = [r[0] for r in records]
    downloads = sum(
        1 for (st, dl), score in zip(records, finishing, strict=False) if score is not None and st == "succeeded"
        and not dl
    )
    return {
        "submit": status.count("submitting"),
        "tracking": status.count("submitted") + status.count("running"),
        "download": downloads,
    }


def kill_when(rel: Rel, batch_id: str, ready: Callable[[Phases], bool], what: str) -> Phases:
    """Wait for the moment, ``kill -9`` the worker, and return what was in flight when it died (the ledger is
    frozen once the worker is dead, so this is exact), then start a new worker."""
    rel.stack.wait(lambda: ready(phases(rel, batch_id)), rel.timeout(30), what)
    rel.kill_worker()
    frozen = phases(rel, batch_id)
    rel.restart_worker()
    return frozen


def test_worker_killed_twice_mid_batch(rel_poll: Rel, started: float) -> None:
    rel = rel_poll
    # a third of the submits answer after 0.4 s (within the 1.5 s read timeout): POSTs stay in flight long
    # enough for a kill to cut one
    rel.sim.faults(read_delay_rate=0.3, read_delay_s=0.4, seed=17)
    ids = rel.enqueue("kill")
    kills = []
    rel.wait_share("kill", rel.rng.uniform(0.1, 0.35), rel.timeout(30))
    kills.append(kill_when(rel, "kill", lambda p: p["submit"] > 0 and p["tracking"] > 0, "a submit in flight"))
    rel.wait_share("kill", rel.rng.uniform(0.45, 0.7), rel.timeout(40))
    kills.append(kill_when(rel, "kill", lambda p: p["download"] > 0 and p["tracking"] > 0, "a download pending"))
    rel.wait_finished("kill", timeout=rel.timeout(60))
    fig = audit(
        rel.stack, rel.sim, "1 worker kill -9 x2", ["kill"], ids,
        started=started, full=rel.full, extra={"in_flight_at_kills": kills},
    )
    assert fig.ok, fig.line()
    assert kills[0]["submit"] > 0, f"the first kill cut no submit: {kills}"
    assert kills[1]["download"] > 0, f"the second kill interrupted no download: {kills}"
    assert all(k["tracking"] > 0 for k in kills), kills
    # only a submit cut by a kill may end in review (flagged, never sent again: no webhook here to reconcile it)
    review = [j for j in rel.stack.ledger.batch_jobs("kill") if j["status"] == "needs_review"]
    assert len(review) <= sum(k["submit"] for k in kills), (review, kills)
    assert all("interrupted" in (j["fail_reason"] or "") for j in review), review
