"""What a prompt file will cost before anything is sent: jobs by kind and mode (the plans' follow-ups
included, as if every step succeeds), the price per kind and in total, and a wall-time estimate."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from worker.batchfile import PlanCounts
from worker.mjapi.models import MODES
from worker.plans.grammar import count_by_kind
from worker.pricing import MICROS, fmt_money, price_of
from worker.settings import Settings

DAY_S = 86_400.0


def estimate(plan: PlanCounts, settings: Settings) -> dict[str, Any]:
    """Counts are exact for the file; cost is the sum of the known prices (``unknown`` lists the kinds with
    none); wall time is the longest of the modes' slot time, the pacing and the daily cap (lower bounds)."""
    by_mode: dict[str, Counter[str]] = {}
    for (mode, then), n in plan.mode_plans().items():
        counts = by_mode.setdefault(mode, Counter())
        counts["imagine"] += n
        if then:  # follow-ups run in their parent's mode
            counts.update({kind: k * n for kind, k in count_by_kind(then).items()})
    tables = settings.price_tables()
    currency = settings.currency
    kinds: list[dict[str, Any]] = []
    total = 0
    unknown: set[str] = set()
    for mode in MODES:
        for kind, n in sorted(by_mode.get(mode, Counter()).items()):
            price = price_of(tables, kind, mode)
            if price is None:
                unknown.add(kind)
            else:
                total += price * n
            kinds.append({"mode": mode, "kind": kind, "jobs": n,
                          "price": None if price is None else price / MICROS,
                          "cost": None if price is None else price * n / MICROS})
    jobs = sum(k["jobs"] for k in kinds)
    per_mode = {m: sum(c.values()) for m, c in by_mode.items()}
    slot_s = max((math.ceil(n / max(1, settings.slots_for(m))) * settings.expected_duration_s(m)
                  for m, n in per_mode.items()), default=0.0)
    pacing_s = jobs * settings.submit_interval_s
    cap_s = (math.ceil(jobs / settings.daily_cap) - 1) * DAY_S if settings.daily_cap and jobs else 0.0
    wall = max(slot_s, pacing_s, cap_s)
    return {
        "upstream": "default",
        "currency": currency,
        "jobs": jobs,
        "by_kind": kinds,
        "cost": {"default": total / MICROS, "total": total / MICROS},
        "unknown_prices": sorted(unknown),
        "wall_s": round(wall, 1),
        "limited_by": "daily cap" if wall == cap_s and cap_s else "pacing" if wall == pacing_s and pacing_s
        else "slots",
        "slots": {m: settings.slots_for(m) for m in per_mode},
        "text": describe(kinds, total, unknown, currency, wall, settings, per_mode),
    }


def describe(kinds: list[dict[str, Any]], total: int, unknown: set[str], currency: str, wall: float,
             settings: Settings, per_mode: dict[str, int]) -> str:
    """``2,000 imagines + 8,000 upscales: 1,200.00 USD; about 13 h at 3 fast slots``."""
    counts: Counter[str] = Counter()
    for k in kinds:
        counts[k["kind"]] += k["jobs"]
    parts = " + ".join(f"{n:,} {kind}{'s' if n != 1 else ''}" for kind, n in counts.items())
    money = fmt_money(total, currency) + (f" + unknown ({', '.join(sorted(unknown))} have no price)" if unknown else "")
    hours = wall / 3600
    when = f"{hours:.1f} h" if hours >= 1 else f"{wall / 60:.0f} min"
    slots = ", ".join(f"{settings.slots_for(m)} {m} slots" for m in per_mode)
    return f"{parts or 'no jobs'}: {money}; about {when} at {slots or 'no slots'}"
