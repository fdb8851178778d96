"""Helpers for the `mjq` tests: one shared dev stack (started on first use) and a way to run the real CLI.

The stack is the same `DevStack` that `mjq up` runs (embedded Valkey, simulator, worker with beat, webhook,
Flower) on free ports, shared by the CLI and Flower test modules so it starts once per session.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import patience
from worker.devstack.stack import DevStack
from worker.settings import load_settings

BIN = Path(sys.executable).parent
TIME_FACTOR = 0.01
_STACK: DevStack | None = None


def shared_stack() -> DevStack:
    """The session's dev stack; stopped when the test process exits."""
    global _STACK
    if _STACK is None:
        state = Path(tempfile.mkdtemp(prefix="mjq-stack-"))
        stack = DevStack.isolated(
            state,
            settings=load_settings(),
            time_factor=TIME_FACTOR,
            worker_concurrency=8,
            extra_env={"MJQ_MEDIA_DIR": str(state / "media")},
        )
        stack.start()
        atexit.register(stack.stop)
        _STACK = stack
    return _STACK


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def mjq(
    stack: DevStack | None,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Run:
    """Run the installed `mjq` console script as a user would, pointed at ``stack``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    if stack is not None:
        full_env.update(stack.env)
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "160")
    done = subprocess.run(
        [str(BIN / "mjq"), *args], env=full_env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout * patience.PATIENCE,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def sim_stats(stack: DevStack) -> dict[str, Any]:
    return dict(httpx.get(f"{stack.api_base_url}/admin/stats", timeout=5).json())


def ledger(stack: DevStack) -> Any:
    """The stack's ledger, read and written from the test process."""
    import redis

    from worker.store.ledger import Ledger

    return Ledger(redis.Redis.from_url(stack.redis_url, decode_responses=True))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def faults(stack: DevStack, **values: Any) -> None:
    """Switch the simulator's faults (failure rate, stuck jobs, banned words...)."""
    httpx.post(f"{stack.api_base_url}/admin/faults", json=values, timeout=5).raise_for_status()
