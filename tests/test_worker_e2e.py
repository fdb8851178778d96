"""Every request kind end to end through a real worker process, the simulator over HTTP and Redis."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord, group, signature

from tests.support.images import png_data_uri
from tests.support.stack import Stack


def test_single_imagine_returns_the_job_result_with_downloaded_image(stack: Stack, sim: Any) -> None:
    import tasks

    result = tasks.imagine.delay("a red fox", mode="fast").get(timeout=60)
    assert result["status"] == "succeeded"
    assert result["job_id"] and result["upstream_id"]
    assert result["action"] == "IMAGINE" and result["mode"] == "fast"
    assert result["image_url"].startswith("http")
    path = Path(result["image_path"])
    data = path.read_bytes()
    assert path.name.startswith(result["job_id"]) and path.parent.name == "_single"
    assert hashlib.sha256(data).hexdigest() == result["image_sha256"]
    assert result["image_bytes"] == len(data) and result["image_width"] and result["image_height"]
    assert {b["label"] for b in result["buttons"]} >= {"U1", "V1"}
    assert result["progress"] == "100%" and result["download"] == "ok"
    assert result["submitted_at"] >= result["created_at"] and result["finished_at"] >= result["submitted_at"]
    stats = sim.stats()
    assert stats["submissions_by_state"] == {result["job_id"]: 1}
    assert stack.ledger.job_by_upstream(result["upstream_id"])["job_id"] == result["job_id"]


def test_every_request_kind(stack: Stack, sim: Any) -> None:
    import tasks

    img_a, img_b = png_data_uri("red"), png_data_uri("blue")
    blend = tasks.blend.delay([img_a, img_b], dimensions="SQUARE")
    describe = tasks.describe.delay(img_a)
    swap = tasks.swap_face.delay(img_a, img_b)
    upload = tasks.upload_images.delay([img_a])
    grid = tasks.imagine.delay("a lighthouse", base64_array=[img_b]).get(timeout=20)
    u1 = next(b["custom_id"] for b in grid["buttons"] if b["label"] == "U1")
    upscale = tasks.action.delay(grid["upstream_id"], u1).get(timeout=20)
    assert upscale["status"] == "succeeded" and upscale["action"] == "UPSCALE" and upscale["image_path"]
    assert upscale["custom_id"] == u1
    assert blend.get(timeout=20)["action"] == "BLEND"
    described = describe.get(timeout=20)
    assert len(described["extra"]["prompts"]) == 4
    assert swap.get(timeout=20)["status"] == "succeeded"
    assert upload.get(timeout=20)["extra"]["urls"]
    # Custom zoom waits for the modal step: the action job ends "awaiting modal", tasks.modal completes it.
    zoom = next(b["custom_id"] for b in upscale["buttons"] if "CustomZoom" in (b["custom_id"] or ""))
    waiting = tasks.action.delay(upscale["upstream_id"], zoom).get(timeout=20)
    assert waiting["extra"]["awaiting_modal"] is True
    zoomed = tasks.modal.delay(waiting["upstream_id"], prompt="a lighthouse --zoom 1.8").get(timeout=20)
    assert zoomed["status"] == "succeeded" and zoomed["image_url"]
    # Vary (Region) with the modal answered inline by the same job.
    region = next(b["custom_id"] for b in upscale["buttons"] if "Inpaint" in (b["custom_id"] or ""))
    inline = tasks.action.delay(
        upscale["upstream_id"], region, modal={"prompt": "a boat", "mask_base64": png_data_uri("white")}
    ).get(timeout=20)
    assert inline["status"] == "succeeded" and inline["image_url"]
    # The read-only helpers return JSON.
    fetched = tasks.fetch_task.delay(grid["upstream_id"]).get(timeout=10)
    assert fetched["status"] == "SUCCESS" and str(fetched["id"]) == grid["upstream_id"]
    listed = tasks.list_tasks.delay([grid["upstream_id"], upscale["upstream_id"], "404404"]).get(timeout=10)
    assert len(listed) == 2
    assert tasks.image_seed.delay(grid["upstream_id"]).get(timeout=10).isdigit()
    assert all(n == 1 for n in sim.stats()["submissions_by_state"].values())


def test_chain_group_and_chord_continue_with_the_job_result(stack: Stack, sim: Any) -> None:
    import tasks

    accumulate = signature("celery.accumulate", kwargs={"index": 0})
    chained = chain(tasks.imagine.s("a chained fox"), accumulate).apply_async()
    assert chained.get(timeout=20)["status"] == "succeeded"
    results = group(tasks.imagine.s("one"), tasks.imagine.s("two")).apply_async().get(timeout=20)
    assert [r["prompt"] for r in results] == ["one", "two"]
    body = signature("celery.accumulate")
    joined = chord([tasks.imagine.s("x"), tasks.imagine.s("y")], body).apply_async().get(timeout=20)
    assert sorted(r["prompt"] for r in joined[0]) == ["x", "y"]  # accumulate returns its args


def test_banned_prompt_fails_fast_and_the_batch_continues(stack: Stack, sim: Any) -> None:
    import tasks
    from worker.jobs.start import JobFailed

    sim.faults(banned_words=["forbidden"])
    bad = tasks.imagine.delay("a forbidden cat", batch_id="bn")
    good = tasks.imagine.delay("a fine cat", batch_id="bn")
    with pytest.raises(JobFailed) as info:
        bad.get(timeout=60)
    assert "forbidden" in str(info.value).lower() or "banned" in str(info.value).lower()
    assert good.get(timeout=60)["status"] == "succeeded"
    job = stack.job(bad.id)
    assert job["status"] == "failed" and job["fail_reason"]
    # fast = at its submit answer: one POST, refused (no upstream task), never polled, never retried
    assert int(job["attempts"]) == 1 and not job.get("upstream_id") and not job.get("polls"), job
    assert sim.stats()["submissions_by_state"].get(bad.id) == 1 and len(sim.tasks()) == 1  # the good one only
    assert stack.ledger.batch("bn")["counts"]["failed"] == 1
    assert stack.redis.zcard("mjq:slots:fast") == 0


def test_producer_validation_queues_nothing_and_send_task_fails_clearly(stack: Stack, sim: Any) -> None:
    import tasks
    from worker.app import app
    from worker.mjapi.errors import InvalidInput

    before = stack.redis.llen("interactive")
    calls: tuple[Callable[[], Any], ...] = (
        lambda: tasks.imagine.delay(""),
        lambda: tasks.imagine.delay("ok", state="mine"),
        lambda: tasks.imagine.delay("ok", notify_hook="http://evil"),
        lambda: tasks.blend.delay([png_data_uri()]),
        lambda: tasks.describe.delay("data:image/png;base64,!!!!"),
        lambda: tasks.imagine.delay("ok", mode="warp"),
        lambda: tasks.imagine.delay("ok", tags=["x" * 65]),
        lambda: tasks.imagine.delay("ok", colour="red"),
    )
    for call in calls:
        with pytest.raises(InvalidInput) as info:
            call()
        assert "field" in str(info.value)
    assert stack.redis.llen("interactive") == before
    assert not list(stack.redis.scan_iter("mjq:job:*"))
    sent = app.send_task("tasks.imagine", kwargs={"prompt": ""}, queue="interactive")
    with pytest.raises(Exception) as failure:
        sent.get(timeout=10)
    assert "prompt" in str(failure.value)
    assert sent.state == "FAILURE"
    assert sim.stats()["submissions"] == 0


def test_a_task_delivered_twice_submits_once(stack: Stack, sim: Any) -> None:
    """The second copy arrives while the job is tracked (it has an upstream id): straight to tracking."""
    from worker.app import app

    sim.faults(time_factor=0.03)  # a fast job runs 1.8 s: time for a copy to find it running
    first = app.send_task("tasks.imagine", kwargs={"prompt": "twice"}, task_id="dup-1", queue="interactive")
    job = stack.wait_status("dup-1", {"submitted", "running"})
    assert job["upstream_id"]
    app.send_task("tasks.imagine", kwargs={"prompt": "twice"}, task_id="dup-1", queue="interactive")
    stack.wait(lambda: stack.job("dup-1").get("redelivered") == 1, 10, "the copy to reach tracking")
    assert first.get(timeout=20)["status"] == "succeeded"
    assert sim.stats()["submissions_by_state"] == {"dup-1": 1}


def test_copies_sent_together_submit_once(stack: Stack, sim: Any) -> None:
    from worker.app import app

    first = app.send_task("tasks.imagine", kwargs={"prompt": "twice"}, task_id="dup-1", queue="interactive")
    app.send_task("tasks.imagine", kwargs={"prompt": "twice"}, task_id="dup-1", queue="interactive")
    assert first.get(timeout=20)["status"] == "succeeded"
    # A late redelivery after the end changes nothing either.
    app.send_task("tasks.imagine", kwargs={"prompt": "twice"}, task_id="dup-1", queue="interactive")
    # The copy that found the job `submitting` looks again after the POST window (timeouts + 1 s): wait for it.
    time.sleep(1.5 + 1.0 + 1.5)
    assert sim.stats()["submissions_by_state"] == {"dup-1": 1}
    assert stack.job("dup-1")["status"] == "succeeded"
    assert first.get(timeout=5)["status"] == "succeeded"


def test_stuck_job_times_out_and_frees_its_slot(stack: Stack, sim: Any) -> None:
    import tasks
    from worker.jobs.start import JobFailed

    sim.faults(stuck_rate=1.0)
    stuck = tasks.imagine.delay("stuck forever")
    with pytest.raises(JobFailed, match="timed_out"):
        stuck.get(timeout=15)
    assert stack.job(stuck.id)["status"] == "timed_out"
    assert stack.redis.zcard("mjq:slots:fast") == 0
    assert stack.redis.zscore("mjq:inflight", stuck.id) is None
    sim.faults(stuck_rate=0.0)
    assert tasks.imagine.delay("after").get(timeout=20)["status"] == "succeeded"


def test_answer_lost_needs_review_without_a_second_post(stack: Stack, sim: Any) -> None:
    import tasks
    from worker.jobs.start import JobFailed

    sim.faults(read_delay_rate=1.0, read_delay_s=3.0)
    lost = tasks.imagine.delay("slow answer")
    with pytest.raises(JobFailed, match="needs_review"):
        lost.get(timeout=15)
    sim.faults(read_delay_rate=0.0)
    time.sleep(0.5)
    assert sim.stats()["submissions_by_state"] == {lost.id: 1}
    assert stack.job(lost.id)["status"] == "needs_review"


def test_submit_errors_give_up_after_the_attempt_limit(stack: Stack, sim: Any) -> None:
    import tasks

    sim.faults(http_500_rate=1.0, fault_scope="submit")
    job_id = tasks.imagine.delay("always a 500").id
    result = stack.wait_status(job_id, {"failed"}, timeout=30)
    assert result["status"] == "failed"
    assert result["fail_reason"].startswith("gave up after 8 failed attempts: "), result["fail_reason"]
    assert sim.stats()["faults"] == {"http_500": 8} and sim.stats()["accepted"] == 0


def test_busy_answers_use_no_attempts_and_end_at_the_busy_limit(stack: Stack, sim: Any) -> None:
    """Queue full is the upstream saying "no room now", not a bad request: a job keeps trying past the attempt
    limit while the upstream is full, and gives up only after being turned away for MJQ_SUBMIT_BUSY_MAX_S (3 s)."""
    import tasks

    sim.faults(concurrency={"FAST": 1, "RELAX": 1, "TURBO": 1}, queue_size=0, duration_s={"FAST": 60.0},
               time_factor=1.0)
    blocker = tasks.imagine.delay("takes the only upstream place for a minute").id
    stack.wait_status(blocker, {"submitted", "running"})
    job_id = tasks.imagine.delay("no room upstream").id
    result = stack.wait_status(job_id, {"failed", "succeeded"}, timeout=30)
    assert result["status"] == "failed"
    assert result["fail_reason"].startswith("upstream busy for "), result["fail_reason"]
    assert sim.stats()["queue_full"] > 8, "busy answers did not use up the 8 attempts"
    assert sim.stats()["accepted"] == 1


def test_retryable_answers_are_retried_until_accepted(stack: Stack, sim: Any) -> None:
    import tasks

    sim.faults(http_500_rate=0.3, http_429_rate=0.1, retry_after_s=0.1, seed=7, fault_scope="submit")
    results = [tasks.imagine.delay(f"flaky {i}") for i in range(6)]
    assert all(r.get(timeout=30)["status"] == "succeeded" for r in results)
    stats = sim.stats()
    faults = stats["faults"]
    assert faults.get("http_500", 0) > 0 and faults.get("http_429", 0) > 0, faults  # both were really injected
    assert stats["accepted"] == 6 and sorted(stats["submissions_by_state"].values()) == [1] * 6
    assert stats["requests"]["POST /mj/submit/imagine"] == 6 + faults["http_500"] + faults["http_429"]
