"""The upstream pool end to end: real Redis, two real workers (a second "host" with its own state dir), and one
simulator PROCESS per account, each with its own capacity and faults. One pool stack for the module.

The pool (``MJQ_UPSTREAMS_FILE``):
- ``acct-a`` / ``acct-b`` / ``acct-c``: fast, capacities 3 / 2 / 1 (the simulator runs exactly that many, and
  queues nothing beyond: peak in flight above a capacity would be a slot exceeded);
- ``paced``: relax only, jittered pacing of 0.3-0.6 s;
- ``night``: turbo only, a work window that excludes now;
- ``dead``: fast, on a closed port (marked unreachable after MJQ_UNREACHABLE_AFTER_S = 1 s; a simulator started on
  its port later: it resumes by itself).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from simulator.process import SimulatorProcess
from tests.support import stack as stack_support
from tests.support.pool import pool_toml, sim_process
from tests.support.stack import Stack, StackManager, WorkerProcess
from worker.devstack.redisserver import free_port

FAST = {"acct-a": 3, "acct-b": 2, "acct-c": 1}
KEYS = {name: f"key-{name}" for name in ("acct-a", "acct-b", "acct-c", "paced", "night", "dead")}


class AlertReceiver:
    """The local ``json://`` target of MJQ_ALERT_URLS: keeps every alert Apprise posts ({"title", "message"})."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        alerts = self.alerts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                alerts.append(json.loads(self.rfile.read(int(self.headers.get("content-length") or 0))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def titled(self, text: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts if text in str(a.get("title"))]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class PoolStack:
    stack: Stack
    sims: dict[str, SimulatorProcess]
    second: WorkerProcess
    dead_port: int
    log_dir: Path
    alerts: AlertReceiver

    def report(self) -> dict[str, dict[str, Any]]:
        from worker.reports.upstreams import upstreams_report
        from worker.store.runtime import runtime

        return {row["name"]: row for row in upstreams_report(runtime())}

    def submit(self, batch_id: str, prompts: list[str], **options: Any) -> list[str]:
        from worker.batchfile import BatchJob
        from worker.producer import backend, submit_jobs

        modes = options.get("modes") or [options.get("mode", "fast")] * len(prompts)
        jobs = [BatchJob(job_id=f"{batch_id}-{i}", row=i + 1, prompt=p, mode=modes[i],
                         bot_type="MID_JOURNEY", then=options.get("then"), upstream=options.get("upstream"))
                for i, p in enumerate(prompts)]
        with backend() as handle:
            submit_jobs(handle, jobs, batch_id)
        return [j.job_id for j in jobs]

    def accepted(self) -> dict[str, dict[str, int]]:
        """Per simulator: job id (our ``state``) -> times accepted."""
        return {name: sim.admin.stats()["accepted_by_state"] for name, sim in self.sims.items()}


def _hours_excluding_now() -> str:
    start = datetime.now(UTC) + timedelta(hours=3)
    end = start + timedelta(hours=1)
    return f"{start:%H}:00-{end:%H}:00"


