"""Retention: finished batches leave Redis for an archive (a folder or any fsspec URL) after MJQ_RETENTION_DAYS.

A month of nights would otherwise stay in Redis for good (job records, results, indexes). Archiving writes the
batch's manifest as JSONL plus a summary, then removes its keys in slices of ``SLICE`` jobs, each one pipelined
round trip of UNLINKs, so Redis is never blocked for more than a few milliseconds. The summary stays in Redis
(``mjq:archived``, a few hundred bytes a batch), so ``mjq status`` still finds the batch and says where it went.
A batch with any job not terminal is never touched.
"""

from __future__ import annotations

import json
import time
from typing import Any

import fsspec

from worker.reports.export import manifest_row
from worker.store import keys
from worker.store.ledger import Ledger, result_of
from worker.store.records import TERMINAL
from worker.store.runtime import Runtime

SLICE = 200  # jobs per read/delete round trip
LOOK_EVERY_S = 60.0  # housekeeping looks for expired batches at most this often
PER_RUN = 5  # batches archived per housekeeping run (the rest wait for the next one)


class NotArchivable(Exception):
    """The batch is unknown, already archived, or still has work that is not finished."""


def archivable(ledger: Ledger, batch_id: str) -> dict[str, Any]:
    """The batch record if it may be archived now (every job terminal, nothing planned or pending)."""
    batch = ledger.batch(batch_id)
    if not batch:
        done = ledger.archived(batch_id)
        raise NotArchivable(f"batch {batch_id!r} is already archived" if done else f"no batch {batch_id!r}")
    counts = batch["counts"]
    unfinished = sum(n for state, n in counts.items() if state not in TERMINAL)
    if batch["status"] not in ("finished", "cancelled") or unfinished or batch["pending"] or batch["planned"] > 0:
        waiting = unfinished + batch["pending"] + max(0, batch["planned"])
        raise NotArchivable(
            f"batch {batch_id!r} is {batch['status']} with {waiting} job(s) not finished: only a finished batch"
            " is archived"
        )
    return batch


def archive_batch(batch_id: str, rt: Runtime) -> dict[str, Any]:
    """Write the batch's manifest and summary to the archive, then remove it from Redis; returns the summary."""
    ledger = rt.ledger
    batch = archivable(ledger, batch_id)
    fs, root = fsspec.core.url_to_fs(rt.settings.effective_archive_url)
    fs.makedirs(root, exist_ok=True)
    manifest = f"{root.rstrip('/')}/{batch_id}.jsonl"
    rows = 0
    with fs.open(manifest, "w", encoding="utf-8") as out:
        for start in range(0, 1 << 62, SLICE):
            ids = ledger.batch_job_ids_page(batch_id, start, SLICE)
            if not ids:
                break
            for job in ledger.get_jobs(ids):
                out.write(json.dumps(manifest_row(_result(job)), ensure_ascii=False, default=str) + "\n")
                rows += 1
    summary = {
        "batch_id": batch_id,
        "status": batch["status"],
        "counts": {state: n for state, n in batch["counts"].items() if n},
        "total": batch["total"],
        "meta": batch.get("meta") or {},
        "created_at": batch.get("created_at"),
        "updated_at": batch.get("updated_at"),
        "archived_at": time.time(),
        "jobs": rows,
        "manifest": _url(fs, manifest),
    }
    with fs.open(f"{root.rstrip('/')}/{batch_id}.summary.json", "w", encoding="utf-8") as out:
        out.write(json.dumps(summary, ensure_ascii=False, indent=1, default=str))
    while True:  # the first slice again each time: the purged ids leave the set
        ids = ledger.batch_job_ids_page(batch_id, 0, SLICE)
        if not ids:
            break
        ledger.purge_jobs(ledger.get_jobs(ids) or [{"job_id": j} for j in ids])
        rt.redis.zrem(keys.batch_jobs(batch_id), *ids)
    ledger.purge_batch(batch_id, summary)
    return summary


def archive_expired(rt: Runtime, now: float | None = None) -> int:
    """Housekeeping's share: archive up to ``PER_RUN`` batches finished longer than the retention ago."""
    retention = rt.settings.retention_s
    now = time.time() if now is None else now
    every = min(LOOK_EVERY_S, max(0.5, retention / 10)) if retention else LOOK_EVERY_S
    if retention is None or not rt.redis.set(keys.RETENTION_NEXT, "1", nx=True, px=int(every * 1000)):
        return 0
    archived = 0
    for batch_id in rt.ledger.batches_created_before(now - retention, limit=100):
        if archived >= PER_RUN:
            break
        batch = rt.ledger.batch(batch_id)
        if not batch or float(batch.get("updated_at") or batch.get("created_at") or now) > now - retention:
            continue
        try:
            archive_batch(batch_id, rt)
        except NotArchivable:
            continue
        archived += 1
    return archived


def _result(job: dict[str, Any]) -> dict[str, Any]:
    return {**result_of(job), "row": (job.get("meta") or {}).get("row")}


def _url(fs: Any, path: str) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    return path if protocol in ("file", "local") else f"{protocol}://{path}"
