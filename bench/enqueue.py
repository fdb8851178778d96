"""3. Enqueue rate: prompts per second through ``mjq batch`` and the Python API, against raw ``apply_async``.

Each producer runs alone against an empty Valkey with no worker consuming, so the figure is the producer's
own cost (validation, image handling, ledger look-ups, message building) and nothing else. Each has a bound
(``FIXED_S + n / MIN_RATE``); one that has not enqueued everything in it is stopped there, and its rate is
what it enqueued over the time it took, marked partial.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench.bounds import FIXED_S, Deadline, Reached, mark
from bench.report import Figure
from bench.stack import prompts
from worker.devstack.redisserver import RedisServer

TARGET = 0.7  # of raw apply_async
MIN_RATE = 100.0  # prompts/s a producer is given (its bound); each does about 1,000/s on an idle machine


def bound_s(n: int) -> float:
    return FIXED_S + n / MIN_RATE


def _point_at(url: str) -> None:
    from worker.devstack.stack import reload_settings

    os.environ["MJQ_REDIS_URL"] = url
    reload_settings()


def do_nothing(*_args: Any) -> None:
    """The raw baseline's task body."""


def _raw_rate(n: int) -> tuple[float, Reached]:
    """``apply_async`` of a task that does nothing, on the same app, queue and Redis."""
    from worker.app import app

    noop: Any = app.tasks.get("bench.noop") or app.task(name="bench.noop")(do_nothing)
    deadline = Deadline(bound_s(n), time.perf_counter)
    done = 0
    for i in range(n):
        if deadline.passed:
            break
        noop.apply_async(args=(i,), queue="batch")
        done += 1
    return done / deadline.elapsed_s, deadline.reached(done, n)


def _api_rate(n: int) -> tuple[float, Reached]:
    import tasks

    deadline = Deadline(bound_s(n), time.perf_counter)
    done = 0
    for i, prompt in enumerate(prompts(n, "enqueue")):
        if deadline.passed:
            break
        tasks.imagine.apply_async(kwargs={"prompt": prompt, "batch_id": "api", "job_id": f"api-{i:05d}"})
        done += 1
    return done / deadline.elapsed_s, deadline.reached(done, n)


def _cli_rate(n: int, root: Path, url: str, client: redis.Redis) -> tuple[float, float, Reached]:
    """(prompts/s of the whole ``mjq batch`` command, seconds of its interpreter start-up, how far it got)."""
    path = root / "enqueue.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "prompt", "mode"])
        writer.writerows((f"cli-{i:05d}", p, "fast") for i, p in enumerate(prompts(n, "enqueue")))
    env = {**os.environ, "MJQ_REDIS_URL": url}
    cli = [sys.executable, "-m", "worker.cli"]
    started = time.perf_counter()
    subprocess.run([*cli, "--help"], env=env, check=True, capture_output=True)
    startup = time.perf_counter() - started
    deadline = Deadline(bound_s(n), time.perf_counter)
    try:
        subprocess.run([*cli, "batch", str(path), "--batch-id", "cli", "--json"], env=env, check=True,
                       capture_output=True, timeout=deadline.bound_s)
    except subprocess.TimeoutExpired:  # stopped at its bound: the rate of what it queued
        queued = int(client.llen("batch"))
        return queued / deadline.elapsed_s, startup, deadline.reached(queued, n, complete=False)
    queued = int(client.llen("batch"))
    if queued != n:
        raise RuntimeError(f"mjq batch queued {queued} of {n} prompts")
    return n / deadline.elapsed_s, startup, deadline.reached(n, n)


def run(root: Path, n: int) -> list[Figure]:
    root.mkdir(parents=True, exist_ok=True)
    with RedisServer(root / "redis", appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        _point_at(server.url)
        try:
            raw, raw_reached = _raw_rate(n)
            client.flushall()
            api, api_reached = _api_rate(n)
            client.flushall()
            cli, startup, cli_reached = _cli_rate(n, root, server.url, client)
        finally:
            client.close()
    name = "3 enqueue"
    return [
        *mark([Figure(name, f"Python API, {n:,} prompts", api, "/s", "raw apply_async (no-op)", raw,
                      target=f"≥ {TARGET} of raw", met=api / raw >= TARGET)], api_reached, raw_reached),
        *mark([Figure(name, f"`mjq batch` CSV, {n:,} prompts (incl. {startup:.1f} s start-up)", cli, "/s",
                      "raw apply_async (no-op)", raw, target=f"≥ {TARGET} of raw", met=cli / raw >= TARGET)],
              cli_reached, raw_reached),
    ]
