"""Reading a big prompt file: rows read, rows per second and the time left, while a dry run or an enqueue
streams it (the ETA is by bytes: the file's size is known, its row count is not until the end)."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from worker.reports.progress import format_duration

BIG_FILE_BYTES = 256 * 1024  # smaller files are read in a blink: no progress display
EVERY_ROWS = 2000  # rows between two looks at the clock (a million rows, a few hundred updates)


class ReadProgress:
    """A live bar on a terminal; elsewhere one plain line at least every ``line_every_s`` and one at the end."""

    def __init__(self, console: Console, total_bytes: int, verb: str, *, line_every_s: float = 2.0) -> None:
        self.console, self.total, self.verb = console, max(total_bytes, 1), verb
        self.enabled = total_bytes >= BIG_FILE_BYTES
        self.line_every_s = line_every_s
        self.started = time.monotonic()
        self.last_line = self.started
        self.rows = self.done_bytes = 0
        self.queued: int | None = None
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> ReadProgress:
        if self.enabled and self.console.is_terminal:
            self.bar = Progress(TextColumn(self.verb), BarColumn(), TextColumn("{task.fields[text]}"),
                                console=self.console, transient=True)  # fmt: skip
            self.bar.__enter__()
            self.task = self.bar.add_task(self.verb, total=self.total, text="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, exc, tb)
        if self.enabled and kind is None:
            elapsed = time.monotonic() - self.started
            rate = f" ({self.rows / elapsed:,.0f} rows/s)" if elapsed > 0 else ""
            self.console.print(f"{self.verb}: read {self.rows:,} rows in {format_duration(elapsed)}{rate}"
                               + self._queued(), markup=False, highlight=False)  # fmt: skip

    def _queued(self) -> str:
        return f", queued {self.queued:,}" if self.queued is not None else ""

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (self.total - self.done_bytes) / self.done_bytes if self.done_bytes else None
        pct = 100 * self.done_bytes / self.total
        return (f"{self.rows:,} rows read ({pct:.0f}%), {rate:,.0f} rows/s, ETA {format_duration(eta)}"
                + self._queued())  # fmt: skip

    def update(self, rows: int, done_bytes: int, queued: int | None = None, *, force: bool = False) -> None:
        """Called for every row; looks at the clock every ``EVERY_ROWS`` rows (or when ``force``)."""
        self.rows, self.queued = rows, queued
        if not self.enabled or (rows % EVERY_ROWS and not force):
            return
        self.done_bytes = done_bytes
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done_bytes, text=self.text())
        elif time.monotonic() - self.last_line >= self.line_every_s:
            self.last_line = time.monotonic()
            self.console.print(f"{self.verb}: {self.text()}", markup=False, highlight=False)
