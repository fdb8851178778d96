"""The pool as people read it (``mjq upstreams``, ``--json``, the dashboard, ``GET /v1/upstreams``): one plain
dict per upstream — its state and why, slots in use per mode, today's submits against its caps, the last hour's
outcomes, what its callbacks did, its last error. Reads only Redis (a few commands per upstream)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from worker.jobs.alerts import last_hour_outcomes
from worker.reports.progress import Blocked, Snapshot, blocked_by
from worker.store import keys
from worker.store.runtime import Runtime
from worker.upstreams.pool import Upstream


def _plain_url(url: str) -> str:
    """The base URL without any user or password in it."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def state_of(up: Upstream, stop: dict[str, Any], now: float) -> tuple[str, str]:
    """(state, why): ``stopped`` (until ``mjq resume --upstream``), ``paused`` (a timed stop: it resumes by
    itself), ``unreachable`` (probed, resumes by itself), ``outside hours``, or ``running``."""
    if stop.get("tripped"):
        if stop.get("kind") == "unreachable":
            return "unreachable", str(stop.get("reason") or "")
        if stop.get("until"):
            return "paused", str(stop.get("reason") or "")
        return "stopped", str(stop.get("reason") or "")
    if not up.open_at(now):
        opens = time.strftime("%H:%M UTC", time.gmtime(up.window.next_open(now)))
        return "outside hours", f"opens at {opens}"
    return "running", ""


def upstreams_report(rt: Runtime, now: float | None = None) -> list[dict[str, Any]]:
    """Every upstream of the pool, in file order, as plain dicts (JSON-ready; no secret in them)."""
    now = time.time() if now is None else now
    day = keys.utc_day(now)
    outcomes = last_hour_outcomes(rt, now)
    out: list[dict[str, Any]] = []
    for up in rt.pool.upstreams:
        stop = rt.ledger.breaker(up.name)
        state, why = state_of(up, stop, now)
        slots = {
            mode: {"in_use": rt.slots.in_use(mode, up.name), "slots": up.slots.get(mode, 0),
                   "limit": up.admission_limit(mode),
                   "waiting_pinned": int(rt.redis.zcard(keys.pinned(up.name, mode)))}
            for mode in up.modes
        }
        submits = {mode: int(rt.redis.get(keys.daily_of(up.name, day, mode)) or 0) for mode in up.modes}
        seen = rt.observed_for(up.name).state()
        out.append({
            "name": up.name,
            "base_url": _plain_url(up.base_url),
            "profile": up.profile,
            "modes": list(up.modes),
            "weight": up.weight,
            "state": state,
            "reason": why,
            "since": stop.get("at"),
            "until": stop.get("until"),
            "next_probe_at": stop.get("probe_at"),
            "slots": slots,
            "submits_today": int(rt.redis.get(keys.daily_of(up.name, day)) or 0),
            "submits_today_by_mode": submits,
            "daily_cap": up.daily_cap or None,
            "daily_cap_by_mode": dict(up.daily_cap_modes),
            "hours": up.window.label,
            "last_hour": outcomes.get(up.name, {"ok": 0, "failed": 0}),
            "webhooks": up.webhooks,
            "callbacks_seen_at": seen.get("callbacks_seen_at"),
            "callbacks_missing_since": seen.get("callbacks_missing_since"),
            "last_error": rt.ledger.upstream_error(up.name),
            "spent_today": rt.ledger.spent_today(now, (up.name,)) / 1_000_000,
            "currency": up.currency,
        })
    return out


def stopped_note(rt: Runtime) -> str:
    """One line naming every upstream that is not submitting and why ("" when all run): what ``--wait`` shows
    beside the counts, so a batch that stalls says where."""
    now = time.time()
    parts = []
    for up in rt.pool.upstreams:
        state, why = state_of(up, rt.ledger.breaker(up.name), now)
        if state != "running":
            resumes = " (probed; resumes by itself)" if state in ("unreachable", "paused") else ""
            parts.append(f"upstream {up.name} {state}" + (f": {why}" if why else "") + resumes)
    return "; ".join(parts)


def stopped_for_good(stop: dict[str, Any]) -> bool:
    """Stopped until a person acts (``mjq resume``): not a timed stop, not unreachable (both resume by
    themselves)."""
    return bool(stop.get("tripped")) and not stop.get("until") and stop.get("kind") != "unreachable"


def batch_blocked(rt: Runtime, snap: Snapshot) -> Blocked | None:
    """Why nothing of the batch can progress without a person, judged per mode (None: it can, or may).

    The batch is paused; or nothing of it is upstream and every upstream that could take one of its waiting jobs
    is stopped for good: for each job's mode, those serving it, or only its pinned upstream (``upstream=``, and
    a follow-up's parent's). One fast upstream running keeps a batch of fast jobs going even when the relax
    upstream is stopped. Jobs not created yet (enqueued, planned follow-ups) are judged once they are, unless
    every upstream is stopped.
    """
    if snap.is_over or snap.running or snap.status == "paused":
        return blocked_by(snap, {"tripped": False})  # paused: `mjq resume BATCH`
    stops = {up.name: stop for up in rt.pool.upstreams if stopped_for_good(stop := rt.ledger.breaker(up.name))}
    if not stops:
        return None
    if len(rt.pool.upstreams) == 1:
        return blocked_by(snap, next(iter(stops.values())))  # one upstream: `mjq resume`
    if len(stops) == len(rt.pool.upstreams):
        return _blocked(list(stops), stops, "every upstream is stopped")
    if snap.pending or snap.planned:
        return None
    needs = rt.ledger.queued_needs(snap.batch_id)
    if not needs:
        return None
    culprits: list[str] = []
    for mode, pin in sorted(needs):
        able = [u.name for u in rt.pool.serving(mode) if not pin or u.name == pin]
        if not able or any(name not in stops for name in able):
            return None  # some upstream can take these (or none ever could: not a person's stop)
        culprits.extend(name for name in able if name not in culprits)
    modes = sorted({mode + (f" pinned to {pin}" if pin else "") for mode, pin in needs})
    return _blocked(culprits, stops, f"no upstream can take its waiting jobs ({', '.join(modes)})")


def _blocked(names: list[str], stops: dict[str, dict[str, Any]], lead: str) -> Blocked:
    """The reason (each stopped upstream and why) and the command that clears them."""
    why = "; ".join(f"upstream {name} stopped: {stops[name].get('reason') or 'breaker tripped'}" for name in names)
    command = " && ".join(f"mjq resume --upstream {name}" for name in names)
    return Blocked(f"{lead}: {why}", command)
