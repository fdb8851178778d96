"""Several simulated accounts for the upstream pool: one simulator PROCESS per account (``python -m simulator``
on its own port, with its own capacity, profile and faults), and the pool file that points a worker at them.

- ``SimProcess(name, slots=..., **flags).start()``: the process, ``.url``, ``.admin`` (``SimulatorAdmin``),
  ``.stop()``; ``start()`` again on the same port after a stop (an upstream that comes back).
- ``pool_toml(tables)``: the ``[[upstream]]`` tables as TOML text.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from simulator.server import SimulatorAdmin
from worker.devstack.processes import stop_process
from worker.devstack.redisserver import free_port

ROOT = Path(__file__).resolve().parents[2]


class SimProcess:
    """One simulated account in its own process, on its own port."""

    def __init__(self, name: str, log_dir: Path, *, key: str, slots: int = 3, time_factor: float = 0.01,
                 port: int | None = None, **flags: Any) -> None:
        self.name = name
        self.key = key
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"sim-{name}.log"
        self.argv = [sys.executable, "-m", "simulator", "--port", str(self.port), "--api-key", key,
                     "--time-factor", str(time_factor), "--lenient-auth",
                     *(arg for mode in ("fast", "relax", "turbo") for arg in (f"--{mode}-slots", str(slots)))]
        for flag, value in flags.items():
            self.argv += [f"--{flag.replace('_', '-')}", str(value)]
        self.process: subprocess.Popen[bytes] | None = None
        self.admin = SimulatorAdmin(self.url, key)

    def start(self, timeout_s: float = 30.0) -> SimProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10.0)
        self.process = None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def pool_toml(tables: Sequence[Mapping[str, Any]]) -> str:
    """``[[upstream]]`` tables, one ``key = value`` a line."""
    parts = []
    for table in tables:
        parts.append("[[upstream]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items()))
    return "\n".join(parts)
