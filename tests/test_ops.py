"""The operator's night (issue 13): honest status, job-level tools, transition logs, priorities, settings drift,
big files. Real stack (embedded Valkey, simulator over HTTP, Celery worker), the installed `mjq` in a subprocess.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.support import patience
from tests.support.mjq import BIN, Run, faults, ledger, mjq, shared_stack, write_jsonl
from worker.app import FINISH_MANY_TASK
from worker.devstack.redisserver import free_port
from worker.devstack.stack import DevStack
from worker.jobs.dispatch import FINISH_CHUNK
from worker.reports.progress import watch


@pytest.fixture(scope="module")
def stack() -> DevStack:
    return shared_stack()


def cli(stack: DevStack, *args: str) -> Run:
    """`mjq` in this process (Typer's runner) against the stack: the same commands without a start-up each."""
    from worker.cli import app

    with stack.environment():
        result = CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})
    return Run(result.exit_code, result.stdout, result.stderr)


def wait_for(check: Any, timeout_s: float = 60.0) -> Any:
    deadline = patience.deadline(timeout_s)
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_status_rate_eta_match_wait_and_log_one_line_per_transition(tmp_path: Path, stack: DevStack) -> None:
    rows = [{"id": f"pace{i}", "prompt": f"a paced job {i}", "mode": "turbo", "then": "U1" if i == 0 else ""}
            for i in range(4)]
    run = mjq(stack, "batch", str(write_jsonl(tmp_path / "pace.jsonl", rows)), "--batch-id", "pace", "--wait")
    assert run.code == 0, run
    waited = re.search(r"rate (\S+) ETA 0s$", run.out.strip().splitlines()[-1])
    assert waited and waited.group(1) != "--", run.out
    status = mjq(stack, "status", "pace")
    assert status.code == 0, status
    # the same figure as --wait, from the ledger's timings (not a meter that needs two readings)
    assert f"rate {waited.group(1)}  ETA 0s" in status.out, status.out
    as_json = cli(stack, "status", "pace", "--json").json()
    assert as_json["rate_per_min"] and as_json["eta_s"] == 0
    # one line per transition in the worker's (or the webhook's, which settles callbacks) log, with batch,
    # upstream, from -> to and why; no httpx request line at INFO
    log = "".join((stack.log_dir / f"{name}.log").read_text(errors="replace") for name in ("worker", "webhook"))
    assert re.search(r"job pace0 batch pace upstream default: new -> queued \(created\)", log), log[-2000:]
    assert re.search(r"job pace0 batch pace upstream default: queued -> submitting", log), log[-2000:]
    assert re.search(r"job pace0 batch pace upstream default: \w+ -> succeeded \((poll|webhook)\)", log)
    assert "HTTP Request:" not in log and "POST /hook/" not in log  # per-request lines only at DEBUG
    # and the job's own log: `mjq logs`
    entries = cli(stack, "logs", "pace0", "--json").json()
    assert entries[0]["to"] == "queued" and entries[-1]["to"] == "succeeded", entries
    assert all(re.match(r"\d{4}-\d\d-\d\dT", e["at"]) for e in entries)
    text = cli(stack, "logs", "pace0").out
    assert "new -> queued  (created)" in text and "-> succeeded" in text, text
    # `mjq job`: the lineage both ways (the root lists its follow-up, the follow-up names its parent)
    root = cli(stack, "job", "pace0", "--json").json()
    [child] = root["children"]
    shown = cli(stack, "job", "pace0").out
    assert child["status"] == "succeeded" and re.search(rf"follow-up\s+{child['job_id']} ", shown), shown
    assert re.search(r"parent_job\s+pace0", cli(stack, "job", child["job_id"]).out)
    # Flower: searching the batch id finds its follow-up too (the parent's batch is in its kwargs repr)
    def found() -> set[str]:
        tasks = httpx.get(f"{stack.flower_url}/api/tasks", params={"search": "batch_id=pace"}, timeout=10).json()
        return {str(t.get("name")) for t in tasks.values()}

    followups = wait_for(lambda: found() - {"tasks.imagine"}, 30)  # the U1 of pace0: its own task name
    assert "tasks.imagine" in found() and all(n.startswith("tasks.") for n in followups), followups


