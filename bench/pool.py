"""8. The upstream pool: utilisation over three accounts and failover when one runs out of credit.

Three simulated accounts, each its own ``python -m simulator`` process, run 3 / 2 / 1 fast jobs at once (plus
their own queue of 10). Utilisation: one batch through mjqueue's pool (slots 3/2/1, queue ahead 1) — achieved
jobs/s over the summed C/D (each D measured on its own simulator in that run); the baseline of the same run is
round-robin over the three without slot accounting (every prompt fired at its upstream in turn, refused ones
fired again, as ``bench.baselines`` does for one account). Failover: further batches; in each, once every job of
it is recorded and a third has been accepted (mid-batch, as in a night), the 2-slot account runs out of credit;
the time from its out-of-credit answer to the refused job being accepted elsewhere is taken per outage, and the
figure is the worst (target: at most one job duration). Round-robin has no failover: its jobs for that account
fail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import baselines
from bench.bounds import Reached, batch_bound_s, mark
from bench.report import Figure
from bench.stack import API_KEY, QUEUE, Bench, UpstreamRun, enqueue, prompts, running, wait_batch
from simulator.process import SimulatorProcess

CAPACITIES = {"acct-a": 3, "acct-b": 2, "acct-c": 1}
FAILING = "acct-b"
UTILISATION_TARGET = 0.97
OUTAGES = 3  # failover is timed in this many outages, each in its own batch: the figure is the worst


@dataclass(frozen=True)
class PoolRun:
    runs: dict[str, UpstreamRun]
    reached: Reached

    def utilisation(self) -> float:
        """Jobs/s over the pool's summed C/D; NaN when nothing succeeded."""
        done = [t for run in self.runs.values() for t in run.succeeded]
        if not done:
            return math.nan
        span = (max(t["finishTime"] for t in done) - min(t["submitTime"] for t in done)) / 1000
        ideal = sum(CAPACITIES[name] / run.mean_duration_s for name, run in self.runs.items() if run.succeeded)
        return len(done) / span / ideal if span and ideal else math.nan

    @property
    def queue_full(self) -> int:
        return sum(run.queue_full for run in self.runs.values())


@contextmanager
def pool_stack(work: Path, time_factor: float) -> Iterator[tuple[Bench, dict[str, SimulatorProcess]]]:
    """Three simulator processes and a stack whose pool file points at them."""
    work.mkdir(parents=True, exist_ok=True)
    sims = {name: SimulatorProcess(name, work, api_key=API_KEY, slots=cap, time_factor=time_factor,
                                   args=["--queue-size", str(QUEUE)])
            for name, cap in CAPACITIES.items()}
    try:
        for sim in sims.values():
            sim.start()
        tables = "\n".join(
            f'[[upstream]]\nname = "{name}"\nbase_url = "{sims[name].url}"\napi_key_env = "MJQ_BENCH_POOL_KEY"\n'
            f'modes = ["fast"]\nslots = {{ fast = {cap} }}\nqueue_ahead = 1\n'
            for name, cap in CAPACITIES.items()
        )
        pool_file = work / "upstreams.toml"
        pool_file.write_text(tables, encoding="utf-8")
        env = {"MJQ_UPSTREAMS_FILE": str(pool_file), "MJQ_BENCH_POOL_KEY": API_KEY, "MJQ_QUEUE_AHEAD": "1"}
        with running(work, "stack", time_factor=time_factor, env=env) as bench:
            yield bench, sims
    finally:
        for sim in sims.values():
            sim.stop()


def _reset(sims: dict[str, SimulatorProcess]) -> None:
    for sim in sims.values():
        sim.admin.reset()


def measure_pool(bench: Bench, sims: dict[str, SimulatorProcess], n: int) -> PoolRun:
    ids = enqueue(prompts(n, "pool"), "pool")
    reached = wait_batch("pool", len(ids), batch_bound_s(n, bench.job_duration_s, sum(CAPACITIES.values())),
                         job_s=bench.job_duration_s)
    run = PoolRun({name: UpstreamRun.read(sim.admin) for name, sim in sims.items()}, reached)
    _reset(sims)
    return run


def measure_round_robin(bench: Bench, sims: dict[str, SimulatorProcess], n: int) -> PoolRun:
    """The baseline: prompt i goes to upstream i mod 3, fired at once, with no slot accounting."""
    names = list(sims)
    shares = {name: [p for i, p in enumerate(prompts(n, "rr")) if names[i % len(names)] == name] for name in names}
    bound = batch_bound_s(n, bench.job_duration_s, sum(CAPACITIES.values()))

    def fire(name: str) -> baselines.NaiveRun:
        return baselines.fire_everything(sims[name].url, API_KEY, shares[name], bench.time_factor, threads=8,
                                         bound_s=bound)

    with ThreadPoolExecutor(len(names)) as pool:
        naive = list(pool.map(fire, names))
    done = sum(r.succeeded for r in naive)
    partial = any(r.reached is not None and r.reached.partial for r in naive)
    reached = Reached(done, n, round(max(r.seconds for r in naive), 1), bound, not partial)
    run = PoolRun({name: UpstreamRun.read(sim.admin) for name, sim in sims.items()}, reached)
    _reset(sims)
    return run


