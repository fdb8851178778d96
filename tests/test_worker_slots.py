"""Admission through a real worker: slots never exceeded, parked jobs cost nothing, pause / cancel, the
out-of-credit breaker, and interactive work ahead of batch work."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from tests.support import patience
from tests.support.events import TaskEvents
from tests.support.stack import Stack, StackManager


def test_slots_never_exceeded_under_200_concurrent_submissions(
    hook_stack: Stack, sim: Any, full_size: bool
) -> None:
    """With webhooks on (each job settles the moment it ends, so 200 jobs take seconds, not the minute their
    first polls would take at the worker's expected durations)."""
    import tasks

    stack = hook_stack

    n = 600 if full_size else 200
    big = {"FAST": 100, "RELAX": 100, "TURBO": 100}
    sim.faults(concurrency=big, queue_size=200, time_factor=0.001)
    modes = ("fast", "relax", "turbo")
    for i in range(n):
        tasks.imagine.delay(f"crowd {i}", mode=modes[i % 3], batch_id="crowd")
    batch = stack.wait_batch("crowd", n, timeout=90)
    assert batch["counts"]["succeeded"] == n, (
        batch,
        [j["fail_reason"] for j in stack.ledger.batch_jobs("crowd")][:5],
    )
    stats = sim.stats()
    ids = stack.ledger.batch_job_ids("crowd")
    assert len(ids) == n
    assert all(stats["submissions_by_state"].get(i) == 1 for i in ids)
    assert max(stats["peak_concurrency"].values()) <= 3  # our slots (3 per mode), not the simulator's 100
    assert stats["peak_in_flight"] <= 9
    assert all(stack.redis.zcard(f"mjq:slots:{m}") == 0 for m in modes)


def test_parked_jobs_cost_no_broker_traffic(stack: Stack, sim: Any) -> None:
    """Parked jobs are not looked at while they wait: every Redis command the worker runs (Redis MONITOR)
    during several housekeeping rounds over 200 parked jobs names none of them (admission reads only the head
    of the waiting set, inside its script). Counted, not timed: a busy machine runs fewer rounds, not others."""
    import tasks
    from worker import control
    from worker.store.runtime import runtime

    stack.ledger.trip_breaker("test: hold everything")
    n = 200
    ids = [tasks.imagine.delay(f"parked {i}", batch_id="parked").id for i in range(n)]
    stack.wait(lambda: stack.ledger.waiting_count("fast") == n, 60, "all jobs parked")
    commands = monitor_until(stack, lambda seen: sum("mjq:lock:housekeeping" in c for c in seen) >= 6)
    rounds = sum("mjq:lock:housekeeping" in c for c in commands) // 2  # each round takes and frees its lock
    print(f"\n{len(commands)} Redis commands in {rounds} housekeeping rounds with {n} parked jobs")
    naming = [c for c in commands if any(i in c for i in ids)]
    assert not naming, f"{len(naming)} commands named parked jobs, e.g. {naming[:3]}"
    assert sim.stats()["submissions"] == 0
    assert control.cancel_batch("parked", runtime()) == n  # parked jobs are cancelled without ever being submitted
    control.resume_submitting(runtime())
    assert stack.wait_batch("parked", n, timeout=60)["counts"]["cancelled"] == n
    assert sim.stats()["submissions"] == 0


def monitor_until(stack: Stack, enough: Callable[[list[str]], bool], timeout: float = 120.0) -> list[str]:
    """Every command Redis runs (MONITOR, one line each) from now until ``enough(lines)``."""
    seen: list[str] = []
    deadline = patience.deadline(timeout)
    with cast(Any, stack.redis).monitor() as monitor:  # redis-py leaves monitor() untyped
        while not enough(seen):
            assert time.monotonic() < deadline, f"only {len(seen)} commands seen: {seen[-5:]}"
            seen.append(str(monitor.next_command()["command"]))
    return seen


def test_interactive_message_is_taken_before_batch_messages_waiting_in_the_broker(
    stack: Stack, stack_manager: StackManager, sim: Any
) -> None:
    """Batch messages sit unconsumed in the ``batch`` queue (no worker runs) when a single interactive request
    arrives; the worker, started then, takes the interactive message first (queues are read in -Q order)."""
    import tasks
    from worker.app import app

    worker = stack_manager.worker
    assert worker is not None
    worker.stop()
    try:
        batch = [tasks.imagine.delay(f"waiting batch {i}", batch_id="bgq") for i in range(12)]
        single = tasks.imagine.delay("urgent single")
        assert stack.redis.llen("batch") == 12 and stack.redis.llen("interactive") == 1  # nothing consumed
    finally:
        with TaskEvents(app) as events:
            worker.start(stack.redis_url)
            assert single.get(timeout=30)["status"] == "succeeded"
            assert all(r.get(timeout=60)["status"] == "succeeded" for r in batch)
    ids = {single.id, *(r.id for r in batch)}
    started = [e["uuid"] for e in events.snapshot() if e.get("type") == "task-started" and e.get("uuid") in ids]
    assert started[0] == single.id, started
    received = [e["uuid"] for e in events.snapshot() if e.get("type") == "task-received" and e.get("uuid") in ids]
    assert received[0] == single.id, received


def test_parked_interactive_job_is_admitted_before_parked_batch_jobs(stack: Stack, sim: Any) -> None:
    """The waiting set orders parked jobs by priority (interactive 2, batch 5), then age."""
    import tasks

    stack.ledger.trip_breaker("test: queue first")
    batch = [tasks.imagine.delay(f"batch {i}", batch_id="bg") for i in range(12)]
    stack.wait(lambda: stack.ledger.waiting_count("fast") == 12, 20, "batch parked")
    single = tasks.imagine.delay("urgent single")
    stack.wait(lambda: stack.ledger.waiting_count("fast") == 13, 20, "single parked")
    from worker import control
    from worker.store.runtime import runtime

    control.resume_submitting(runtime())
    assert single.get(timeout=60)["status"] == "succeeded"
    assert all(r.get(timeout=60)["status"] == "succeeded" for r in batch)
    # admitted in the first round (3 fast slots, taken in priority order): jobs of one round then race to their
    # POST, so at most the 2 batch jobs admitted with it may start submitting before it, no later one
    began = float(stack.job(single.id)["submitting_at"])
    ahead = [r.id for r in batch if float(stack.job(r.id)["submitting_at"]) < began]
    assert len(ahead) <= 2, f"{len(ahead)} batch jobs started submitting before the interactive one"


def test_an_admitted_batch_job_goes_ahead_of_queued_batch_messages(stack: Stack, sim: Any) -> None:
    """A parked batch job re-sent once it holds a slot travels on ``track`` (read before ``batch``): behind
    thousands of freshly enqueued batch messages, it would leave the account idle while it waits."""
    import tasks
    from tests.support.events import TaskEvents
    from worker import control
    from worker.app import app
    from worker.store.runtime import runtime

    stack.ledger.trip_breaker("test: park first")
    with TaskEvents(app) as events:
        job = tasks.imagine.delay("parked then admitted", batch_id="ahead")
        stack.wait(lambda: stack.ledger.waiting_count("fast") == 1, 20, "the job parked")
        control.resume_submitting(runtime())
        assert job.get(timeout=20)["status"] == "succeeded"
        sent = events.for_task(job.id, "task-sent")
    assert [e.get("queue") for e in sent] == ["batch", "track"], sent


def test_pause_and_resume_a_batch(stack: Stack, sim: Any) -> None:
    import tasks
    from worker import control
    from worker.store.runtime import runtime

    sim.faults(time_factor=0.02)
    for i in range(12):
        tasks.imagine.delay(f"pausable {i}", batch_id="pb")
    stack.wait(lambda: sim.stats()["submissions"] >= 1, 20, "first submissions")
    control.pause_batch("pb", runtime())
    time.sleep(0.3)
    frozen = sim.stats()["submissions"]
    assert frozen <= 6
    time.sleep(2.5)  # the running ones finish, nothing new is submitted
    assert sim.stats()["submissions"] == frozen
    batch = stack.ledger.batch("pb")
    assert batch["status"] == "paused" and batch["counts"]["queued"] == 12 - frozen
    control.resume_batch("pb", runtime())
    assert stack.wait_batch("pb", 12, timeout=40)["counts"]["succeeded"] == 12
    assert sim.stats()["submissions"] == 12


def test_admitted_job_whose_resend_was_lost_is_sent_again(stack: Stack, sim: Any) -> None:
    """The state a worker killed between admitting a parked job and re-sending it leaves (or the broker losing
    the re-sent message): the job is out of its waiting set, holds a slot, its message is nowhere, and the
    lease it had to start within is over. Housekeeping sends it again."""
    import tasks

    batch = "lost-resend"
    stack.ledger.set_batch_status(batch, "paused")
    job_id = tasks.imagine.delay("admitted, never re-sent", batch_id=batch).id
    stack.wait(lambda: stack.redis.zscore(f"mjq:held:{batch}", job_id) is not None, 20, "job parked")
    stack.redis.zrem(f"mjq:held:{batch}", job_id)  # what admit_next does ...
    stack.redis.zadd("mjq:slots:fast", {job_id: time.time() + 30})
    stack.redis.zadd("mjq:expected", {job_id: time.time() - 1})  # ... and then the worker died (lease over)
    stack.ledger.set_batch_status(batch, "active")
    assert stack.wait_status(job_id, {"succeeded"}, timeout=20)["status"] == "succeeded"
    assert sim.stats()["submissions_by_state"] == {job_id: 1}
    assert stack.redis.zcard("mjq:expected") == 0


def test_cancel_a_batch_completes_waiting_tasks_as_cancelled(stack: Stack, sim: Any) -> None:
    import tasks
    from worker import control
    from worker.jobs.start import JobFailed
    from worker.store.runtime import runtime

    sim.faults(time_factor=0.02)
    results = [tasks.imagine.delay(f"cancel me {i}", batch_id="cb") for i in range(10)]
    stack.wait(lambda: sim.stats()["submissions"] >= 3, 20, "first submissions")
    control.cancel_batch("cb", runtime())  # jobs whose task has not run yet are cancelled when it runs
    outcomes = []
    for r in results:
        try:
            outcomes.append(r.get(timeout=30)["status"])
        except JobFailed as exc:
            outcomes.append(str(exc).split(":")[0])
    assert outcomes.count("cancelled") == 10 - sim.stats()["submissions"]
    assert outcomes.count("succeeded") == sim.stats()["submissions"]
    batch = stack.ledger.batch("cb")
    assert batch["status"] == "cancelled" and batch["counts"]["queued"] == 0


def test_out_of_credit_stops_submitting_until_resume(stack: Stack, sim: Any) -> None:
    import tasks
    from worker import control
    from worker.store.runtime import runtime

    sim.faults(balance=2)
    results = [tasks.imagine.delay(f"credit {i}", batch_id="oc") for i in range(6)]
    stack.wait(lambda: control.breaker_status(runtime())["tripped"], 20, "the breaker")
    time.sleep(1.5)
    stats = sim.stats()
    assert stats["accepted"] == 2
    assert stats["submissions"] == 3  # the answer that tripped the breaker was the last submit
    assert control.breaker_status(runtime())["reason"]
    assert stack.ledger.batch("oc")["counts"]["queued"] == 4
    sim.faults(balance=100)
    control.resume_submitting(runtime())
    assert all(r.get(timeout=30)["status"] == "succeeded" for r in results)
    assert not control.breaker_status(runtime())["tripped"]


def test_requeue_failed_jobs(stack: Stack, sim: Any) -> None:
    import tasks
    from worker import control
    from worker.jobs.start import JobFailed
    from worker.store.runtime import runtime

    sim.faults(banned_words=["nope"])
    bad = tasks.imagine.delay("nope nope", batch_id="rq")
    with pytest.raises(JobFailed):
        bad.get(timeout=15)
    sim.faults(banned_words=[])
    assert control.requeue("rq", {"failed"}, rt=runtime()) == 1
    stack.wait_status(bad.id, {"succeeded"}, 20)
    from celery.result import AsyncResult

    assert AsyncResult(bad.id).get(timeout=10)["status"] == "succeeded"
    assert sim.stats()["submissions_by_state"] == {bad.id: 2}
