"""Run the simulator on a real socket: in a background thread (tests, benchmarks) or in the foreground."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from simulator.app import SimulatorApp, create_app
from simulator.config import SimConfig


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SimulatorServer:
    """A simulator served by uvicorn in a daemon thread; ``.url`` is its base URL once started."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.host = host
        self.port = port or _free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.app = create_app(self.config, self.url)
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host=host, port=self.port, log_level="warning", access_log=False,
                           lifespan="on", timeout_keep_alive=30)
        )
        self._thread: threading.Thread | None = None

    @property
    def sim(self) -> SimulatorApp:
        state: Any = self.app.state
        return state.sim  # type: ignore[no-any-return]

    def start(self, timeout_s: float = 10.0) -> SimulatorServer:
        self._thread = threading.Thread(target=self._server.run, name="simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"simulator did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SimulatorAdmin:
    """A small client of the admin API: faults, stats, reset, tasks."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._http = httpx.Client(base_url=self.url, timeout=30.0)

    def faults(self, **changes: Any) -> dict[str, Any]:
        response = self._http.post("/admin/faults", json=changes)
        response.raise_for_status()
        return dict(response.json())

    def stats(self) -> dict[str, Any]:
        return dict(self._http.get("/admin/stats").json())

    def tasks(self) -> list[dict[str, Any]]:
        return list(self._http.get("/admin/tasks").json())

    def reset(self, config: bool = True) -> None:
        self._http.post("/admin/reset", json={"config": config}).raise_for_status()

    def finish(self, task_id: str) -> bool:
        return self._http.post(f"/admin/tasks/{task_id}/finish").status_code == 200

    def close(self) -> None:
        self._http.close()
