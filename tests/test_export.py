"""Manifest rows (worker/reports/export.py): ISO 8601 times, follow-ups carrying their root's tags (pure logic)."""

from __future__ import annotations

import csv
import io
import json

from worker.reports.export import write_manifest

JOBS = [
    {"job_id": "root", "batch_id": "b", "tags": ["coast", "dawn"], "row": 3, "created_at": 1796232025.5},
    {
        "job_id": "u2",
        "batch_id": "b",
        "parent_job": "root",
        "root_job": "root",
        "created_at": 1796232030.0,
        "finished_at": 1796232040.25,
    },
]


def test_jsonl_times_are_iso_8601_utc_and_follow_ups_carry_the_root_tags() -> None:
    out = io.StringIO()
    assert write_manifest(JOBS, "jsonl", out) == 2
    root, child = (json.loads(line) for line in out.getvalue().splitlines())
    assert root["created_at"] == "2026-12-02T17:20:25.500Z"
    assert child["finished_at"] == "2026-12-02T17:20:40.250Z" and child["submitted_at"] is None
    assert child["tags"] == ["coast", "dawn"] and child["row"] == 3


def test_csv_has_the_same_times_and_tags() -> None:
    out = io.StringIO()
    write_manifest(JOBS, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[1]["created_at"] == "2026-12-02T17:20:30.000Z"
    assert rows[1]["tags"] == "coast;dawn"
