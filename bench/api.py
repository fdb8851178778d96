"""8. The HTTP API: jobs/s of one ``POST /v1/batches`` of N JSONL rows, against ``mjq batch`` of the same file.

Both run in the same phase against the same empty Valkey with no worker consuming, so the figure is the
producer's own cost: for the API, the request (upload, key check, the rules of ``mjq batch``, owner and quota
records, enqueue) with ``mjq serve`` already running; for ``mjq batch``, the whole command, interpreter start-up
included (as an operator runs it). Each side has a bound (``FIXED_S + n / MIN_RATE``); a side stopped there
gives the rate of what it had queued, marked partial.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from bench.bounds import FIXED_S, Deadline, Reached, mark
from bench.report import Figure
from bench.stack import prompts
from worker.devstack.processes import stop_process
from worker.devstack.redisserver import RedisServer, free_port
from worker.keyfile import add_key

TARGET = 0.5  # of `mjq batch`: the HTTP hop and the API's records may cost, not more than half
MIN_RATE = 100.0  # jobs/s a side is given (its bound)
QUEUE = "batch"


def bound_s(n: int) -> float:
    return FIXED_S + n / MIN_RATE


def write_rows(path: Path, n: int) -> bytes:
    rows = (json.dumps({"id": f"row-{i:05d}", "prompt": p, "mode": "fast"}) for i, p in enumerate(prompts(n, "api")))
    data = ("\n".join(rows) + "\n").encode()
    path.write_bytes(data)
    return data


def _serve(root: Path, url: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """``mjq serve`` on the bench Valkey with one key; (process, base URL, key)."""
    keys_file = root / "keys.toml"
    key = add_key(keys_file, "bench")
    port = free_port()
    env = {**os.environ, "MJQ_REDIS_URL": url, "MJQ_SERVE_PORT": str(port), "MJQ_SERVE_KEYS_FILE": str(keys_file)}
    log = (root / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve"], env=env, cwd=root, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + FIXED_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mjq serve exited; see {root / 'serve.log'}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base, key
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(proc, 10.0)
    raise RuntimeError(f"mjq serve did not start; see {root / 'serve.log'}")


def _api_rate(base: str, key: str, data: bytes, n: int, client: redis.Redis) -> tuple[float, Reached]:
    deadline = Deadline(bound_s(n), time.perf_counter)
    try:
        answer = httpx.post(f"{base}/v1/batches", params={"batch_id": "http"}, content=data,
                            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"},
                            timeout=deadline.bound_s)
    except httpx.TimeoutException:  # stopped at its bound: the rate of what it queued
        queued = int(client.llen(QUEUE))
        return queued / deadline.elapsed_s, deadline.reached(queued, n, complete=False)
    elapsed = deadline.elapsed_s
    if answer.status_code != 201 or answer.json().get("submitted") != n:
        raise RuntimeError(f"POST /v1/batches answered {answer.status_code}: {answer.text[:300]}")
    return n / elapsed, deadline.reached(n, n)


def _cli_rate(path: Path, url: str, n: int, client: redis.Redis) -> tuple[float, Reached]:
    env = {**os.environ, "MJQ_REDIS_URL": url}
    deadline = Deadline(bound_s(n), time.perf_counter)
    try:
        subprocess.run([sys.executable, "-m", "worker.cli", "batch", str(path), "--batch-id", "cli", "--json"],
                       env=env, check=True, capture_output=True, timeout=deadline.bound_s)
    except subprocess.TimeoutExpired:
        queued = int(client.llen(QUEUE))
        return queued / deadline.elapsed_s, deadline.reached(queued, n, complete=False)
    elapsed = deadline.elapsed_s
    queued = int(client.llen(QUEUE))
    if queued != n:
        raise RuntimeError(f"mjq batch queued {queued} of {n} rows")
    return n / elapsed, deadline.reached(n, n)


def run(root: Path, n: int) -> list[Figure]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "rows.jsonl"
    data = write_rows(path, n)
    with RedisServer(root / "redis", appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        proc, base, key = _serve(root, server.url)
        try:
            api, api_reached = _api_rate(base, key, data, n, client)
            stop_process(proc, 10.0)
            client.flushall()
            cli, cli_reached = _cli_rate(path, server.url, n, client)
        finally:
            stop_process(proc, 10.0)
            client.close()
    return mark(
        [Figure("9 http api", f"POST /v1/batches, {n:,} JSONL rows in one request", api, "/s",
                "`mjq batch` of the same file (incl. start-up)", cli, target=f"≥ {TARGET} of mjq batch",
                met=api / cli >= TARGET if cli else None)],
        api_reached, cli_reached,
    )
