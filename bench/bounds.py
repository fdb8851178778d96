"""Time bounds of benchmark phases: a phase that reaches its bound ends with what it reached, marked partial.

A bound is derived from the phase's size (and the simulated job duration), so it is generous on an idle
machine; on a busy one a baseline may not finish in it, and its figure is then published as partial rather
than lost in an exception.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_notes: list[str] = []


def wait_until(check: Callable[[], object], timeout_s: float, what: str,
               reached: Callable[[], str] | None = None) -> bool:
    """True once ``check()`` holds; False (and a partial note) when ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            _notes.append(f"{what}: stopped at its bound of {timeout_s:.0f} s" + (f", {reached()}" if reached else ""))
            return False
        time.sleep(0.2)
    return True


def take_notes() -> list[str]:
    """The partial notes since the last call (a step's figures carry them)."""
    notes = list(_notes)
    _notes.clear()
    return notes
