"""What the dashboard pages show, read from the ledger in bounded steps (a 10,000-job batch stays fast).

No page reads a whole batch: the batch list reads each batch's counters (one hash), failures come from the
``batch:<id>:failed`` index, the gallery is a slice of ``batch:<id>:jobs`` (an offset cursor), a job page reads
its record and its lineage through ``children:<job>``. Rates and ETAs come from a sliding window of readings
kept in the serving process (the same ``RateMeter`` as ``mjq batch --wait``), falling back to the batch's
average pace on a first reading.

Result keys added by other work are used when present: ``thumb_path`` (a local WebP thumbnail) before the
image itself, ``image_public_url`` before the upstream's ``image_url``, ``upstream`` (the pool's name) before
``default``. The upstreams table is :func:`upstream_rows`, the pool's own table (``mjq upstreams``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from worker.mjapi.models import MODES
from worker.reports.gallery import action_label
from worker.reports.money import batch_money
from worker.reports.progress import FAILED, RateMeter, Snapshot, format_duration
from worker.reports.upstreams import upstreams_report
from worker.store import keys
from worker.store.ledger import result_of
from worker.store.runtime import Runtime

FAILURES_READ = 10_000  # failed jobs read to group by reason (newest first); more are counted, not grouped
GROUP_EXAMPLES = 5  # job ids shown per failure group
LINEAGE_NODES = 200  # a lineage tree stops growing past this many jobs
LINEAGE_DEPTH = 6
REQUEUE_BY_CLICK = ("failed", "timed_out")  # needs_review may pay twice: `mjq requeue --needs-review` only


class Pace:
    """Sliding-window rates per batch for this process (thread-safe; the serving process keeps one)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._meters: dict[str, RateMeter] = {}
        self._lock = threading.Lock()

    def rate(self, batch_id: str, finished: int, info: Mapping[str, Any]) -> float | None:
        """Jobs per second: the recent pace once two readings exist, else the batch's average so far."""
        with self._lock:
            meter = self._meters.setdefault(batch_id, RateMeter(self.window_s))
            meter.add(finished)
            recent = meter.rate
        if recent:
            return recent
        created, updated = info.get("created_at"), info.get("updated_at")
        if finished and created and updated and float(updated) > float(created):
            return finished / (float(updated) - float(created))
        return None


def upstream_split(info: Mapping[str, Any], snap: Snapshot) -> dict[str, int]:
    """Jobs of the batch per upstream; a batch from before the pool counted none: all went to ``default``."""
    split = dict(info.get("upstreams") or {})  # the pool counts where each job went (``up:<name>``)
    if split:
        return {str(k): int(v) for k, v in split.items()}
    sent = snap.total - snap.queued
    return {keys.DEFAULT_UPSTREAM: sent} if sent else {}


def batch_summary(rt: Runtime, batch_id: str, info: Mapping[str, Any], pace: Pace) -> dict[str, Any]:
    """One batch's line: progress, counts by state, rate, ETA, spend and upstream split."""
    snap = Snapshot.from_batch(batch_id, info)
    rate = pace.rate(batch_id, snap.finished, info)
    remaining = max(0, snap.total - snap.finished)
    eta = 0.0 if snap.is_over else (remaining / rate if rate else None)
    money = batch_money(batch_id, info, rt)
    return {
        "batch_id": batch_id,
        "status": snap.status,
        "total": snap.total,
        "finished": snap.finished,
        "percent": round(100 * snap.finished / snap.total, 1) if snap.total else 0.0,
        "groups": {"done": snap.done, "failed": snap.failed, "running": snap.running, "queued": snap.queued,
                   "cancelled": snap.cancelled, "skipped": snap.skipped},
        "counts": dict(snap.counts),
        "rate_per_min": round(rate * 60, 1) if rate else None,
        "eta": format_duration(eta),
        "spent": money["spent"],
        "budget": money["budget"],
        "currency": money["currency"],
        "upstreams": upstream_split(info, snap),
        "created_at": info.get("created_at"),
    }


def batches(rt: Runtime, pace: Pace, visible: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every batch (newest first), or those in ``visible``; one hash read per batch."""
    ids = cast(list[str], rt.redis.zrevrange(keys.BATCHES, 0, -1))
    if visible is not None:
        allowed = set(visible)
        ids = [i for i in ids if i in allowed]
    out = []
    for batch_id in ids:
        info = rt.ledger.batch(batch_id)
        if info:
            out.append(batch_summary(rt, batch_id, info, pace))
    return out


@dataclass(frozen=True)
class FailureGroup:
    reason: str
    count: int
    statuses: tuple[str, ...]
    examples: tuple[str, ...]

    @property
    def requeueable(self) -> bool:
        """A click requeues failed and timed-out jobs; a group of ambiguous submits needs a person."""
        return any(s in REQUEUE_BY_CLICK for s in self.statuses)


def failure_reason(job: Mapping[str, Any]) -> str:
    """The group a failed job belongs to: its reason, else its end state."""
    return str(job.get("fail_reason") or job.get("status") or "unknown")


def failure_groups(rt: Runtime, batch_id: str, limit: int = FAILURES_READ) -> tuple[list[FailureGroup], int]:
    """The batch's failures grouped by reason (largest first) from its ``:failed`` index; and how many exist."""
    index = keys.batch_failed(batch_id)
    total = int(rt.redis.zcard(index))
    ids = cast(list[str], rt.redis.zrevrange(index, 0, max(0, limit - 1)))
    pipe = rt.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), ["status", "fail_reason"])
    groups: dict[str, tuple[int, set[str], list[str]]] = {}
    for job_id, (status, reason) in zip(ids, pipe.execute() if ids else [], strict=True):
        if status not in FAILED:
            continue
        key = failure_reason({"fail_reason": reason, "status": status})
        count, statuses, examples = groups.get(key, (0, set(), []))
        statuses.add(str(status))
        if len(examples) < GROUP_EXAMPLES:
            examples.append(job_id)
        groups[key] = (count + 1, statuses, examples)
    out = [FailureGroup(r, n, tuple(sorted(s)), tuple(e)) for r, (n, s, e) in groups.items()]
    return sorted(out, key=lambda g: (-g.count, g.reason)), total


