"""1. Upstream utilisation and 2. upstream requests per job, with the two naive baselines.

One batch of prompts goes through mjqueue (webhooks on, slots = the account's capacity); then, on the same
simulator, "fire everything at once" and "one at a time" (``bench.baselines``). Utilisation is achieved
jobs/s divided by C/D, with D the mean run time the simulator measured in that run. Every side runs within a
bound derived from its size (``bench.bounds``); one that hits it gives the figure it reached, marked partial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import baselines
from bench.bounds import Reached, batch_bound_s, mark
from bench.report import Figure
from bench.stack import API_KEY, CAPACITY, Bench, UpstreamRun, enqueue, prompts, running, wait_batch

UTILISATION_TARGET = 0.95
WEBHOOK_REQUESTS_TARGET = 1.1
POLLING_REQUESTS_TARGET = 4.0
SERIAL_JOB_FACTOR = 1.5  # one at a time: a job's run plus the fixed poller's lag, on one slot


@dataclass(frozen=True)
class Side:
    """What the simulator saw of one side, and how far that side got in its bound."""

    run: UpstreamRun
    reached: Reached


def _per_job(run: UpstreamRun) -> float:
    return run.requests / max(1, len(run.succeeded))


def measure_ours(bench: Bench, n: int, batch_id: str, then: str | None = None, jobs: int | None = None) -> Side:
    """Run a batch through mjqueue and read what the simulator saw (then reset the simulator)."""
    total = jobs or n
    enqueue(prompts(n, batch_id), batch_id, then=then)
    reached = wait_batch(batch_id, total, batch_bound_s(total, bench.job_duration_s, CAPACITY),
                         job_s=bench.job_duration_s)
    return Side(UpstreamRun.read(bench.admin), reached)


def measure_baselines(bench: Bench, fire_n: int, serial_n: int) -> tuple[Side, Side]:
    url, tf, d = bench.stack.api_base_url, bench.time_factor, bench.job_duration_s
    bench.admin.reset()
    fired = baselines.fire_everything(url, API_KEY, prompts(fire_n, "fire"), tf,
                                      bound_s=batch_bound_s(fire_n, d, CAPACITY))
    assert fired.reached is not None
    fire = Side(UpstreamRun.read(bench.admin), fired.reached)
    bench.admin.reset()
    one = baselines.one_at_a_time(url, API_KEY, prompts(serial_n, "serial"), tf,
                                  bound_s=batch_bound_s(serial_n, SERIAL_JOB_FACTOR * d, 1))
    assert one.reached is not None
    serial = Side(UpstreamRun.read(bench.admin), one.reached)
    bench.admin.reset()
    return fire, serial


def figures(ours: Side, fire: Side | None, serial: Side | None) -> list[Figure]:
    """``ours``: MJQ_QUEUE_AHEAD=1 (one job waits in the upstream's queue); 1's figures and 2's with webhooks."""
    run = ours.run
    n = len(run.succeeded)
    u = run.utilisation(CAPACITY)
    measure = f"jobs/s ÷ C/D, {n:,} jobs, queue ahead 1"
    compared = [(name, side) for name, side in (("fire everything at once", fire), ("one at a time", serial))
                if side is not None]
    out: list[Figure] = []
    for i, (name, side) in enumerate(compared or [("", None)]):
        base = side.run.utilisation(CAPACITY) if side is not None else None
        figure = Figure("1 utilisation", measure, u, "", name, base)
        if i == 0:  # the target is stated once
            figure.target, figure.met = f"≥ {UTILISATION_TARGET}", u >= UTILISATION_TARGET
        out += mark([figure], ours.reached, side.reached if side is not None else None)
    if fire is not None:
        notes = {"fire_jobs": len(fire.run.succeeded)}
        if serial is not None:
            notes |= {"serial_jobs": len(serial.run.succeeded), "serial_queue_full": serial.run.queue_full}
        out += mark([Figure("1 utilisation", "queue-full answers", run.queue_full, "", "fire everything at once",
                            fire.run.queue_full, ratio=None, target="0", met=run.queue_full == 0, notes=notes)],
                    ours.reached, fire.reached)
    out += requests_figure("upstream requests per succeeded job, webhooks", ours, serial, WEBHOOK_REQUESTS_TARGET)
    return out


def requests_figure(measure: str, ours: Side, serial: Side | None, target: float) -> list[Figure]:
    """2: upstream requests per succeeded job, against the fixed 5-s poller (one at a time)."""
    value = _per_job(ours.run)
    figure = Figure("2 requests/job", measure, value, "", "fixed 5-s poller" if serial is not None else "",
                    _per_job(serial.run) if serial is not None else None, target=f"≤ {target}", met=value <= target)
    return mark([figure], ours.reached, serial.reached if serial else None)


def polling_figure(polled: Side, serial: Side | None) -> list[Figure]:
    return requests_figure("upstream requests per succeeded job, polling only (D = 60 s)", polled, serial,
                           POLLING_REQUESTS_TARGET)


def exact_figure(exact: Side, fire: Side | None) -> list[Figure]:
    """The same batch with MJQ_QUEUE_AHEAD=0: the dead time between a finish and the next start."""
    ue = exact.run.utilisation(CAPACITY)
    gap = exact.run.mean_duration_s * (1 / ue - 1) if ue else float("nan")
    notes = {"gap_s": gap, "real_clock_utilisation": 60 / (60 + gap), "queue_full": exact.run.queue_full}
    figure = Figure("1 utilisation", f"jobs/s ÷ C/D, {len(exact.run.succeeded):,} jobs, queue ahead 0", ue, "",
                    "fire everything at once" if fire is not None else "",
                    fire.run.utilisation(CAPACITY) if fire is not None else None, notes=notes)
    return mark([figure], exact.reached, fire.reached if fire else None)


def run_exact_slots(root: Path, time_factor: float, n: int) -> Side:
    """The same batch with MJQ_QUEUE_AHEAD=0: a job is submitted only into a free slot."""
    with running(root, "exact-slots", time_factor=time_factor, env={"MJQ_QUEUE_AHEAD": "0"}) as bench:
        return measure_ours(bench, n, "exact")
