"""The one audit every reliability scenario ends with: ledger against simulator, nothing lost, nothing twice.

Checks, per scenario:
- every enqueued job is in the ledger and terminal, every follow-up of the batch too (``lost``);
- each job's task has a stored outcome (no PENDING forever) that matches the job (succeeded -> SUCCESS);
- at most ONE accepted submit per job (``state`` = our job id) — retries after queue full / 429 / 5xx POST
  again legitimately, they are counted as ``resubmits``, but two *accepted* ones are ``duplicate_submits``;
- ledger and simulator agree: every recorded upstream id is a simulator task carrying the job's ``state``,
  every accepted task is recorded — or its job is ``needs_review`` (an ambiguous submit, flagged not guessed);
- a succeeded job's upstream task is SUCCESS, a failed one FAILURE;
- every root job with a follow-up plan has exactly its planned children when it succeeded and none otherwise
  (a continuation fired twice would pay twice under another ``state``), and no planned follow-up is missing;
- batch counters equal a recount of the jobs; no slot lease, in-flight, waiting or finishing entry is left.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.stack import Stack

TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "needs_review", "skipped"})
RESULTS: list[Figures] = []


def results_path() -> Path:
    """Where each scenario's figures are appended as one JSON line (env ``RELIABILITY_RESULTS`` overrides).

    Not an ``MJQ_`` variable: the stack fixtures replace those when they switch configurations.
    """
    env = os.environ.get("RELIABILITY_RESULTS")
    return Path(env) if env else Path(tempfile.gettempdir()) / "mjq-reliability" / "results.jsonl"


@dataclass
class Figures:
    scenario: str
    size: str = "reduced"
    jobs: int = 0
    roots: int = 0
    follow_ups: int = 0
    lost: int = 0
    missing: int = 0
    open_jobs: int = 0
    duplicate_submits: int = 0
    resubmits: int = 0
    accepted: int = 0
    recorded_upstream: int = 0
    needs_review: int = 0
    needs_review_paid: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def outcome(self) -> str:
        if self.ok:
            done = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
            return f"ok ({done})"
        return "FAIL: " + "; ".join(self.problems[:3])

    def line(self) -> str:
        return (
            f"[{self.scenario}] jobs={self.jobs} (roots {self.roots}, follow-ups {self.follow_ups}) "
            f"lost={self.lost} duplicate_submits={self.duplicate_submits} resubmits={self.resubmits} "
            f"accepted={self.accepted} recorded={self.recorded_upstream} needs_review={self.needs_review} "
            f"(paid {self.needs_review_paid}) {self.seconds:.1f}s -> {self.outcome} {self.extra or ''}"
        )


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


def _quiet(stack: Stack, ids: list[str], timeout: float) -> None:
    """Wait until finishing steps ran, leases ended and task outcomes are stored (bounded)."""
    from celery.result import AsyncResult

    from worker.app import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.time()
        busy = stack.redis.zcard("mjq:finishing") + stack.redis.zcard("mjq:inflight")
        busy += sum(int(stack.redis.zcount(f"mjq:slots:{m}", now, "+inf")) for m in ("fast", "relax", "turbo"))
        if not busy and all(AsyncResult(i, app=app).state != "PENDING" for i in ids):
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
    extra: dict[str, Any] | None = None,
    quiet_s: float = 15.0,
    keep: bool = True,
) -> Figures:
    """Compare ledger, broker results and simulator after a scenario; print and record the figures
    (``keep=False``: return them only, for the audit's own test)."""
    from celery.result import AsyncResult

    from worker.app import app

    fig = Figures(scenario, "full" if full else "reduced", extra=dict(extra or {}))
    fig.seconds = time.monotonic() - started
    ledger = stack.ledger
    job_ids: list[str] = list(dict.fromkeys(enqueued))
    for batch_id in batch_ids:
        job_ids += [j for j in _retrying(ledger.batch_job_ids, batch_id) if j not in job_ids]
    task_ids = [str(j) for j in enqueued]
    _quiet(stack, task_ids, quiet_s)

    jobs = {j: _retrying(ledger.get_job, j) for j in job_ids}
    fig.jobs = len(jobs)
    fig.roots = sum(1 for j in jobs.values() if j and not j.get("parent_job"))
    fig.follow_ups = fig.jobs - fig.roots
    missing = [j for j, rec in jobs.items() if rec is None]
    open_jobs = [j for j, rec in jobs.items() if rec is not None and rec.get("status") not in TERMINAL]
    fig.missing, fig.open_jobs = len(missing), len(open_jobs)
    fig.lost = fig.missing + fig.open_jobs
    if missing:
        fig.problems.append(f"{len(missing)} enqueued jobs missing from the ledger: {missing[:3]}")
    if open_jobs:
        states = Counter(str((jobs[j] or {}).get("status")) for j in open_jobs)
        fig.problems.append(f"{len(open_jobs)} jobs not terminal: {dict(states)} e.g. {open_jobs[:3]}")
    fig.by_status = dict(Counter(str(rec.get("status")) for rec in jobs.values() if rec))

    # Celery outcomes: the producer's .get() must return for every enqueued job
    pending, wrong = [], []
    for job_id in task_ids:
        rec = jobs.get(job_id)
        state = AsyncResult(job_id, app=app).state
        if state == "PENDING":
            pending.append(job_id)
        elif rec and rec.get("status") == "succeeded" and state != "SUCCESS":
            wrong.append(f"{job_id}: job succeeded, task {state}")
        elif rec and rec.get("status") in TERMINAL - {"succeeded"} and state == "SUCCESS":
            wrong.append(f"{job_id}: job {rec.get('status')}, task SUCCESS")
    if pending:
        fig.problems.append(f"{len(pending)} task outcomes never stored (PENDING): {pending[:3]}")
    fig.problems += wrong[:5]

    # Simulator against ledger
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
    if fig.duplicate_submits:
        twice = [s for s, n in stats["accepted_by_state"].items() if n > 1]
        fig.problems.append(f"{fig.duplicate_submits} duplicate accepted submits (paid twice): {twice[:3]}")
    foreign = [s for s in by_state if s and s not in jobs]
    if foreign:
        fig.problems.append(f"{len(foreign)} upstream tasks carry a state that is no job of ours: {foreign[:3]}")
    unrecorded, mismatched, disagree = [], [], []
    for job_id, rec in jobs.items():
        if rec is None:
            continue
        status = rec.get("status")
        if status == "needs_review":
            fig.needs_review += 1
        upstream = rec.get("upstream_id")
        own = by_state.get(job_id, [])
        if upstream:
            fig.recorded_upstream += 1
            task = by_id.get(str(upstream))
            if task is None:
                mismatched.append(f"{job_id}: upstream {upstream} unknown to the simulator")
                continue
            if task.get("state") != job_id and rec.get("submit_outcome") != "exists":
                mismatched.append(f"{job_id}: upstream {upstream} belongs to {task.get('state')}")
            sim_status = task.get("status")
            if status == "succeeded" and sim_status != "SUCCESS" and rec.get("submit_outcome") != "modal":
                disagree.append(f"{job_id}: succeeded, upstream {sim_status}")
            if status == "failed" and sim_status != "FAILURE":
                disagree.append(f"{job_id}: failed, upstream {sim_status}")
        elif own:
            if status == "needs_review":
                fig.needs_review_paid += 1
            else:
                unrecorded.append(f"{job_id} ({status}): accepted upstream as {own[0]['id']}, not recorded")
    for label, items in (("unrecorded", unrecorded), ("mismatched", mismatched), ("disagree", disagree)):
        if items:
            fig.problems.append(f"{len(items)} {label}: {items[:3]}")
    if fig.recorded_upstream + fig.needs_review_paid != fig.accepted:
        fig.problems.append(
            f"ledger has {fig.recorded_upstream} upstream ids (+{fig.needs_review_paid} in review) but the "
            f"simulator accepted {fig.accepted} tasks for these jobs"
        )

    # Follow-ups: exactly the planned children of each succeeded root, none of the others
    from tasks.pipelines import count_jobs

    wrong_children = []
    for job_id, rec in jobs.items():
        if rec is None or not rec.get("then"):
            continue
        want = count_jobs(str(rec["then"])) if rec.get("status") == "succeeded" else 0
        have = int(_retrying(stack.redis.zcard, f"mjq:children:{job_id}"))
        if have != want:
            wrong_children.append(f"{job_id} ({rec.get('status')}): {have} follow-ups, planned {want}")
    if wrong_children:
        fig.problems.append(f"{len(wrong_children)} roots with wrong follow-ups: {wrong_children[:3]}")

    # Batch counters against a recount
    for batch_id in batch_ids:
        batch = _retrying(ledger.batch, batch_id)
        if batch.get("planned", 0) > 0:
            fig.lost += int(batch["planned"])
            fig.problems.append(f"batch {batch_id}: {batch['planned']} planned follow-ups never created")
        recount = Counter(str(rec.get("status")) for rec in jobs.values() if rec and rec.get("batch_id") == batch_id)
        counted = {k: v for k, v in batch["counts"].items() if v and k != "skipped"}
        if counted != dict(recount):
            fig.problems.append(f"batch {batch_id} counters {counted} != recount {dict(recount)}")
        if batch.get("counts", {}).get("skipped"):
            fig.extra["skipped_follow_ups"] = batch["counts"]["skipped"]

    # Nothing left behind
    now = time.time()
    leftovers = {
        f"slots:{m}": int(stack.redis.zcount(f"mjq:slots:{m}", now, "+inf")) for m in ("fast", "relax", "turbo")
    }
    leftovers.update({k: int(stack.redis.zcard(f"mjq:{k}")) for k in ("inflight", "finishing")})
    # a task expected to start and never started (plan/<job> watches end lazily: their follow-ups are checked above)
    leftovers["expected"] = sum(1 for m in stack.redis.zrange("mjq:expected", 0, -1) if "/" not in m)
    leftovers.update({f"waiting:{m}": int(stack.redis.zcard(f"mjq:waiting:{m}")) for m in ("fast", "relax", "turbo")})
    left = {k: v for k, v in leftovers.items() if v}
    if left:
        fig.problems.append(f"left behind: {left}")
    if fig.problems:
        fig.extra["suspects"] = _suspects(jobs, open_jobs + pending + missing)
    if keep:
        record(fig)
    return fig


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


def write_table() -> Path:
    """This session's figures as a Markdown table (the README's results table), next to the JSON lines."""
    size = "full" if any(f.size == "full" for f in RESULTS) else "reduced"
    path = results_path().with_name(f"results-{size}.md")
    lines = [
        "| scenario | jobs | lost | duplicate submits | resubmits | needs review | seconds | outcome |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {f.scenario} | {f.jobs} | {f.lost} | {f.duplicate_submits} | {f.resubmits} | {f.needs_review} "
        f"| {f.seconds:.1f} | {f.outcome} |"
        for f in RESULTS
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def record(fig: Figures) -> None:
    """Print the figures and append them to the results file."""
    RESULTS.append(fig)
    print("\n" + fig.line())
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(fig)
    data["outcome"] = fig.outcome
    data["at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
