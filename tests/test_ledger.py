"""The ledger's atomic transitions against a real Redis: idempotent create, first terminal wins, counters."""

from __future__ import annotations

import json
import threading
from typing import cast

import redis

from worker.store.ledger import Ledger


def make(redis_client: redis.Redis, job_id: str = "j1", batch: str = "b1") -> Ledger:
    ledger = Ledger(redis_client)
    ledger.create_job(job_id, {"batch_id": batch, "mode": "fast", "kind": "imagine", "prompt": "a fox"})
    return ledger


def test_create_is_idempotent_and_counts_once(redis_client: redis.Redis) -> None:
    ledger = make(redis_client)
    assert ledger.create_job("j1", {"batch_id": "b1", "mode": "fast"}) == (False, "queued")
    batch = ledger.batch("b1")
    assert batch["total"] == 1
    assert batch["counts"]["queued"] == 1
    assert batch["status"] == "active"
    assert [b["batch_id"] for b in ledger.batches()] == ["b1"]


def test_first_terminal_transition_wins_under_contention(redis_client: redis.Redis) -> None:
    ledger = make(redis_client)
    ledger.transition("j1", "submitting", from_states=["queued"])
    ledger.transition("j1", "submitted", from_states=["submitting"], upstream="u1", inflight=1.0)
    wins: list[str] = []

    def settle(to: str) -> None:
        ok, _, _ = Ledger(redis_client).transition("j1", to, forward=True, release=True)
        if ok:
            wins.append(to)

    threads = [threading.Thread(target=settle, args=(s,)) for s in ["succeeded", "failed"] * 10]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    batch = ledger.batch("b1")
    assert batch["counts"][wins[0]] == 1
    assert sum(batch["counts"].values()) == 1
    assert batch["status"] == "finished"
    assert redis_client.zscore("mjq:inflight", "j1") is None
    assert redis_client.zscore("mjq:finishing", "j1") is not None
    assert ledger.job_by_upstream("u1")["job_id"] == "j1"  # type: ignore[index]


def test_forward_refuses_regressions_and_stale_progress(redis_client: redis.Redis) -> None:
    ledger = make(redis_client)
    ledger.transition("j1", "submitting", from_states=["queued"])
    assert ledger.transition("j1", "running", forward=True, progress=40)[0]
    assert not ledger.transition("j1", "submitted", forward=True)[0]  # regression
    assert not ledger.transition("j1", "running", forward=True, progress=30)[0]  # older progress event
    assert ledger.transition("j1", "running", forward=True, progress=60)[0]
    assert ledger.transition("j1", "succeeded", forward=True)[0]
    assert not ledger.transition("j1", "running", forward=True, progress=99)[0]  # event after success
    assert ledger.get_job("j1")["status"] == "succeeded"  # type: ignore[index]


def test_gate_refuses_when_breaker_tripped_or_batch_paused(redis_client: redis.Redis) -> None:
    ledger = make(redis_client)
    assert ledger.trip_breaker("out of credit")
    assert not ledger.trip_breaker("second reason")
    assert ledger.transition("j1", "submitting", from_states=["queued"], gate=True)[2] == "breaker"
    assert ledger.breaker()["reason"] == "out of credit"
    ledger.clear_breaker()
    ledger.set_batch_status("b1", "paused")
    assert ledger.transition("j1", "submitting", from_states=["queued"], gate=True)[2] == "paused"
    ledger.set_batch_status("b1", "active")
    assert ledger.transition("j1", "submitting", from_states=["queued"], gate=True)[0]


def test_pause_moves_parked_jobs_to_held_and_back(redis_client: redis.Redis) -> None:
    ledger = make(redis_client)
    assert ledger.park("j1", {"task": "tasks.imagine", "id": "j1"}, 5.0) == "parked"
    assert ledger.waiting_count("fast") == 1
    assert ledger.set_batch_status("b1", "paused") == 1
    assert ledger.waiting_count("fast") == 0
    assert ledger.batch("b1")["status"] == "paused"
    assert ledger.set_batch_status("b1", "active") == 1
    assert redis_client.zscore("mjq:waiting:fast", "j1") == 5.0


