"""6. Follow-up fan-out: imagines each with ``U1-4``; total time against the ideal from C and D.

The ideal is every job back to back on every slot: jobs x D / C, with D the mean run time the simulator
measured in this run (so both sides use the same clock).
"""

from __future__ import annotations

from bench.bounds import batch_bound_s, mark
from bench.report import Figure
from bench.stack import CAPACITY, Bench, UpstreamRun, enqueue, prompts, wait_batch


def measure(bench: Bench, roots: int) -> list[Figure]:
    jobs = 5 * roots
    enqueue(prompts(roots, "fanout"), "fanout", then="U1-4")
    reached = wait_batch("fanout", jobs, batch_bound_s(jobs, bench.job_duration_s, CAPACITY),
                         job_s=bench.job_duration_s)
    run = UpstreamRun.read(bench.admin)
    bench.admin.reset()
    done = len(run.succeeded)
    ideal = done * run.mean_duration_s / CAPACITY
    return mark([
        Figure("6 fan-out", f"{roots} imagines x U1-4: {done:,} jobs, total time", run.makespan_s, "s",
               "ideal jobs x D / C", ideal, ratio=ideal / run.makespan_s, target="ratio = ideal / ours",
               notes={"jobs": done, "expected_jobs": jobs, "queue_full": run.queue_full}),
    ], reached)
