"""How long a test waits for an event: the bound it states, times ``PATIENCE``.

A wait returns as soon as its event happens, so a long bound costs nothing when a test passes; the factor is for
machines whose every core is busy (``test-under-load``), where everything takes several times as long.
"""

from __future__ import annotations

import time

PATIENCE = 3.0


def deadline(timeout_s: float) -> float:
    """The monotonic time a wait of ``timeout_s`` (as a test states it) gives up at."""
    return time.monotonic() + timeout_s * PATIENCE