@pytest.fixture(scope="module")
def pool(stack_manager: StackManager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolStack]:
    tmp = Path(tmp_path_factory.mktemp("pool"))
    outside = {k: v for k, v in os.environ.items() if k.startswith("MJQ_")}  # given back at the end
    sims = {name: sim_process(name, tmp, key=KEYS[name], slots=cap, queue_size=0) for name, cap in FAST.items()}
    sims["paced"] = sim_process("paced", tmp, key=KEYS["paced"], slots=3, queue_size=0, time_factor=0.005)
    sims["night"] = sim_process("night", tmp, key=KEYS["night"], slots=3, queue_size=0)
    dead_port = free_port()
    for sim in sims.values():
        sim.start()
    common = {"auth_header": "mj-api-secret", "profile": "plus", "webhooks": False}
    tables = [{"name": name, "base_url": sims[name].url, "api_key_env": f"MJQ_TEST_KEY_{i}", "modes": ["fast"],
               "slots": {"fast": cap}, "weight": 2 if name == "acct-a" else 1, **common}
              for i, (name, cap) in enumerate(FAST.items())]
    tables.append({"name": "paced", "base_url": sims["paced"].url, "api_key_env": "MJQ_TEST_KEY_P",
                   "modes": ["relax"], "slots": {"relax": 3}, "submit_interval_s": 0.3, "submit_interval_max_s": 0.6,
                   **common})
    tables.append({"name": "night", "base_url": sims["night"].url, "api_key_env": "MJQ_TEST_KEY_N",
                   "modes": ["turbo"], "slots": {"turbo": 3}, "hours": _hours_excluding_now(), "timezone": "UTC",
                   **common})
    tables.append({"name": "dead", "base_url": f"http://127.0.0.1:{dead_port}", "api_key_env": "MJQ_TEST_KEY_D",
                   "modes": ["fast"], "slots": {"fast": 1}, **common})
    pool_file = tmp / "upstreams.toml"
    pool_file.write_text(pool_toml(tables), encoding="utf-8")
    env = {f"MJQ_TEST_KEY_{i}": KEYS[name] for i, name in enumerate(FAST)}
    env.update({"MJQ_TEST_KEY_P": KEYS["paced"], "MJQ_TEST_KEY_N": KEYS["night"], "MJQ_TEST_KEY_D": KEYS["dead"]})
    alerts = AlertReceiver()
    stack_support.CONFIGS["pool"] = {
        **env,
        "MJQ_ALERT_URLS": alerts.url,
        "MJQ_UPSTREAMS_FILE": str(pool_file),
        "MJQ_UNREACHABLE_AFTER_S": "1",
        "MJQ_UNREACHABLE_PROBE_MAX_S": "1",
        "MJQ_HOUSEKEEPING_INTERVAL_S": "0.2",
        "MJQ_EXPECTED_RELAX_S": "0.9",
    }
    stack = stack_support.use_config(stack_manager, "pool", None)
    second_env = {**stack.env, "MJQ_STATE_DIR": str(tmp / "host2-state")}
    second = WorkerProcess(second_env, tmp / "worker-host2.log", beat=False).start(stack.redis_url)
    try:
        yield PoolStack(stack, sims, second, dead_port, tmp, alerts)
    finally:
        second.stop()
        alerts.close()
        if stack_manager.worker is not None:  # its pool file points at simulators that end here
            stack_manager.worker.stop()
        stack_manager.worker = None
        stack_manager.current = None
        for sim in sims.values():
            sim.stop()
        for key in [k for k in os.environ if k.startswith("MJQ_")]:
            del os.environ[key]
        os.environ.update(outside)


def test_three_upstreams_each_under_its_own_slots_on_two_hosts(pool: PoolStack) -> None:
    """Capacities 3/2/1 (and a dead fourth): every job succeeds once, no account ever holds more than its slots,
    no queue-full answer; the worker of the second host took part (it shares the same slots through Redis)."""
    ids = pool.submit("p-cap", [f"pool capacity {i}" for i in range(24)])
    batch = pool.stack.wait_batch("p-cap", 24, timeout=120)
    assert batch["counts"]["succeeded"] == 24, [pool.stack.job(i).get("fail_reason") for i in ids]
    used = {pool.stack.job(i)["upstream"] for i in ids}
    assert used == set(FAST), used
    for name, cap in FAST.items():
        stats = pool.sims[name].admin.stats()
        assert stats["peak_in_flight"] <= cap, (name, stats["peak_in_flight"])
        assert stats["queue_full"] == 0, name
    accepted = pool.accepted()
    assert all(sum(a.get(i, 0) for a in accepted.values()) == 1 for i in ids), accepted
    assert batch["upstreams"] and set(batch["upstreams"]) <= set(FAST) and sum(batch["upstreams"].values()) == 24
    assert "tasks.imagine" in pool.second.log_path.read_text(errors="replace")  # host 2 ran jobs too
    result = pool.stack.job(ids[0])
    from worker.store.ledger import result_of

    assert result_of(result)["upstream"] == result["upstream"]
    # the dead upstream refused every connection: marked unreachable, its jobs went elsewhere, none failed
    report = pool.report()
    assert report["dead"]["state"] == "unreachable", report["dead"]


