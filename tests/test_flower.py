"""Other services as producers: Flower's REST API (any language) and Celery's send_task (Python without our
code), both against the real stack: a real Flower process started with flower.conf, a real worker, the
simulator over HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.mjq import shared_stack
from worker.devstack import DevStack, flower_conf_path
from worker.redisserver import free_port

AUTH = ("ops", "s3cret-flower")


@pytest.fixture(scope="module")
def stack() -> DevStack:
    return shared_stack()


@pytest.fixture(scope="module")
def flower(stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Flower exactly as documented: `celery -A worker.app flower --conf=flower.conf`, auth from the env."""
    port = free_port()
    db = tmp_path_factory.mktemp("flower") / "flower.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MJQ_", "FLOWER_"))}
    env.update({k: v for k, v in stack.env.items() if k.startswith("MJQ_")})
    env.update({"FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}", "FLOWER_PORT": str(port), "FLOWER_DB": str(db)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "flower", f"--conf={flower_conf_path()}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "flower exited"
        assert time.monotonic() < deadline, "flower did not start"
        time.sleep(0.2)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)
    assert any(p.name.startswith("flower.db") for p in db.parent.iterdir()), "persistent state was not saved"


def wait_for(check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_flower_requires_the_configured_auth_and_lists_our_tasks(flower: str) -> None:
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    workers = httpx.get(f"{flower}/api/workers", params={"refresh": "1"}, auth=AUTH, timeout=20).json()
    registered = {name for info in workers.values() for name in info.get("registered", [])}
    assert {
        "tasks.imagine",
        "tasks.blend",
        "tasks.describe",
        "tasks.action",
        "tasks.fetch_task",
    } <= registered


def test_flower_rest_async_apply_runs_a_real_job(flower: str, stack: DevStack) -> None:
    answer = httpx.post(
        f"{flower}/api/task/async-apply/tasks.imagine",
        auth=AUTH,
        timeout=10,
        json={"kwargs": {"prompt": "a lighthouse from flower --ar 3:2", "mode": "fast"}},
    )
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["task-id"]

    def finished() -> dict[str, Any] | None:
        got = httpx.get(f"{flower}/api/task/result/{task_id}", auth=AUTH, timeout=10).json()
        return got if got.get("state") in ("SUCCESS", "FAILURE") else None

    result = wait_for(finished, 60)
    assert result["state"] == "SUCCESS", result
    job = result["result"]
    assert job["status"] == "succeeded" and job["upstream_id"] and job["image_url"]
    assert Path(job["image_path"]).is_file()
    # Flower's own task list shows it by name, with short argument reprs (events on, no base64, no key).
    listed = wait_for(
        lambda: (
            httpx.get(f"{flower}/api/tasks", params={"taskname": "tasks.imagine"}, auth=AUTH, timeout=10)
            .json()
            .get(task_id)
        )
    )
    assert listed["name"] == "tasks.imagine"
    assert "lighthouse" in str(listed.get("kwargs")) and len(str(listed.get("kwargs"))) < 1100


def test_send_task_from_a_service_without_our_code(stack: DevStack) -> None:
    """What a Python service does: a bare Celery app, the task by name, JSON kwargs, a result back."""
    from celery import Celery

    client = Celery("any-service", broker=stack.redis_url, backend=stack.redis_url, set_as_current=False)
    try:
        result = client.send_task(
            "tasks.imagine", kwargs={"prompt": "a fox via send_task", "mode": "turbo"}, queue="interactive"
        )
        job = result.get(timeout=60)
    finally:
        client.close()
    assert job["status"] == "succeeded" and job["prompt"].startswith("a fox via send_task")
    assert job["mode"] == "turbo" and job["image_sha256"]
