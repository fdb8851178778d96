"""Fixture modules contributed by each part of the system (simulator, worker stack, ...)."""

from __future__ import annotations

import importlib

# Each part adds its fixtures in its own module under tests/support/; they are loaded here when present
# so that parts can land independently.
for _name in ("tests.support.sim", "tests.support.stack"):
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as exc:
        if exc.name != _name:
            raise
    else:
        globals().update({k: v for k, v in vars(_module).items() if not k.startswith("_")})