def test_flower_shows_parked_jobs_as_parked_not_started(tmp_path: Path, stack: DevStack) -> None:
    book = ledger(stack)
    book.ensure_batch("parkedshow")
    book.set_batch_status("parkedshow", "paused")
    rows = [{"id": f"ps{i}", "prompt": f"a parked job {i}"} for i in range(2)]
    assert cli(stack, "batch", str(write_jsonl(tmp_path / "ps.jsonl", rows)), "--batch-id", "parkedshow").code == 0

    def states() -> dict[str, Any]:
        tasks = httpx.get(f"{stack.flower_url}/api/tasks", params={"search": "batch_id=parkedshow"}, timeout=10)
        found = {k: v for k, v in tasks.json().items() if v.get("state") == "RETRY"}
        return found if len(found) == 2 else {}

    parked = wait_for(states, 90)
    assert all("parked: its batch is paused" in str(t.get("exception")) for t in parked.values()), parked
    assert cli(stack, "cancel", "parkedshow").code == 0


def test_status_gives_one_queued_figure(stack: DevStack) -> None:
    """Created-but-waiting, enqueued-not-created and planned follow-ups add up to the one queued figure."""
    book = ledger(stack)
    book.ensure_batch("onequeue")
    for i in range(2):
        book.create_job(f"oq{i}", {"batch_id": "onequeue", "prompt": "x", "mode": "fast"})
    book.expect_jobs("onequeue", ["oq-a", "oq-b", "oq-c"])
    book.add_planned("onequeue", 1)
    book.set_batch_status("onequeue", "paused")
    out = cli(stack, "status", "onequeue").out
    assert re.findall(r"queued (\d+)", out) == ["6", "6"], out
    line = "queued 6: 2 waiting to submit, 3 enqueued, not picked up yet, 1 follow-ups planned"
    assert line in " ".join(out.split()), out  # however the terminal wraps it
    status = cli(stack, "status", "onequeue", "--json").json()
    assert status["queued"] == 6 and status["queued_parts"] == {"created": 2, "pending": 3, "planned": 1}
    book.unexpect_jobs("onequeue", ["oq-a", "oq-b", "oq-c"])


def test_ids_and_urls_are_whole_at_80_columns(stack: DevStack) -> None:
    """At 80 columns ids and URLs are never cut with an ellipsis (`night-217f…`, `http://127.0.0.1:87…`)."""
    book = ledger(stack)
    batch = "night-217f3c9a2b1e"  # the shape of an automatic batch id
    job = f"{batch}-row-000123-v1"
    book.create_job(job, {"batch_id": batch, "mode": "fast", "prompt": "a lighthouse at dawn, waves on rocks " * 3})
    reason = "gave up after 8 failed attempts: the upstream refused the connection; nothing was sent at all"
    assert book.transition(job, "failed", fields={"fail_reason": reason})[0]
    narrow = {"COLUMNS": "80"}
    listing = mjq(stack, "status", env=narrow)
    assert listing.code == 0 and re.search(rf"^ ?{batch} ", listing.out, re.M), listing.out
    one = mjq(stack, "status", batch, env=narrow)
    assert one.code == 0 and re.search(rf"│ {job} │", one.out), one.out
    url = "http://127.0.0.1:8765/a-long-proxy-path/mj"
    config = mjq(None, "config", env={**narrow, "MJQ_API_BASE_URL": url})
    assert config.code == 0 and url in config.out and "…" not in config.out, config.out
    assert "[[upstream]]" in config.out  # the meaning's own brackets are text, not markup


