"""Stopping child processes (the embedded Valkey, the dev stack's services, test and benchmark workers)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 10.0, *, kill: bool = False) -> None:
    """Ask ``process`` to stop (SIGTERM: Celery drains, Valkey flushes its AOF), kill it if it has not within
    ``timeout_s``, and reap it; ``kill=True`` kills at once (crash tests)."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=max(timeout_s, 0.01))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
