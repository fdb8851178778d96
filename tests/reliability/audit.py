"""The one audit every reliability scenario ends with: ledger against simulator, nothing lost, nothing twice.

Checks, per scenario:
- every enqueued job is in the ledger and terminal, every follow-up of the batch too (``lost``);
- each job's task (roots and follow-ups) has a stored outcome (no PENDING forever) that matches the job;
- at most ONE accepted submit per job (``state`` = our job id) — retries after queue full / 429 / 5xx POST
  again legitimately, they are counted as ``resubmits``, but two *accepted* ones are ``duplicate_submits``;
- ledger and simulator agree: every recorded upstream id is a simulator task carrying the job's ``state`` (or,
  for an "already exists" answer, a task of our job pressing the same button), every accepted task is
  recorded — or its job is ``needs_review`` (an ambiguous submit, flagged not guessed); every task the
  simulator holds carries the ``state`` of one of these jobs (none without, none foreign), and the simulator's
  total ``accepted`` equals what the ledger accounts for;
- job and upstream status agree (succeeded: SUCCESS, failed: FAILURE, cancelled: CANCEL, timed out: the
  upstream had not finished long before the deadline); a succeeded job has its image downloaded;
- every root job with a follow-up plan has exactly its planned children when it succeeded and none otherwise
  (a continuation fired twice would pay twice under another ``state``), and no planned follow-up is missing;
- batch counters equal a recount of the jobs; no in-flight, waiting, held, finishing or expected entry is left;
- slot leases: EVERY entry left in ``mjq:slots:<mode>`` is counted, expired or not — only the short hold of a
  ``needs_review`` job (one expected duration) may remain. Outside the crash scenarios the worker runs with a
  lease longer than the scenario (``LONG_LEASE_S``), so no lease can expire during it and a slot that is never
  released is still there at the end; a scenario that ran longer than the lease fails (a lease could then
  have been reclaimed by expiry unseen). The crash scenarios need short leases (a killed worker's slots come
  back by expiry), so there a leak is seen only while its lease is still unexpired.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, cast

import redis

from tests.reliability.report import Figures, record
from tests.support.stack import Stack

TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "needs_review", "skipped"})
MODES = ("fast", "relax", "turbo")
UPSTREAM_FOR = {"succeeded": "SUCCESS", "failed": "FAILURE", "cancelled": "CANCEL"}
SHOWN = 5  # examples per problem


def _retrying(fn: Any, *args: Any, attempts: int = 50) -> Any:
    """Redis may be coming back (the restart scenario): retry connection errors for a few seconds."""
    for i in range(attempts):
        try:
            return fn(*args)
        except redis.ConnectionError:
            if i == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _quiet(stack: Stack, task_ids: list[str], timeout: float) -> None:
    """Wait (bounded) until finishing steps ran, nothing is tracked and task outcomes are stored.

    Leases are not waited for: a released slot goes in the same step as the job's terminal transition, so a
    lease still there is a finding, not something to wait out (waiting would let a short lease expire)."""
    from celery.result import AsyncResult

    from worker.app import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = stack.redis.zcard("mjq:finishing") + stack.redis.zcard("mjq:inflight")
        if not busy and all(AsyncResult(i, app=app).state != "PENDING" for i in task_ids):
            return
        time.sleep(0.2)


def audit(
    stack: Stack,
    sim: Any,
    scenario: str,
    batch_ids: list[str],
    enqueued: list[str],
    *,
    started: float,
    full: bool = False,
    crash: bool = False,
    extra: dict[str, Any] | None = None,
    notes: str = "",
    quiet_s: float = 15.0,
    keep: bool = True,
) -> Figures:
    """Compare ledger, broker results and simulator after a scenario; print and record the figures
    (``keep=False``: return them only, for the audit's own test). ``crash``: a scenario that kills processes
    (short leases, reclaimed by expiry by design)."""
    fig = Figures(scenario, "full" if full else "reduced", extra=dict(extra or {}), notes=notes)
    fig.seconds = time.monotonic() - started
    ledger = stack.ledger
    job_ids: list[str] = list(dict.fromkeys(enqueued))
    for batch_id in batch_ids:
        job_ids += [j for j in _retrying(ledger.batch_job_ids, batch_id) if j not in job_ids]
    first = {j: _retrying(ledger.get_job, j) for j in job_ids}
    task_ids = list(dict.fromkeys([*enqueued, *(str(r["task_id"]) for r in first.values() if r and r.get("task_id"))]))
    _quiet(stack, task_ids, quiet_s)
    for batch_id in batch_ids:  # a follow-up created meanwhile is audited too, not only seen in the counters
        job_ids += [j for j in _retrying(ledger.batch_job_ids, batch_id) if j not in job_ids]
    jobs: dict[str, dict[str, Any] | None] = {j: _retrying(ledger.get_job, j) for j in job_ids}

    _check_lost(fig, jobs)
    _check_outcomes(fig, jobs, enqueued)
    _check_upstream(fig, sim, jobs)
    _check_follow_ups(fig, stack, jobs)
    _check_batches(fig, stack, batch_ids, jobs)
    _check_leftovers(fig, stack, batch_ids)
    _check_leases(fig, stack, crash)
    if fig.problems:
        open_ids = [j for j, r in jobs.items() if r is None or r.get("status") not in TERMINAL]
        fig.extra["suspects"] = _suspects(jobs, open_ids)
    if keep:
        record(fig)
    return fig


def _problem(fig: Figures, label: str, items: list[str]) -> None:
    if items:
        fig.problems.append(f"{len(items)} {label}: {items[:SHOWN]}")


def _check_lost(fig: Figures, jobs: dict[str, dict[str, Any] | None]) -> None:
    fig.jobs = len(jobs)
    fig.roots = sum(1 for j in jobs.values() if j and not j.get("parent_job"))
    fig.follow_ups = sum(1 for j in jobs.values() if j and j.get("parent_job"))
    missing = [j for j, rec in jobs.items() if rec is None]
    open_jobs = [j for j, rec in jobs.items() if rec is not None and rec.get("status") not in TERMINAL]
    fig.missing, fig.open_jobs = len(missing), len(open_jobs)
    fig.lost = fig.missing + fig.open_jobs
    _problem(fig, "enqueued jobs missing from the ledger", missing)
    states = Counter(str((jobs[j] or {}).get("status")) for j in open_jobs)
    _problem(fig, f"jobs not terminal {dict(states)}", open_jobs)
    fig.by_status = dict(Counter(str(rec.get("status")) for rec in jobs.values() if rec))
    for rec in jobs.values():
        reason = str((rec or {}).get("fail_reason") or "")
        shown = fig.reasons.setdefault(str((rec or {}).get("status")), [])
        if reason and len(shown) < SHOWN:
            shown.append(f"{(rec or {}).get('job_id')} {(rec or {}).get('kind')}: {reason}")


def _check_outcomes(fig: Figures, jobs: dict[str, dict[str, Any] | None], enqueued: list[str]) -> None:
    """The producer's ``.get()`` must return for every job task, with the job's outcome."""
    from celery.result import AsyncResult

    from worker.app import app

    tasks = {j: j for j in enqueued}
    tasks.update({str(r["task_id"]): j for j, r in jobs.items() if r and r.get("task_id")})
    pending, wrong = [], []
    for task_id, job_id in tasks.items():
        rec = jobs.get(job_id)
        state = AsyncResult(task_id, app=app).state
        if state == "PENDING":
            pending.append(task_id)
        elif rec and rec.get("status") == "succeeded" and state != "SUCCESS":
            wrong.append(f"{job_id}: job succeeded, task {state}")
        elif rec and rec.get("status") in TERMINAL - {"succeeded"} and state == "SUCCESS":
            wrong.append(f"{job_id}: job {rec.get('status')}, task SUCCESS")
    _problem(fig, "task outcomes never stored (PENDING)", pending)
    _problem(fig, "task outcomes that contradict their job", wrong)


def _check_upstream(fig: Figures, sim: Any, jobs: dict[str, dict[str, Any] | None]) -> None:
    from worker.settings import get_settings

    settings = get_settings()
    stats = sim.stats()
    tasks = sim.tasks()
    by_state: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        by_state.setdefault(str(task.get("state") or ""), []).append(task)
    by_id = {str(t["id"]): t for t in tasks}
    fig.accepted = sum(len(by_state.get(j, [])) for j in jobs)
    fig.duplicate_submits = sum(max(0, n - 1) for n in stats.get("accepted_by_state", {}).values())
    # every submit POST that reached the server (faulted ones too) beyond one per job that submitted
    posts = sum(n for k, n in stats.get("requests", {}).items() if k.startswith("POST") and _is_submit(k))
    fig.resubmits = max(0, posts - len(stats.get("submissions_by_state", {})))
    twice = [s for s, n in stats.get("accepted_by_state", {}).items() if n > 1]
    _problem(fig, "duplicate accepted submits (paid twice)", twice)
    stateless = [str(t["id"]) for t in by_state.get("", [])]
    _problem(fig, "upstream tasks without a state (not sent by these jobs)", stateless)
    _problem(fig, "upstream tasks whose state is no job of ours", [s for s in by_state if s and s not in jobs])
    if int(stats.get("accepted", 0)) != fig.accepted:
        fig.problems.append(f"the simulator accepted {stats.get('accepted')} tasks in all, {fig.accepted} for these "
                            "jobs")

    unrecorded, mismatched, disagree, no_image = [], [], [], []
    recorded = 0
    for job_id, rec in jobs.items():
        if rec is None:
            continue
        status = rec.get("status")
        if status == "needs_review":
            fig.needs_review += 1
        upstream = rec.get("upstream_id")
        if not upstream:
            if by_state.get(job_id):
                if status == "needs_review":
                    fig.needs_review_paid += 1
                else:
                    unrecorded.append(f"{job_id} ({status}): accepted upstream as {by_state[job_id][0]['id']}")
            continue
        task = by_id.get(str(upstream))
        if task is None:
            mismatched.append(f"{job_id}: upstream {upstream} unknown to the simulator")
            continue
        owner = str(task.get("state") or "")
        if rec.get("submit_outcome") == "exists" and owner != job_id:
            fig.exists += 1
            other = jobs.get(owner)
            same_button = other is not None and all(other.get(k) == rec.get(k) for k in ("parent_job", "action"))
            if not same_button:
                mismatched.append(f"{job_id}: 'exists' points at upstream {upstream} of {owner or 'no job'}, "
                                  "not a job of ours pressing the same button")
        else:
            recorded += 1
            if owner != job_id:
                mismatched.append(f"{job_id}: upstream {upstream} belongs to {owner or 'no state'}")
        disagree += _status_disagreement(job_id, rec, task, settings)
        wants_image = settings.download_images and status == "succeeded" and rec.get("image_url")
        if wants_image and rec.get("download") != "ok":
            no_image.append(f"{job_id}: download {rec.get('download')} {rec.get('download_error') or ''}".strip())
    fig.recorded_upstream = recorded + fig.exists
    _problem(fig, "accepted upstream, not recorded", unrecorded)
    _problem(fig, "upstream ids that are not the job's", mismatched)
    _problem(fig, "jobs whose status disagrees with the upstream", disagree)
    _problem(fig, "succeeded jobs without their image", no_image)
    if recorded + fig.needs_review_paid != fig.accepted:
        fig.problems.append(
            f"ledger has {recorded} upstream ids (+{fig.needs_review_paid} in review) but the "
            f"simulator accepted {fig.accepted} tasks for these jobs"
        )


def _status_disagreement(job_id: str, rec: dict[str, Any], task: dict[str, Any], settings: Any) -> list[str]:
    status, sim_status = str(rec.get("status")), task.get("status")
    if status == "succeeded" and rec.get("submit_outcome") == "modal":
        return []  # the action stopped at its modal step (upstream MODAL): the modal job continues it
    want = UPSTREAM_FOR.get(status)
    if want is not None and sim_status != want:
        return [f"{job_id}: {status}, upstream {sim_status}"]
    if status == "timed_out" and sim_status in ("SUCCESS", "FAILURE"):
        # one poll period before the deadline the job was looked at; finished before that, we should have seen it
        look = max(settings.poll_max_s, settings.webhook_poll_s if settings.webhook_base_url else 0.0)
        finished = float(task.get("finishTime") or 0) / 1000.0
        if finished and finished < float(rec.get("deadline_at") or 0) - 2 * look:
            return [f"{job_id}: timed out, upstream {sim_status} {float(rec['deadline_at']) - finished:.1f}s earlier"]
    return []


def _check_follow_ups(fig: Figures, stack: Stack, jobs: dict[str, dict[str, Any] | None]) -> None:
    """Exactly the planned children of each succeeded root, none of the others."""
    from tasks.pipelines import count_jobs

    wrong = []
    for job_id, rec in jobs.items():
        if rec is None or not rec.get("then"):
            continue
        want = count_jobs(str(rec["then"])) if rec.get("status") == "succeeded" else 0
        have = int(_retrying(stack.redis.zcard, f"mjq:children:{job_id}"))
        if have != want:
            wrong.append(f"{job_id} ({rec.get('status')}): {have} follow-ups, planned {want}")
    _problem(fig, "roots with wrong follow-ups", wrong)


def _check_batches(fig: Figures, stack: Stack, batch_ids: list[str], jobs: dict[str, dict[str, Any] | None]) -> None:
    """Batch counters against a recount; no planned follow-up left uncreated."""
    for batch_id in batch_ids:
        batch = _retrying(stack.ledger.batch, batch_id)
        if int(batch.get("planned", 0) or 0) > 0:
            fig.lost += int(batch["planned"])
            fig.problems.append(f"batch {batch_id}: {batch['planned']} planned follow-ups never created")
        recount = Counter(str(rec.get("status")) for rec in jobs.values() if rec and rec.get("batch_id") == batch_id)
        counted = {k: v for k, v in batch.get("counts", {}).items() if v and k != "skipped"}
        if counted != dict(recount):
            fig.problems.append(f"batch {batch_id} counters {counted} != recount {dict(recount)}")
        if batch.get("counts", {}).get("skipped"):
            fig.extra["skipped_follow_ups"] = batch["counts"]["skipped"]


def _check_leftovers(fig: Figures, stack: Stack, batch_ids: list[str]) -> None:
    client = stack.redis
    leftovers = {k: int(client.zcard(f"mjq:{k}")) for k in ("inflight", "finishing")}
    # a task expected to start and never started (plan/<job> watches end lazily: their follow-ups are checked above)
    leftovers["expected"] = sum(1 for m in client.zrange("mjq:expected", 0, -1) if "/" not in m)
    leftovers.update({f"waiting:{m}": int(client.zcard(f"mjq:waiting:{m}")) for m in MODES})
    leftovers.update({f"held:{b}": int(client.zcard(f"mjq:held:{b}")) for b in batch_ids})
    left = {k: v for k, v in leftovers.items() if v}
    if left:
        fig.problems.append(f"left behind: {left}")


def _check_leases(fig: Figures, stack: Stack, crash: bool) -> None:
    """Every lease entry, expired or not: only a needs_review job's hold (one expected duration) may remain."""
    from worker.settings import get_settings

    settings = get_settings()
    now = time.time()
    leaked = []
    for mode in MODES:
        leases = cast(list[tuple[str, float]], stack.redis.zrange(f"mjq:slots:{mode}", 0, -1, withscores=True))
        for member, score in leases:
            status = stack.ledger.status(member)
            hold = status == "needs_review" and score <= now + settings.expected_duration_s(mode) + 1.0
            if not hold:
                leaked.append(f"slots:{mode} {member} ({status}, lease ends in {score - now:.0f}s)")
    fig.leaked_leases = len(leaked)
    _problem(fig, "slot leases never released", leaked)
    if not crash and fig.seconds >= settings.slot_lease_s:
        fig.problems.append(
            f"the scenario ran {fig.seconds:.0f}s, longer than the slot lease ({settings.slot_lease_s:.0f}s): "
            "a lease never released could have expired and been reclaimed unseen"
        )


def _is_submit(request: str) -> bool:
    """``POST /mj/submit/imagine`` and the other endpoints that create (and charge) a task."""
    return any(p in request for p in ("/submit/imagine", "/submit/blend", "/submit/describe", "/submit/action",
                                      "/insight-face/swap"))


def _suspects(jobs: dict[str, dict[str, Any] | None], ids: list[str]) -> list[dict[str, Any]]:
    """A few fields of the first problem jobs, for the failure message."""
    keys = ("status", "upstream_id", "settled_by", "submit_outcome", "attempts", "continued", "fail_reason")
    out = []
    for job_id in ids[:3]:
        rec = jobs.get(job_id) or {}
        out.append({"job_id": job_id, **{k: rec.get(k) for k in keys if rec.get(k) is not None}})
    return out
