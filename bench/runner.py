"""The run's record: phases, figures written as they are measured, and a stop that keeps what was measured.

Every phase (one measurement on one stack) is declared up front with the benchmarks it serves. When a phase
ends, its figures are printed and ``bench/results.json`` is rewritten with every figure so far, each
benchmark's status and the machine's load. Ctrl-C (SIGINT), SIGTERM and ``--time-limit`` (SIGALRM) stop the
run where it is: the stacks are torn down, and the last write says which benchmarks did not run.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from bench.load import LoadMeter
from bench.report import Figure, describe_load, print_table, results_document, write_results

# status of a phase: pending -> running -> done | partial | failed | interrupted
DONE, PARTIAL, FAILED, INTERRUPTED, PENDING, RUNNING = "done", "partial", "failed", "interrupted", "pending", "running"


class Stopped(KeyboardInterrupt):
    """The run was told to stop (SIGTERM, the time limit); handled like Ctrl-C."""

    def __init__(self, by: str) -> None:
        super().__init__(by)
        self.by = by


def stop_on_signals(time_limit_s: float | None = None) -> None:
    """SIGINT, SIGTERM (and SIGALRM after ``time_limit_s``) raise :class:`Stopped` in the main thread, once:
    a second signal while the stacks are torn down is ignored, so no service is left running.

    A signal can land while a finalizer (``__del__``) runs, and Python swallows what a finalizer raises: such a
    stop is delivered again a moment later (``sys.unraisablehook``), so the run always ends.
    """
    stopping = False
    again: list[str] = []
    previous_hook = sys.unraisablehook

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if again:
            raise Stopped(again.pop())
        if stopping:
            print("stopping: tearing the stacks down, the figures measured are kept", flush=True)
            return
        stopping = True
        if signum == signal.SIGINT:
            raise Stopped("SIGINT (Ctrl-C)")
        raise Stopped("the time limit" if signum == signal.SIGALRM else signal.Signals(signum).name)

    def unraisable(info: Any) -> None:
        if isinstance(info.exc_value, Stopped):
            again.append(info.exc_value.by)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        previous_hook(info)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(signum, handler)
    sys.unraisablehook = unraisable
    if time_limit_s:
        signal.setitimer(signal.ITIMER_REAL, time_limit_s)


def default_signals() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    sys.unraisablehook = sys.__unraisablehook__
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Finish writing the results before a signal that arrives meanwhile is handled."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGALRM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass
class Phase:
    name: str
    title: str
    benchmarks: tuple[str, ...]  # the benchmark names it measures for
    status: str = PENDING
    seconds: float | None = None
    figures: int = 0


class Recorder:
    """Holds the run's figures and phases; writes ``out`` after every phase."""

    def __init__(
        self,
        out: Path,
        config: dict[str, Any],
        benchmarks: Sequence[str],
        chosen: Sequence[str],
        phases: Sequence[Phase],
        console: Console,
        write: Callable[[dict[str, Any], Path], None] = write_results,
    ) -> None:
        self.out, self.config, self.console, self._write = out, config, console, write
        self.benchmarks = list(benchmarks)  # every benchmark, in order: "1" is benchmarks[0]
        self.chosen = [b for b in self.benchmarks if b in set(chosen)]
        self.phases = {p.name: p for p in phases}
        self.figures: list[Figure] = []
        self.errors: list[str] = []
        self.interrupted: dict[str, str] | None = None
        self.started = time.monotonic()
        self.meter = LoadMeter.start()
        self.current: str | None = None
        self._over = False  # finish() was called

    # --- recording ---------------------------------------------------------------------------------------

    def number(self, benchmark: str) -> str:
        return str(self.benchmarks.index(benchmark) + 1)

    def add(self, figures: Sequence[Figure], *, replacing: str | None = None) -> None:
        """Figures of the running phase (those of benchmarks not chosen are left out). ``replacing`` a
        benchmark drops the figures an earlier phase recorded for it: a benchmark whose baseline comes in a
        later phase records its own figures first, so a stop in between keeps them."""
        wanted = {self.number(b) for b in self.chosen}
        kept = [f for f in figures if f.benchmark.split()[0] in wanted]
        if replacing is not None:
            self.figures = [f for f in self.figures if f.benchmark.split()[0] != self.number(replacing)]
        self.figures += kept
        if self.current is not None:
            self.phases[self.current].figures += len(kept)
        if kept:
            self.write()  # a phase of several measurements (the scale series) keeps each as it is made
            title = self.phases[self.current].title if self.current else "figures"
            print_table(kept, self.console, title=f"{title}: written to {self.out.name}")

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """One phase: timed; a failure is recorded and the run goes on; a stop is recorded and goes on up."""
        phase = self.phases[name]
        phase.status, self.current = RUNNING, name
        before = len(self.figures)
        started = time.monotonic()
        self.console.print(f"[bold]{phase.title}[/] …")
        self.write()  # the file says which phase runs (``running``)
        try:
            yield
        except KeyboardInterrupt as exc:
            phase.status = INTERRUPTED
            self.interrupted = {"by": exc.by if isinstance(exc, Stopped) else "SIGINT (Ctrl-C)", "phase": name}
            raise
        except Exception as exc:  # one broken benchmark must not throw away the others' figures
            phase.status = FAILED
            self.errors.append(f"{phase.title}: {type(exc).__name__}: {exc}")
            self.console.print(f"  [red]failed[/] after {time.monotonic() - started:.0f} s: {exc}")
            self.console.print_exception(max_frames=8)
        else:
            phase.status = PARTIAL if any(f.partial for f in self.figures[before:]) else DONE
            note = " [yellow](partial: a side stopped at its time bound)[/]" if phase.status == PARTIAL else ""
            self.console.print(f"  done in {time.monotonic() - started:.0f} s{note}")
        finally:
            phase.seconds = round(time.monotonic() - started, 1)
            self.current = None
            self.write()

    @contextlib.contextmanager
    def stack(self, title: str, phases: Sequence[str]) -> Iterator[None]:
        """A stack several phases share: if it fails (to start, or to stop), its phases not run fail."""
        started = time.monotonic()
        try:
            yield
        except Exception as exc:
            self.errors.append(f"{title}: {type(exc).__name__}: {exc}")
            self.console.print(f"[red]{title} failed[/] after {time.monotonic() - started:.0f} s: {exc}")
            self.console.print_exception(max_frames=8)
            for name in phases:
                if self.phases[name].status == PENDING:
                    self.phases[name].status = FAILED
            self.write()

    # --- status ------------------------------------------------------------------------------------------

    def benchmark_status(self) -> dict[str, str]:
        """done | partial | failed | interrupted | not_run | pending, per chosen benchmark."""
        out = {}
        for name in self.chosen:
            phases = [p for p in self.phases.values() if name in p.benchmarks]
            states = {p.status for p in phases}
            has = any(f.benchmark.split()[0] == self.number(name) for f in self.figures)
            partial = any(f.partial for f in self.figures if f.benchmark.split()[0] == self.number(name))
            if states == {DONE} and not partial:
                out[name] = DONE
            elif has:
                out[name] = PARTIAL
            elif FAILED in states:
                out[name] = FAILED
            elif INTERRUPTED in states:
                out[name] = INTERRUPTED
            elif self._over or self.interrupted is not None:
                out[name] = "not_run"
            else:
                out[name] = PENDING
        return out

    def document(self) -> dict[str, Any]:
        status = self.benchmark_status()
        not_run = [b for b, s in status.items() if s in ("not_run", INTERRUPTED, PENDING)]
        unrun = [p.name for p in self.phases.values() if p.status in (PENDING, INTERRUPTED)]
        return results_document(
            self.figures, self.config, time.monotonic() - self.started, self.errors,
            complete=self._over and self.interrupted is None,
            running=self.current,
            interrupted=self.interrupted,
            benchmarks=status,
            not_run=not_run,
            phases_not_run=unrun,
            phases=[asdict(p) for p in self.phases.values()],
            load=self.meter.read(),
        )

    def write(self) -> dict[str, Any]:
        with signals_held():
            document = self.document()
            self._write(document, self.out)
        return document

    def finish(self) -> dict[str, Any]:
        """The last write: every phase not run is marked so; prints what did not run and the load."""
        self._over = True
        document = self.write()
        if document["not_run"] or document["phases_not_run"]:
            why = ""
            if self.interrupted:
                why = f" (stopped by {self.interrupted['by']} during {self.phases[self.interrupted['phase']].title})"
            titles = [self.phases[name].title for name in document["phases_not_run"]]
            self.console.print(f"[yellow]not run:[/] benchmarks {', '.join(document['not_run']) or 'none'}; "
                               f"phases {'; '.join(titles)}{why}")
        partial = [b for b, s in document["benchmarks"].items() if s == PARTIAL]
        bounded = [b for b in partial
                   if any(f.partial for f in self.figures if f.benchmark.split()[0] == self.number(b))]
        if bounded:
            self.console.print(f"[yellow]partial:[/] {', '.join(bounded)} (a side stopped at its time bound)")
        if cut := [b for b in partial if b not in bounded]:
            self.console.print(f"[yellow]partial:[/] {', '.join(cut)} (a phase of it did not run: figures without "
                               "that phase's side)")
        self.console.print(describe_load(document["load"]))
        return document
