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
from worker.upstreams.pool import Pool, Upstream

DAY_S = 86_400.0


def _rate(up: Upstream, mode: str, settings: Settings) -> float:
    """Jobs per second an upstream runs in a mode inside its window: its slots over the expected duration,
    no faster than its pacing, times the share of the day its work window is open."""
    slots = up.slots.get(mode, 0)
    if slots <= 0:
        return 0.0
    rate = slots / max(1e-9, settings.expected_duration_s(mode))
    mean_gap = (up.interval_s + up.interval_max_s) / 2 if up.interval_max_s > up.interval_s else up.interval_s
    if mean_gap > 0:
        rate = min(rate, 1.0 / mean_gap)
    return rate * up.window.open_fraction


def estimate(plan: PlanCounts, settings: Settings, pool: Pool | None = None) -> dict[str, Any]:
    """Counts are exact for the file; cost is the sum of the known prices (``unknown`` lists the kinds with
    none); wall time is the longest of each upstream's slot time, pacing and daily cap, inside its work window
    (lower bounds). With a pool, a mode's jobs are shared among the upstreams serving it in proportion to what
    each runs per hour (rows pinned with ``upstream`` go to theirs), and priced on each."""
    pool = pool or Pool.from_settings(settings)
    by_mode: dict[str, Counter[str]] = {}
    pinned: dict[tuple[str, str], Counter[str]] = {}
    for (mode, then, upstream), n in plan.plans().items():
        counts = Counter({"imagine": n})
        if then:  # follow-ups run in their parent's mode (and upstream)
            counts.update({kind: k * n for kind, k in count_by_kind(then).items()})
        if upstream and upstream in pool.by_name:
            pinned.setdefault((upstream, mode), Counter()).update(counts)
        else:
            by_mode.setdefault(mode, Counter()).update(counts)
    # jobs[upstream][mode][kind]: the (fractional) share each upstream gets
    shares: dict[str, dict[str, dict[str, float]]] = {u.name: {} for u in pool.upstreams}
    for (name, mode), counts in pinned.items():
        part = shares[name].setdefault(mode, {})
        for kind, n in counts.items():
            part[kind] = part.get(kind, 0.0) + n
    for mode, counts in by_mode.items():
        rates = {u.name: _rate(u, mode, settings) for u in pool.serving(mode)}
        total_rate = sum(rates.values())
        for name, rate in rates.items():
            part = shares[name].setdefault(mode, {})
            for kind, n in counts.items():
                part[kind] = part.get(kind, 0.0) + (n * rate / total_rate if total_rate else 0.0)
    kinds: list[dict[str, Any]] = []
    cost_by: dict[str, float] = {}
    total = 0
    unknown: set[str] = set()
    all_modes = {*by_mode, *(m for _, m in pinned)}
    for mode in MODES:
        if mode not in all_modes:
            continue
        every: Counter[str] = Counter(by_mode.get(mode) or {})
        for (_, pin_mode), counts in pinned.items():
            if pin_mode == mode:
                every.update(counts)
        for kind, n in sorted(every.items()):
            row_cost: float | None = 0.0
            for up in pool.upstreams:
                share = (shares[up.name].get(mode) or {}).get(kind, 0)
                if not share:
                    continue
                price = price_of(up.price_tables, kind, mode)
                if price is None:
                    row_cost = None
                    continue
                cost_by[up.name] = cost_by.get(up.name, 0.0) + price * share
                if row_cost is not None:
                    row_cost += price * share
            if row_cost is None:
                unknown.add(kind)
            else:
                total += round(row_cost)
            kinds.append({"mode": mode, "kind": kind, "jobs": n,
                          "price": None if row_cost is None else row_cost / n / MICROS,
                          "cost": None if row_cost is None else row_cost / MICROS})
    jobs = sum(k["jobs"] for k in kinds)
    walls: dict[str, tuple[float, str]] = {}
    for up in pool.upstreams:
        modes = shares[up.name]
        n_up = sum(sum(c.values()) for c in modes.values())
        if n_up <= 0:
            continue
        open_ = max(1e-9, up.window.open_fraction)
        rounds = {m: math.ceil(sum(c.values()) / max(1, up.slots.get(m, 0)) - 1e-9) for m, c in modes.items()}
        slot_s = max((n * settings.expected_duration_s(m) for m, n in rounds.items()), default=0.0) / open_
        mean_gap = (up.interval_s + up.interval_max_s) / 2
        pacing_s = n_up * mean_gap / open_
        cap = up.daily_cap or sum(up.daily_cap_modes.values())
        cap_s = (math.ceil(n_up / cap - 1e-9) - 1) * DAY_S if cap else 0.0
        wall_u = max(slot_s, pacing_s, cap_s)
        why = "daily cap" if wall_u == cap_s and cap_s else "pacing" if wall_u == pacing_s and pacing_s else (
            "work window" if open_ < 1 else "slots")
        walls[up.name] = (wall_u, why)
    wall, limited = max(walls.values(), default=(0.0, "slots"))
    currency = pool.default.currency
    slots = {m: sum(u.slots.get(m, 0) for u in pool.serving(m)) for m in all_modes}
    return {
        "upstream": pool.default.name if len(pool.upstreams) == 1 else None,
        "currency": currency,
        "jobs": jobs,
        "by_kind": kinds,
        "cost": {**{name: round(c) / MICROS for name, c in cost_by.items()}, "total": total / MICROS},
        "unknown_prices": sorted(unknown),
        "wall_s": round(wall, 1),
        "limited_by": limited,
        "slots": slots,
        "upstreams": {
            name: {"jobs": round(sum(sum(c.values()) for c in shares[name].values()), 1),
                   "cost": round(cost_by.get(name, 0.0)) / MICROS, "currency": pool.by_name[name].currency,
                   "wall_s": round(walls[name][0], 1) if name in walls else 0.0,
                   "limited_by": walls[name][1] if name in walls else None}
            for name in pool.names
        },
        "text": describe(kinds, total, unknown, currency, wall, slots),
    }


def describe(kinds: list[dict[str, Any]], total: int, unknown: set[str], currency: str, wall: float,
             slots_by_mode: dict[str, int]) -> str:
    """``2,000 imagines + 8,000 upscales: 1,200.00 USD; about 13 h at 3 fast slots``."""
    counts: Counter[str] = Counter()
    for k in kinds:
        counts[k["kind"]] += k["jobs"]
    parts = " + ".join(f"{n:,} {kind}{'s' if n != 1 else ''}" for kind, n in counts.items())
    money = fmt_money(total, currency) + (f" + unknown ({', '.join(sorted(unknown))} have no price)" if unknown else "")
    hours = wall / 3600
    when = f"{hours:.1f} h" if hours >= 1 else f"{wall / 60:.0f} min"
    slots = ", ".join(f"{n} {m} slots" for m, n in slots_by_mode.items())
    return f"{parts or 'no jobs'}: {money}; about {when} at {slots or 'no slots'}"
