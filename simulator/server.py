"""Run the simulator on a real socket in a background thread (tests, benchmarks, the dev stack)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from simulator.app import SimulatorApp, create_app
from simulator.config import SimConfig


class SimulatorServer:
    """A simulator served by uvicorn in a daemon thread; port 0 picks a free port, ``.url`` is the base URL.

    The socket is bound here, before the thread starts, so the port is known and can never be lost to a race.
    """

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 public_url: str | None = None) -> None:
        self.config = config or SimConfig()
        self.host = host
        # proto IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so (else +40 ms/request)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        # public_url: the base of imageUrl values; None = this server's own URL, "" = learnt from API callers
        self.app = create_app(self.config, self.url if public_url is None else public_url)
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on",
                           timeout_keep_alive=30, backlog=2048, proxy_headers=False)
        )
        self._thread: threading.Thread | None = None

    @property
    def sim(self) -> SimulatorApp:
        """The app behind the server (its engine lives on the server thread: read, don't mutate)."""
        state: Any = self.app.state
        return state.sim  # type: ignore[no-any-return]

    def start(self, timeout_s: float = 10.0) -> SimulatorServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name=f"simulator:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"simulator did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._socket.close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def admin(self) -> SimulatorAdmin:
        return SimulatorAdmin(self.url, self.config.api_key)


class SimulatorAdmin:
    """A small client of the admin API (``/admin/*``): faults, stats, tasks, reset, finish."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._http = httpx.Client(base_url=self.url, timeout=30.0)

    def __repr__(self) -> str:
        return f"SimulatorAdmin({self.url!r})"

    def faults(self, **changes: Any) -> dict[str, Any]:
        """Patch the live configuration (any SimConfig field); returns it without the key."""
        response = self._http.post("/admin/faults", json=changes)
        if response.status_code == 400:
            raise ValueError(response.json().get("error", response.text))
        response.raise_for_status()
        return dict(response.json())

    def config(self) -> dict[str, Any]:
        return dict(self._http.get("/admin/faults").json())

    def stats(self) -> dict[str, Any]:
        return dict(self._http.get("/admin/stats").json())

    def tasks(self) -> list[dict[str, Any]]:
        return list(self._http.get("/admin/tasks").json())

    def callbacks(self) -> dict[str, float]:
        """Task id -> when its terminal (SUCCESS/FAILURE) callback was sent, epoch seconds."""
        return {str(k): float(v) for k, v in self._http.get("/admin/callbacks").json().items()}

    def submits(self) -> list[tuple[float, str, str]]:
        """Every submit request that carried a ``state``, in order: (epoch s, state, injected fault or "")."""
        return [(float(t), str(s), str(f)) for t, s, f in self._http.get("/admin/submits").json()]

    def reset(self, config: bool = True) -> None:
        """Forget tasks and counters; ``config=True`` also restores the start-up configuration."""
        self._http.post("/admin/reset", json={"config": config}).raise_for_status()

    def finish(self, task_id: str) -> bool:
        """Force a (stuck) task to end now."""
        return self._http.post(f"/admin/tasks/{task_id}/finish").status_code == 200

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimulatorAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
