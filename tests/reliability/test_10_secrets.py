"""Scenario 10: secrets. A batch with faults (5xx, banned prompts, failures, lost answers) runs with the
worker at DEBUG and Flower watching; the API key and the webhook secret appear in no log line, no broker or
result-backend value (task arguments, results, exception texts), no ledger record and no Flower API answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.reliability.audit import audit
from tests.reliability.conftest import SECRET_API_KEY, Rel
from tests.support.stack import ROOT, WEBHOOK_SECRET
from worker.redisserver import free_port


@pytest.fixture
def flower(rel_debug: Rel, tmp_path: Path) -> Iterator[str]:
    """A real Flower process on the stack's broker (unauthenticated API, 127.0.0.1 only)."""
    port = free_port()
    env = {**rel_debug.stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    log = (tmp_path / "flower.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/workers", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, (tmp_path / "flower.log").read_text()[-2000:]
        time.sleep(0.2)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def redis_text(client: redis.Redis) -> Iterator[tuple[str, str]]:
    """Every key of the broker/backend/ledger with its value as text (messages, results, records)."""
    for key in client.scan_iter("*", count=1000):
        kind = client.type(key)
        if kind == "string":
            value = str(client.get(key))
        elif kind == "hash":
            value = json.dumps(client.hgetall(key))
        elif kind == "list":
            value = json.dumps(client.lrange(key, 0, -1))
        elif kind == "zset":
            value = json.dumps(client.zrange(key, 0, -1))
        elif kind == "set":
            value = json.dumps(sorted(client.smembers(key)))
        else:
            value = ""
        yield key, value


def test_secrets_never_leak(rel_debug: Rel, flower: str, started: float) -> None:
    from celery.result import AsyncResult

    from worker.app import app

    rel = rel_debug
    assert os.environ["MJQ_API_KEY"] == SECRET_API_KEY
    rel.sim.faults(http_500_rate=0.15, failure_rate=0.1, banned_words=["forbidden"],
                   read_delay_rate=0.05, read_delay_s=2.5, seed=13)

    def prompt(i: int) -> str:
        return f"a forbidden gate #{i}" if i % 9 == 4 else f"a glass greenhouse #{i}"

    ids = rel.enqueue("secrets", prompt=prompt)
    rel.wait_finished("secrets", timeout=120 if rel.full else 60)
    fig = audit(rel.stack, rel.sim, "10 secrets (debug logs, Flower)", ["secrets"], ids, started=started,
                full=rel.full)
    assert fig.ok, fig.line()

    secrets = {"api key": SECRET_API_KEY, "webhook secret": WEBHOOK_SECRET}
    sources: dict[str, str] = {}
    logs = sorted(rel.stack.log_path.parent.glob("worker-rel-debug*.log"))
    log_text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "DEBUG/" in log_text, "the worker did not log at DEBUG"
    sources["worker log"] = log_text
    sources.update({f"redis {k}": v for k, v in redis_text(rel.stack.redis)})
    failures = [AsyncResult(i, app=app) for i in ids]
    sources["exceptions"] = "\n".join(repr(r.result) + str(r.traceback) for r in failures if r.state == "FAILURE")
    assert sources["exceptions"], "the batch produced no failure to inspect"
    flower_tasks = httpx.get(f"{flower}/api/tasks", params={"limit": 5000}, timeout=10).json()
    assert len(flower_tasks) >= len(ids), "Flower saw too few tasks"
    sources["flower /api/tasks"] = json.dumps(flower_tasks)
    leaks = [(what, where) for where, text in sources.items() for what, secret in secrets.items() if secret in text]
    assert not leaks, leaks
    fig.extra.update({"sources_checked": len(sources), "log_bytes": len(log_text), "flower_tasks": len(flower_tasks)})
    print(f"secrets checked in {len(sources)} sources ({len(log_text)} log bytes, {len(flower_tasks)} Flower tasks)")
