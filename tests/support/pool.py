"""Several simulated accounts for the upstream pool: one simulator PROCESS per account (``python -m simulator``
on its own port, with its own capacity, profile and faults), and the pool file that points a worker at them.

- ``sim_process(name, slots=..., **flags).start()``: a ``simulator.process.SimulatorProcess``: ``.url``,
  ``.admin`` (``SimulatorAdmin``), ``.stop()``; another on the same port later (an upstream that comes back).
- ``pool_toml(tables)``: the ``[[upstream]]`` tables as TOML text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simulator.process import SimulatorProcess


def sim_process(name: str, log_dir: Path, *, key: str, slots: int = 3, time_factor: float = 0.01,
               port: int | None = None, **flags: Any) -> SimulatorProcess:
    """A simulated account: ``flags`` are ``python -m simulator`` flags (``queue_size=0`` -> ``--queue-size 0``)."""
    args = [part for flag, value in flags.items() for part in (f"--{flag.replace('_', '-')}", str(value))]
    return SimulatorProcess(name, log_dir, api_key=key, slots=slots, time_factor=time_factor, port=port,
                            args=["--lenient-auth", *args])


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
