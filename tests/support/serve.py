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


@contextmanager
def serving(env: dict[str, str], cwd: Path, log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``mjq serve`` with ``env`` until the block ends; yields its URL once ``/healthz`` answers 200."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "serve"], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{env['MJQ_SERVE_PORT']}"
    try:
        deadline = patience.deadline(timeout_s)
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mjq serve did not start"
            time.sleep(0.2)
        yield url
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
