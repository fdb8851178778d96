"""The batch progress display (worker/progress.py): counts, rate over a sliding window, ETA, what is drawn."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from worker.reports.progress import RateMeter, Snapshot, format_duration, render


def batch_info(**counts: int) -> dict[str, Any]:
    """A ``Ledger.batch()``-shaped record; ``total``/``planned``/``pending`` are taken out of ``counts``."""
    sizes = {name: counts.pop(name, 0) for name in ("total", "planned", "pending")}
    return {"status": "active", **sizes, "counts": counts}


def text_of(snap: Snapshot, meter: RateMeter | None = None) -> str:
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(render(snap, meter))
    return out.getvalue()


def test_snapshot_groups_states_and_counts_planned_and_pending_jobs() -> None:
    info = batch_info(total=6, planned=3, pending=2, succeeded=2, failed=1, timed_out=1, running=1, queued=1)
    snap = Snapshot.from_batch("b", info)
    # 6 created + 3 follow-ups planned + 2 enqueued that no worker created yet
    assert snap.total == 11
    assert (snap.done, snap.failed, snap.running) == (2, 2, 1)
    assert snap.queued == 11 - 4 - 1  # everything neither finished nor running, created or not
    assert not snap.is_over


def test_snapshot_is_over_only_when_nothing_is_left() -> None:
    assert Snapshot.from_batch("b", batch_info(total=2, succeeded=1, skipped=1)).is_over
    assert not Snapshot.from_batch("b", batch_info(total=2, pending=1, succeeded=2)).is_over
    assert not Snapshot.from_batch("b", batch_info(total=2, planned=1, succeeded=2)).is_over
    # a batch that got no job at all (everything was already known) ends at once instead of never
    assert Snapshot.from_batch("b", batch_info()).is_over


def test_rate_meter_measures_over_its_window_only() -> None:
    meter = RateMeter(window_s=10.0)
    assert meter.rate is None and meter.eta_s(5) is None  # one reading is no rate
    meter.add(0, now=100.0)
    meter.add(0, now=101.0)
    assert meter.rate is None  # nothing finished yet: no rate, no ETA
    meter.add(10, now=105.0)
    assert meter.rate == 2.0
    assert meter.eta_s(30) == 15.0
    # an early burst leaves the window: the rate is the recent pace, not the average since the start
    meter.add(11, now=120.0)
    meter.add(12, now=125.0)
    assert [t for t, _ in meter.samples] == [120.0, 125.0]
    assert meter.rate == 0.2
    assert meter.eta_s(4) == 20.0


def test_format_duration() -> None:
    assert [format_duration(s) for s in (None, 4.4, 65, 3600 + 5 * 60)] == ["--", "4s", "1m05s", "1h05m"]


def test_render_shows_counts_rate_and_eta() -> None:
    snap = Snapshot.from_batch(
        "night", batch_info(total=10, succeeded=3, failed=1, running=2, queued=4, cancelled=1, skipped=1)
    )
    meter = RateMeter()
    meter.add(0, now=0.0)
    meter.add(6, now=60.0)  # 6 finished in a minute: 6.0/min; 4 left -> 40 s
    text = text_of(snap, meter)
    assert "night" in text and "6/10" in text and "active" in text
    assert "done 3  failed 1  running 2  queued 2" in text
    assert "rate 6.0/min  ETA 40s" in text
    assert "cancelled 1  skipped 1" in text


def test_a_cancelled_batch_reads_cancelled() -> None:
    """Not "done 0 failed 0 ... 100%" and nothing else: the cancelled jobs are counted by their name."""
    snap = Snapshot.from_batch("c", {**batch_info(total=4, succeeded=1, cancelled=3), "status": "cancelled"})
    text = text_of(snap)
    assert "cancelled 3" in text and "skipped" not in text and " cancelled" in text.splitlines()[0]
    assert (snap.cancelled, snap.skipped) == (3, 0)


def test_render_without_a_rate_and_when_over() -> None:
    waiting = Snapshot.from_batch("b", batch_info(total=3, pending=2, queued=3))
    assert "done 0  failed 0  running 0  queued 5  rate --  ETA --" in text_of(waiting)
    over = Snapshot.from_batch("b", {**batch_info(total=2, succeeded=2), "status": "finished"})
    text = text_of(over, RateMeter())
    assert "2/2" in text and "finished" in text and "ETA 0s" in text and "cancelled" not in text


def test_watch_to_a_pipe_prints_a_line_while_nothing_changes() -> None:
    """Not a terminal: plain progress lines appear during the wait, not only at the end."""
    from worker.reports.progress import watch

    out = io.StringIO()
    reads = iter([batch_info(total=2, queued=2)] * 6 + [batch_info(total=2, succeeded=2)])
    snap, why = watch(
        lambda: Snapshot.from_batch("night", next(reads)),
        Console(file=out, width=80, color_system=None),
        interval_s=0.01,
        line_every_s=0.0,
    )
    lines = out.getvalue().splitlines()
    assert snap.is_over and why is None
    assert len([line for line in lines if line.startswith("night 0/2")]) >= 2, lines
    assert lines[-1].startswith("night 2/2 100%"), lines


def test_watch_says_which_upstream_is_not_submitting() -> None:
    """``--wait``'s line names an upstream that is unreachable (it resumes by itself), and stops naming it."""
    from worker.reports.progress import watch

    out = io.StringIO()
    reads = iter([batch_info(total=1, queued=1)] * 3 + [batch_info(total=1, succeeded=1)])
    notes = iter(["upstream default unreachable: refused (probed; resumes by itself)"] * 2 + [""] * 5)
    watch(lambda: Snapshot.from_batch("night", next(reads)), Console(file=out, width=80, color_system=None),
          interval_s=0.01, line_every_s=0.0, note=lambda: next(notes))
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("| upstream default unreachable: refused (probed; resumes by itself)"), lines
    assert lines[-1].startswith("night 1/1 100%") and "unreachable" not in lines[-1], lines


