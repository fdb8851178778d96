"""7. Scale series: what a batch of 1,000, 10,000 and 100,000 prompts costs, each figure against the smallest.

Each size runs on a fresh stack with submitting stopped (the breaker tripped), so its jobs are recorded and
parked as a night's are while the upstream is busy: the enqueue time of the ``mjq batch`` path (read the prompt
file, send through the producer), Redis memory per 1,000 waiting jobs, the worker's RSS, ``mjq status`` of the
batch (the calls the command makes, in this process), ``mjq export`` and the dashboard's batch page (from
``mjq serve``, over HTTP). Then, for sizes up to
``Sizes.series_finish``, submitting resumes on a simulator with room for ``ROOM`` jobs at once and Redis memory
per finished job (results included) is measured: ``MEMORY USAGE`` of every key the run added (records, results,
logs, indexes), per job. ``used_memory``'s growth per job is kept in the figure's notes; on a fresh server it
also counts what the run costs once (Lua scripts, client buffers, the key table's growth), which a small batch
cannot spread (several KB per job at 100-300 jobs, falling as the batch grows). The ratio to the smallest size
shows whether cost is linear.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.bounds import FIXED_S, Reached, mark, wait_bounded
from bench.report import Figure
from bench.scale import rss_mb
from bench.stack import running

NAME = "7 scale series"
PARK_RATE = 60.0  # jobs/s the worker is given to record and park (the bound: FIXED_S + n / PARK_RATE)
FINISH_RATE = 25.0  # jobs/s the stack is given to finish a batch
FINISH_UP_TO = 1_000  # larger batches are measured waiting only: finishing 10,000 alone takes about 5 min idle
ROOM = 60  # slots and simulator places per mode while the batch finishes
HUGE = 100_000  # from this size the figures are taken HUGE_PARK_S after the enqueue ends: parking 100,000 takes
HUGE_PARK_S = 30.0  # one worker about 14 min (about 120 jobs/s measured), more than the full run's 20 min can hold
STATUS_TARGET_MS = 200.0
EXPORT_TARGET_S = 10.0
DASHBOARD_AUTH = ("bench", "bench-series")
FINISHED_TARGET_KB = 3.0


@dataclass(frozen=True)
class Point:
    """One size's measurements."""

    jobs: int
    enqueue_s: float
    waiting_kb_per_job: float
    worker_rss_mb: float
    status_ms: float
    export_s: float
    finished_kb_per_job: float | None
    reached: Reached
    finished_used_kb_per_job: float | None = None  # used_memory's growth per finished job (fixed costs included)
    dashboard_ms: float = math.nan  # the batch page of the dashboard, over HTTP


def _used(client: object) -> int:
    return int(client.info("memory")["used_memory"])  # type: ignore[attr-defined]


def _keys(client: object) -> set[str]:
    return set(client.scan_iter(count=1000))  # type: ignore[attr-defined]


def _dataset(client: object, before: set[str]) -> int:
    """``MEMORY USAGE`` summed over the keys added since ``before`` (what the run's jobs left, key by key)."""
    added = sorted(_keys(client) - before)
    total = 0
    for start in range(0, len(added), 1000):
        pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
        for key in added[start : start + 1000]:
            pipe.memory_usage(key, samples=0)
        total += sum(int(n or 0) for n in pipe.execute())
    return total


def _status_ms(batch_id: str) -> float:
    """What ``mjq status BATCH`` reads: the batch (counters), its snapshot and its first 20 failures."""
    from worker.producer import Backend
    from worker.reports.progress import Snapshot

    handle = Backend()
    try:
        started = time.perf_counter()
        Snapshot.from_batch(batch_id, handle.batch(batch_id))
        handle.ledger.batch_failures(batch_id, 20)
        return (time.perf_counter() - started) * 1000
    finally:
        handle.close()


def _dashboard_ms(base_url: str, batch_id: str) -> float:
    """The dashboard's batch page (counts, failure groups, the first gallery page) from ``mjq serve`` over
    HTTP, best of 3 after a first request that compiles the templates; NaN (no figure, the size's others kept)
    when the server does not answer in time or answers an error."""
    best = math.inf
    try:
        with httpx.Client(base_url=base_url, auth=DASHBOARD_AUTH, timeout=120.0) as client:
            client.get(f"/batches/{batch_id}").raise_for_status()
            for _ in range(3):
                started = time.perf_counter()
                client.get(f"/batches/{batch_id}").raise_for_status()
                best = min(best, time.perf_counter() - started)
    except httpx.HTTPError:
        return math.nan
    return best * 1000


def _export_s(batch_id: str) -> float:
    from worker.reports.export import write_manifest
    from worker.store.runtime import runtime

    started = time.perf_counter()
    write_manifest(runtime().ledger.batch_jobs(batch_id), "jsonl", io.StringIO())
    return time.perf_counter() - started


