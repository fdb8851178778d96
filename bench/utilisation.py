"""1. Upstream utilisation and 2. upstream requests per job, with the two naive baselines.

One batch of prompts goes through mjqueue (webhooks on, slots = the account's capacity); then, on the same
simulator, "fire everything at once" and "one at a time" (``bench.baselines``). Utilisation is achieved
jobs/s divided by C/D, with D the mean run time the simulator measured in that run.
"""

from __future__ import annotations

from pathlib import Path

from bench import baselines
from bench.report import Figure
from bench.stack import API_KEY, CAPACITY, Bench, UpstreamRun, enqueue, prompts, running, wait_batch

UTILISATION_TARGET = 0.95
WEBHOOK_REQUESTS_TARGET = 1.1
POLLING_REQUESTS_TARGET = 4.0


def _per_job(run: UpstreamRun) -> float:
    return run.requests / max(1, len(run.succeeded))


def measure_ours(bench: Bench, n: int, batch_id: str, then: str | None = None, jobs: int | None = None) -> UpstreamRun:
    """Run a batch through mjqueue and read what the simulator saw (then reset the simulator)."""
    enqueue(prompts(n, batch_id), batch_id, then=then)
    wait_batch(batch_id, jobs or n, timeout_s=60 + 4 * (jobs or n) * bench.job_duration_s / CAPACITY)
    return UpstreamRun.read(bench.admin)


def measure_baselines(bench: Bench, fire_n: int, serial_n: int) -> tuple[UpstreamRun, UpstreamRun]:
    url, tf = bench.stack.api_base_url, bench.time_factor
    bench.admin.reset()
    baselines.fire_everything(url, API_KEY, prompts(fire_n, "fire"), tf)
    fire = UpstreamRun.read(bench.admin)
    bench.admin.reset()
    baselines.one_at_a_time(url, API_KEY, prompts(serial_n, "serial"), tf)
    serial = UpstreamRun.read(bench.admin)
    bench.admin.reset()
    return fire, serial


def figures(ours: UpstreamRun, fire: UpstreamRun, serial: UpstreamRun) -> list[Figure]:
    """``ours``: MJQ_QUEUE_AHEAD=1 (one job waits in the upstream's queue), against both baselines."""
    n = len(ours.succeeded)
    u = ours.utilisation(CAPACITY)
    measure = f"jobs/s ÷ C/D, {n:,} jobs, queue ahead 1"
    return [
        Figure("1 utilisation", measure, u, "", "fire everything at once", fire.utilisation(CAPACITY),
               target=f"≥ {UTILISATION_TARGET}", met=u >= UTILISATION_TARGET),
        Figure("1 utilisation", measure, u, "", "one at a time", serial.utilisation(CAPACITY)),
        Figure("1 utilisation", "queue-full answers", ours.queue_full, "", "fire everything at once",
               fire.queue_full, ratio=None, target="0", met=ours.queue_full == 0,
               notes={"fire_jobs": len(fire.succeeded), "serial_jobs": len(serial.succeeded),
                      "serial_queue_full": serial.queue_full}),
        Figure("2 requests/job", "upstream requests per succeeded job, webhooks", _per_job(ours), "",
               "fixed 5-s poller", _per_job(serial), target=f"≤ {WEBHOOK_REQUESTS_TARGET}",
               met=_per_job(ours) <= WEBHOOK_REQUESTS_TARGET),
    ]


def exact_figure(exact: UpstreamRun, fire: UpstreamRun) -> Figure:
    """``exact``: MJQ_QUEUE_AHEAD=0, a job is submitted only into a free slot."""
    ue = exact.utilisation(CAPACITY)
    gap = exact.mean_duration_s * (1 / ue - 1)  # dead time per job between a finish and the next start
    return Figure("1 utilisation", f"jobs/s ÷ C/D, {len(exact.succeeded):,} jobs, queue ahead 0", ue, "",
                  "fire everything at once", fire.utilisation(CAPACITY),
                  notes={"gap_s": gap, "real_clock_utilisation": 60 / (60 + gap), "queue_full": exact.queue_full})


def polled_figure(polled: UpstreamRun, serial: UpstreamRun) -> Figure:
    return Figure("2 requests/job", "upstream requests per succeeded job, polling only (D = 60 s)",
                  _per_job(polled), "", "fixed 5-s poller", _per_job(serial),
                  target=f"≤ {POLLING_REQUESTS_TARGET}", met=_per_job(polled) <= POLLING_REQUESTS_TARGET)


def run_exact_slots(root: Path, time_factor: float, n: int) -> UpstreamRun:
    """The same batch with MJQ_QUEUE_AHEAD=0: a job is submitted only into a free slot."""
    with running(root, "exact-slots", time_factor=time_factor, env={"MJQ_QUEUE_AHEAD": "0"}) as bench:
        return measure_ours(bench, n, "exact")