def has_image(job: Mapping[str, Any]) -> bool:
    return any(job.get(k) for k in ("thumb_path", "image_path", "image_public_url", "image_url"))


def card(job: Mapping[str, Any]) -> dict[str, Any]:
    """What a gallery tile shows of a job."""
    prompt = str(job.get("final_prompt") or job.get("prompt") or "")
    return {
        "job_id": str(job.get("job_id")),
        "status": str(job.get("status") or "unknown"),
        "label": action_label(job.get("custom_id") or job.get("action")) if job.get("parent_job") else "imagine",
        "prompt": prompt if len(prompt) <= 90 else prompt[:89] + "…",
        "image": has_image(job),
        "reason": job.get("fail_reason") or "",
        "upstream": job.get("upstream") or "",
    }


@dataclass(frozen=True)
class GalleryPage:
    cards: list[dict[str, Any]]
    start: int
    next_cursor: int | None
    prev_cursor: int | None
    total: int


def gallery_page(rt: Runtime, batch_id: str, cursor: int, size: int) -> GalleryPage:
    """One page of the batch's jobs in creation order: a slice of ``batch:<id>:jobs`` and those records only."""
    start = max(0, cursor)
    ids = rt.ledger.batch_job_ids_page(batch_id, start, size + 1)
    more = len(ids) > size
    jobs = rt.ledger.get_jobs(ids[:size])
    total = int(rt.redis.zcard(keys.batch_jobs(batch_id)))
    return GalleryPage(
        cards=[card(j) for j in jobs],
        start=start,
        next_cursor=start + size if more else None,
        prev_cursor=max(0, start - size) if start > 0 else None,
        total=total,
    )


def lineage(rt: Runtime, job: Mapping[str, Any]) -> dict[str, Any]:
    """The job's family as a tree from its root (grid -> upscales -> zooms), through ``children:<job>``."""
    root_id = str(job.get("root_job") or job.get("job_id"))
    seen = 0

    def node(job_id: str, depth: int) -> dict[str, Any]:
        nonlocal seen
        seen += 1
        record = rt.ledger.get_job(job_id) or {"job_id": job_id, "status": "unknown"}
        child_ids = cast(list[str], rt.redis.zrange(keys.children(job_id), 0, -1))
        kids = []
        for child in child_ids:
            if depth >= LINEAGE_DEPTH or seen >= LINEAGE_NODES:
                break
            kids.append(node(child, depth + 1))
        label = action_label(record.get("custom_id") or record.get("action")) if record.get("parent_job") else (
            str(record.get("kind") or "imagine"))
        return {"job_id": job_id, "status": str(record.get("status") or "unknown"), "label": label,
                "current": job_id == job.get("job_id"), "children": kids}

    return node(root_id, 0)


def job_detail(rt: Runtime, job_id: str) -> dict[str, Any] | None:
    """A job's page: its result, lineage, upstream, timings, cost and the buttons it offers."""
    record = rt.ledger.get_job(job_id)
    if record is None:
        return None
    result = result_of(record)
    if not result.get("prompt") and result.get("root_job") != job_id:  # a follow-up: its grid's prompt
        result["prompt"] = rt.redis.hget(keys.job(str(result["root_job"])), "prompt")
    created = result.get("created_at")

    def after(name: str) -> str:
        value = result.get(name)
        return f"+{float(value) - float(created):.1f} s" if value and created else ""

    timings = [(name, after(f"{name}_at")) for name in ("submitted", "started", "finished")]
    buttons = [
        {"custom_id": str(b["custom_id"]), "text": str(b.get("label") or b.get("emoji") or b["custom_id"])}
        for b in (record.get("buttons") or [])
        if isinstance(b, Mapping) and b.get("custom_id")
    ]
    return {
        "job": result,
        "kind": record.get("kind") or "imagine",
        "upstream": record.get("upstream") or keys.DEFAULT_UPSTREAM,
        "image": has_image(record),
        "lineage": lineage(rt, result),
        "timings": [(n, t) for n, t in timings if t],
        "currency": rt.settings.currency,
        "buttons": buttons if result.get("status") == "succeeded" else [],
    }


def _public_url(url: str) -> str:
    """The upstream's address without credentials, query or fragment (a key can hide in any of them)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def upstream_rows(rt: Runtime) -> list[dict[str, Any]]:
    """The ``mjq upstreams`` table (``worker.reports.upstreams``), with the jobs of each mode waiting for any
    upstream beside each upstream's own (pinned) waiting ones."""
    rows = upstreams_report(rt)
    waiting = {m: rt.ledger.waiting_count(m) for m in MODES}
    for row in rows:
        row["waiting"] = waiting
    return rows
