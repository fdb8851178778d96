"""Other services as producers: Flower's REST API (any language) and Celery's send_task (Python without our
code), both against the real stack: a real Flower process started with flower.conf, a real worker, the
simulator over HTTP.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import patience
from tests.support.images import png_data_uri
from tests.support.mjq import shared_stack
from tests.support.serve import wait_for
from worker.devstack.redisserver import free_port
from worker.devstack.stack import DevStack, flower_conf_path

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
    deadline = patience.deadline(30)
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
    prompt = "a lighthouse from flower on a stormy night, waves breaking on the rocks --ar 3:2"
    answer = httpx.post(
        f"{flower}/api/task/async-apply/tasks.imagine",
        auth=AUTH,
        timeout=10,
        json={"kwargs": {"prompt": prompt, "base64_array": [png_data_uri("teal")], "mode": "fast"}},
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
    # our short repr, not Celery's (the full prompt and image, cut at 1,024 characters)
    assert listed["kwargs"] == f"{{prompt={prompt[:40] + '…'!r}, images=1×PNG {_size(job)}, mode=fast}}"
    assert listed["args"] == "()"


def _size(job: dict[str, Any]) -> str:
    """How the repr shows the 1 input image of ``job`` (sizes as media.describe_images rounds them)."""
    from worker.mjapi.images import describe_images

    return describe_images([png_data_uri("teal")]).split(" ", 1)[1]


def test_flower_async_apply_with_bad_input_answers_the_validation_message(flower: str) -> None:
    """Tried as a service would send it: Flower used to answer an empty 500 (the error was lost inside it)."""
    for kwargs, field in (({"prompt": "", "mode": "warp"}, "mode"), ({"prompt": "", "mode": "fast"}, "prompt")):
        answer = httpx.post(
            f"{flower}/api/task/async-apply/tasks.imagine", auth=AUTH, timeout=10, json={"kwargs": kwargs}
        )
        assert answer.status_code == 400, (answer.status_code, answer.text)
        body = answer.json()
        assert body["field"] == field and body["error"].startswith(f"field '{field}':"), body
    # Flower's own errors keep their answers
    unknown = httpx.post(f"{flower}/api/task/async-apply/tasks.nope", auth=AUTH, timeout=10, json={})
    assert unknown.status_code == 404 and "Unknown task" in unknown.text


def test_the_dev_stack_gives_its_services_a_webhook_secret(stack: DevStack) -> None:
    from worker.settings import webhook_secret_problem

    assert stack.env.get("MJQ_WEBHOOK_BASE_URL")
    assert webhook_secret_problem(stack.env.get("MJQ_WEBHOOK_SECRET", "")) is None


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


def test_flower_tasks_page_shows_our_job_fields(flower: str, stack: DevStack) -> None:
    """flower.conf's columns are the ones Flower draws (it drops unknown names silently), and each carries a
    job field: the job id, its short arguments, its result and its queue."""
    job = {"prompt": "a koi for the tasks page", "mode": "turbo", "batch_id": "flower-page", "job_id": "fp-1"}
    answer = httpx.post(f"{flower}/api/task/async-apply/tasks.imagine", auth=AUTH, timeout=10, json={"kwargs": job})
    assert answer.status_code == 200, answer.text
    assert answer.json()["task-id"] == "fp-1"  # the job id is the task id
    result = f"{flower}/api/task/result/fp-1"
    wait_for(lambda: httpx.get(result, auth=AUTH, timeout=10).json().get("state") == "SUCCESS", 60)

    conf: dict[str, Any] = {}
    exec(compile(flower_conf_path().read_text(), "flower.conf", "exec"), conf)
    configured = conf["tasks_columns"].split(",")
    page = httpx.get(f"{flower}/tasks", auth=AUTH, timeout=10).text
    drawn = re.findall(r'<th data-column="([^"]+)"', page)
    assert drawn == configured and {"uuid", "kwargs", "result", "routing_key"} <= set(drawn)

    def row() -> dict[str, Any] | None:
        query = {
            "draw": "1",
            "start": "0",
            "length": "100",
            "search[value]": "",
            "order[0][column]": "0",
            "order[0][dir]": "desc",
            "columns[0][data]": "received",
        }
        table = httpx.get(f"{flower}/tasks/datatable", params=query, auth=AUTH, timeout=10).json()
        found = [r for r in table["data"] if r["uuid"] == "fp-1"]
        return found[0] if found and found[0].get("result") else None

    shown = wait_for(row)
    assert shown["name"] == "tasks.imagine" and shown["state"] == "SUCCESS"
    assert shown["routing_key"] == "batch"
    for text in ("prompt='a koi for the tasks page'", "mode=turbo", "batch_id=flower-page", "job_id=fp-1"):
        assert text in shown["kwargs"], shown["kwargs"]
    assert "'status': 'succeeded'" in shown["result"] and "'upstream_id': " in shown["result"], shown["result"]


def test_flower_task_list_is_jobs_not_housekeeping(flower: str, stack: DevStack) -> None:
    """While the beat runs housekeeping several times over, Flower's task list holds the job and its follow-up
    (with their results) and not one plumbing task (housekeeping, polls, finishing, callbacks, alerts)."""
    from worker.app import HOUSEKEEPING_TASK, PLUMBING_TASKS

    log = stack.log_dir / "worker.log"

    def housekeeping_runs() -> int:
        return log.read_text(errors="replace").count(f"Task {HOUSEKEEPING_TASK}[")

    before = housekeeping_runs()
    job = {"prompt": "a harbour crane at dawn for the task list", "mode": "turbo", "then": "U1", "job_id": "fl-hk-1"}
    answer = httpx.post(f"{flower}/api/task/async-apply/tasks.imagine", auth=AUTH, timeout=10, json={"kwargs": job})
    assert answer.status_code == 200, answer.text

    def followup_listed() -> dict[str, Any] | None:
        listed: dict[str, Any] = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=10).json()
        done = [t for t in listed.values() if str(t.get("name", "")).startswith("tasks.followups.")
                and t.get("state") == "SUCCESS"]
        return listed if done and housekeeping_runs() >= before + 5 else None

    listed = wait_for(followup_listed, 120)
    names = {str(t.get("name")) for t in listed.values()}
    assert HOUSEKEEPING_TASK not in names and not names & PLUMBING_TASKS, sorted(names)
    root = listed["fl-hk-1"]
    assert root["name"] == "tasks.imagine" and root["state"] == "SUCCESS" and "fl-hk-1" in str(root["result"])
    [child] = [t for t in listed.values() if str(t.get("name", "")).startswith("tasks.followups.")]
    assert "succeeded" in str(child["result"]), child
