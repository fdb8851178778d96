"""3. Enqueue rate: prompts per second through ``mjq batch`` and the Python API, against raw ``apply_async``.

Each producer runs alone against an empty Valkey with no worker consuming, so the figure is the producer's
own cost (validation, image handling, ledger look-ups, message building) and nothing else.
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

from bench.report import Figure
from bench.stack import prompts
from worker.devstack.redisserver import RedisServer

TARGET = 0.7  # of raw apply_async


def _point_at(url: str) -> None:
    from worker.devstack.stack import reload_settings

    os.environ["MJQ_REDIS_URL"] = url
    reload_settings()


def do_nothing(*_args: Any) -> None:
    """The raw baseline's task body."""


def _raw_rate(n: int) -> float:
    """``apply_async`` of a task that does nothing, on the same app, queue and Redis."""
    from worker.app import app

    noop: Any = app.tasks.get("bench.noop") or app.task(name="bench.noop")(do_nothing)
    started = time.perf_counter()
    for i in range(n):
        noop.apply_async(args=(i,), queue="batch")
    return n / (time.perf_counter() - started)


def _api_rate(n: int) -> float:
    import tasks

    started = time.perf_counter()
    for i, prompt in enumerate(prompts(n, "enqueue")):
        tasks.imagine.apply_async(kwargs={"prompt": prompt, "batch_id": "api", "job_id": f"api-{i:05d}"})
    return n / (time.perf_counter() - started)


def _cli_rate(n: int, root: Path, url: str) -> tuple[float, float]:
    """(prompts/s of the whole ``mjq batch`` command, seconds of its interpreter start-up)."""
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
    started = time.perf_counter()
    subprocess.run([*cli, "batch", str(path), "--batch-id", "cli", "--json"], env=env, check=True,
                   capture_output=True)
    return n / (time.perf_counter() - started), startup


def run(root: Path, n: int) -> list[Figure]:
    root.mkdir(parents=True, exist_ok=True)
    with RedisServer(root / "redis", appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        _point_at(server.url)
        try:
            raw = _raw_rate(n)
            client.flushall()
            api = _api_rate(n)
            client.flushall()
            cli, startup = _cli_rate(n, root, server.url)
            queued = int(client.llen("batch"))
        finally:
            client.close()
    if queued != n:
        raise RuntimeError(f"mjq batch queued {queued} of {n} prompts")
    name = "3 enqueue"
    return [
        Figure(name, f"Python API, {n:,} prompts", api, "/s", "raw apply_async (no-op)", raw,
               target=f"≥ {TARGET} of raw", met=api / raw >= TARGET),
        Figure(name, f"`mjq batch` CSV, {n:,} prompts (incl. {startup:.1f} s start-up)", cli, "/s",
               "raw apply_async (no-op)", raw, target=f"≥ {TARGET} of raw", met=cli / raw >= TARGET),
    ]