def test_blocked_by_a_pause_or_a_permanent_stop_only_when_nothing_is_upstream() -> None:
    from worker.reports.progress import blocked_by

    queued = Snapshot.from_batch("b", batch_info(total=3, queued=3))
    paused = Snapshot.from_batch("b", {**batch_info(total=3, queued=3), "status": "paused"})
    upstream = Snapshot.from_batch("b", batch_info(total=3, queued=2, running=1))
    stop = {"tripped": True, "reason": "401 unauthorized", "until": None}
    assert blocked_by(queued, {"tripped": False}) is None
    assert blocked_by(upstream, stop) is None  # a running job still finishes
    assert blocked_by(queued, {**stop, "until": 1e12}) is None  # a timed stop resumes by itself
    why = blocked_by(queued, stop)
    assert why is not None and why.command == "mjq resume" and "401 unauthorized" in why.reason
    why = blocked_by(paused, {"tripped": False})
    assert why is not None and why.command == "mjq resume b"


def test_reading_a_big_file_to_a_pipe_shows_rows_rate_eta_and_queued() -> None:
    """Enqueueing a big file, not on a terminal: plain lines with rows read, the share of the file, rows per
    second, the time left and how many were queued, then one closing line; a small file shows nothing."""
    import re
    import time

    from worker.reports.reading import BIG_FILE_BYTES, EVERY_ROWS, ReadProgress

    out = io.StringIO()
    size = 4 * BIG_FILE_BYTES
    with ReadProgress(Console(file=out, width=80, color_system=None), size, "enqueueing", line_every_s=0.0) as reading:
        time.sleep(0.01)  # a clock that moved: a rate to show
        reading.update(EVERY_ROWS, size // 4, 1500)
        reading.update(EVERY_ROWS + 1, size // 4, 1501)  # between two looks at the clock: no line
        reading.update(2 * EVERY_ROWS, size // 2, 3000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(r"enqueueing: 2,000 rows read \(25%\), [\d,]+ rows/s, ETA \S+, queued 1,500", lines[0]), lines
    assert "ETA --" not in lines[0] and "(50%)" in lines[1]
    assert re.fullmatch(r"enqueueing: read 4,000 rows in \S+ \([\d,]+ rows/s\), queued 3,000", lines[2]), lines
    small = io.StringIO()
    with ReadProgress(Console(file=small, width=80), BIG_FILE_BYTES - 1, "reading", line_every_s=0.0) as quiet:
        quiet.update(EVERY_ROWS, 10)
    assert small.getvalue() == ""
