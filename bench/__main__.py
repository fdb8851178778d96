"""``python -m bench`` (``make bench``): every benchmark on its own stack, a table, ``bench/results.json``.

Sizes: ``full`` (the published figures: 2,000-prompt utilisation batch, 10,000 enqueued and 10,000 waiting,
500 fan-outs), ``quick`` (under a minute, for a look) and ``smoke`` (what CI runs to prove it still works).
``--only`` picks benchmarks by number or name; ``--readme`` writes the table into README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from bench import enqueue, fanout, latency, scale, utilisation
from bench.report import Figure, print_table, results_document, update_readme, write_results
from bench.stack import CAPACITY, QUEUE, UpstreamRun, hermetic_environment, running

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


SIZES = {
    "full": Sizes(2000, 200, 30, 150, 10_000, 10_000, 60.0, 500),
    "quick": Sizes(150, 40, 6, 20, 2_000, 2_000, 10.0, 15),
    "smoke": Sizes(24, 30, 2, 6, 300, 200, 3.0, 3),
}
BENCHMARKS = ("utilisation", "requests", "enqueue", "latency", "scale", "fanout")


class Steps:
    """Runs each benchmark step with its timing; a step that fails is reported and the others still run."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.errors: list[str] = []

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        self.console.print(f"[bold]{title}[/] …")
        try:
            yield
        except Exception as exc:  # one broken benchmark must not throw away the others' figures
            self.errors.append(f"{title}: {type(exc).__name__}: {exc}")
            self.console.print(f"  [red]failed[/] after {time.monotonic() - started:.0f} s: {exc}")
            self.console.print_exception(max_frames=8)
        else:
            self.console.print(f"  done in {time.monotonic() - started:.0f} s")


def run(sizes: Sizes, chosen: set[str], work: Path, steps: Steps) -> list[Figure]:
    """Run the chosen benchmarks; one webhook stack serves 1, 2, 4 and 6, a polling stack 2 and 4."""
    tf = TIME_FACTOR
    figures: list[Figure] = []
    util: tuple[UpstreamRun, UpstreamRun, UpstreamRun] | None = None
    exact: UpstreamRun | None = None
    hooked: latency.Continuations | None = None
    polled: latency.Continuations | None = None
    if chosen & {"utilisation", "requests", "latency", "fanout"}:
        with steps.step("webhook stack (queue ahead 1)"), running(
            work, "webhooks", time_factor=tf, env={"MJQ_QUEUE_AHEAD": "1"}
        ) as bench:
            if chosen & {"utilisation", "requests"}:
                with steps.step(f"1 utilisation: {sizes.utilisation:,} prompts, then both baselines"):
                    ours = utilisation.measure_ours(bench, sizes.utilisation, "util")
                    util = (ours, *utilisation.measure_baselines(bench, sizes.fire, sizes.serial))
            if chosen & {"latency", "requests"}:
                with steps.step(f"4 continuation, webhooks: {sizes.latency_roots} imagines > U1"):
                    hooked = latency.measure(bench, sizes.latency_roots, "hooked")
            if "fanout" in chosen:
                with steps.step(f"6 fan-out: {sizes.fanout_roots} imagines x U1-4"):
                    figures += fanout.measure(bench, sizes.fanout_roots)
    if "utilisation" in chosen:
        with steps.step(f"1 utilisation, queue ahead 0: {sizes.utilisation // 4:,} prompts"):
            exact = utilisation.run_exact_slots(work, tf, sizes.utilisation // 4)
    if chosen & {"latency", "requests"}:
        with steps.step(f"2/4 polling only: {sizes.latency_roots} imagines > U1"), running(
            work, "polling", time_factor=tf, webhooks=False
        ) as bench:
            polled = latency.measure(bench, sizes.latency_roots, "polled")
    if util is not None:
        figures += utilisation.figures(*util, polled.upstream if polled else None, exact)
    if hooked is not None and polled is not None and "latency" in chosen:
        figures += latency.figures(hooked, polled)
    if "enqueue" in chosen:
        with steps.step(f"3 enqueue: {sizes.enqueue:,} prompts through 3 producers"):
            figures += enqueue.run(work / "enqueue", sizes.enqueue)
    if "scale" in chosen:
        with steps.step(f"5 scale: {sizes.waiting:,} waiting jobs, {sizes.window_s:g} s windows, ours and naive"):
            ours_load = scale.measure_ours(work, tf, sizes.waiting, sizes.window_s)
            figures += scale.figures(ours_load, scale.measure_naive(work / "naive", sizes.waiting, sizes.window_s))
    return sorted(figures, key=lambda f: f.benchmark.split()[0])


def _chosen(only: list[str] | None) -> set[str]:
    if not only:
        return set(BENCHMARKS)
    picked = set()
    for item in only:
        name = BENCHMARKS[int(item) - 1] if item.isdigit() and 1 <= int(item) <= len(BENCHMARKS) else item
        if name not in BENCHMARKS:
            raise SystemExit(f"--only: unknown benchmark {item!r} (choose from 1-6 or {', '.join(BENCHMARKS)})")
        picked.add(name)
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--quick", action="store_const", const="quick", dest="size", help="same as --size quick")
    parser.add_argument("--only", action="append", help="a benchmark by number or name (repeat)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args(argv)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    out, chosen, sizes = args.out.resolve(), _chosen(args.only), SIZES[args.size]
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mjq-bench-"))
    hermetic_environment(work)
    steps = Steps(console)
    try:
        figures = run(sizes, chosen, work, steps)
    finally:
        os.chdir(ROOT)
    config = {"size": args.size, "time_factor": TIME_FACTOR, "capacity": CAPACITY, "queue": QUEUE,
              "sizes": asdict(sizes), "benchmarks": sorted(chosen)}
    document = results_document(figures, config, time.monotonic() - started, steps.errors)
    print_table(figures, console)
    write_results(document, out)
    console.print(f"results: {out}")
    for f in figures:
        if f.met is False:
            console.print(f"[yellow]target missed:[/] {f.benchmark} {f.measure}: {f.value:.3g} (target {f.target})")
    if steps.errors:
        for error in steps.errors:
            console.print(f"[red]failed:[/] {error}")
        console.print(f"logs of every service: {work}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    if args.readme:
        update_readme(ROOT / "README.md", document)
        console.print(f"README: {ROOT / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
