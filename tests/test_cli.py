"""The `mjq` command as a user runs it (the installed console script, in a subprocess) against a real stack:
embedded Valkey, the simulator over HTTP, a real Celery worker, the webhook server.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from typer.testing import CliRunner

from tests.support.mjq import mjq, shared_stack, sim_stats
from worker.devstack import DevStack
from worker.redisserver import free_port


@pytest.fixture(scope="module")
def stack() -> DevStack:
    return shared_stack()


def ledger(stack: DevStack) -> Any:
    from worker.ledger import Ledger

    return Ledger(redis.Redis.from_url(stack.redis_url, decode_responses=True))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def faults(stack: DevStack, **values: Any) -> None:
    httpx.post(f"{stack.api_base_url}/admin/faults", json=values, timeout=5).raise_for_status()


# ---------------------------------------------------------------------------------------------- no stack


def test_config_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.cli import app
    from worker.settings import get_settings

    monkeypatch.setenv("MJQ_API_KEY", "sk-very-secret-key")
    monkeypatch.setenv("MJQ_WEBHOOK_SECRET", "whsec-also-secret")
    monkeypatch.setenv("MJQ_SLOTS_FAST", "7")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        shown = runner.invoke(app, ["config"], env={"COLUMNS": "200"})
        as_json = runner.invoke(app, ["config", "--json"])
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0, shown.output
    assert "MJQ_API_KEY" in shown.output and "MJQ_SLOTS_FAST" in shown.output
    assert "sk-very" not in shown.output and "whsec" not in shown.output
    assert "sk-very" not in as_json.output and "whsec" not in as_json.output
    data = json.loads(as_json.output)
    assert data["MJQ_API_KEY"] == "********" and data["MJQ_WEBHOOK_SECRET"] == "********"
    assert data["MJQ_SLOTS_FAST"] == 7


def test_unreachable_redis_is_one_readable_line() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    for args in (["status"], ["pause", "b1"], ["export", "b1"]):
        run = mjq(None, *args, env={"MJQ_REDIS_URL": url})
        assert run.code == 1, run
        first = run.err.splitlines()[0]
        assert first.startswith("mjq: cannot reach Redis at redis://:***@127.0.0.1:")
        assert first.endswith("is `mjq up` running?")
        assert "hint:" in run.err and "Traceback" not in run.err and "hunter2" not in run.err


def test_usage_errors_exit_2_with_a_hint(tmp_path: Path) -> None:
    good = tmp_path / "p.txt"
    good.write_text("a cat\n")
    cases = [
        (["batch", str(tmp_path / "missing.txt"), "--dry-run"], "cannot read"),
        (["batch", str(tmp_path / "p.xlsx"), "--dry-run"], "unknown prompt file type"),
        (["batch", str(good), "--dry-run", "--mode", "warp"], "unknown mode 'warp'"),
        (["batch", str(good), "--dry-run", "--then", "U7"], "--then"),
        (["batch", str(good), "--dry-run", "--bot", "dalle"], "unknown bot"),
    ]
    (tmp_path / "p.xlsx").write_text("x")
    for args, message in cases:
        run = mjq(None, *args)
        assert run.code == 2, (args, run)
        assert message in run.err and "hint:" in run.err and "Traceback" not in run.err, (args, run.err)


def test_dry_run_sends_nothing(tmp_path: Path, redis_url: str, redis_client: redis.Redis, stack: DevStack) -> None:
    path = write_jsonl(
        tmp_path / "night.jsonl",
        [
            {"prompt": "a {red, blue} cat", "then": "U1-4"},
            {"prompt": "a dog", "mode": "relax"},
            {"prompt": "a bird --relax"},
            {"prompt": "an owl", "mode": "bogus"},
        ],
    )
    before = sim_stats(stack)["submissions"]
    env = {"MJQ_REDIS_URL": redis_url, "MJQ_API_BASE_URL": stack.api_base_url}
    run = mjq(None, "batch", str(path), "--dry-run", "--json", env=env)
    assert run.code == 0, run
    summary = run.json()
    assert summary["jobs"] == 4 and summary["by_mode"] == {"fast": 2, "relax": 2}
    assert summary["followups"] == {"U1-4": 2} and summary["followup_jobs"] == 8
    assert summary["rejected"] == 1
    rejected = list(csv.DictReader(io.StringIO(Path(summary["rejected_file"]).read_text())))
    assert [(r["row"], r["field"]) for r in rejected] == [("4", "mode")]
    human = mjq(None, "batch", str(path), "--dry-run", env=env)
    assert "relax" in human.out and "U1-4" in human.out and "1 row(s) rejected" in human.err
    assert redis_client.dbsize() == 0
    assert sim_stats(stack)["submissions"] == before


# ---------------------------------------------------------------------------------------------- real stack


def test_batch_wait_resume_status_export_gallery(tmp_path: Path, stack: DevStack) -> None:
    path = write_jsonl(
        tmp_path / "flow.jsonl",
        [
            {"id": "f1", "prompt": "a lighthouse at dawn", "then": "U1"},
            {"id": "f2", "prompt": "a fox in {snow, rain}"},
            {"id": "f3", "prompt": "a koi pond", "mode": "turbo", "tags": ["water", "client:acme"]},
        ],
    )
    run = mjq(stack, "batch", str(path), "--batch-id", "flow", "--wait", timeout=120)
    assert run.code == 0, run
    assert "queued 4 job(s)" in run.out and "done" in run.out
    book = ledger(stack)
    jobs = book.batch_jobs("flow")
    assert len(jobs) == 5  # 4 imagines + 1 upscale
    assert {j["status"] for j in jobs} == {"succeeded"}
    submissions = sim_stats(stack)["submissions"]

    again = mjq(stack, "batch", str(path), "--batch-id", "flow", "--json")
    assert again.code == 0, again
    assert again.json()["submitted"] == 0 and again.json()["skipped"] == 4
    assert len(book.batch_jobs("flow")) == 5
    assert sim_stats(stack)["submissions"] == submissions

    status = mjq(stack, "status", "flow", "--json").json()
    assert (status["done"], status["failed"], status["total"]) == (5, 0, 5)
    listing = mjq(stack, "status", "--json").json()
    assert "flow" in {b["batch_id"] for b in listing["batches"]}
    assert "flow" in mjq(stack, "status").out

    rows = [json.loads(line) for line in mjq(stack, "export", "flow", "--format", "jsonl").out.splitlines()]
    by_id = {j["job_id"]: j for j in jobs}
    assert {r["job_id"] for r in rows} == set(by_id)
    for row in rows:
        job = by_id[row["job_id"]]
        for key in (
            "prompt",
            "status",
            "upstream_id",
            "image_url",
            "image_path",
            "image_sha256",
            "parent_job",
        ):
            assert row[key] == job.get(key), key
        assert row["tags"] == (["water", "client:acme"] if row["job_id"] == "f3" else [])
        assert hashlib.sha256(Path(row["image_path"]).read_bytes()).hexdigest() == row["image_sha256"]
    upscale = next(r for r in rows if r["parent_job"])
    assert upscale["parent_job"] == "f1"
    out = tmp_path / "m.csv"
    assert mjq(stack, "export", "flow", "--format", "csv", "-o", str(out)).code == 0
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {r["job_id"]: r["image_sha256"] for r in table} == {k: v["image_sha256"] for k, v in by_id.items()}

    page = tmp_path / "g" / "flow.html"
    run = mjq(stack, "gallery", "flow", "--no-open", "-o", str(page))
    assert run.code == 0, run
    html = page.read_text()
    for job in jobs:
        assert f'data-job="{job["job_id"]}"' in html and f'data-sha256="{job["image_sha256"]}"' in html
    assert html.count('<img src="data:image/jpeg;base64,') == len(jobs)
    assert "U1 of f1" in html


def test_failures_status_and_requeue(tmp_path: Path, stack: DevStack) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": f"bad{i}", "prompt": f"doomed {i}"} for i in range(2)])
    faults(stack, failure_rate=1.0)
    try:
        run = mjq(stack, "batch", str(path), "--batch-id", "bad", "--wait", timeout=120)
    finally:
        faults(stack, failure_rate=0.0)
    assert run.code == 1, run
    status = mjq(stack, "status", "bad", "--json").json()
    assert status["failed"] == 2
    assert all(f["fail_reason"] for f in status["failures"])
    assert "failures" in mjq(stack, "status", "bad").out
    assert mjq(stack, "requeue", "bad").code == 2
    run = mjq(stack, "requeue", "bad", "--failed")
    assert run.code == 0 and "requeued 2" in run.out, run
    final = _wait_status(stack, "bad", lambda s: s["done"] == 2)
    assert final["failed"] == 0


def _wait_status(stack: DevStack, batch: str, ok: Any, timeout_s: float = 60) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = mjq(stack, "status", batch, "--json").json()
        if ok(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def test_pause_resume_and_cancel(tmp_path: Path, stack: DevStack) -> None:
    rows = [{"id": f"slow{i}", "prompt": f"slow {i}", "mode": "relax"} for i in range(12)]
    path = write_jsonl(tmp_path / "slow.jsonl", rows)
    before = sim_stats(stack)["submissions"]
    assert mjq(stack, "batch", str(path), "--batch-id", "slow").code == 0
    assert mjq(stack, "pause", "slow").code == 0
    assert mjq(stack, "status", "slow", "--json").json()["status"] == "paused"
    assert mjq(stack, "resume", "slow").code == 0
    assert mjq(stack, "status", "slow", "--json").json()["status"] == "active"
    assert mjq(stack, "cancel", "slow").code == 0
    final = _wait_status(stack, "slow", lambda s: s["running"] == 0 and s["queued"] == 0)
    assert final["status"] == "cancelled"
    assert final["counts"].get("cancelled", 0) >= 1
    assert sim_stats(stack)["submissions"] - before < 12
    assert mjq(stack, "pause", "no-such-batch").code == 1


def test_imagine_wait_and_global_resume(stack: DevStack) -> None:
    run = mjq(stack, "imagine", "a {small, tall} tower", "--wait", "--json", "--mode", "turbo", timeout=90)
    assert run.code == 0, run
    results = run.json()
    assert [r["prompt"] for r in results] == ["a small tower", "a tall tower"]
    assert all(r["status"] == "succeeded" and Path(r["image_path"]).is_file() for r in results)
    run = mjq(stack, "resume")
    assert run.code == 0 and "breaker cleared" in run.out
