"""Retention: finished batches leave Redis for the archive (manifest + summary), running ones are never touched,
and `mjq status` still finds an archived batch. Real Valkey, worker (housekeeping by beat) and simulator."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tests.support import stack as stack_support
from tests.support.mjq import mjq
from tests.support.stack import Stack, StackManager, use_config

ARCHIVE = Path(tempfile.mkdtemp(prefix="mjq-archive-"))
RETENTION_S = 3.0

stack_support.CONFIGS["retention"] = {
    "MJQ_RETENTION_DAYS": repr(RETENTION_S / 86_400),
    "MJQ_ARCHIVE_URL": str(ARCHIVE),
}


def _run_batch(batch_id: str, n: int) -> list[str]:
    import tasks

    return [tasks.imagine.delay(f"{batch_id} #{i} a lighthouse", batch_id=batch_id,
                                **({"then": "U1"} if i == 0 else {})).id for i in range(n)]


def _imagine(prompt: str, batch_id: str) -> str:
    import tasks

    return str(tasks.imagine.delay(prompt, batch_id=batch_id).id)


def _keys_of(stack: Stack, job_ids: list[str]) -> list[str]:
    found = []
    for job_id in job_ids:
        found += [k for k in (f"mjq:job:{job_id}", f"celery-task-meta-{job_id}") if stack.redis.exists(k)]
    return found


def test_finished_batches_are_archived_after_the_retention(stack_manager: StackManager, sim: Any) -> None:
    import tasks
    from worker.control import pause_batch
    from worker.store.runtime import runtime

    stack = use_config(stack_manager, "retention", sim)
    rt = runtime()
    rt.ledger.ensure_batch("still-held")
    pause_batch("still-held", rt)
    held = tasks.imagine.delay("waits for its paused batch", batch_id="still-held").id
    ids = _run_batch("night-1", 4)
    stack.wait_batch("night-1", 5, timeout=60)  # 4 roots and the U1 follow-up
    child = [j for j in rt.ledger.batch_job_ids("night-1") if j not in ids]
    stack.wait(lambda: rt.ledger.archived("night-1") is not None, 60, "housekeeping to archive the batch")

    summary = rt.ledger.archived("night-1")
    assert summary is not None and summary["jobs"] == 5 and summary["counts"] == {"succeeded": 5}
    assert not _keys_of(stack, ids + child), "archived jobs left records or results in Redis"
    assert not stack.redis.exists("mjq:batch:night-1", "mjq:batch:night-1:jobs")
    assert stack.redis.zscore("mjq:batches", "night-1") is None
    rows = [json.loads(line) for line in (ARCHIVE / "night-1.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["job_id"] for r in rows) == sorted(ids + child)
    assert all(r["status"] == "succeeded" and r["batch_id"] == "night-1" for r in rows)
    assert {r["prompt"] for r in rows if not r["parent_job"]} == {f"night-1 #{i} a lighthouse" for i in range(4)}
    on_disk = json.loads((ARCHIVE / "night-1.summary.json").read_text(encoding="utf-8"))
    assert on_disk["manifest"] == str(ARCHIVE / "night-1.jsonl")

    # a batch older than the retention whose work is not finished is never touched
    assert stack.job(held).get("status") == "queued" and rt.ledger.batch("still-held")

    status = mjq(None, "status", "night-1", env=stack.env)
    assert status.code == 0, status
    assert "archived" in status.out and "night-1.jsonl" in status.out
    as_json = mjq(None, "status", "night-1", "--json", env=stack.env).json()
    assert as_json["archived"] is True and as_json["counts"] == {"succeeded": 5}
    refused = mjq(None, "archive", "still-held", env=stack.env)
    assert refused.code != 0 and "only a finished batch is archived" in refused.err, refused


def test_mjq_archive_moves_a_finished_batch_now(stack: Stack, tmp_path: Path) -> None:
    ids = _run_batch("done-now", 2)
    stack.wait_batch("done-now", 3, timeout=60)
    env = {**stack.env, "MJQ_ARCHIVE_URL": str(tmp_path / "archive")}
    run = mjq(None, "archive", "done-now", env=env)
    assert run.code == 0, run
    assert "archived done-now: 3 job(s)" in run.out
    assert len((tmp_path / "archive" / "done-now.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    assert not _keys_of(stack, ids)
    again = mjq(None, "archive", "done-now", env=env)
    assert again.code != 0 and "already archived" in again.err, again


def test_a_finished_job_leaves_at_most_3_kb_in_redis(stack: Stack) -> None:
    """Issue 17's target, measured as Redis counts it (MEMORY USAGE): a finished job's record, its transitions,
    its Celery result and its entry in the batch's index stay under 3 KB, and nothing users read is lost."""
    from celery.result import AsyncResult

    from worker.app import app
    from worker.store.ledger import RESULT_KEYS

    n = 6
    ids = [_imagine(f"small #{i}, a lighthouse at dawn --ar 3:2", "mem-small") for i in range(n)]
    stack.wait_batch("mem-small", n, timeout=90)

    def usage(key: str) -> int:
        return int(stack.redis.memory_usage(key, samples=0) or 0)

    index = usage("mjq:batch:mem-small:jobs") / n  # the batch's own record is a cost per batch, not per job
    parts = [(usage(f"mjq:job:{j}"), usage(f"mjq:joblog:{j}"), usage(f"celery-task-meta-{j}"), index) for j in ids]
    per_job = [sum(p) for p in parts]
    assert max(per_job) <= 3 * 1024, f"bytes per finished job (record, log, result, index): {parts}"
    # still all there: the full result from the record, from Celery (what .get() and Flower return), the log
    for job_id in ids:
        result = stack.ledger.job_result(job_id)
        assert result["status"] == "succeeded" and set(RESULT_KEYS) <= set(result) and len(result["buttons"]) >= 8
        stored = AsyncResult(job_id, app=app).get(timeout=10)
        assert stored["buttons"] == result["buttons"] and stored["image_sha256"] == result["image_sha256"]
        assert stored["image_uri"] == result["image_uri"] == "file://" + str(result["image_path"])
        assert stack.job(job_id)["task_id"] == job_id and "message" not in stack.job(job_id)  # sent for good
        assert [e["to"] for e in stack.ledger.job_log(job_id)][-1] == "succeeded"
        assert stack.redis.object("encoding", f"mjq:job:{job_id}") == "listpack"
        # Celery's result expires after the retention (MJQ_RETENTION_DAYS, 30 by default) like the record
        assert 29 * 86_400 < int(stack.redis.ttl(f"celery-task-meta-{job_id}")) <= 30 * 86_400