def test_out_of_credit_stops_one_upstream_and_the_batch_finishes_on_the_others(pool: PoolStack) -> None:
    from worker import control
    from worker.store.runtime import runtime

    pool.sims["acct-b"].admin.faults(balance=2)
    before = pool.accepted()
    ids = pool.submit("p-credit", [f"pool credit {i}" for i in range(18)])
    batch = pool.stack.wait_batch("p-credit", 18, timeout=120)
    assert batch["counts"]["succeeded"] == 18, [pool.stack.job(i).get("fail_reason") for i in ids]
    after = pool.accepted()
    assert all(sum(a.get(i, 0) for a in after.values()) == 1 for i in ids), "a job lost or submitted twice"
    on_b = [i for i in ids if after["acct-b"].get(i)]
    assert len(on_b) <= 2 and {pool.stack.job(i)["upstream"] for i in ids} - {"acct-b"}
    assert sum(after["acct-b"].values()) - sum(before["acct-b"].values()) <= 2
    row = pool.report()["acct-b"]
    assert row["state"] == "stopped" and "credit" in row["reason"].lower(), row
    assert pool.report()["acct-a"]["state"] == "running"
    status = control.breaker_status(runtime())
    assert not status["tripped"] and status["upstreams"]["acct-b"]["tripped"]  # the others go on
    pool.stack.wait(lambda: bool(pool.alerts.titled("upstream acct-b stopped")), 30, "the upstream-stopped alert")
    (alert,) = pool.alerts.titled("upstream acct-b stopped")  # once per cause, not once per job
    assert "credit" in alert["message"].lower() and "other upstreams go on" in alert["message"]
    assert not pool.alerts.titled("every fast upstream stopped")
    pool.sims["acct-b"].admin.faults(balance=None)
    control.resume_submitting(runtime(), "acct-b")
    assert pool.report()["acct-b"]["state"] == "running"


def test_follow_ups_run_on_their_parents_upstream(pool: PoolStack) -> None:
    ids = pool.submit("p-follow", [f"pool follow {i}" for i in range(6)], then="U1")
    batch = pool.stack.wait_batch("p-follow", 12, timeout=120)
    assert batch["counts"]["succeeded"] == 12, batch["counts"]
    accepted = pool.accepted()
    for root in ids:
        parent = pool.stack.job(root)
        children = pool.stack.ledger.children(root)
        assert len(children) == 1
        child = children[0]
        assert child["upstream"] == parent["upstream"], (parent["upstream"], child["upstream"])
        assert accepted[parent["upstream"]].get(child["job_id"]) == 1  # pressed on that upstream only
        assert sum(a.get(child["job_id"], 0) for a in accepted.values()) == 1


def test_a_pinned_batch_never_leaves_its_upstream(pool: PoolStack) -> None:
    ids = pool.submit("p-pin", [f"pool pinned {i}" for i in range(5)], upstream="acct-c")
    batch = pool.stack.wait_batch("p-pin", 5, timeout=120)
    assert batch["counts"]["succeeded"] == 5
    accepted = pool.accepted()
    assert all(accepted["acct-c"].get(i) == 1 for i in ids)
    assert not any(a.get(i) for name, a in accepted.items() if name != "acct-c" for i in ids)
    assert batch["upstreams"] == {"acct-c": 5}


