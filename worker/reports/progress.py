"""Watching a batch: counts from the ledger turned into a live Rich progress display, rate and ETA.

Shared by ``mjq batch --wait``, ``mjq status`` and the demo, so every view of a batch counts the same way.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

DONE = ("succeeded",)
FAILED = ("failed", "timed_out", "needs_review")
ENDED = ("cancelled", "skipped")
RUNNING = ("submitting", "submitted", "running")
QUEUED = ("queued",)
TERMINAL = DONE + FAILED + ENDED


@dataclass(frozen=True)
class Snapshot:
    """One reading of a batch: its counts grouped the way people think about them."""

    batch_id: str
    status: str
    total: int
    done: int
    failed: int
    ended: int
    running: int
    queued: int
    counts: Mapping[str, int]
    rate: float | None = None  # jobs ended per second, from the ledger's own timings (ledger_rate)
    created_queued: int = 0  # of ``queued``: jobs with a record (n:queued)
    pending: int = 0  # of ``queued``: enqueued, no record yet
    planned: int = 0  # of ``queued``: follow-ups the plans will create

    @classmethod
    def from_batch(cls, batch_id: str, info: Mapping[str, Any]) -> Snapshot:
        """From ``Ledger.batch()``: counts per state, jobs created, follow-ups planned, and jobs enqueued that no
        worker has created yet (``pending``), so the total is right from the first second and counts each job
        the batch will really get exactly once.
        """
        counts = {str(k): int(v) for k, v in (info.get("counts") or {}).items()}
        total = sum(int(info.get(name) or 0) for name in ("total", "planned", "pending"))

        def group(states: tuple[str, ...]) -> int:
            return sum(counts.get(s, 0) for s in states)

        finished = group(TERMINAL)
        queued = max(total - finished - group(RUNNING), 0)
        return cls(
            batch_id=batch_id,
            status=str(info.get("status") or "active"),
            total=total,
            done=group(DONE),
            failed=group(FAILED),
            ended=group(ENDED),
            running=group(RUNNING),
            queued=queued,
            counts={k: v for k, v in counts.items() if v},
            rate=ledger_rate(info, finished >= total),
            created_queued=counts.get("queued", 0),
            pending=int(info.get("pending") or 0),
            planned=int(info.get("planned") or 0),
        )

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.finished) / self.rate if self.rate else None

    @property
    def cancelled(self) -> int:
        return self.counts.get("cancelled", 0)

    @property
    def skipped(self) -> int:
        """Follow-ups that will not run (their button was missing, or their parent did not succeed)."""
        return self.ended - self.cancelled

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.ended

    @property
    def is_over(self) -> bool:
        """Every job (including planned follow-ups and roots not created yet) reached an end state.

        A batch that will get no job at all (everything in it was already known elsewhere) is over at once.
        """
        return self.running == 0 and self.finished >= self.total


def ledger_rate(info: Mapping[str, Any], over: bool, now: float | None = None) -> float | None:
    """Jobs ended per second since the batch's first end (``first_end_at``, ``ended_n`` of the batch record),
    so ``mjq status`` and ``--wait`` give the same figure; up to the last end once the batch is over."""
    first, ended = info.get("first_end_at"), int(info.get("ended_n") or 0)
    if not first or ended < 2:
        return None
    until = float(info.get("last_end_at") or 0) if over else (time.time() if now is None else now)
    span = until - float(first)
    return (ended - 1) / span if span > 0 else None


class RateMeter:
    """Jobs finished per second over a sliding window (ETA from the recent pace, not the whole run)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, finished: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, finished))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()

    @property
    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 and n1 > n0 else None

    def eta_s(self, remaining: int) -> float | None:
        rate = self.rate
        return remaining / rate if rate else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def render(snap: Snapshot, meter: RateMeter | None = None) -> Group:
    """The progress block: a bar, then done / failed / running / queued with rate and ETA."""
    bar = ProgressBar(
        total=max(snap.total, 1),
        completed=snap.finished,
        width=40,
        complete_style="red" if snap.failed else "green",
        finished_style="green",
    )
    line = Table.grid(padding=(0, 2))
    line.add_row(
        Text(f"{snap.batch_id}", style="bold"),
        bar,
        Text(f"{snap.finished}/{snap.total}"),
        Text(snap.status, style="yellow" if snap.status != "active" else "cyan"),
    )
    rate, eta = _rate_eta(snap, meter)
    stats = Text.assemble(
        ("done ", "dim"),
        (str(snap.done), "green"),
        ("  failed ", "dim"),
        (str(snap.failed), "red"),
        ("  running ", "dim"),
        (str(snap.running), "cyan"),
        ("  queued ", "dim"),
        (str(snap.queued), "white"),
        ("  rate ", "dim"),
        (f"{rate * 60:.1f}/min" if rate else "--", "white"),
        ("  ETA ", "dim"),
        (format_duration(eta) if not snap.is_over else "0s", "white"),
    )
    if snap.cancelled:
        stats.append(f"  cancelled {snap.cancelled}", style="yellow")
    if snap.skipped:
        stats.append(f"  skipped {snap.skipped}", style="dim")
    return Group(line, stats)


