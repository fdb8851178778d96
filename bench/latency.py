"""4. Webhook to continuation latency: from the simulator's final callback to the next chain link starting.

Root jobs with the plan ``U1``: the "next link" is the upscale's task body starting (its ledger record is
created there). The baseline is the same batch with polling only, measured from the upstream finish.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.bounds import Reached, batch_bound_s, mark
from bench.report import Figure
from bench.stack import CAPACITY, Bench, UpstreamRun, enqueue, percentile, prompts, wait_batch

P95_TARGET_MS = 250.0


@dataclass(frozen=True)
class Continuations:
    """Seconds from the parent's upstream finish (and from its final callback) to its child starting."""

    from_finish: list[float]
    from_callback: list[float]
    upstream: UpstreamRun
    reached: Reached


def measure(bench: Bench, roots: int, batch_id: str) -> Continuations:
    from worker.store.runtime import runtime

    ids = enqueue(prompts(roots, batch_id), batch_id, then="U1")
    # polling only, a link waits for its parent's first poll (the expected duration): twice the job time
    reached = wait_batch(batch_id, 2 * roots, batch_bound_s(2 * roots, 2 * bench.job_duration_s, CAPACITY),
                         job_s=bench.job_duration_s)
    upstream = UpstreamRun.read(bench.admin)
    finished = {str(t["id"]): t["finishTime"] / 1000 for t in upstream.tasks if t.get("finishTime")}
    sent = bench.admin.callbacks()
    ledger = runtime().ledger
    from_finish, from_callback = [], []
    for job_id in ids:
        parent = ledger.get_job(job_id) or {}
        children = ledger.children(job_id)
        upstream_id = str(parent.get("upstream_id") or "")
        if parent.get("status") != "succeeded" or not children or upstream_id not in finished:
            continue
        started = min(float(c["created_at"]) for c in children)
        from_finish.append(started - finished[upstream_id])
        if upstream_id in sent:
            from_callback.append(started - sent[upstream_id])
    bench.admin.reset()
    return Continuations(from_finish, from_callback, upstream, reached)


def figures(hooked: Continuations, polled: Continuations | None) -> list[Figure]:
    name = "4 continuation"

    def ms(values: list[float], q: float) -> float:
        return 1000 * percentile(values, q)

    p95 = ms(hooked.from_callback, 95)
    base = polled.from_finish if polled is not None else []
    baseline = "polling only" if polled is not None else ""
    out = mark([
        Figure(name, f"callback → next link starts, p50 ({len(hooked.from_callback)} links)",
               ms(hooked.from_callback, 50), "ms"),
        Figure(name, "callback → next link starts, p95", p95, "ms", target=f"≤ {P95_TARGET_MS:.0f} ms",
               met=p95 <= P95_TARGET_MS),
    ], hooked.reached)
    for q in (50, 95):
        value = ms(hooked.from_finish, q)
        figure = Figure(name, f"upstream finish → next link starts, p{q}", value, "ms", baseline,
                        ms(base, q) if polled is not None else None)
        out += mark([figure], hooked.reached, polled.reached if polled is not None else None)
    return out