def test_jittered_pacing_keeps_every_gap_at_least_the_minimum(pool: PoolStack) -> None:
    """Every gap between two submits to the paced upstream is at least ``submit_interval_s`` (a POST may reach
    the simulator a little after the worker's pace check: a transit tolerance of 50 ms); that each drawn gap stays
    below ``submit_interval_max_s`` is checked on the pace itself (tests/test_upstreams.py)."""
    ids = pool.submit("p-pace", [f"pool paced {i}" for i in range(6)], mode="relax")
    batch = pool.stack.wait_batch("p-pace", 6, timeout=120)
    assert batch["counts"]["succeeded"] == 6
    times = sorted(at for at, state, _ in pool.sims["paced"].admin.submits() if state in ids)
    assert len(times) == 6
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.3 - 0.05, gaps


def test_a_work_window_keeps_its_upstream_idle_outside_its_hours(pool: PoolStack) -> None:
    from worker.store.runtime import runtime

    ids = pool.submit("p-night", ["pool night 0"], mode="turbo")
    pool.stack.wait(lambda: pool.stack.job(ids[0]).get("status") == "queued"
                    and runtime().ledger.waiting_count("turbo") == 1, 30, "the turbo job parked")
    housekeeping_rounds = 5
    time.sleep(housekeeping_rounds * 0.2)
    assert pool.stack.job(ids[0])["status"] == "queued"
    assert pool.sims["night"].admin.stats()["submissions"] == 0
    assert pool.report()["night"]["state"] == "outside hours"
    from worker import control

    control.cancel_batch("p-night", runtime())


def test_refused_connections_use_no_attempts_and_status_says_unreachable(pool: PoolStack) -> None:
    """The dead upstream as if it had just gone down: its job's submits meet refused connections, it is marked
    unreachable again, the job waits queued with no attempt used up, and `mjq status` says why."""
    from typer.testing import CliRunner

    from worker import control
    from worker.cli import app
    from worker.store import keys
    from worker.store.runtime import runtime

    rt = runtime()
    rt.ledger.clear_breaker("dead")
    ids = pool.submit("p-down", ["pool down 0"], upstream="dead")

    def parked_unreachable() -> bool:
        refused = int(rt.redis.hget(keys.job(ids[0]), "connect_failures") or 0)
        return refused >= 1 and rt.ledger.breaker("dead")["kind"] == "unreachable" and (
            pool.stack.job(ids[0]).get("status") == "queued")

    pool.stack.wait(parked_unreachable, 60, "the job refused, the upstream marked unreachable again")
    job = pool.stack.job(ids[0])
    assert int(job.get("attempts") or 0) == 0 and not job.get("fail_reason"), job
    shown = CliRunner().invoke(app, ["status"], env={"COLUMNS": "160"})
    assert shown.exit_code == 0, shown.output
    assert "upstream dead is unreachable" in shown.output and "resumes by itself" in shown.output, shown.output
    control.cancel_batch("p-down", rt)


def test_an_unreachable_upstream_resumes_by_itself_once_it_answers(pool: PoolStack) -> None:
    from worker.mjapi.errors import NotSent
    from worker.reports.upstreams import stopped_note
    from worker.store.runtime import runtime

    assert pool.report()["dead"]["state"] == "unreachable"
    blocked = runtime().ledger.breaker("dead")
    assert blocked["kind"] == "unreachable" and blocked["probe_at"]
    assert "upstream dead unreachable" in stopped_note(runtime())  # what `mjq batch --wait` prints beside the counts
    with pytest.raises(NotSent):
        runtime().client_for("dead").fetch("x")
    revived = sim_process("dead", pool.log_dir, key=KEYS["dead"], slots=1, queue_size=0, port=pool.dead_port).start()
    pool.sims["dead"] = revived
    pool.stack.wait(lambda: pool.report()["dead"]["state"] == "running", 30, "dead probed back to running")
    ids = pool.submit("p-revived", ["pool revived 0"], upstream="dead")
    batch = pool.stack.wait_batch("p-revived", 1, timeout=60)
    assert batch["counts"]["succeeded"] == 1 and revived.admin.stats()["accepted_by_state"].get(ids[0]) == 1