def _rate_eta(snap: Snapshot, meter: RateMeter | None) -> tuple[float | None, float | None]:
    """The ledger's figures when it has them, else the meter's (a reading with no timings)."""
    if snap.rate is not None or meter is None:
        return snap.rate, snap.eta_s
    return meter.rate, meter.eta_s(snap.total - snap.finished)


def queued_line(snap: Snapshot) -> str:
    """What ``queued`` is made of (it adds up to the figure of the progress line: one queued count per screen)."""
    parts = [f"{snap.created_queued} waiting to submit"]
    if snap.pending:
        parts.append(f"{snap.pending} enqueued, not picked up yet")
    if snap.planned:
        parts.append(f"{snap.planned} follow-ups planned")
    return f"queued {snap.queued}: " + ", ".join(parts)


@dataclass(frozen=True)
class Blocked:
    """Why nothing of a batch can progress without a person, and the command that clears it."""

    reason: str
    command: str


def blocked_by(snap: Snapshot, breaker: Mapping[str, Any]) -> Blocked | None:
    """A batch waits for a person when no job of it is upstream and its submits are stopped for good.

    Stopped for good: the batch is paused, or the breaker is tripped without an ``until`` (a timed stop resumes
    by itself, so waiting for it is progress). Jobs already upstream still finish, so they keep ``--wait``
    waiting. With a pool, ``breaker`` is tripped only when every upstream is stopped (``control.breaker_status``);
    an unreachable upstream is probed and resumes by itself, so it is not a stop for good.
    """
    if snap.is_over or snap.running:
        return None
    if snap.status == "paused":
        return Blocked(f"batch {snap.batch_id} is paused", f"mjq resume {snap.batch_id}")
    if breaker.get("tripped") and not breaker.get("until") and breaker.get("kind") != "unreachable":
        return Blocked(f"submitting is stopped: {breaker.get('reason') or 'breaker tripped'}", "mjq resume")
    return None


def progress_line(snap: Snapshot, meter: RateMeter | None = None) -> str:
    """The progress block as one plain line, for logs and pipes (no bar, no colour)."""
    rate, eta = _rate_eta(snap, meter)
    pct = f"{100 * snap.finished / snap.total:.0f}%" if snap.total else "-"
    return (
        f"{snap.batch_id} {snap.finished}/{snap.total} {pct} {snap.status}: done {snap.done} failed {snap.failed}"
        f" running {snap.running} queued {snap.queued}"
        + (f" cancelled {snap.cancelled}" if snap.cancelled else "")
        + (f" skipped {snap.skipped}" if snap.skipped else "")
        + f" rate {f'{rate * 60:.1f}/min' if rate else '--'} ETA {format_duration(eta) if not snap.is_over else '0s'}"
    )


def watch(
    read: Callable[[], Snapshot],
    console: Console,
    *,
    interval_s: float = 0.5,
    timeout_s: float | None = None,
    stuck: Callable[[Snapshot], Blocked | None] | None = None,
    line_every_s: float = 5.0,
    note: Callable[[], str] | None = None,
) -> tuple[Snapshot, Blocked | None]:
    """Redraw until the batch is over, ``stuck`` says it waits for a person, or ``timeout_s``.

    ``note`` adds what is not in the counts but explains them (an upstream unreachable or stopped) under the
    display, or at the end of the plain line.

    On a terminal the display is live; to a file or pipe it is one plain line when the counts change and at
    least every ``line_every_s`` (so a log shows the run is alive). Returns the last snapshot and why it stopped
    early (None when it is over or timed out).
    """
    meter = RateMeter()  # only for readings without the ledger's timings
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    snap = read()
    meter.add(snap.finished)
    why = stuck(snap) if stuck else None
    said = note() if note else ""

    def shown() -> Any:
        return Group(render(snap, meter), Text(said, style="yellow")) if said else render(snap, meter)

    live = Live(shown(), console=console, refresh_per_second=4) if console.is_terminal else None
    last_key: tuple[Any, ...] = ()
    last_at = 0.0
    with live or nullcontext():
        while True:
            if live is not None:
                live.update(shown())
            else:
                key = (snap.status, snap.total, tuple(sorted(snap.counts.items())), said)
                if key != last_key or time.monotonic() - last_at >= line_every_s:
                    line = progress_line(snap, meter) + (f" | {said}" if said else "")
                    console.print(line, soft_wrap=True, markup=False, highlight=False)
                    last_key, last_at = key, time.monotonic()
            if snap.is_over or why is not None or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(interval_s)
            snap = read()
            meter.add(snap.finished)
            why = stuck(snap) if stuck else None
            said = note() if note else ""
    return snap, why