def test_claim_due_takes_own_job_and_other_due_jobs_once(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    redis_client.zadd("mjq:inflight", {"a": 10.0, "b": 11.0, "c": 500.0})
    assert sorted(ledger.claim_due("a", 100.0, 30.0, 10)) == ["a", "b"]
    assert ledger.claim_due("b", 100.0, 30.0, 10) == []  # b was claimed (re-scheduled) by a's poll
    assert redis_client.zscore("mjq:inflight", "b") == 130.0


def test_planned_and_skipped_counts(redis_client: redis.Redis) -> None:
    ledger = make(redis_client)
    ledger.add_planned("b1", 3)
    ledger.create_job("child", {"batch_id": "b1", "mode": "fast", "parent_job": "j1"})
    ledger.mark_skipped("b1", 2, "parent failed")
    batch = ledger.batch("b1")
    assert batch["planned"] == 0
    assert batch["counts"]["skipped"] == 2
    assert batch["total"] == 4
    assert [c["job_id"] for c in ledger.children("j1")] == ["child"]


def test_requeue_resets_terminal_jobs(redis_client: redis.Redis) -> None:
    ledger = make(redis_client)
    ledger.transition("j1", "failed", forward=True, fields={"fail_reason": "boom"}, upstream="u9")
    assert ledger.requeue_jobs(["j1"]) == 1
    job = ledger.get_job("j1")
    assert job is not None and job["status"] == "queued" and "fail_reason" not in job
    assert ledger.batch("b1")["counts"]["failed"] == 0
    assert ledger.job_by_upstream("u9") is None


def test_requeue_plans_the_skipped_children_of_a_parent_again(redis_client: redis.Redis) -> None:
    ledger = make(redis_client, "parent")
    ledger.add_planned("b1", 2)  # its plan: two follow-ups
    ledger.transition("parent", "failed", forward=True, fields={"fail_reason": "banned"})
    ledger.mark_skipped("b1", 2, "parent job parent failed", job_id="parent")
    batch = ledger.batch("b1")
    assert (batch["total"], batch["planned"], batch["counts"]["skipped"], batch["status"]) == (3, 0, 2, "finished")

    assert ledger.requeue_jobs(["parent"]) == 1
    batch = ledger.batch("b1")
    assert (batch["total"], batch["planned"], batch["counts"]["skipped"]) == (1, 2, 0)  # no phantom skips
    assert batch["status"] == "active"  # not finished before its children exist
    for child in ("c1", "c2"):  # the parent succeeds this time: its children are created ...
        ledger.create_job(child, {"batch_id": "b1", "mode": "fast", "parent_job": "parent"})
    batch = ledger.batch("b1")
    assert (batch["total"], batch["planned"], batch["counts"]["skipped"]) == (3, 0, 0)  # ... counted once
    assert ledger.requeue_jobs(["parent"]) == 0  # not terminal: nothing to undo twice
    assert "skipped_n" not in (ledger.get_job("parent") or {})


def test_pending_jobs_count_until_created_anywhere(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.ensure_batch("b2")
    ledger.expect_jobs("b2", ["x", "y", "x"])
    batch = ledger.batch("b2")
    assert batch["pending"] == 2 and batch["status"] == "active"
    ledger.create_job("x", {"batch_id": "b2", "mode": "fast"})
    ledger.create_job("y", {"batch_id": "elsewhere", "mode": "fast"})  # the same id was created in another batch
    assert ledger.pending_jobs("b2") == 0
    batch = ledger.batch("b2")
    assert (batch["total"], batch["pending"]) == (1, 0)
    assert redis_client.exists("mjq:batch:b2:expect") == 0


def test_a_large_pending_set_is_counted_not_scanned(redis_client: redis.Redis) -> None:
    """`mjq status` of a huge batch just enqueued: the pending count is the set's size (creating a job takes it
    out), with no read of each job."""
    ledger = Ledger(redis_client)
    ids = [f"big-{i}" for i in range(1000)]
    ledger.expect_jobs("big", ids)
    assert ledger.pending_jobs("big") == 1000
    for job_id in ids[:400]:
        ledger.create_job(job_id, {"batch_id": "big", "mode": "fast"})
    assert ledger.pending_jobs("big") == 600 and redis_client.scard("mjq:batch:big:expect") == 600
    ledger.unexpect_jobs("big", ids[400:])  # announced, then not sent
    assert ledger.batch("big")["pending"] == 0


def test_failures_are_indexed_per_batch(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    for job_id in ("ok", "bad", "lost"):
        ledger.create_job(job_id, {"batch_id": "fx", "mode": "fast"})
    ledger.transition("ok", "succeeded")
    ledger.transition("bad", "failed", fields={"fail_reason": "banned prompt"})
    ledger.transition("lost", "needs_review", fields={"fail_reason": "answer lost"})
    assert {j["job_id"] for j in ledger.batch_failures("fx", 10)} == {"bad", "lost"}
    assert [j["job_id"] for j in ledger.batch_failures("fx", 1)] == ["lost"]  # newest first
    assert ledger.requeue_jobs(["bad"]) == 1
    assert [j["job_id"] for j in ledger.batch_failures("fx", 10)] == ["lost"]


def test_a_record_is_written_compactly_and_reads_back_whole(redis_client: redis.Redis) -> None:
    """Long buttons are stored deflated, the task id that is the job id and local file URIs as ``=`` (a
    finished job's record stays small, issue 17); the decoded record is what was written, and a record
    written before (plain JSON, full values) reads the same."""
    buttons = [{"custom_id": f"MJ::JOB::upsample::{i}::7516ffec-aa6b-46c2-9a12-c2114ae2eaa4", "emoji": "",
                "label": f"U{i}", "style": 2, "type": 2} for i in range(1, 5)]
    ledger = Ledger(redis_client)
    ledger.create_job("jc", {"batch_id": "bc", "mode": "fast", "task_id": "jc", "prompt": "a fox"})
    ledger.update("jc", {"buttons": buttons, "image_path": "/m/jc.png", "image_uri": "file:///m/jc.png",
                         "thumb_path": "/m/t/jc.webp", "thumb_uri": "s3://bucket/t/jc.webp"})
    raw = cast(dict[str, str], redis_client.hgetall("mjq:job:jc"))
    assert raw["task_id"] == "=" and raw["image_uri"] == "=" and raw["buttons"].startswith("z:")
    assert raw["thumb_uri"] == "s3://bucket/t/jc.webp"  # not implied by the path: kept as it is
    assert len(raw["buttons"]) < len(json.dumps(buttons)) / 2
    job = ledger.get_job("jc") or {}
    assert job["task_id"] == "jc" and job["image_uri"] == "file:///m/jc.png" and job["buttons"] == buttons
    assert job["thumb_uri"] == "s3://bucket/t/jc.webp"
    redis_client.hset("mjq:job:jc", mapping={"buttons": json.dumps(buttons), "image_uri": "file:///m/jc.png"})
    assert ledger.get_job("jc") == job