@dataclass(frozen=True)
class Failover:
    """The outages of one run: per outage, the slowest refused job's move (NaN: one was not seen moving)."""

    moves: list[float]
    refused: int
    reached: Reached

    @property
    def worst(self) -> float:
        """NaN when any outage's refused jobs were not all seen moving."""
        return math.nan if not self.moves or any(math.isnan(m) for m in self.moves) else max(self.moves)


def measure_outage(bench: Bench, sims: dict[str, SimulatorProcess], n: int, tag: str) -> tuple[float, int, Reached]:
    """One outage mid-batch (``_mid_batch``): seconds from the failing account's out-of-credit answer to that
    job's acceptance elsewhere (the slowest such job), and how many jobs it refused; the batch must end with
    every job succeeded once. The upstream is resumed afterwards."""
    from worker import control
    from worker.store.runtime import runtime

    ids = enqueue(prompts(n, tag), tag)
    d = bench.job_duration_s
    ledger = runtime().ledger
    deadline = time.monotonic() + 30 * d + 30
    while time.monotonic() < deadline and not _mid_batch(ledger.batch(tag), n):
        time.sleep(0.05)
    cut = time.time()
    sims[FAILING].admin.faults(balance=0)
    reached = wait_batch(tag, len(ids), batch_bound_s(n, d, sum(CAPACITIES.values())), job_s=d)
    logs = {name: sim.admin.submits() for name, sim in sims.items()}
    accepted = {name: sim.admin.stats()["accepted_by_state"] for name, sim in sims.items()}
    refused = {state: at for at, state, _ in logs[FAILING]
               if at >= cut and state in ids and not accepted[FAILING].get(state)}
    moved: list[float] = []
    for state, at in refused.items():
        later = [t for name, log in logs.items() if name != FAILING for t, s, _ in log if s == state and t >= at]
        if later:
            moved.append(min(later) - at)
    _reset(sims)
    sims[FAILING].admin.faults(balance=None)
    control.resume_submitting(runtime(), FAILING)
    worst = max(moved) if moved and len(moved) == len(refused) else math.nan
    return worst, len(refused), reached


def _mid_batch(batch: dict[str, Any], n: int) -> bool:
    """As in the middle of a night: every job of the batch recorded (none still arriving) and a third of them
    accepted upstream (the work spread over the pool, the jobs out of step). Read from the ledger: asking the
    simulators for their task lists 50 times a second loaded them during the measurement."""
    counts = batch.get("counts", {})
    accepted = sum(v for state, v in counts.items() if state not in ("queued", "submitting"))
    return int(batch.get("total", 0)) >= n and accepted >= n / 3


def measure_failover(bench: Bench, sims: dict[str, SimulatorProcess], n: int, outages: int) -> Failover:
    """``outages`` outages, each in its own batch of ``n``: the figure is the worst of them."""
    runs = [measure_outage(bench, sims, n, f"failover{k}") for k in range(outages)]
    worst_reached = min((r for _, _, r in runs), key=lambda r: (not r.partial, r.done))
    return Failover([w for w, _, _ in runs], sum(c for _, c, _ in runs), worst_reached)


def figures(ours: PoolRun, baseline: PoolRun, failover: Failover, job_s: float) -> list[Figure]:
    u, b = ours.utilisation(), baseline.utilisation()
    n = sum(len(r.succeeded) for r in ours.runs.values())
    m = sum(len(r.succeeded) for r in baseline.runs.values())
    notes = {"queue_full": ours.queue_full, "baseline_queue_full": baseline.queue_full, "baseline_jobs": m,
             "per_upstream": {name: len(r.succeeded) for name, r in ours.runs.items()}}
    out = mark([Figure("8 pool", f"jobs/s ÷ ΣC/D, {n:,} jobs over 3 upstreams (3/2/1), queue ahead 1", u, "",
                       f"round-robin, no slot accounting ({m:,} jobs)", b, target=f"≥ {UTILISATION_TARGET}",
                       met=u >= UTILISATION_TARGET, notes=notes)], ours.reached, baseline.reached)
    seconds = failover.worst
    # no baseline figure: round-robin never moves the refused jobs (they fail on the account out of credit)
    out += mark([Figure("8 pool", "failover: out of credit -> its work running elsewhere", seconds, "s",
                        target=f"≤ {job_s:.2g} s (one job)",
                        met=seconds <= job_s if not math.isnan(seconds) else False,
                        partial=math.isnan(seconds),  # not every refused job was seen running elsewhere in time
                        notes={"refused_jobs": failover.refused, "job_s": job_s,
                               "outages_s": [round(m, 3) for m in failover.moves],
                               "baseline": "round-robin never moves them: they fail"})], failover.reached)
    return out


def run(work: Path, time_factor: float, n: int, failover_n: int, baseline_n: int | None = None,
        outages: int = OUTAGES) -> list[Figure]:
    """``baseline_n`` prompts for round-robin (default ``n``): a rate, so a smaller batch compares."""
    with pool_stack(work / "pool", time_factor) as (bench, sims):
        ours = measure_pool(bench, sims, n)
        failover = measure_failover(bench, sims, failover_n, outages)
        baseline = measure_round_robin(bench, sims, baseline_n or n)
        return figures(ours, baseline, failover, bench.job_duration_s)

