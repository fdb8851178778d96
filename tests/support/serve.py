"""`mjq serve` as the tests run it: a real process on the port of ``MJQ_SERVE_PORT``, ready when it answers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support import patience
from worker.devstack.processes import stop_process


def _start(env: dict[str, str], cwd: Path, log_path: Path, timeout_s: float) -> subprocess.Popen[bytes] | None:
    """``mjq serve`` answering on its port; None when the port was taken meanwhile (another test process's)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "serve"], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = patience.deadline(timeout_s)
    while True:
        if proc.poll() is not None:
            text = log_path.read_text(errors="replace")
            assert "address already in use" in text, text
            return None
        try:
            if httpx.get(f"http://127.0.0.1:{env['MJQ_SERVE_PORT']}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            stop_process(proc, 15.0)
            raise AssertionError("mjq serve did not start")
        time.sleep(0.2)


@contextmanager
def serving(env: dict[str, str], cwd: Path, log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``mjq serve`` with ``env`` until the block ends; yields its URL once ``/healthz`` answers 200. A port
    taken between choosing it and binding it (parallel test processes) is chosen again (``env`` is updated)."""
    from worker.devstack.redisserver import free_port

    proc = None
    for _ in range(5):
        proc = _start(env, cwd, log_path, timeout_s)
        if proc is not None:
            break
        env["MJQ_SERVE_PORT"] = str(free_port())
    assert proc is not None, "no free port for mjq serve"
    try:
        yield f"http://127.0.0.1:{env['MJQ_SERVE_PORT']}"
    finally:
        stop_process(proc, 15.0)


def wait_for(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    """``check()``'s first truthy value, polled until a generous deadline."""
    deadline = patience.deadline(timeout_s)
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