def measure(root: Path, time_factor: float, n: int, finish_up_to: int = FINISH_UP_TO, *,
            park_all: bool = False) -> Point:
    """One size; ``park_all``: every size waits until all its jobs are parked (the 100,000 point too, about
    15 min more on 2 cores), instead of being read ``HUGE_PARK_S`` after its enqueue."""
    from worker import control
    from worker.batchfile import read_batch_file
    from worker.producer import Backend, submit_jobs
    from worker.store.runtime import runtime

    env = {"MJQ_SLOTS_FAST": str(ROOM), "MJQ_DASHBOARD_AUTH": ":".join(DASHBOARD_AUTH)}
    with running(root, f"series-{n}", time_factor=time_factor, env=env,
                 sim_args=("--fast-slots", str(ROOM))) as bench:
        rt = runtime()
        rt.ledger.trip_breaker("benchmark: every job parks")
        base = _used(bench.redis)
        before = _keys(bench.redis)
        path = root / f"series-{n}.txt"
        path.write_text("".join(f"series prompt {i}, a lighthouse at dawn --ar 3:2\n" for i in range(n)),
                        encoding="utf-8")
        started = time.perf_counter()
        plan = read_batch_file(path, scope="series")
        handle = Backend()
        try:
            submit_jobs(handle, plan.jobs, "series")
        finally:
            handle.close()
        enqueue_s = time.perf_counter() - started
        bound_s = HUGE_PARK_S if n >= HUGE and not park_all else FIXED_S + n / PARK_RATE
        reached = wait_bounded(lambda: int(rt.ledger.waiting_count("fast")), n, bound_s, poll_s=0.5)
        # every job is in Redis, parked (its record) or still in the broker (its message): per enqueued job
        waiting_kb = (_used(bench.redis) - base) / (n if reached.partial else max(1, reached.done)) / 1024
        rss = rss_mb(bench.pid("worker"))
        status_ms = min(_status_ms("series") for _ in range(3))
        export_s = _export_s("series")
        dashboard_ms = _dashboard_ms(str(bench.stack.serve_url), "series")
        finished_kb = finished_used_kb = None
        if n <= finish_up_to and not reached.partial:
            control.resume_submitting(rt)

            def done() -> int:
                return int(rt.ledger.batch("series")["finished"])

            finished = wait_bounded(done, n, FIXED_S + n / FINISH_RATE, poll_s=0.5)
            if not finished.partial:  # and through their finishing step: results stored, spent fields shed
                ids = rt.ledger.batch_job_ids("series")
                through = wait_bounded(lambda: len(ids) - rt.ledger.unfinished(ids), len(ids), FIXED_S, poll_s=0.5)
                finished = through if through.partial else finished
            finished_used_kb = (_used(bench.redis) - base) / max(1, finished.done) / 1024
            finished_kb = _dataset(bench.redis, before) / max(1, finished.done) / 1024
            if finished.partial:
                reached = finished
        return Point(n, enqueue_s, waiting_kb, rss, status_ms, export_s, finished_kb, reached, finished_used_kb,
                     dashboard_ms)


def figures(p: Point, first: Point, *, largest: bool) -> list[Figure]:
    """One size against the smallest of the same series (recorded as soon as it is measured): ratios near the
    size ratio for totals and near 1 for per-job costs mean linear."""
    base = f"{first.jobs:,} jobs"
    row = [
        Figure(NAME, f"enqueue {p.jobs:,} prompts (`mjq batch` path)", p.enqueue_s, "s", base, first.enqueue_s,
               notes={"jobs_per_s": round(p.jobs / p.enqueue_s, 1) if p.enqueue_s else None}),
        Figure(NAME, f"Redis per 1,000 waiting jobs ({p.jobs:,})", p.waiting_kb_per_job * 1000 / 1024, "MB",
               base, first.waiting_kb_per_job * 1000 / 1024),
        Figure(NAME, f"worker RSS, {p.jobs:,} jobs waiting", p.worker_rss_mb, "MB", base, first.worker_rss_mb),
        Figure(NAME, f"`mjq status` of a {p.jobs:,}-job batch", p.status_ms, "ms", base, first.status_ms,
               target=f"≤ {STATUS_TARGET_MS:.0f} ms" if largest else "",
               met=p.status_ms <= STATUS_TARGET_MS if largest else None),
        Figure(NAME, f"`mjq export` of {p.jobs:,} jobs", p.export_s, "s", base, first.export_s,
               target=f"≤ {EXPORT_TARGET_S:.0f} s at 100,000" if p.jobs >= 100_000 else "",
               met=p.export_s <= EXPORT_TARGET_S if p.jobs >= 100_000 else None),
        Figure(NAME, f"dashboard batch page of a {p.jobs:,}-job batch", p.dashboard_ms, "ms", base,
               first.dashboard_ms),
    ]
    if p.finished_kb_per_job is not None:
        row.append(Figure(NAME, f"Redis per finished job, results included ({p.jobs:,})", p.finished_kb_per_job,
                          "KB", base, first.finished_kb_per_job, target=f"≤ {FINISHED_TARGET_KB:g} KB",
                          met=p.finished_kb_per_job <= FINISHED_TARGET_KB,
                          notes={"used_memory_kb_per_job": round(p.finished_used_kb_per_job or 0.0, 2)}))
    return mark(row, p.reached)
