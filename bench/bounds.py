"""Time bounds: every phase of a benchmark ends within a bound derived from its size, with how far it got.

A side (ours or a baseline) that cannot finish in its bound does not raise: it stops where it is and its
figure is computed from what it reached, marked partial (``Figure.partial``, ``notes["reached"]``), so a slow
or overloaded machine yields a recognisable figure instead of an exception that loses the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bench.report import Figure

FIXED_S = 30.0  # what every phase may take beyond its work (start-up, the last callbacks, downloads)
SLACK = 2.0  # how many times its ideal duration a phase may take before it stops


def batch_bound_s(jobs: int, job_s: float, capacity: int, *, slack: float = SLACK, fixed_s: float = FIXED_S) -> float:
    """Bound for ``jobs`` upstream jobs of ``job_s`` each on ``capacity`` slots: fixed + slack x the ideal."""
    return fixed_s + slack * jobs * job_s / max(1, capacity)


@dataclass(frozen=True)
class Reached:
    """How far a bounded phase got: ``done`` of ``wanted`` after ``seconds`` (bound ``bound_s``)."""

    done: int
    wanted: int
    seconds: float
    bound_s: float
    complete: bool = True

    @property
    def partial(self) -> bool:
        return not self.complete or self.done < self.wanted

    def describe(self) -> str:
        unfinished = "" if self.complete or self.done < self.wanted else " (not all finished)"
        return f"{self.done:,} of {self.wanted:,}{unfinished} in the {self.bound_s:.0f} s bound"


class Deadline:
    """A bound on the monotonic clock, shared by the threads of one side."""

    def __init__(self, bound_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound_s = bound_s
        self.clock = clock
        self.started = clock()

    @property
    def passed(self) -> bool:
        return self.clock() - self.started >= self.bound_s

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def reached(self, done: int, wanted: int, complete: bool = True) -> Reached:
        return Reached(done, wanted, round(self.elapsed_s, 1), self.bound_s, complete)


def wait_bounded(
    progress: Callable[[], int],
    wanted: int,
    bound_s: float,
    *,
    finished: Callable[[], bool] | None = None,
    poll_s: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Reached:
    """Wait until ``progress() >= wanted`` (and ``finished()``, if given) or the bound passes; never raises."""
    deadline = Deadline(bound_s, clock)
    while True:
        done = progress()
        if done >= wanted and (finished is None or finished()):
            return deadline.reached(done, wanted)
        if deadline.passed:
            return deadline.reached(done, wanted, complete=False)
        sleep(poll_s)


def mark(figures: Iterable[Figure], *reached: Reached | None) -> list[Figure]:
    """Mark the figures partial when any side they compare did not finish in its bound."""
    out = list(figures)
    short = [r for r in reached if r is not None and r.partial]
    if short:
        for figure in out:
            figure.partial = True
            figure.notes["reached"] = "; ".join(r.describe() for r in short)
    return out
