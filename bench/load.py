"""How loaded the machine was during a run: load averages, and the CPU time other processes took.

Other processes' CPU is the machine's busy time (``/proc/stat``: user, nice, system, irq, softirq, steal) minus
this process tree's own CPU time (this process, its reaped children, and live descendants from
``/proc/<pid>/stat``). A figure measured while other work took cores is recognisable by it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest is inside user); idle, iowait not


def busy_cpu_s(stat: str | None = None) -> float:
    """CPU-seconds the whole machine has been busy since boot (the ``cpu`` line of /proc/stat)."""
    text = stat if stat is not None else (PROC / "stat").read_text()
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            return sum(values[i] for i in BUSY_FIELDS if i < len(values)) / TICK
    raise RuntimeError("no cpu line in /proc/stat")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the state on (the name may hold spaces)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def own_cpu_s() -> float:
    """CPU-seconds of this process tree: itself, its reaped children and every live descendant."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    for pid in _descendants(os.getpid()):
        fields = _stat_fields(pid)
        if fields is not None:  # utime stime cutime cstime (fields 14-17 of stat)
            total += sum(int(v) for v in fields[11:15]) / TICK
    return total


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


@dataclass
class LoadMeter:
    """Started with the run; ``read()`` gives the load so far (called at every write of the results)."""

    started: float = 0.0
    busy0: float = 0.0
    own0: float = 0.0
    load0: tuple[float, ...] = ()

    @classmethod
    def start(cls) -> LoadMeter:
        return cls(time.monotonic(), busy_cpu_s(), own_cpu_s(), tuple(loadavg()))

    def read(self) -> dict[str, Any]:
        wall = max(1e-9, time.monotonic() - self.started)
        busy = busy_cpu_s() - self.busy0
        own = own_cpu_s() - self.own0
        other = max(0.0, busy - own)
        return {
            "loadavg_start": list(self.load0),
            "loadavg_end": loadavg(),
            "cores": os.cpu_count() or 0,
            "wall_s": round(wall, 1),
            "machine_busy_cpu_s": round(busy, 1),
            "own_cpu_s": round(own, 1),
            "other_cpu_s": round(other, 1),
            "other_cores": round(other / wall, 2),
        }

