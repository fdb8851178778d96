"""Simulator fixtures: one real server for the session, reset before each test that uses it.

- ``sim_server``: the session's :class:`SimulatorServer` (key ``test-key``, time factor 0.01).
- ``sim``: that server reset (tasks, counters and configuration); a :class:`SimulatorAdmin` with ``.url``,
  ``.api_key``, ``.faults(**kw)``, ``.stats()``, ``.tasks()``, ``.reset()``, ``.finish(id)``, ``.config()``.
- ``sim_api``: raw HTTP to the simulator (httpx, no project code), for the simulator's own tests.
- ``sim_client``: our ``worker.mjapi.MidjourneyClient`` pointed at it (imported lazily).
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from simulator.config import SimConfig
from simulator.server import SimulatorAdmin, SimulatorServer
from tests.support import patience

SIM_KEY = "test-key"
SIM_TIME_FACTOR = 0.01
TERMINAL = ("SUCCESS", "FAILURE", "CANCEL")


def png_data_uri(colour: tuple[int, int, int] = (200, 30, 30), size: int = 16) -> str:
    """A small real PNG as a data URI (inputs for describe, blend, swap, upload)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def wait_for_task(admin: SimulatorAdmin, prompt: str, timeout: float = 5.0) -> dict[str, Any]:
    """Block until the simulator holds a task for ``prompt`` (e.g. one whose answer was delayed or lost)."""
    deadline = patience.deadline(timeout)
    while time.monotonic() < deadline:
        for task in admin.tasks():
            if task.get("prompt") == prompt:
                return task
        time.sleep(0.05)
    raise AssertionError(f"the simulator never recorded a task for {prompt!r}")


class SimApi:
    """Plain HTTP calls to the simulator's /mj API; deliberately shares no code with ``worker.mjapi``."""

    def __init__(self, url: str, api_key: str, timeout: float = 10.0) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST and return the JSON answer (any HTTP status)."""
        return dict(self.http.post(path, json=body).json())

    def imagine(self, prompt: str, **fields: Any) -> str:
        """Submit an imagine that must be accepted; the task id (a string)."""
        answer = self.post("/mj/submit/imagine", {"prompt": prompt, **fields})
        assert answer["code"] in (1, 22), answer
        return str(answer["result"])

    def action(self, task_id: str, custom_id: str, **fields: Any) -> dict[str, Any]:
        return self.post("/mj/submit/action", {"taskId": task_id, "customId": custom_id, **fields})

    def fetch(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/mj/task/{task_id}/fetch")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, task_id: str, until: tuple[str, ...] = TERMINAL, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until the task's status is one of ``until``."""
        deadline = patience.deadline(timeout)
        while True:
            task = self.fetch(task_id)
            if task["status"] in until:
                return task
            assert time.monotonic() < deadline, f"task {task_id} still {task['status']} {task['progress']}"
            time.sleep(0.01)

    def finished(self, prompt: str, **fields: Any) -> dict[str, Any]:
        """Imagine and wait for SUCCESS."""
        task = self.wait(self.imagine(prompt, **fields))
        assert task["status"] == "SUCCESS", task
        return task

    def button(self, task: dict[str, Any], needle: str) -> str:
        """The customId of the task's button whose customId contains ``needle``."""
        found = [b["customId"] for b in task["buttons"] if needle in b["customId"]]
        assert found, f"no button {needle!r} in {[b['customId'] for b in task['buttons']]}"
        return str(found[0])

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimulatorServer]:
    # lenient_auth: the worker's default header is a Bearer token, which the default profile (plus) refuses;
    # profile tests switch it off (``sim.faults(profile=..., lenient_auth=False)``)
    config = SimConfig(api_key=SIM_KEY, time_factor=SIM_TIME_FACTOR, lenient_auth=True)
    server = SimulatorServer(config).start()
    yield server
    server.stop()


@pytest.fixture
def sim(sim_server: SimulatorServer) -> Iterator[SimulatorAdmin]:
    """The session simulator with tasks, counters and configuration reset: ``.faults() .stats() .tasks()``."""
    admin = SimulatorAdmin(sim_server.url, SIM_KEY)
    admin.reset(config=True)
    yield admin
    admin.close()


@pytest.fixture
def sim_api(sim: SimulatorAdmin) -> Iterator[SimApi]:
    api = SimApi(sim.url, SIM_KEY)
    yield api
    api.close()


@pytest.fixture
def sim_client(sim: SimulatorAdmin) -> Iterator[Any]:
    from worker.mjapi import MidjourneyClient

    client = MidjourneyClient(sim.url, sim.api_key or "", timeout=5.0)
    yield client
    client.close()
