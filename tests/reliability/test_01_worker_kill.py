"""Scenario 1: ``kill -9`` of the worker mid-batch, at random points of its progress, each time while work of
a chosen phase is on the wire: a submit POST (a third of the submits answer 0.4 s late), a poll (half of the
fetch / list-by-condition answers are held 0.4 s by the simulator's ``poll_delay`` fault, and the kill comes
while one is held, between the poll's claim of the due jobs and their next schedule), and an image download
(half of the GETs of ``/images/`` are held 0.4 s by ``image_delay``). Jobs are being tracked every time. The
batch completes.

acks_late + reject_on_worker_lost + a short visibility timeout (``MJQ_VISIBILITY_TIMEOUT_S``) bring every
unacknowledged message back; submit-once turns a submit cut in the middle into ``needs_review`` (no webhooks
here to reconcile it), never a second accepted POST; a poll claim runs out and the jobs are polled again; the
finishing step downloads the image again.

Each kill is confirmed from what it left behind (the ledger is frozen once the worker is dead; the simulator
still holds the interrupted download); a kill that came a moment too late (the poll had just ended) is
retried, at most ``ATTEMPTS`` times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

from tests.reliability.conftest import Rel, unexpected_ends

Phases = dict[str, int]
ATTEMPTS = 4
DELAY_S = 0.4  # within the worker's 1.5 s read timeout: slow answers, not lost ones


def claimed(rel: Rel) -> int:
    """Jobs claimed by a poll in the last second and not rescheduled yet: that poll is still running.

    A claim puts its jobs at now + claim_s (3.5 s here); every schedule is nearer (first polls under 2 s)."""
    from worker.jobs.tracking import claim_seconds
    from worker.settings import get_settings

    return int(rel.stack.redis.zcount("mjq:inflight", time.time() + claim_seconds(get_settings()) - 1.0, "+inf"))


def phases(rel: Rel, batch_id: str) -> Phases:
    """What is in flight: POSTs without an answer, jobs tracked upstream, polls between claim and reschedule,
    finished jobs whose image is not downloaded yet."""
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
        "poll": claimed(rel),
        "download": downloads,
    }


def images_held(rel: Rel) -> int:
    return int(rel.sim.stats()["images_in_flight"])


def polls_held(rel: Rel) -> int:
    return int(rel.sim.stats()["polls_in_flight"])


def kill_when(rel: Rel, batch_id: str, what: str, ready: Callable[[], bool], confirmed: Callable[[Phases], bool]
              ) -> Phases:
    """Wait for the moment, ``kill -9`` the worker, read what was in flight when it died and start a new one;
    again (at most ``ATTEMPTS`` kills) if the kill came too late to interrupt ``what``."""
    misses: list[Phases] = []
    for _ in range(ATTEMPTS):
        rel.stack.wait(ready, rel.timeout(30), what)
        rel.kill_worker()
        frozen = {**phases(rel, batch_id), "images_held": images_held(rel), "polls_held": polls_held(rel)}
        rel.restart_worker()
        if confirmed(frozen):
            return {**frozen, "missed_before": len(misses)}
        misses.append(frozen)
    raise AssertionError(f"no kill interrupted {what} in {ATTEMPTS} tries: {misses}")


def test_worker_killed_mid_submit_poll_and_download(rel_crash: Rel, started: float) -> None:
    rel = rel_crash
    rel.sim.faults(read_delay_rate=0.3, read_delay_s=DELAY_S, image_delay_rate=0.5, image_delay_s=DELAY_S,
                   poll_delay_rate=0.5, poll_delay_s=DELAY_S, seed=rel.fault_seed())
    ids = rel.enqueue("kill")
    kills: dict[str, Phases] = {}
    rel.wait_share("kill", rel.rng.uniform(0.05, 0.25), rel.timeout(30))
    kills["submit"] = kill_when(
        rel, "kill", "a submit POST in flight",
        lambda: (p := phases(rel, "kill"))["submit"] > 0 and p["tracking"] > 0,
        lambda frozen: frozen["submit"] > 0,
    )
    rel.wait_share("kill", rel.rng.uniform(0.3, 0.45), rel.timeout(40))
    kills["poll"] = kill_when(
        rel, "kill", "a poll in flight",
        lambda: polls_held(rel) > 0 and claimed(rel) > 0,
        lambda frozen: frozen["poll"] > 0 and frozen["polls_held"] > 0,
    )
    rel.wait_share("kill", rel.rng.uniform(0.55, 0.7), rel.timeout(40))
    kills["download"] = kill_when(
        rel, "kill", "an image download in flight",
        lambda: images_held(rel) > 0 and phases(rel, "kill")["tracking"] > 0,
        lambda frozen: frozen["images_held"] > 0 and frozen["download"] > 0,
    )
    rel.wait_finished("kill", timeout=rel.timeout(60))
    stats = rel.sim.stats()
    fig = rel.audit("1 worker kill -9 (submit, poll, download)", ["kill"], ids, started=started,
                    extra={"in_flight_at_kills": kills, "images_delayed": stats["faults"].get("image_delay", 0),
                           "polls_delayed": stats["faults"].get("poll_delay", 0)})
    assert fig.ok, fig.line()
    assert all(k["tracking"] > 0 for k in kills.values()), kills
    # only a submit cut by a kill may end in review (flagged, never sent again: no webhook here to reconcile it)
    assert not unexpected_ends(fig, ("succeeded", "needs_review")), unexpected_ends(fig)
    review = [j for j in rel.stack.ledger.batch_jobs("kill") if j["status"] == "needs_review"]
    assert len(review) <= sum(k["submit"] for k in kills.values()), (review, kills)
    assert all("interrupted" in (j["fail_reason"] or "") for j in review), review
