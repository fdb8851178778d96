"""How loaded the machine was during a run: load average, and the CPU time other processes took.

Other processes' CPU time is the machine's busy time (``/proc/stat``) minus this run's own (this process and
the services it started and stopped: ``os.times``), so a figure measured beside other work is recognisable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _busy_s() -> float:
    """CPU-seconds all cores spent not idle since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class LoadMeter:
    busy: float = field(default_factory=_busy_s)
    own: float = field(default_factory=_own_s)
    loadavg: tuple[float, float, float] = field(default_factory=os.getloadavg)
    wall: float = field(default_factory=lambda: float(os.times().elapsed))

    def summary(self) -> dict[str, Any]:
        busy, own = _busy_s() - self.busy, _own_s() - self.own
        available = (float(os.times().elapsed) - self.wall) * (os.cpu_count() or 1)
        others = max(0.0, busy - own)
        return {
            "loadavg_start": [round(x, 2) for x in self.loadavg],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "cpu_s_ours": round(own, 1),
            "cpu_s_others": round(others, 1),
            "cpu_s_available": round(available, 1),
            "others_share": round(others / available, 3) if available > 0 else 0.0,
        }