def test_wait_to_a_pipe_prints_a_progress_line_while_nothing_moves(tmp_path: Path, stack: DevStack) -> None:
    """`mjq batch --wait | cat`: with nothing moving (a timed stop: it resumes by itself, so `--wait` waits) the
    same progress line comes again and again while the process runs, not only at the end."""
    book = ledger(stack)
    rows = [{"id": f"quiet{i}", "prompt": f"a quiet job {i}"} for i in range(2)] + [{"id": "quiet-bad", "prompt": ""}]
    path = write_jsonl(tmp_path / "quiet.jsonl", rows)  # the bad row's reason is on screen, not only in a file
    assert book.trip_breaker("test: a temporary block", time.time() + 600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")} | stack.env
    proc = subprocess.Popen([str(BIN / "mjq"), "batch", str(path), "-b", "quiet", "--wait"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not (len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3] and seen[-1].startswith("quiet 0/2")):
            assert proc.poll() is None and time.monotonic() < deadline, seen
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
    finally:
        assert cli(stack, "resume").code == 0
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (seen, err)
    assert re.search(r"^  row 3: prompt: ", err, re.M), err
    assert inspect.signature(watch).parameters["line_every_s"].default <= 10  # the promise: at least every 10 s


def test_jobs_retry_and_logs(tmp_path: Path, stack: DevStack) -> None:
    rows = [{"id": f"rt{i}", "prompt": f"a retried job {i}", "mode": "turbo"} for i in range(3)]
    faults(stack, failure_rate=1.0)
    try:
        run = mjq(stack, "batch", str(write_jsonl(tmp_path / "rt.jsonl", rows)), "--batch-id", "rt", "--wait")
    finally:
        faults(stack, failure_rate=0.0)
    assert run.code == 1, run
    page = cli(stack, "jobs", "--batch", "rt", "--status", "failed", "--limit", "2", "--json").json()
    assert len(page["jobs"]) == 2 and page["next_offset"] == 2
    rest = cli(stack, "jobs", "--batch", "rt", "--status", "failed", "--offset", "2", "--json").json()
    assert len(rest["jobs"]) == 1 and rest["next_offset"] is None  # creation order: the order workers made them
    assert {j["job_id"] for j in page["jobs"] + rest["jobs"]} == {"rt0", "rt1", "rt2"}
    assert cli(stack, "jobs", "--batch", "rt", "--status", "succeeded", "--json").json()["jobs"] == []
    listing = cli(stack, "jobs", "--batch", "rt", "--limit", "2")
    assert "failed" in listing.out and "--offset 2" in listing.out, listing
    bad = cli(stack, "jobs", "--batch", "rt", "--status", "broken")
    assert bad.code == 2 and "--status" in bad.err
    assert "-> failed" in cli(stack, "logs", "rt0").out
    record = cli(stack, "job", "rt1")  # still failed: its last error is part of the record
    reason = ledger(stack).get_job("rt1")["fail_reason"]
    assert reason and re.search(r"last error\s+" + re.escape(reason[:30]), record.out), record.out
    # the upstream failed it: a new submit, same job id, through admission and submit-once
    again = cli(stack, "retry", "rt0")
    assert again.code == 0 and "queued rt0 again" in again.out, again
    wait_for(lambda: ledger(stack).status("rt0") == "succeeded")
    moves = [(e["from"], e["to"], e["reason"]) for e in ledger(stack).job_log("rt0")]
    assert ("failed", "queued", "retry") in moves and moves[-1][1] == "succeeded", moves
    assert cli(stack, "retry", "rt0").code == 1  # succeeded: never rerun
    # an ambiguous submit is not retried without --force (it may have run upstream and been paid)
    book = ledger(stack)
    book.create_job("rt-review", {"batch_id": "rt", "prompt": "x", "mode": "fast"})
    assert book.transition("rt-review", "needs_review", fields={"fail_reason": "timeout after sending"})[0]
    refused = cli(stack, "retry", "rt-review")
    assert refused.code == 1 and "needs review" in refused.err and "--force" in refused.err, refused
    assert book.status("rt-review") == "needs_review"


def test_retry_of_a_job_timed_out_upstream_tracks_it_again(stack: DevStack) -> None:
    """Timed out while the upstream had it: polled again (it may still finish there), never submitted again."""
    run = mjq(stack, "imagine", "a job that is late", "--wait", "--json", "--mode", "turbo", timeout=90)
    job = run.json()[0]
    book = ledger(stack)
    submissions = httpx.get(f"{stack.api_base_url}/admin/stats", timeout=5).json()["submissions"]
    book.requeue_jobs([job["job_id"]])  # back to an unfinished job with its upstream task, then timed out
    book.transition(job["job_id"], "submitted", fields={}, upstream=job["upstream_id"])
    assert book.transition(job["job_id"], "timed_out", fields={"fail_reason": "deadline"})[0]
    again = cli(stack, "retry", job["job_id"])
    assert again.code == 0 and "tracking" in again.out and "nothing resubmitted" in again.out, again
    wait_for(lambda: book.status(job["job_id"]) == "succeeded")
    assert httpx.get(f"{stack.api_base_url}/admin/stats", timeout=5).json()["submissions"] == submissions


def test_imagine_with_a_plan_and_wait_runs_at_interactive_priority(stack: DevStack) -> None:
    run = mjq(stack, "imagine", "a quick look", "--then", "U1", "--wait", "--json", "--mode", "turbo", timeout=90)
    assert run.code == 0, run
    root, child = run.json()
    assert root["priority"] == child["priority"] == 2  # a single request's priority, not a batch's 5
    assert ledger(stack).get_job(root["job_id"])["queue"] == "interactive"


def test_resume_tells_when_workers_run_with_other_settings(stack: DevStack) -> None:
    book = ledger(stack)
    wait_for(lambda: book.redis.hlen("mjq:workers"))  # the stack's worker reported its settings
    same = cli(stack, "resume")
    assert same.code == 0 and "other settings" not in same.err, same
    other = mjq(stack, "resume", env={"MJQ_API_KEY": "a-new-key-the-workers-do-not-have"})
    assert other.code == 0, other
    assert "workers run with other settings" in other.err and "MJQ_API_KEY" in other.err, other.err
    assert "restart" in other.err
    assert "a-new-key" not in json.dumps(book.redis.hgetall("mjq:workers"))


def test_log_format_json_for_log_shippers(tmp_path: Path, stack: DevStack) -> None:
    """`MJQ_LOG_FORMAT=json`: the webhook server (uvicorn's lines included) writes one JSON object a line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    env.update(stack.env, MJQ_LOG_FORMAT="json", MJQ_WEBHOOK_PORT=str(free_port()))
    proc = subprocess.Popen([str(BIN / "mjq"), "webhook"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record), record
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


# ---------------------------------------------------------------------------------------------- big files


def test_a_million_row_dry_run_streams_in_flat_memory(tmp_path: Path) -> None:
    """1,000,000 rows: rows read, rate and the end on screen, rejected rows' reasons too, under 200 MB RSS."""
    path = tmp_path / "million.txt"
    with path.open("w", encoding="utf-8") as file:
        file.writelines(f"a lighthouse number {i} at dawn --ar 16:9\n" for i in range(1_000_000))
        file.writelines(f"a broken {{row {i}\n" for i in range(25))  # 25 rejects: 20 shown, the rest counted
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    proc = subprocess.Popen([str(BIN / "mjq"), "batch", str(path), "--dry-run", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()  # both small: the summary, progress lines, 20 rejects
    _, status, usage = os.wait4(proc.pid, 0)  # the peak RSS of this very process (and nothing else)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert (summary["rows"], summary["jobs"], summary["rejected"]) == (1_000_025, 1_000_000, 25), summary
    assert re.search(r"reading: read 1,000,025 rows in \S+ \([\d,]+ rows/s\)", err), err[-500:]
    assert len(re.findall(r"^  row \d+: prompt: unclosed", err, re.M)) == 20 and "… and 5 more in" in err, err
    assert usage.ru_maxrss < 200 * 1024, f"{usage.ru_maxrss / 1024:.0f} MB"


def test_dry_run_show_lists_the_expanded_prompts(tmp_path: Path) -> None:
    path = tmp_path / "show.txt"
    path.write_text("a {red, blue} bird\n/imagine prompt: a koi —relax\n", encoding="utf-8")
    run = mjq(None, "batch", str(path), "--dry-run", "--show")
    assert run.code == 0, run
    lines = [line.split(None, 2) for line in run.out.splitlines()[:3]]
    assert lines == [["1", "fast", "a red bird"], ["1", "fast", "a blue bird"], ["2", "relax", "a koi --relax"]]
    as_json = mjq(None, "batch", str(path), "--dry-run", "--show", "--json").json()
    assert [p["prompt"] for p in as_json["prompts"]] == ["a red bird", "a blue bird", "a koi --relax"]


def test_ctrl_c_says_what_was_queued_and_cancel_is_bulk(tmp_path: Path, stack: DevStack) -> None:
    book = ledger(stack)
    book.ensure_batch("big")
    book.set_batch_status("big", "paused")  # nothing of it is submitted: admission holds what workers create
    path = tmp_path / "big.txt"
    path.write_text("".join(f"row {i} of a big file {'x' * 120}\n" for i in range(2500)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    env.update(stack.env)
    proc = subprocess.Popen([str(BIN / "mjq"), "batch", str(path), "--batch-id", "big"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: book.batch("big").get("total"), timeout_s=60)  # jobs are being sent and created
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    found = re.search(r"interrupted: (\d+) job\(s\) of big were queued after \d+ row\(s\); run the same command"
                      r" again to resume", err)  # fmt: skip
    assert found, err
    queued = int(found.group(1))
    assert 0 < queued < 2500
    wait_for(lambda: book.pending_jobs("big") == 0, timeout_s=90)  # every job sent has its record
    log = stack.log_dir / "worker.log"

    def received(name: str) -> int:
        return len(re.findall(rf"Task {re.escape(name)}\[\S+\] received", log.read_text(errors="replace")))

    before = received(FINISH_MANY_TASK)
    cancel = cli(stack, "cancel", "big")
    assert cancel.code == 0 and "cancelled big" in cancel.out, cancel
    info = book.batch("big")
    assert info["counts"]["cancelled"] == info["total"] == queued, info
    assert book.job_log(book.batch_job_ids("big")[0])[-1]["to"] == "cancelled"
    # their finishing step runs in chunks (one message per FINISH_CHUNK jobs, not a round trip per job)
    wait_for(lambda: not book.finishing_in("big") and received(FINISH_MANY_TASK) > before, timeout_s=90)
    assert received(FINISH_MANY_TASK) - before == -(-queued // FINISH_CHUNK)
    shown = " ".join(cli(stack, "status", "big").out.split())  # the batch reads cancelled, with its count
    assert f"{queued}/{queued} cancelled" in shown and f"cancelled {queued}" in shown, shown


def test_gallery_names_a_follow_up_by_its_lineage(tmp_path: Path) -> None:
    from worker.reports.gallery import render_gallery

    jobs = [
        {"job_id": "coast-1", "status": "succeeded", "prompt": "a coast"},
        {"job_id": "c1-v1", "parent_job": "coast-1", "custom_id": "MJ::JOB::variation::1::abc", "status": "succeeded"},
        {"job_id": "c1-v1-u2", "parent_job": "c1-v1", "custom_id": "MJ::JOB::upsample::2::def", "status": "failed"},
    ]
    page = "".join(render_gallery("coast", jobs, tmp_path))
    assert "<b>U2 of V1 of coast-1</b>" in page and "<b>V1 of coast-1</b>" in page and "<b>imagine</b>" in page
    # an ancestor outside the page ends the chain with its id (a follow-up of a job of another batch)
    alone = "".join(render_gallery("coast", jobs[2:], tmp_path))
    assert "<b>U2 of c1-v1</b>" in alone


def test_json_log_lines_carry_the_transition_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """The setup worker and beat get from Celery's `setup_logging` signal: JSON, with the transition's fields."""
    import logging

    from worker.logs import CHATTY, configure
    from worker.settings import Settings
    from worker.store.ledger import log_transition

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    levels = {name: logging.getLogger(name).level for name in CHATTY}
    try:
        configure(Settings(_env_file=None, log_format="json"), "INFO")
        log_transition("j1", "night", "default", "running", "succeeded", "webhook")
        logging.getLogger("httpx").info("HTTP Request: GET /mj/task/1/fetch")  # DEBUG detail: not at INFO
    finally:
        root.handlers[:], root.level = saved
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 1, lines
    assert {k: lines[0][k] for k in ("job_id", "batch_id", "upstream", "from_state", "to_state", "reason")} == {
        "job_id": "j1", "batch_id": "night", "upstream": "default", "from_state": "running",
        "to_state": "succeeded", "reason": "webhook"}
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "mjqueue.transitions"
