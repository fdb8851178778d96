"""The `mjq` command as a user runs it (the installed console script, in a subprocess) against a real stack:
embedded Valkey, the simulator over HTTP, a real Celery worker, the webhook server.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import time
from html import escape
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from typer.testing import CliRunner

from simulator.server import SimulatorAdmin
from tests.support import patience
from tests.support.mjq import BIN, faults, ledger, mjq, shared_stack, sim_stats, write_jsonl
from tests.support.stack import Stack, StackManager, reset_state
from worker.devstack.redisserver import free_port
from worker.devstack.stack import DevStack
from worker.reports.export import TIME_FIELDS, iso_time


@pytest.fixture(scope="module")
def stack() -> DevStack:
    return shared_stack()


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
    leftover = [k for k in redis_client.scan_iter() if not str(k).startswith(("mjq:lock:", "_kombu."))]
    assert leftover == [], "a dry run records, queues and sends nothing"
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
    assert "queued 4 job(s)" in run.out
    # not a terminal: plain progress lines; the last one has every group, the rate and ETA of a finished batch
    last = run.out.strip().splitlines()[-1]
    assert last.startswith("flow 5/5 100% finished: done 5 failed 0 running 0 queued 0 rate "), run.out
    assert re.search(r"rate \d+\.\d/min ETA 0s$", last), run.out
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
            "image_uri",
            "thumb_path",
            "parent_job",
            "duration_s",
        ):
            assert row[key] == job.get(key), key
        for key in TIME_FIELDS:  # ISO 8601 UTC in the manifest, epoch seconds in the ledger
            assert row[key] == iso_time(job.get(key)), key
        assert row["submitted_at"] and row["finished_at"] and row["duration_s"] > 0
        assert row["created_at"] <= row["submitted_at"] <= row["finished_at"]
        assert row["tags"] == (["water", "client:acme"] if row["job_id"] == "f3" else [])
        # the file row of the prompt (a follow-up: the row of the prompt it came from)
        assert row["row"] == {"f1": 1, "f2.1": 2, "f2.2": 2, "f3": 3}[row["root_job"]], row
        assert hashlib.sha256(Path(row["image_path"]).read_bytes()).hexdigest() == row["image_sha256"]
    upscale = next(r for r in rows if r["parent_job"])
    assert upscale["parent_job"] == "f1"
    out = tmp_path / "m.csv"
    assert mjq(stack, "export", "flow", "--format", "csv", "-o", str(out)).code == 0
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {r["job_id"]: r["image_sha256"] for r in table} == {k: v["image_sha256"] for k, v in by_id.items()}
    assert {r["job_id"]: r["row"] for r in table} == {r["job_id"]: str(r["row"]) for r in rows}

    page = tmp_path / "g" / "flow.html"
    run = mjq(stack, "gallery", "flow", "--no-open", "-o", str(page))
    assert run.code == 0, run
    html = page.read_text()
    cards = gallery_cards(html)
    assert set(cards) == set(by_id)
    for job_id, job in by_id.items():
        card = cards[job_id]
        assert f'data-status="succeeded" data-sha256="{job["image_sha256"]}"' in card
        assert '<span class="badge" style="background:#1a7f37">succeeded</span>' in card
        shown = job["final_prompt"] or job["prompt"] or ""  # an upscale shows the prompt upstream rendered
        assert f'<div class="prompt">{escape(shown)}</div>' in card
        assert job["parent_job"] or escape(job["prompt"]) in card, card
        # its own image: the thumbnail made at download (WebP, 256 px), linked to the downloaded file
        link = re.search(r'<a href="([^"]+)"><img src="([^"]+)"', card)
        assert link, card[:300]
        assert (page.parent / link.group(1)).resolve() == Path(job["image_path"]).resolve()
        assert (page.parent / link.group(2)).resolve() == Path(job["thumb_path"]).resolve()
        with Image.open(job["thumb_path"]) as thumb, Image.open(job["image_path"]) as full:
            assert thumb.format == "WEBP" and thumb.size == (min(256, full.width), min(256, full.height))
        # stored locally only (the default MJQ_MEDIA_URL): where it is, no public URL, no upload step
        assert job["image_uri"] == Path(job["image_path"]).resolve().as_uri() and not job.get("image_public_url")
        assert not job.get("upload")
    assert html.count('.webp" alt=') == len(jobs)
    assert "U1 of f1" in cards[upscale["job_id"]]
    assert '<span class="tag">client:acme</span>' in cards["f3"]


def gallery_cards(html: str) -> dict[str, str]:
    """Each job's card of a gallery page, by job id."""
    found = re.finditer(r'<div class="card[^"]*" data-job="([^"]+)".*?</div></div></div>', html)
    return {m.group(1): m.group(0) for m in found}


