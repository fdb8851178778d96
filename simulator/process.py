"""Run the simulator as its own process (``python -m simulator``): one simulated account per process, on its own
port, with its own capacity, profile and faults — what the pool's tests and benchmark start, one per upstream."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from simulator.server import SimulatorAdmin

_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SimulatorProcess:
    """``python -m simulator --port P --api-key K --fast-slots N ...`` with a log file; ``.admin`` to steer it."""

    def __init__(self, name: str, log_dir: Path, *, api_key: str, slots: int = 3, time_factor: float = 0.01,
                 port: int | None = None, args: Sequence[str] = ()) -> None:
        self.name = name
        self.api_key = api_key
        self.slots = slots
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"sim-{name}.log"
        self.argv = [sys.executable, "-m", "simulator", "--port", str(self.port), "--api-key", api_key,
                     "--time-factor", str(time_factor),
                     *(arg for mode in ("fast", "relax", "turbo") for arg in (f"--{mode}-slots", str(slots))),
                     *args]
        self.process: subprocess.Popen[bytes] | None = None
        self.admin = SimulatorAdmin(self.url, api_key)

    def start(self, timeout_s: float = 30.0) -> SimulatorProcess:
        env = {**os.environ, "PYTHONPATH": str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"simulator {self.name} exited; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/admin/stats", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"simulator {self.name} not up after {timeout_s}s; see {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)
        self.process = None
        self.admin.close()
        self.admin = SimulatorAdmin(self.url, self.api_key)
