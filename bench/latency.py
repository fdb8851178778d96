"""4. Webhook to continuation latency: from the simulator's final callback to the next chain link starting.

Root jobs with the plan ``U1``: the "next link" is the upscale's task body starting (its ledger record is
created there). The baseline is the same batch with polling only, measured from the upstream finish.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.report import Figure
from bench.stack import Bench, UpstreamRun, enqueue, percentile, prompts, wait_batch

P95_TARGET_MS = 250.0


@dataclass(frozen=True)
class Continuations:
    """Seconds from the parent's upstream finish (and from its final callback) to its child starting."""

    from_finish: list[float]
    from_callback: list[float]
    upstream: UpstreamRun


def measure(bench: Bench, roots: int, batch_id: str) -> Continuations:
    from worker.store.runtime import runtime

    ids = enqueue(prompts(roots, batch_id), batch_id, then="U1")
    wait_batch(batch_id, 2 * roots, timeout_s=60 + 8 * roots * bench.job_duration_s)
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
    return Continuations(from_finish, from_callback, upstream)


def figures(hooked: Continuations, polled: Continuations) -> list[Figure]:
    name = "4 continuation"

    def ms(values: list[float], q: float) -> float:
        return 1000 * percentile(values, q)

    p95 = ms(hooked.from_callback, 95)
    return [
        Figure(name, f"callback → next link starts, p50 ({len(hooked.from_callback)} links)",
               ms(hooked.from_callback, 50), "ms"),
        Figure(name, "callback → next link starts, p95", p95, "ms", target=f"≤ {P95_TARGET_MS:.0f} ms",
               met=p95 <= P95_TARGET_MS),
        Figure(name, "upstream finish → next link starts, p50", ms(hooked.from_finish, 50), "ms",
               "polling only", ms(polled.from_finish, 50)),
        Figure(name, "upstream finish → next link starts, p95", ms(hooked.from_finish, 95), "ms",
               "polling only", ms(polled.from_finish, 95)),
    ]
