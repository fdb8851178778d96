"""``python -m bench`` (``make bench``): every benchmark on its own stack, a table, ``bench/results.json``.

Sizes: ``full`` (the published figures: 1,000-prompt utilisation batch, 10,000 enqueued, 4,000 waiting,
200 fan-outs, a 1,000 / 10,000 / 100,000 scale series, the pool's 2,000 prompts over 3 upstreams, a
10,000-row ``POST /v1/batches``, a 10,000-job dashboard; the README estimates its duration per phase),
``quick`` (a few minutes, for a look) and ``smoke`` (what CI runs to prove it still works). ``--only`` picks
benchmarks by number or name; ``--readme`` writes the table into README.md; ``--park-all`` lets the series'
100,000 point park every job (about 15 min more) instead of reading it 30 s after its enqueue.

Each phase's figures are printed and written to the results file as soon as it ends; every phase has a time
bound derived from its size, and a side that hits it gives the figure it reached, marked partial. Ctrl-C,
SIGTERM or ``--time-limit`` stop the run keeping every figure measured; the file says what did not run, and
how loaded the machine was (load averages, CPU time other processes took).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from bench import api, dashboard, enqueue, fanout, latency, pool, scale, series, utilisation
from bench.report import print_table, update_readme
from bench.runner import Phase, Recorder, Stopped, default_signals, stop_on_signals
from bench.stack import CAPACITY, QUEUE, hermetic_environment, running

ROOT = Path(__file__).resolve().parent.parent
TIME_FACTOR = 0.005  # a simulated 60 s fast job takes 0.3 s


@dataclass(frozen=True)
class Sizes:
    utilisation: int
    fire: int
    serial: int
    latency_roots: int
    enqueue: int
    waiting: int
    window_s: float
    fanout_roots: int
    series: tuple[int, ...]
    api: int  # rows of the one POST /v1/batches (and of the `mjq batch` file it is compared with)
    dashboard: int  # jobs of the batch whose dashboard pages are timed
    pool: int = 2000  # the pool batch over 3 upstreams (2,000 jobs: long enough that ramp-up does not count)
    pool_failover: int = 240  # an outage's batch: a third is still to be accepted once all of it is recorded
    pool_baseline: int = 500  # round-robin's batch: a rate, so a quarter of the pool's compares (saves ~80 s)
    series_finish: int = 1_000  # series batches up to this size are also run to the end (10,000: ~5 min more)
    park_all: bool = False  # --park-all: the series' largest point waits until all its jobs are parked


# full: the README's estimate per phase on an idle 2-core machine; quick: a few minutes; smoke: `make test`'s
SIZES = {
    "full": Sizes(1000, 200, 30, 150, 10_000, 4_000, 30.0, 200, (1_000, 10_000, 100_000), 10_000, 10_000, 2000, 240,
                  500, 1_000),
    "quick": Sizes(150, 40, 6, 20, 2_000, 600, 15.0, 15, (1_000, 10_000), 2_000, 2_000, 300, 120, 150, 1_000),
    "smoke": Sizes(24, 30, 2, 6, 300, 150, 5.0, 3, (100, 300), 300, 300, 18, 12, 18, 300),
}
BENCHMARKS = ("utilisation", "requests", "enqueue", "latency", "scale", "fanout", "series", "pool", "api", "dashboard")
WEBHOOK_PHASES = ("utilisation", "continuation", "fanout")


def phases(sizes: Sizes, chosen: set[str]) -> list[Phase]:
    """The phases the chosen benchmarks need, in the order they run (one webhook stack serves the first three)."""
    every = [
        Phase("utilisation", f"1 utilisation: {sizes.utilisation:,} prompts, then both baselines",
              ("utilisation", "requests")),
        Phase("continuation", f"4 continuation, webhooks: {sizes.latency_roots} imagines > U1", ("latency",)),
        Phase("fanout", f"6 fan-out: {sizes.fanout_roots} imagines x U1-4", ("fanout",)),
        Phase("queue-ahead-0", f"1 utilisation, queue ahead 0: {sizes.utilisation // 4:,} prompts",
              ("utilisation",)),
        Phase("polling", f"2/4 polling only: {sizes.latency_roots} imagines > U1", ("requests", "latency")),
        Phase("enqueue", f"3 enqueue: {sizes.enqueue:,} prompts through 3 producers", ("enqueue",)),
        Phase("scale", f"5 scale: {sizes.waiting:,} waiting jobs, {sizes.window_s:g} s windows, ours and naive",
              ("scale",)),
        Phase("series", "7 scale series: " + ", ".join(f"{n:,}" for n in sizes.series) + " prompts", ("series",)),
        Phase("pool", f"8 pool: {sizes.pool:,} prompts over 3 upstreams (3/2/1), failover in {pool.OUTAGES} batches "
              f"of {sizes.pool_failover}, round-robin baseline of {sizes.pool_baseline:,}", ("pool",)),
        Phase("api", f"9 http api: POST /v1/batches of {sizes.api:,} rows, then `mjq batch` of the same file",
              ("api",)),
        Phase("dashboard", f"10 dashboard: a {sizes.dashboard:,}-job batch's pages, and its static gallery",
              ("dashboard",)),
    ]
    return [p for p in every if set(p.benchmarks) & chosen]


def run(sizes: Sizes, work: Path, rec: Recorder) -> None:
    """Run the planned phases; every phase's figures are recorded (and written) as soon as it ends."""
    tf = TIME_FACTOR
    todo = set(rec.phases)
    ours: utilisation.Side | None = None
    fire: utilisation.Side | None = None
    serial: utilisation.Side | None = None
    hooked: latency.Continuations | None = None
    if todo & set(WEBHOOK_PHASES):
        with rec.stack("webhook stack (queue ahead 1)", WEBHOOK_PHASES), running(
            work, "webhooks", time_factor=tf, env={"MJQ_QUEUE_AHEAD": "1"}
        ) as bench:
            if "utilisation" in todo:
                with rec.phase("utilisation"):
                    ours = utilisation.measure_ours(bench, sizes.utilisation, "util")
                    fire, serial = utilisation.measure_baselines(bench, sizes.fire, sizes.serial)
                    rec.add(utilisation.figures(ours, fire, serial))
            if "continuation" in todo:
                with rec.phase("continuation"):
                    hooked = latency.measure(bench, sizes.latency_roots, "hooked")
                    rec.add(latency.figures(hooked, None))  # kept if the run stops before its baseline
            if "fanout" in todo:
                with rec.phase("fanout"):
                    rec.add(fanout.measure(bench, sizes.fanout_roots))
    if "queue-ahead-0" in todo:
        with rec.phase("queue-ahead-0"):
            rec.add(utilisation.exact_figure(utilisation.run_exact_slots(work, tf, sizes.utilisation // 4), fire))
    if "polling" in todo:
        with rec.phase("polling"), running(work, "polling", time_factor=tf, webhooks=False) as bench:
            polled = latency.measure(bench, sizes.latency_roots, "polled")
            polled_side = utilisation.Side(polled.upstream, polled.reached)
            rec.add(utilisation.polling_figure(polled_side, serial))
            if hooked is not None:  # now against its baseline
                rec.add(latency.figures(hooked, polled), replacing="latency")
    if "enqueue" in todo:
        with rec.phase("enqueue"):
            rec.add(enqueue.run(work / "enqueue", sizes.enqueue))
    if "scale" in todo:
        with rec.phase("scale"):
            ours_load = scale.measure_ours(work, tf, sizes.waiting, sizes.window_s)
            rec.add(scale.figures(ours_load, scale.measure_naive(work / "naive", sizes.waiting, sizes.window_s)))
    if "series" in todo:
        with rec.phase("series"):
            first: series.Point | None = None
            for n in sizes.series:
                point = series.measure(work, tf, n, sizes.series_finish, park_all=sizes.park_all)
                first = first or point
                rec.add(series.figures(point, first, largest=n == sizes.series[-1]))
    if "pool" in todo:
        with rec.phase("pool"):
            rec.add(pool.run(work, tf, sizes.pool, sizes.pool_failover, sizes.pool_baseline))
    if "api" in todo:
        with rec.phase("api"):
            rec.add(api.run(work / "api", sizes.api))
    if "dashboard" in todo:
        with rec.phase("dashboard"):
            rec.add(dashboard.measure(work, sizes.dashboard))


def _chosen(only: list[str] | None) -> set[str]:
    if not only:
        return set(BENCHMARKS)
    picked = set()
    for item in (part.strip() for entry in only for part in entry.split(",")):
        name = BENCHMARKS[int(item) - 1] if item.isdigit() and 1 <= int(item) <= len(BENCHMARKS) else item
        name = ALIASES.get(name, name)
        if name not in BENCHMARKS:
            raise SystemExit(f"--only: unknown benchmark {item!r} (choose from {_listing()})")
        picked.add(name)
    return picked


ALIASES = {"continuation": "latency", "fan-out": "fanout", "memory": "scale", "requests/job": "requests",
           "http": "api"}


def _listing() -> str:
    return ", ".join(f"{i} {name}" for i, name in enumerate(BENCHMARKS, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--quick", action="store_const", const="quick", dest="size", help="same as --size quick")
    parser.add_argument("--only", action="append", metavar="BENCHMARK",
                        help=f"a benchmark by number or name (repeat, or comma-separate): {_listing()}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--park-all", action="store_true",
                        help="the scale series' largest point waits until every job is parked (at full size about "
                             "15 min more: over the full run's 20 min) instead of being read 30 s after its enqueue")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="stop after this long, keeping every figure measured (as SIGTERM or Ctrl-C do)")
    args = parser.parse_args(argv)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    out, chosen, sizes = args.out.resolve(), _chosen(args.only), SIZES[args.size]
    if args.park_all:
        sizes = replace(sizes, park_all=True)
    work = Path(tempfile.mkdtemp(prefix="mjq-bench-"))
    config = {"size": args.size, "time_factor": TIME_FACTOR, "capacity": CAPACITY, "queue": QUEUE,
              "sizes": asdict(sizes), "benchmarks": sorted(chosen)}
    rec = Recorder(out, config, BENCHMARKS, sorted(chosen), phases(sizes, chosen), console)
    hermetic_environment(work)
    stopped = False
    try:
        stop_on_signals(args.time_limit)
        rec.write()
        run(sizes, work, rec)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, --time-limit: keep what was measured
        stopped = True
        if rec.interrupted is None:  # stopped between two phases
            by = exc.by if isinstance(exc, Stopped) else "SIGINT (Ctrl-C)"
            rec.interrupted = {"by": by, "phase": rec.current or "between phases"}
    finally:
        default_signals()
        os.chdir(ROOT)
    rec.figures.sort(key=lambda f: int(f.benchmark.split()[0]))
    console.print()
    print_table(rec.figures, console)
    document = rec.finish()
    console.print(f"results: {out}")
    for f in rec.figures:
        if f.met is False:
            console.print(f"[yellow]target missed:[/] {f.benchmark} {f.measure}: {f.value:.3g} (target {f.target})")
    if rec.errors or stopped:
        for error in rec.errors:
            console.print(f"[red]failed:[/] {error}")
        console.print(f"logs of every service: {work}")
        return 130 if stopped else 1
    shutil.rmtree(work, ignore_errors=True)
    if args.readme:
        update_readme(ROOT / "README.md", document)
        console.print(f"README: {ROOT / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
