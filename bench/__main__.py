"""``python -m bench`` (``make bench``): every benchmark on its own stack, a table, ``bench/results.json``.

Sizes: ``full`` (the published figures: a 2,000-prompt utilisation batch, 10,000 enqueued, 5,000 waiting,
200 fan-outs), ``quick`` (a few minutes, for a look) and ``smoke`` (what CI runs to prove it still works).
``--only`` picks benchmarks by number or name; ``--readme`` writes the table into README.md.

Each benchmark's figures are written to the results file (and printed) as soon as it ends, so a run stopped
by Ctrl-C, SIGTERM or a timeout keeps what it measured and says which benchmarks did not run. Every phase has
a time bound derived from its size; one that reaches it gives a figure marked partial.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from bench import bounds, enqueue, fanout, latency, scale, utilisation
from bench.load import LoadMeter
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
    "full": Sizes(2000, 200, 30, 150, 10_000, 5_000, 30.0, 200),
    "quick": Sizes(300, 60, 8, 40, 3_000, 2_000, 10.0, 30),
    "smoke": Sizes(24, 30, 2, 6, 300, 200, 3.0, 3),
}
BENCHMARKS = ("utilisation", "requests", "enqueue", "latency", "scale", "fanout")  # numbered 1-6


@dataclass
class Recorder:
    """The run's figures so far, written to the results file after every step."""

    out: Path
    config: dict[str, Any]
    chosen: set[str]
    console: Console
    figures: list[Figure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    meter: LoadMeter = field(default_factory=LoadMeter)
    started: float = field(default_factory=time.monotonic)

    def add(self, figures: list[Figure], partial: list[str]) -> None:
        for figure in figures:
            if partial:
                figure.partial = True
                figure.notes["partial"] = partial
        self.figures += figures
        if figures:
            print_table(figures, self.console)

    def not_run(self) -> list[str]:
        measured = {f.benchmark.split()[0] for f in self.figures}
        return [name for n, name in enumerate(BENCHMARKS, 1) if name in self.chosen and str(n) not in measured]

    def document(self, complete: bool) -> dict[str, Any]:
        return results_document(self.figures, self.config, time.monotonic() - self.started, self.errors,
                                load=self.meter.summary(), not_run=self.not_run(), complete=complete)

    def save(self, complete: bool = False) -> dict[str, Any]:
        document = self.document(complete)
        write_results(document, self.out)
        return document


class Steps:
    """Runs each benchmark step with its timing; a step that fails is reported and the others still run.

    ``with steps.step(title) as found:`` — figures appended to ``found`` are recorded (partial when a bound
    was reached during the step) and written out when the step ends.
    """

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.console = recorder.console

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[list[Figure]]:
        started = time.monotonic()
        self.console.print(f"[bold]{title}[/] …")
        found: list[Figure] = []
        try:
            yield found
        except Exception as exc:  # one broken benchmark must not throw away the others' figures
            self.recorder.errors.append(f"{title}: {type(exc).__name__}: {exc}")
            self.console.print(f"  [red]failed[/] after {time.monotonic() - started:.0f} s: {exc}")
            self.console.print_exception(max_frames=8)
        else:
            self.console.print(f"  done in {time.monotonic() - started:.0f} s")
        finally:
            partial = bounds.take_notes()
            for note in partial:
                self.console.print(f"  [yellow]partial:[/] {note}")
            self.recorder.add(found, partial)
            self.recorder.save()


def run(sizes: Sizes, chosen: set[str], work: Path, steps: Steps) -> None:
    """Run the chosen benchmarks; one webhook stack serves 1, 2, 4 and 6, a polling stack 2 and 4."""
    tf = TIME_FACTOR
    util: tuple[UpstreamRun, UpstreamRun, UpstreamRun] | None = None
    hooked: latency.Continuations | None = None
    if chosen & {"utilisation", "requests", "latency", "fanout"}:
        with steps.step("webhook stack (queue ahead 1)"), running(
            work, "webhooks", time_factor=tf, env={"MJQ_QUEUE_AHEAD": "1"}
        ) as bench:
            if chosen & {"utilisation", "requests"}:
                with steps.step(f"1 utilisation: {sizes.utilisation:,} prompts, then both baselines") as found:
                    ours = utilisation.measure_ours(bench, sizes.utilisation, "util")
                    util = (ours, *utilisation.measure_baselines(bench, sizes.fire, sizes.serial))
                    found += utilisation.figures(*util)
            if chosen & {"latency", "requests"}:
                with steps.step(f"4 continuation, webhooks: {sizes.latency_roots} imagines > U1"):
                    hooked = latency.measure(bench, sizes.latency_roots, "hooked")
            if "fanout" in chosen:
                with steps.step(f"6 fan-out: {sizes.fanout_roots} imagines x U1-4") as found:
                    found += fanout.measure(bench, sizes.fanout_roots)
    if "utilisation" in chosen:
        with steps.step(f"1 utilisation, queue ahead 0: {sizes.utilisation // 4:,} prompts") as found:
            exact = utilisation.run_exact_slots(work, tf, sizes.utilisation // 4)
            if util is not None:
                found.append(utilisation.exact_figure(exact, util[1]))
    if chosen & {"latency", "requests"}:
        with steps.step(f"2/4 polling only: {sizes.latency_roots} imagines > U1") as found, running(
            work, "polling", time_factor=tf, webhooks=False
        ) as bench:
            polled = latency.measure(bench, sizes.latency_roots, "polled")
            if util is not None:
                found.append(utilisation.polled_figure(polled.upstream, util[2]))
            if hooked is not None and "latency" in chosen:
                found += latency.figures(hooked, polled)
    if "enqueue" in chosen:
        with steps.step(f"3 enqueue: {sizes.enqueue:,} prompts through 3 producers") as found:
            found += enqueue.run(work / "enqueue", sizes.enqueue)
    if "scale" in chosen:
        with steps.step(f"5 scale: {sizes.waiting:,} waiting jobs, {sizes.window_s:g} s windows, ours and naive") \
                as found:
            ours_load = scale.measure_ours(work, tf, sizes.waiting, sizes.window_s)
            found += scale.figures(ours_load, scale.measure_naive(work / "naive", sizes.waiting, sizes.window_s))


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


def _stop_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same as Ctrl-C: stacks stop, figures so far are kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--quick", action="store_const", const="quick", dest="size", help="same as --size quick")
    names = ", ".join(f"{n} {b}" for n, b in enumerate(BENCHMARKS, 1))
    parser.add_argument("--only", action="append", help=f"a benchmark by number or name (repeat): {names}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args(argv)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    out, chosen, sizes = args.out.resolve(), _chosen(args.only), SIZES[args.size]
    config = {"size": args.size, "time_factor": TIME_FACTOR, "capacity": CAPACITY, "queue": QUEUE,
              "sizes": asdict(sizes), "benchmarks": sorted(chosen)}
    recorder = Recorder(out, config, chosen, console)
    work = Path(tempfile.mkdtemp(prefix="mjq-bench-"))
    hermetic_environment(work)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        run(sizes, chosen, work, Steps(recorder))
    except KeyboardInterrupt:
        recorder.errors.append("interrupted")
        recorder.save(complete=False)
        console.print(f"[yellow]stopped:[/] the figures measured so far are in {out}; "
                      f"not run: {', '.join(recorder.not_run()) or 'none'}")
        return 130
    finally:
        os.chdir(ROOT)
    document = recorder.save(complete=True)
    console.print(f"results: {out} ({document['seconds']:.0f} s)")
    for f in recorder.figures:
        if f.met is False:
            console.print(f"[yellow]target missed:[/] {f.benchmark} {f.measure}: {f.value:.3g} (target {f.target})")
    if recorder.errors:
        for error in recorder.errors:
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
