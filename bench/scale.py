"""5. Memory and broker load at scale: many queued jobs while C run upstream.

mjqueue parks a job that has no slot (no worker thread, no broker message); the baseline is the common
alternative, a task that retries itself with a countdown while no slot is free (``bench.naive``), whose
messages the worker holds in memory. Broker load is every command Redis processed in the window, divided by
the waiting jobs and the window's minutes; the naive waiters retry once per window and their figure is given
for a waiter that retries every minute (``RETRY_EVERY_S``), whatever the window.

Each side has a bound to get its waiters in place (derived from their number); a side that cannot (a busy
machine, where the naive worker cannot keep up with its own retries) is measured with what it reached,
marked partial.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.bounds import FIXED_S, Reached, mark, wait_bounded
from bench.report import Figure
from bench.stack import CAPACITY, enqueue, prompts, running
from worker.devstack.redisserver import RedisServer
from worker.devstack.stack import Service, worker_argv

RSS_TARGET_MB = 250.0
RETRY_EVERY_S = 60.0  # the naive waiter's figure is for a retry every minute
PARK_RATE = 50.0  # jobs/s our worker is given to park the batch (the bound: FIXED_S + n / PARK_RATE)
NAIVE_RATE = 40.0  # waiter runs/s the naive worker is given to look once at each waiter (idle: well over 100/s)


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass(frozen=True)
class Load:
    waiting: int
    worker_rss_mb: float
    redis_mb: float
    commands_per_job_minute: float
    reached: Reached


def _commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def _window(client: redis.Redis, pid: int, waiting: int, seconds: float, reached: Reached,
            retry_s: float | None = None) -> Load:
    """Commands per waiting job per minute over the window (for waiters retrying every ``retry_s``, given
    for one retrying every minute)."""
    before = _commands(client)
    time.sleep(seconds)
    per_minute = (_commands(client) - before - 1) / max(1, waiting) / (seconds / 60)
    if retry_s is not None:
        per_minute *= retry_s / RETRY_EVERY_S
    return Load(waiting, rss_mb(pid), int(client.info("memory")["used_memory"]) / 2**20, per_minute, reached)


def measure_ours(root: Path, time_factor: float, n: int, window_s: float) -> Load:
    """``n`` jobs queued behind C running ones that last longer than the window."""
    hold_s = 10 * window_s + 120  # the C jobs in flight outlast the measurement
    env = {"MJQ_JOB_DEADLINE_S": f"{3 * hold_s:g}", "MJQ_EXPECTED_FAST_S": f"{hold_s:g}"}
    with running(root, "scale", time_factor=time_factor, env=env,
                 sim_args=("--fast-duration", f"{hold_s / time_factor:g}")) as bench:
        from worker.store.runtime import runtime

        ledger = runtime().ledger
        enqueue(prompts(n, "scale"), "scale")
        waiting = n - CAPACITY
        reached = wait_bounded(lambda: int(ledger.waiting_count("fast")), waiting, FIXED_S + n / PARK_RATE,
                               finished=lambda: bench.redis.llen("batch") == 0, poll_s=0.5)
        time.sleep(2.0)  # the last admissions' follow-on work settles
        return _window(bench.redis, bench.pid("worker"), max(1, reached.done), window_s, reached)


def measure_naive(root: Path, n: int, window_s: float) -> Load:
    """``n`` naive waiters retrying every ``window_s`` (so each retries once in the window)."""
    root.mkdir(parents=True, exist_ok=True)
    with RedisServer(root / "naive-redis") as server:
        env = {**os.environ, "BENCH_REDIS_URL": server.url, "BENCH_NAIVE_RETRY_S": f"{window_s:g}"}
        argv = worker_argv(concurrency=8, queues=("naive",), loglevel="WARNING")
        argv[argv.index("worker.app")] = "bench.naive"
        worker = Service("naive-worker", argv, env, root / "naive-worker.log", None)
        worker.start()
        client = redis.Redis.from_url(server.url)
        try:
            from bench.naive import RUNS, app, naive_wait

            app.conf.broker_url = server.url
            started = wait_bounded(lambda: int(client.exists("_kombu.binding.naive")), 1, 60, poll_s=0.5)
            if started.partial:
                raise RuntimeError(f"the naive worker did not start in 60 s (log: {root / 'naive-worker.log'})")
            for _ in range(n):
                naive_wait.apply_async(("slots",), queue="naive")
            # every waiter has looked once and is held by the worker, counting down to its retry; a worker
            # that cannot keep up with its own retries leaves some in the queue: measured as they are
            slack = max(10, n // 50)
            reached = wait_bounded(lambda: n - max(0, int(client.llen("naive")) - slack), n,
                                   FIXED_S + n / NAIVE_RATE, finished=lambda: int(client.get(RUNS) or 0) >= n,
                                   poll_s=0.5)
            assert worker.process is not None
            return _window(client, worker.process.pid, n, window_s, reached, retry_s=window_s)
        finally:
            client.close()
            worker.terminate()
            worker.wait(15)


def figures(ours: Load, naive: Load) -> list[Figure]:
    name = "5 scale"
    return mark([
        Figure(name, f"worker RSS, {ours.waiting:,} jobs waiting + {CAPACITY} in flight", ours.worker_rss_mb, "MB",
               "retry-with-countdown waiters", naive.worker_rss_mb, target=f"≤ {RSS_TARGET_MB:.0f} MB",
               met=ours.worker_rss_mb <= RSS_TARGET_MB),
        Figure(name, "Redis memory", ours.redis_mb, "MB", "retry-with-countdown waiters", naive.redis_mb),
        Figure(name, "broker commands per waiting job per minute", ours.commands_per_job_minute, "",
               "retry-with-countdown waiters", naive.commands_per_job_minute,
               notes={"naive_retry_s": RETRY_EVERY_S}),
    ], ours.reached, naive.reached)