def test_every_upstream_of_a_mode_stopped_is_one_alert(pool: PoolStack) -> None:
    from worker import control
    from worker.jobs.alerts import breaker_tripped
    from worker.store.runtime import runtime

    rt = runtime()
    for name in [*FAST, "dead"]:
        if rt.ledger.trip_breaker(f"test: {name} out of credit", upstream=name):
            breaker_tripped(f"test: {name} out of credit", rt, name)
    pool.stack.wait(lambda: bool(pool.alerts.titled("every fast upstream stopped")), 30, "the mode alert")
    assert "No upstream can take fast jobs" in pool.alerts.titled("every fast upstream stopped")[0]["message"]
    assert control.breaker_status(rt)["upstreams"]["acct-a"]["tripped"]
    for name in [*FAST, "dead"]:
        control.resume_submitting(rt, name)
    assert pool.report()["acct-a"]["state"] == "running"


def test_mjq_upstreams_json_lists_the_pool(pool: PoolStack) -> None:
    from typer.testing import CliRunner

    from worker.cli import app

    out = CliRunner().invoke(app, ["upstreams", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == [*FAST, "paced", "night", "dead"]
    assert all(KEYS[r["name"]] not in out.stdout for r in rows)  # no key in it
    assert rows[0]["slots"]["fast"]["limit"] == 3 and rows[0]["submits_today"] > 0
    assert rows[1]["state"] == "running" and rows[4]["state"] == "outside hours"
    table = CliRunner().invoke(app, ["upstreams"])
    assert table.exit_code == 0 and "acct-b" in table.stdout and "outside" in table.stdout, table.output
    resumed = CliRunner().invoke(app, ["resume", "--upstream", "nope"])
    assert resumed.exit_code != 0 and "unknown upstream" in resumed.output


def test_doctor_probes_every_upstream_of_the_pool(pool: PoolStack) -> None:
    """`mjq doctor` checks each upstream with its own address and key; `--upstream` picks one."""
    from typer.testing import CliRunner

    from worker.cli import app

    out = CliRunner().invoke(app, ["doctor", "--json"])
    report = json.loads(out.stdout)
    assert list(report["upstreams"]) == [*FAST, "paced", "night", "dead"], out.output
    assert all(KEYS[name] not in out.stdout for name in report["upstreams"])  # no key in it
    checks = {c["name"]: c["status"] for c in report["upstreams"]["acct-a"]["checks"]}
    assert checks.get("reach") == "ok", report["upstreams"]["acct-a"]
    one = CliRunner().invoke(app, ["doctor", "--upstream", "acct-b", "--json"])
    assert json.loads(one.stdout)["upstream"] == report["upstreams"]["acct-b"]["upstream"], one.output
    assert CliRunner().invoke(app, ["doctor", "--upstream", "nope"]).exit_code != 0


def _mjq(pool: PoolStack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The installed ``mjq`` in a subprocess pointed at the pool stack (``--wait`` must end by itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")} | pool.stack.env | {"COLUMNS": "200"}
    return subprocess.run([str(Path(sys.executable).parent / "mjq"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_wait_ends_with_exit_3_only_when_no_upstream_of_the_waiting_jobs_modes_runs(pool: PoolStack) -> None:
    """Per mode: the only relax upstream stopped, the fast ones running: ``--wait`` waits for the fast jobs, then
    ends with exit 3 naming the stopped upstream and ``mjq resume --upstream paced``. A batch pinned to a stopped
    upstream ends so too, although other upstreams serve its mode."""
    from worker import control
    from worker.store import keys
    from worker.store.runtime import runtime

    rt = runtime()
    assert rt.ledger.trip_breaker("test: paced out of credit", upstream="paced")
    assert rt.ledger.trip_breaker("test: acct-c out of credit", upstream="acct-c")
    try:
        ids = pool.submit("p-stuck", [f"pool stuck {i}" for i in range(4)], modes=["fast", "fast", "fast", "relax"])
        done = _mjq(pool, "status", "p-stuck", "--wait")
        assert done.returncode == 3, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
        assert [pool.stack.job(i)["status"] for i in ids] == ["succeeded"] * 3 + ["queued"]  # fast ones first
        assert "mjq resume --upstream paced" in done.stderr and "paced out of credit" in done.stderr, done.stderr
        assert "acct-c" not in done.stderr, done.stderr  # it serves no relax: not the reason
        pinned = pool.submit("p-stuck-pin", ["pool stuck pinned 0", "pool stuck pinned 1"], upstream="acct-c")
        done = _mjq(pool, "status", "p-stuck-pin", "--wait")
        assert done.returncode == 3, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
        assert "mjq resume --upstream acct-c" in done.stderr and "pinned to acct-c" in done.stderr, done.stderr
        assert all(pool.stack.job(i)["status"] == "queued" for i in pinned)
        # pinned jobs of a stopped upstream wait in its own set, not in the mode's (they never move elsewhere)
        assert all(rt.redis.zscore(keys.pinned("acct-c", "fast"), i) is not None for i in pinned)
        assert not any(rt.redis.zscore(keys.waiting("fast"), i) is not None for i in pinned)
        assert control.cancel_batch("p-stuck-pin", rt) == 2
        assert not any(rt.redis.zscore(keys.pinned("acct-c", "fast"), i) is not None for i in pinned)  # no leftover
    finally:
        control.resume_submitting(rt, "paced")
        control.resume_submitting(rt, "acct-c")
    pool.stack.wait_batch("p-stuck", 4, timeout=120)
    assert pool.stack.wait_batch("p-stuck-pin", 2, timeout=60)["counts"]["cancelled"] == 2


def test_direct_reads_go_to_the_upstream_that_made_the_task(pool: PoolStack) -> None:
    """``tasks.fetch_task`` / ``list_tasks`` / ``image_seed`` of a task made on acct-b ask acct-b (the pool's first,
    acct-a, does not know the id); ``upstream=`` picks one, checked against the pool."""
    import tasks
    from worker.mjapi.errors import InvalidInput

    (on_b,) = pool.submit("p-read-b", ["pool read b"], upstream="acct-b")
    (on_a,) = pool.submit("p-read-a", ["pool read a"], upstream="acct-a")
    pool.stack.wait_batch("p-read-b", 1, timeout=60)
    pool.stack.wait_batch("p-read-a", 1, timeout=60)
    b_id, a_id = pool.stack.job(on_b)["upstream_id"], pool.stack.job(on_a)["upstream_id"]
    assert pool.sims["acct-b"].admin.stats()["accepted_by_state"].get(on_b) == 1
    fetched = tasks.fetch_task.delay(b_id).get(timeout=30)
    assert fetched is not None and str(fetched["id"]) == b_id and fetched["status"] == "SUCCESS", fetched
    listed = tasks.list_tasks.delay([b_id, a_id, "404404"]).get(timeout=30)
    assert sorted(str(t["id"]) for t in listed) == sorted([b_id, a_id]), listed
    assert tasks.image_seed.delay(b_id).get(timeout=30).isdigit()
    assert tasks.fetch_task.delay(b_id, upstream="acct-c").get(timeout=30) is None  # asked where it is not
    assert str(tasks.fetch_task.delay(b_id, upstream="acct-b").get(timeout=30)["id"]) == b_id
    with pytest.raises(InvalidInput, match=r"upstream.*unknown upstream 'nope'"):
        tasks.fetch_task.delay(b_id, upstream="nope").get(timeout=30)
    # an action pressed on the raw upstream task id (no parent job) goes where the task was made, too
    buttons = [b["custom_id"] for b in pool.stack.job(on_b)["buttons"] if b.get("label") in ("U1", "U2", "U3", "U4")]
    assert len(buttons) == 4, pool.stack.job(on_b)["buttons"]
    pressed = [tasks.action.delay(b_id, custom_id, job_id=f"p-read-b-u{i}") for i, custom_id in enumerate(buttons)]
    results = [r.get(timeout=60) for r in pressed]
    assert [r["status"] for r in results] == ["succeeded"] * 4, results
    accepted = pool.accepted()
    assert all(accepted["acct-b"].get(r["job_id"]) == 1 for r in results), {r["job_id"]: r["upstream"] for r in results}


def test_pins_that_cannot_serve_a_job_are_refused_before_anything_is_sent(pool: PoolStack) -> None:
    """A pin to an upstream that does not serve the job's mode, or an action on a task no upstream is known for
    (several serve its mode), would wait for ever or go to an upstream that never made the task: refused in the
    producer, naming the field; a prompt file's rows are refused with the row, the rest is queued."""
    from typer.testing import CliRunner

    import tasks
    from worker.cli import app
    from worker.mjapi.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"field 'upstream': acct-a does not serve relax jobs \(it serves fast"):
        tasks.imagine.delay("pool pin relax", mode="relax", upstream="acct-a", job_id="p-refused-relax")
    with pytest.raises(InvalidInput, match=r"field 'upstream': task 987654 was not made through mjqueue"):
        tasks.action.delay("987654", "MJ::JOB::upsample::1::0000", job_id="p-refused-action")
    assert pool.stack.ledger.existing(["p-refused-relax", "p-refused-action"]) == set()
    prompts = pool.log_dir / "pins.csv"
    prompts.write_text("prompt,mode,upstream\npin ok,fast,acct-c\npin relax,relax,acct-a\npin nope,fast,nope\n",
                       encoding="utf-8")
    out = CliRunner().invoke(app, ["batch", str(prompts), "--batch-id", "p-pins"])
    assert out.exit_code == 0, out.output
    rejected = (pool.log_dir / "pins.csv.rejected.csv").read_text(encoding="utf-8")
    assert "acct-a does not serve relax jobs" in rejected and "unknown upstream 'nope'" in rejected, rejected
    batch = pool.stack.wait_batch("p-pins", 1, timeout=60)
    assert batch["counts"]["succeeded"] == 1 and batch["upstreams"] == {"acct-c": 1}, batch
    refused = ("p-refused-relax", "p-refused-action")
    assert not any(accepted.get(job_id) for accepted in pool.accepted().values() for job_id in refused)


def test_metrics_are_labelled_per_upstream(pool: PoolStack) -> None:
    """``mjq serve``'s ``/metrics`` (scraped) has each upstream's slots, submits today, last hour's outcomes and
    stop under an ``upstream`` label."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tests.support.serve import serving
    from worker import control
    from worker.store.runtime import runtime

    (job,) = pool.submit("p-metrics", ["pool metrics b"], upstream="acct-b")
    assert pool.stack.wait_batch("p-metrics", 1, timeout=60)["counts"]["succeeded"] == 1
    assert runtime().ledger.trip_breaker("test: acct-c out of credit", upstream="acct-c")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")} | pool.stack.env
    env["MJQ_SERVE_PORT"] = str(free_port())
    try:
        with serving(env, pool.log_dir, pool.log_dir / "serve.log") as url:
            text = httpx.get(f"{url}/metrics", timeout=30).text
    finally:
        control.resume_submitting(runtime(), "acct-c")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("mjq_slots", upstream="acct-a", mode="fast") == 3
    assert value("mjq_slots", upstream="acct-b", mode="fast") == 2
    assert value("mjq_slots", upstream="paced", mode="relax") == 3
    assert value("mjq_slots_in_use", upstream="acct-b", mode="fast") == 0
    assert value("mjq_submits_today", upstream="acct-b") >= 1
    assert value("mjq_jobs_last_hour", upstream="acct-b", outcome="succeeded") >= 1
    assert value("mjq_jobs_last_hour", upstream="acct-b", outcome="failed") == 0
    assert value("mjq_breaker_tripped", upstream="acct-c") == 1 and value("mjq_breaker_tripped", upstream="acct-a") == 0
    assert ("mjq_slots", (("mode", "relax"), ("upstream", "acct-a"))) not in samples  # acct-a serves no relax
    assert pool.stack.job(job)["upstream"] == "acct-b"