def test_failures_status_and_requeue(tmp_path: Path, stack: DevStack) -> None:
    rows = [{"id": "bad0", "prompt": "doomed 0", "then": "U1"}, {"id": "bad1", "prompt": "doomed 1"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    faults(stack, failure_rate=1.0)
    try:
        run = mjq(stack, "batch", str(path), "--batch-id", "bad", "--wait", timeout=120)
    finally:
        faults(stack, failure_rate=0.0)
    assert run.code == 1, run
    status = mjq(stack, "status", "bad", "--json").json()
    assert status["failed"] == 2
    assert (status["counts"]["skipped"], status["total"]) == (1, 3)  # bad0's U1 will never run
    assert all(f["fail_reason"] for f in status["failures"])
    assert "failures" in mjq(stack, "status", "bad").out
    assert mjq(stack, "requeue", "bad").code == 2
    # submitting stopped until `mjq resume`: the requeued jobs wait parked, however slowly the next commands run
    ledger(stack).trip_breaker("test: hold the requeued jobs")
    run = mjq(stack, "requeue", "bad", "--failed")
    assert run.code == 0 and "requeued 2" in run.out, run
    # the requeued parent's follow-up is planned again, not skipped: the batch is not over before it exists
    # (on a quick machine the requeued jobs may all be done already: then the child is among them)
    again = mjq(stack, "status", "bad", "--json").json()
    assert again["counts"].get("skipped", 0) == 0 and again["total"] == 3 and again["status"] != "finished"
    assert mjq(stack, "resume").code == 0
    final = _wait_status(stack, "bad", lambda s: s["done"] == 3)
    assert (final["failed"], final["total"], final["counts"].get("skipped", 0)) == (0, 3, 0)
    assert final["status"] == "finished"
    [child] = [j for j in ledger(stack).batch_jobs("bad") if j["parent_job"]]
    assert child["parent_job"] == "bad0" and child["status"] == "succeeded"


def _wait_status(stack: DevStack, batch: str, ok: Any, timeout_s: float = 60) -> dict[str, Any]:
    deadline = patience.deadline(timeout_s)
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
    faults(stack, stuck_rate=1.0)  # nothing ends on its own: the cancel finds parked jobs, however slow the CLI
    try:
        assert mjq(stack, "batch", str(path), "--batch-id", "slow").code == 0
        assert mjq(stack, "pause", "slow").code == 0
        assert mjq(stack, "status", "slow", "--json").json()["status"] == "paused"
        assert mjq(stack, "resume", "slow").code == 0
        assert mjq(stack, "status", "slow", "--json").json()["status"] == "active"
        assert mjq(stack, "cancel", "slow").code == 0
    finally:
        faults(stack, stuck_rate=0.0)
        for task in httpx.get(f"{stack.api_base_url}/admin/tasks", timeout=10).json():  # the submitted ones end
            if task["status"] not in ("SUCCESS", "FAILURE", "CANCEL"):
                httpx.post(f"{stack.api_base_url}/admin/tasks/{task['id']}/finish", timeout=10)
    final = _wait_status(stack, "slow", lambda s: s["running"] == 0 and s["queued"] == 0)
    assert final["status"] == "cancelled"
    assert final["counts"].get("cancelled", 0) >= 1
    assert final["cancelled"] == final["counts"]["cancelled"]
    table = mjq(stack, "status").out
    # a column of the table, or (when an earlier test's long batch id makes the table too wide) the two-line form
    assert (re.search(r"slow\s+│?\s*cancelled\s+│?\s*\d+\s+│?\s*\d+\s+│?\s*[1-9]", table)
            or re.search(r"^slow  cancelled .*\n  done \d+  failed \d+  cancelled [1-9]", table, re.M)), table
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


def test_job_and_status_of_a_job_id(stack: DevStack) -> None:
    """A job id from `mjq imagine` can be looked up: record, times, buttons; `mjq status <job-id>` too."""
    run = mjq(stack, "imagine", "a lighthouse at dawn", "--wait", "--json", "--mode", "turbo", timeout=90)
    assert run.code == 0, run
    job_id = run.json()[0]["job_id"]
    job = mjq(stack, "job", job_id, "--json").json()
    assert (job["job_id"], job["status"], job["kind"]) == (job_id, "succeeded", "imagine")
    assert job["buttons"] and job["children"] == []
    text = mjq(stack, "job", job_id).out
    assert job_id in text and "buttons" in text and "U1" in text and "finished_at" in text, text
    assert re.search(r"finished_at\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text), text
    assert job["image_uri"].startswith("file://") and re.search(r"stored\s+file://", text), text  # MJQ_MEDIA_URL
    assert mjq(stack, "status", job_id, "--json").json()["job_id"] == job_id
    missing = mjq(stack, "job", "no-such-job")
    assert missing.code == 1 and "no job 'no-such-job'" in missing.err, missing


def test_imagine_with_a_plan_waits_for_its_follow_ups(stack: DevStack) -> None:
    run = mjq(stack, "imagine", "a lighthouse with a plan", "--then", "U1", "-p", "0", "--wait", "--json", timeout=90)
    assert run.code == 0, run
    root, child = run.json()
    assert root["status"] == child["status"] == "succeeded"
    assert root["priority"] == child["priority"] == 0  # a follow-up runs at its parent's priority, 0 included
    assert child["parent_job"] == root["job_id"] and child["custom_id"].startswith("MJ::JOB::upsample::1")
    assert child["action"] == "UPSCALE"  # the kind, as the upstream task reports it; the button in custom_id
    assert Path(child["image_path"]).is_file()


def test_imagine_wait_exits_1_when_the_job_fails(stack: DevStack) -> None:
    faults(stack, banned_words=["forbiddenword"])
    try:
        run = mjq(stack, "imagine", "a forbiddenword poster", "--wait", timeout=60)
    finally:
        faults(stack, banned_words=[])
    assert run.code == 1, run
    assert run.out.startswith("queued ") and "\nfailed " in run.out, run.out
    assert "reason: " in run.out and "forbiddenword" in run.out.split("reason: ", 1)[1], run.out


def test_batch_options_land_in_the_ledger(tmp_path: Path, stack: DevStack) -> None:
    path = tmp_path / "opts.txt"
    path.write_text("a paper boat\na glass greenhouse --fast\n", encoding="utf-8")
    run = mjq(
        stack, "batch", str(path), "-b", "opts", "--mode", "relax", "--then", "U2", "--priority", "7", "--wait",
        timeout=120,
    )
    assert run.code == 0, run
    book = ledger(stack)
    records = {j["job_id"]: book.get_job(j["job_id"]) or {} for j in book.batch_jobs("opts")}
    roots = {r["prompt"]: r for r in records.values() if not r.get("parent_job")}
    children = [r for r in records.values() if r.get("parent_job")]
    assert set(roots) == {"a paper boat", "a glass greenhouse --fast"}
    assert roots["a paper boat"]["mode"] == "relax"
    assert roots["a glass greenhouse --fast"]["mode"] == "fast"  # the prompt's own flag beats --mode
    assert all(r["priority"] == 7 and r["then"] == "U2" and r["status"] == "succeeded" for r in roots.values())
    assert all(r["meta"]["row"] in (1, 2) for r in roots.values())
    assert len(children) == 2
    for child in children:
        parent = records[child["parent_job"]]
        assert child["custom_id"].startswith("MJ::JOB::upsample::2") and child["status"] == "succeeded"
        assert (child["mode"], child["priority"]) == (parent["mode"], 7)  # inherited from the parent


def test_priority_orders_admission_of_parked_jobs(tmp_path: Path, stack: DevStack) -> None:
    """0 is the most urgent: parked jobs with priority 0 take the slots before older ones with priority 9."""
    book = ledger(stack)
    slots = int(stack.env.get("MJQ_SLOTS_FAST", "3"))
    low, high = tmp_path / "low.txt", tmp_path / "high.txt"
    low.write_text("".join(f"unhurried {i}\n" for i in range(slots)), encoding="utf-8")
    high.write_text("".join(f"urgent {i}\n" for i in range(slots)), encoding="utf-8")
    book.trip_breaker("test: park everything first")
    try:
        assert mjq(stack, "batch", str(low), "-b", "prio-low", "--priority", "9", "--mode", "fast").code == 0
        assert mjq(stack, "batch", str(high), "-b", "prio-high", "--priority", "0", "--mode", "fast").code == 0
        _wait_until(lambda: book.waiting_count("fast") >= 2 * slots, "every job parked")
    finally:
        assert mjq(stack, "resume").code == 0  # clears the stop: parked jobs are admitted by priority
    for batch in ("prio-low", "prio-high"):
        _wait_status(stack, batch, lambda s: s["done"] == slots)

    def started(batch: str) -> list[float]:
        return sorted(float((book.get_job(i) or {})["submitting_at"]) for i in book.batch_job_ids(batch))

    assert max(started("prio-high")) < min(started("prio-low"))


def test_paused_batch_submits_nothing_until_resumed(tmp_path: Path, stack: DevStack) -> None:
    book = ledger(stack)
    path = write_jsonl(tmp_path / "held.jsonl", [{"id": f"held{i}", "prompt": f"held back {i}"} for i in range(4)])
    book.trip_breaker("test: nothing starts before the pause")
    try:
        assert mjq(stack, "batch", str(path), "-b", "held").code == 0
        _wait_until(lambda: book.batch("held")["counts"]["queued"] == 4, "the jobs recorded")
        assert mjq(stack, "pause", "held").code == 0
    finally:
        assert mjq(stack, "resume").code == 0  # the global stop is cleared; the batch stays paused
    time.sleep(2.0)  # several housekeeping rounds and admissions
    ids = book.batch_job_ids("held")
    assert len(ids) == 4
    assert not set(ids) & set(sim_stats(stack)["submissions_by_state"]), "a paused batch submitted"
    status = mjq(stack, "status", "held", "--json").json()
    assert (status["status"], status["queued"], status["running"]) == ("paused", 4, 0)
    assert mjq(stack, "resume", "held").code == 0
    _wait_status(stack, "held", lambda s: s["done"] == 4)
    by_state = sim_stats(stack)["submissions_by_state"]
    assert [by_state.get(i) for i in ids] == [1, 1, 1, 1]


def test_wait_ends_with_exit_3_when_the_batch_needs_a_person(tmp_path: Path, stack: DevStack) -> None:
    """A tripped breaker (wrong key, no credit) or a paused batch ends `--wait` with the reason and the fix."""
    book = ledger(stack)
    path = write_jsonl(tmp_path / "stuck.jsonl", [{"id": f"stuck{i}", "prompt": f"stuck {i}"} for i in range(3)])
    book.trip_breaker("test: 401 unauthorized")
    try:
        run = mjq(stack, "batch", str(path), "-b", "stuck", "--wait", timeout=120)
        assert run.code == 3, run
        assert "401 unauthorized" in run.err and "`mjq resume`" in run.err, run
        assert re.search(r"^stuck \d+/\d+ ", run.out, re.M), run  # progress lines, not a terminal
        assert mjq(stack, "pause", "stuck").code == 0
    finally:
        assert mjq(stack, "resume").code == 0
    run = mjq(stack, "batch", str(path), "-b", "stuck", "--wait", timeout=120)
    assert run.code == 3, run
    assert "paused" in run.err and "`mjq resume stuck`" in run.err, run
    assert mjq(stack, "resume", "stuck").code == 0
    assert mjq(stack, "batch", str(path), "-b", "stuck", "--wait", timeout=120).code == 0


def test_export_piped_into_head_ends_quietly(stack: DevStack) -> None:
    """`mjq export B | head -1`: the reader closes the pipe early; no "Broken pipe" error, exit 0."""
    book = ledger(stack)
    for i in range(600):  # far more than a pipe buffer holds
        book.create_job(f"piped{i}", {"batch_id": "piped", "mode": "fast", "kind": "imagine", "prompt": "p" * 300})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")} | stack.env
    proc = subprocess.Popen(
        [str(BIN / "mjq"), "export", "piped"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["batch_id"] == "piped"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert "Broken pipe" not in err and "error" not in err.lower(), err


def test_export_to_a_missing_folder_is_one_readable_line(tmp_path: Path, stack: DevStack) -> None:
    ledger(stack).ensure_batch("nowhere")
    target = tmp_path / "no" / "such" / "dir" / "x.csv"
    run = mjq(stack, "export", "nowhere", "-o", str(target))
    assert run.code == 1, run
    lines = run.err.splitlines()
    assert lines[0] == f"mjq: No such file or directory: {target}", run.err
    assert lines[1].strip().startswith("hint:") and len(lines) == 2 and "Traceback" not in run.err


def _wait_until(check: Any, what: str, timeout_s: float = 30) -> None:
    deadline = patience.deadline(timeout_s)
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- batch totals


def test_resume_after_editing_comments_and_adding_rows_pays_nothing_twice(tmp_path: Path, stack: DevStack) -> None:
    from worker.batchfile import default_batch_id

    path = tmp_path / "night.txt"
    path.write_text("# first night\na red fox\na {small, tall} tower\n# end\n", encoding="utf-8")
    batch = default_batch_id(path)
    first = mjq(stack, "batch", str(path), "--wait", "--json", timeout=120)
    assert first.code == 0 and first.json()["submitted"] == 3, first
    book = ledger(stack)
    done = set(book.batch_job_ids(batch))
    path.write_text(
        "# second night: every comment rewritten\n\n# and one more line of them\nan owl at dusk\na red fox\n\n"
        "# moved below the new rows\na koi pond\na {small, tall} tower\n",
        encoding="utf-8",
    )
    again = mjq(stack, "batch", str(path), "--wait", "--json", timeout=120)
    assert again.code == 0, again
    assert (again.json()["submitted"], again.json()["skipped"]) == (2, 3)
    ids = book.batch_job_ids(batch)
    assert done < set(ids) and len(ids) == 5
    by_state = sim_stats(stack)["submissions_by_state"]
    assert {i: by_state.get(i) for i in ids} == {i: 1 for i in ids}  # each job paid for exactly once
    assert mjq(stack, "status", batch, "--json").json()["total"] == 5


def test_copied_file_into_the_same_batch_ends(tmp_path: Path, stack: DevStack) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    original, copy = tmp_path / "a" / "p.txt", tmp_path / "b" / "p.txt"
    original.write_text("a moved fox\na moved owl\n", encoding="utf-8")
    copy.write_text(original.read_text(), encoding="utf-8")
    assert mjq(stack, "batch", str(original), "-b", "moved", "--wait", timeout=60).code == 0
    run = mjq(stack, "batch", str(copy), "-b", "moved", "--wait", timeout=60)
    assert run.code == 0 and "queued 0 job(s), 2 already known" in run.out, run
    assert mjq(stack, "status", "moved", "--json").json()["total"] == 2


def test_interrupted_enqueue_then_rows_deleted_ends(tmp_path: Path, stack: DevStack) -> None:
    from worker.batchfile import read_batch_file
    from worker.producer import Backend, submit_jobs
    from worker.settings import get_settings

    path = write_jsonl(tmp_path / "cut.jsonl", [{"id": f"cut{i}", "prompt": f"cut short {i}"} for i in range(5)])
    plan = read_batch_file(path, scope="cut")

    def interrupt(sent: int) -> None:
        if sent == 2:
            raise KeyboardInterrupt  # Ctrl-C after two of five rows were enqueued

    with stack.environment():
        handle = Backend(get_settings())
        try:
            with pytest.raises(KeyboardInterrupt):
                submit_jobs(handle, plan.jobs, "cut", interrupt)
        finally:
            handle.close()
    write_jsonl(path, [{"id": f"cut{i}", "prompt": f"cut short {i}"} for i in range(2)])  # the rest deleted
    run = mjq(stack, "batch", str(path), "-b", "cut", "--wait", timeout=60)
    assert run.code == 0 and "queued 0 job(s), 2 already known" in run.out, run
    assert mjq(stack, "status", "cut", "--json").json()["total"] == 2


def test_batch_of_jobs_known_in_another_batch_ends_at_once(tmp_path: Path, stack: DevStack) -> None:
    path = write_jsonl(tmp_path / "twice.jsonl", [{"id": f"twice{i}", "prompt": f"only once {i}"} for i in range(2)])
    assert mjq(stack, "batch", str(path), "-b", "first-home", "--wait", timeout=60).code == 0
    run = mjq(stack, "batch", str(path), "-b", "second-home", "--wait", timeout=60)
    assert run.code == 0 and "queued 0 job(s), 2 already known" in run.out, run
    assert mjq(stack, "status", "second-home", "--json").json()["total"] == 0
    assert mjq(stack, "status", "first-home", "--json").json()["total"] == 2


# ---------------------------------------------------------------------------------------------- short deadlines


@pytest.fixture
def worker_stack(stack_manager: StackManager, sim: SimulatorAdmin) -> Stack:
    """The polling worker of tests.support.stack: 3 s deadlines and 1.5 s HTTP timeouts make timed-out and
    needs-review jobs quickly (the `mjq` stack above runs with production-like ones)."""
    worker = stack_manager.use("poll")
    reset_state(worker.redis_url)
    return worker


def test_requeue_timed_out_jobs(tmp_path: Path, worker_stack: Stack, sim: SimulatorAdmin) -> None:
    env = worker_stack.env
    path = write_jsonl(tmp_path / "stuck.jsonl", [{"id": "stuck-1", "prompt": "stuck for ever"}])
    sim.faults(stuck_rate=1.0)
    run = mjq(None, "batch", str(path), "-b", "stuck", "--wait", env=env, timeout=60)
    sim.faults(stuck_rate=0.0)
    assert run.code == 1, run
    assert worker_stack.job("stuck-1")["status"] == "timed_out"
    assert "requeued 0 job(s)" in mjq(None, "requeue", "stuck", "--failed", env=env).out  # not a failure
    run = mjq(None, "requeue", "stuck", "--timed-out", env=env)
    assert run.code == 0 and "requeued 1 job(s)" in run.out, run
    assert worker_stack.wait_status("stuck-1", {"succeeded", "failed", "timed_out"})["status"] == "succeeded"
    assert sim.stats()["submissions_by_state"] == {"stuck-1": 2}


def test_requeue_needs_review_jobs(tmp_path: Path, worker_stack: Stack, sim: SimulatorAdmin) -> None:
    env = worker_stack.env
    path = write_jsonl(tmp_path / "lost.jsonl", [{"id": "lost-1", "prompt": "an answer that never comes"}])
    sim.faults(read_delay_rate=1.0, read_delay_s=3.0)  # accepted upstream, but the answer comes after our timeout
    run = mjq(None, "batch", str(path), "-b", "lost", "--wait", env=env, timeout=60)
    sim.faults(read_delay_rate=0.0)
    assert run.code == 1, run
    assert worker_stack.job("lost-1")["status"] == "needs_review"
    assert "requeued 0 job(s)" in mjq(None, "requeue", "lost", "--timed-out", env=env).out
    run = mjq(None, "requeue", "lost", "--needs-review", env=env)
    assert run.code == 0 and "requeued 1 job(s)" in run.out, run
    assert worker_stack.wait_status("lost-1", {"succeeded", "failed", "needs_review"})["status"] == "succeeded"
    assert sim.stats()["submissions_by_state"] == {"lost-1": 2}  # checked upstream first: it may pay twice
