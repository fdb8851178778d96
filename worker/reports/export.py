"""Batch manifests: one row per job (JSONL or CSV), straight from the ledger's job results.

A manifest is what people keep after an overnight run: which prompt became which image, where the file is,
its checksum, what it was derived from, and how long it took.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from worker.store.ledger import IMAGE_FIELDS

FIELDS: tuple[str, ...] = (
    "job_id",
    "row",
    "batch_id",
    "action",
    "custom_id",
    "mode",
    "status",
    "prompt",
    "final_prompt",
    "upstream",  # the upstream of the pool the job ran on (``default`` without a pool file)
    "upstream_id",
    *IMAGE_FIELDS,
    "upload",  # the copy at MJQ_MEDIA_URL: ok | retrying | failed (empty: stored locally only)
    "parent_job",
    "root_job",
    "fail_reason",
    "tags",
    "progress",
    "created_at",
    "submitted_at",
    "started_at",
    "finished_at",
    "duration_s",
    "callback",  # delivery of the job's callback_url: delivered | retrying | gave up (empty: none asked)
    "callback_attempts",  # delivery attempts of that callback so far
    "cost",  # what the job was charged (MJQ_CURRENCY; empty = no price known), worker.pricing
)
FORMATS = ("jsonl", "csv")
TIME_FIELDS = ("created_at", "submitted_at", "started_at", "finished_at")


def _time_key(job: Mapping[str, Any]) -> tuple[str, str]:
    created = job.get("created_at")
    return (str(created) if created is not None else "", str(job.get("job_id", "")))


def order_jobs(jobs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Roots in creation order, each followed by its descendants (so lineage reads top-down)."""
    jobs = sorted(jobs, key=_time_key)
    ids = {job.get("job_id") for job in jobs}
    children: dict[str, list[Mapping[str, Any]]] = {}
    roots = []
    for job in jobs:
        parent = job.get("parent_job")
        if parent and parent in ids:
            children.setdefault(str(parent), []).append(job)
        else:
            roots.append(job)
    ordered: list[Mapping[str, Any]] = []

    def walk(job: Mapping[str, Any]) -> None:
        ordered.append(job)
        for child in children.get(str(job.get("job_id")), []):
            walk(child)

    for root in roots:
        walk(root)
    return ordered


def manifest_row(job: Mapping[str, Any]) -> dict[str, Any]:
    """The job's manifest fields; times as ISO 8601 UTC (the ledger keeps epoch seconds)."""
    row = {name: job.get(name) for name in FIELDS}
    for name in TIME_FIELDS:
        row[name] = iso_time(row[name])
    row["callback"] = (job.get("callback") or {}).get("state")
    row["callback_attempts"] = (job.get("callback") or {}).get("attempts")
    return row


def iso_time(value: Any) -> str | None:
    """Epoch seconds (number or numeric text) as ``2026-12-02T17:20:25.123Z``; other text is kept as is."""
    if value in (None, "", 0):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return str(value)
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def root_tags(jobs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Job id -> its tags; a follow-up without its own has the tags of the prompt it descends from."""
    jobs = list(jobs)
    own = {str(job.get("job_id")): job.get("tags") for job in jobs if job.get("tags")}
    return {str(job.get("job_id")): own.get(str(job.get("root_job"))) or job.get("tags") for job in jobs}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ";".join(value)  # tags: the same separator prompt files use
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def file_rows(jobs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Job id -> its prompt-file row; a follow-up has the row of the prompt it descends from."""
    jobs = list(jobs)
    own = {str(job.get("job_id")): job.get("row") for job in jobs if job.get("row")}
    return {
        str(job.get("job_id")): own.get(str(job.get("job_id"))) or own.get(str(job.get("root_job"))) for job in jobs
    }


def write_manifest(jobs: Sequence[Mapping[str, Any]], fmt: str, out: TextIO) -> int:
    """Write the manifest of ``jobs`` to ``out``; returns the number of rows."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use jsonl or csv")
    rows_of, tags_of = file_rows(jobs), root_tags(jobs)
    rows = [
        {**manifest_row(job), "row": rows_of.get(str(job.get("job_id"))), "tags": tags_of.get(str(job.get("job_id")))}
        for job in order_jobs(jobs)
    ]
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    else:
        writer = csv.writer(out)
        writer.writerow(FIELDS)
        for row in rows:
            writer.writerow([_cell(row[name]) for name in FIELDS])
    return len(rows)


def format_time(value: Any) -> str:
    """Ledger timestamps (epoch seconds or ISO text) as a short local time for humans."""
    if value in (None, "", 0):
        return ""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(value)
