"""The worker core through a real worker process, real Redis and the simulator over HTTP: what Flower shows of
retried jobs, hostile task ids, downloads, images of long-parked jobs, the breaker on 401, slot leases with
webhooks, pacing of every submit attempt, and a needs_review job reconciled by its webhook.

Tests are grouped by worker configuration (the stack restarts its worker when the configuration changes).
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain
from celery.result import AsyncResult

from tests.support import patience
from tests.support import stack as stack_support
from tests.support.events import TaskEvents
from tests.support.images import png_data_uri
from tests.support.sim import SIM_KEY
from tests.support.stack import Stack, StackManager

stack_support.CONFIGS.update(
    {
        # no downloads; input images live 6 s unless something keeps them (the producer stores them: on a busy
        # machine the worker may take seconds to start the job, which must still find them)
        "lean": {"MJQ_DOWNLOAD_IMAGES": "false", "MJQ_IMAGE_TTL_S": "6"},
        # one fast slot, pacing of 1 s between submits, a daily cap that counts, few attempts
        "paced": {
            "MJQ_SLOTS_FAST": "1",
            "MJQ_SUBMIT_INTERVAL_S": "1.0",
            "MJQ_DAILY_CAP": "1000",
            "MJQ_SUBMIT_MAX_ATTEMPTS": "3",
        },
        # webhooks, one fast slot and a 1 s lease: far shorter than the first poll (3 s + 0.5 s)
        "short-lease": {
            "MJQ_SLOTS_FAST": "1",
            "MJQ_SLOT_LEASE_S": "1",
            "MJQ_EXPECTED_FAST_S": "3.0",
            "MJQ_WEBHOOK_POLL_S": "0.5",
            "MJQ_JOB_DEADLINE_S": "20",
        },
    }
)
stack_support.HOOKED.add("short-lease")

NO_WORKER_QUEUE = "mjq-test-unconsumed"


@pytest.fixture
def lean_stack(stack_manager: StackManager, sim: Any) -> Stack:
    return stack_support.use_config(stack_manager, "lean", sim)


@pytest.fixture
def paced_stack(stack_manager: StackManager, sim: Any) -> Stack:
    return stack_support.use_config(stack_manager, "paced", sim)


@pytest.fixture
def lease_stack(stack_manager: StackManager, sim: Any) -> Stack:
    return stack_support.use_config(stack_manager, "short-lease", sim)


@pytest.fixture
def unconsumed(stack: Stack) -> Iterator[str]:
    """A queue no worker reads: messages sent there stay in Redis to be looked at."""
    yield NO_WORKER_QUEUE
    stack.redis.delete(NO_WORKER_QUEUE, f"_kombu.binding.{NO_WORKER_QUEUE}")


def image_requests(sim: Any) -> int:
    return sum(n for key, n in sim.stats()["requests"].items() if key.startswith("GET /images/"))


def shown_arguments(events: list[dict[str, Any]]) -> list[str]:
    """The argument reprs Flower shows for a task: task-sent / task-received events carry them."""
    return [f"{e.get('args')} {e.get('kwargs')}" for e in events if e.get("type") in ("task-sent", "task-received")]


# ---------------------------------------------------------------------------------------------------------
# polling-only stack


def test_a_retried_job_keeps_its_short_repr_in_flower(stack: Stack, sim: Any) -> None:
    import tasks
    from worker.app import app

    prompt = "a red fox crossing a frozen river at dawn, long exposure"
    sim.faults(http_500_rate=1.0, fault_scope="submit")
    with TaskEvents(app) as events:
        result = tasks.imagine.delay(prompt, base64_array=[png_data_uri("red"), png_data_uri("blue")])
        stack.wait(lambda: sim.stats()["faults"].get("http_500", 0) >= 1, 20, "a refused first submit")
        stored = stack.job(result.id)["message"]  # what admission re-sends for a parked job (gone once it succeeded)
        sim.faults(http_500_rate=0.0)
        assert result.get(timeout=20)["status"] == "succeeded"
        stack.wait(lambda: any(e.get("retries") for e in events.for_task(result.id, "task-received")))
    retried = shown_arguments([e for e in events.for_task(result.id) if e.get("retries")])
    assert retried, events.for_task(result.id)
    for text in shown_arguments(events.for_task(result.id)):
        assert "img:" not in text and "base64" not in text and "data:image" not in text, text
        assert prompt not in text and "a red fox crossing a frozen river" in text, text  # cut at 40 characters
        assert "images=2×PNG " in text, text
    assert "images=2×PNG " in stored["kwargsrepr"] and "img:" not in stored["kwargsrepr"]
    assert all(v.startswith("img:") for v in stored["kwargs"]["base64_array"])


def test_task_messages_carry_image_references_that_expire(stack: Stack, unconsumed: str) -> None:
    import tasks

    image = png_data_uri("green", size=(256, 256))
    tasks.imagine.apply_async(("a message to look at",), {"base64_array": [image]}, queue=unconsumed)
    raw = stack.redis.lrange(unconsumed, 0, -1)
    assert len(raw) == 1
    envelope = json.loads(raw[0])
    body = base64.b64decode(envelope["body"]).decode()
    assert "base64," not in body and "base64," not in json.dumps(envelope["headers"])
    _args, kwargs, _embed = json.loads(body)
    (ref,) = kwargs["base64_array"]
    assert ref.startswith("img:") and len(ref) == 4 + 64
    assert envelope["headers"]["kwargsrepr"].startswith("{prompt='a message to look at', images=1×PNG ")
    assert stack.redis.get(f"mjq:img:{ref[4:]}") == image
    assert 0 < stack.redis.ttl(f"mjq:img:{ref[4:]}") <= 86_400


def test_a_hostile_task_id_fails_clearly_and_records_nothing(stack: Stack, sim: Any) -> None:
    import tasks
    from worker.app import app
    from worker.mjapi.errors import InvalidInput

    hostile = "../../etc/x"
    sent = app.send_task("tasks.imagine", kwargs={"prompt": "a cat"}, task_id=hostile, queue="interactive")
    with pytest.raises(Exception) as failure:
        sent.get(timeout=15)
    assert "field 'job_id'" in str(failure.value) and hostile in str(failure.value)
    assert AsyncResult(hostile).state == "FAILURE"
    assert not [k for k in stack.redis.scan_iter("mjq:*") if not k.startswith("mjq:lock:")]
    assert sim.stats()["submissions"] == 0
    with pytest.raises(InvalidInput, match="field 'job_id'"):
        tasks.imagine.apply_async(("a cat",), task_id=hostile)


def test_a_transient_download_error_is_retried(stack: Stack, sim: Any) -> None:
    import tasks

    sim.faults(image_errors=2)  # the next two image downloads answer HTTP 500
    result = tasks.imagine.delay("a download that fails twice").get(timeout=20)
    assert result["download"] == "ok" and Path(result["image_path"]).is_file()
    assert sim.stats()["faults"]["image_500"] == 2
    assert image_requests(sim) == 3


def test_a_failed_download_keeps_the_url_and_the_job_succeeds(stack: Stack, sim: Any) -> None:
    import tasks

    sim.faults(image_error_rate=1.0)
    pending = tasks.imagine.delay("a download that never works")
    result = pending.get(timeout=30)
    assert pending.state == "SUCCESS" and result["status"] == "succeeded"
    assert result["download"] == "failed" and result["image_path"] is None
    assert result["image_url"].startswith("http") and result["buttons"]
    assert "HTTP 500" in stack.job(result["job_id"])["download_error"]
    assert sim.stats()["faults"]["image_500"] == image_requests(sim) == 3  # MJQ_DOWNLOAD_ATTEMPTS


def test_unauthorized_trips_the_breaker_until_resume(stack: Stack, sim: Any) -> None:
    import tasks
    from worker import control
    from worker.store.runtime import runtime

    sim.faults(api_key="a-key-we-do-not-have")
    first = tasks.imagine.delay("refused key", batch_id="ua")
    stack.wait(lambda: "Unauthorized" in str(control.breaker_status(runtime()).get("reason") or ""), 20,
               "the breaker tripped by the 401")
    rest = [tasks.imagine.delay(f"after the 401 {i}", batch_id="ua") for i in range(4)]
    stack.wait(lambda: stack.ledger.waiting_count("fast") == 5, 20, "every job parked")
    time.sleep(1.0)
    assert sim.stats()["requests"].get("POST /mj/submit/imagine") == 1  # the answer that tripped it was the last
    assert stack.ledger.batch("ua")["counts"]["queued"] == 5
    sim.faults(api_key=SIM_KEY)
    control.resume_submitting(runtime())
    assert all(r.get(timeout=30)["status"] == "succeeded" for r in [first, *rest])
    assert sorted(sim.stats()["submissions_by_state"].values()) == [1] * 5


# ---------------------------------------------------------------------------------------------------------
# webhooks on


def test_a_reconciled_needs_review_job_continues_its_chain_and_plan_once(hook_stack: Stack, sim: Any) -> None:
    import tasks
    from tasks.followups import upscale
    from worker.app import app

    stack = hook_stack
    # the submit answer is lost (read timeout 1.5 s) and so are the callbacks, until the job is needs_review
    sim.faults(read_delay_rate=1.0, read_delay_s=3.0, drop_callback_rate=1.0, duration_s={"FAST": 400.0})
    root = tasks.imagine.s("answer lost, job found again", then="U1", batch_id="review")
    last = chain(root, upscale.s(2)).apply_async()
    parent = last.parent.id
    stack.wait_status(parent, {"needs_review"}, timeout=15)
    stack.wait(lambda: AsyncResult(parent).state == "FAILURE", 10, "the task completed as failed for now")
    stack.wait(lambda: stack.ledger.batch("review")["counts"]["skipped"] == 2, 20,  # its chained and planned
               "its children counted skipped, for now")  # children: counted by its finishing step
    sim.faults(read_delay_rate=0.0, drop_callback_rate=0.0, duration_s={"FAST": 60.0})  # children run fast
    job = stack.wait_status(parent, {"succeeded"}, timeout=20)
    # found again by a callback carrying its `state` (no poll asks for a needs_review job); once it is tracked
    # again its end may come by the final callback or by a poll, whichever a busy machine delivers first
    assert any(e["from"] == "needs_review" for e in stack.ledger.job_log(parent)), stack.ledger.job_log(parent)
    assert job["settled_by"] in ("webhook", "poll")

    def children_done() -> bool:
        kids = stack.ledger.children(parent)
        return len(kids) == 2 and all(k["status"] == "succeeded" for k in kids)

    stack.wait(children_done, 30, "the chained U2 and the planned U1")

    def stored(task_id: str) -> dict[str, Any]:
        """The result in the backend itself (this process's AsyncResult caches the first final state it read),
        as Celery stores it (zlib-compressed)."""
        raw = app.backend.get(app.backend.get_key_for_task(task_id))
        return dict(app.backend.decode(raw) or {})

    assert stored(parent).get("status") == "SUCCESS" and stored(parent)["result"]["status"] == "succeeded"
    # the chain's last link was failed along with its parent at needs_review; it now ran and succeeded
    stack.wait(lambda: stored(last.id).get("status") == "SUCCESS", 10, "the chained U2's own result")
    assert last.get(timeout=10)["status"] == "succeeded"
    kids = stack.ledger.children(parent)
    assert sorted(k["custom_id"].split("::")[3] for k in kids) == ["1", "2"]
    time.sleep(1.0)  # a second continuation would have sent more jobs by now
    assert len(stack.ledger.children(parent)) == 2
    by_state = sim.stats()["submissions_by_state"]
    assert by_state == {parent: 1, **{k["job_id"]: 1 for k in kids}}
    batch = stack.ledger.batch("review")
    assert (batch["status"], batch["total"], batch["planned"]) == ("finished", 3, 0), batch
    assert batch["counts"]["succeeded"] == 3 and batch["counts"]["skipped"] == 0, batch


# ---------------------------------------------------------------------------------------------------------
# no downloads, input images kept 2 s


def test_downloads_can_be_turned_off(lean_stack: Stack, sim: Any) -> None:
    import tasks

    result = tasks.imagine.delay("no download wanted").get(timeout=20)
    assert result["status"] == "succeeded" and result["image_url"]
    assert result["image_path"] is None and result["download"] is None
    assert image_requests(sim) == 0


def test_a_batch_job_refused_by_the_worker_is_counted_failed_and_the_batch_ends(stack: Stack, sim: Any) -> None:
    """``mjq batch`` announces each job it sends; one the worker must refuse before recording it (its image
    reference expired in Redis meanwhile) would keep the batch waiting forever: it is recorded as failed."""
    from worker.app import app

    missing = "img:" + "0" * 64
    stack.ledger.ensure_batch("refused")
    stack.ledger.expect_jobs("refused", ["gone-image"])
    app.send_task("tasks.imagine", kwargs={"prompt": "an image that expired", "base64_array": [missing],
                                           "batch_id": "refused"}, task_id="gone-image", queue="batch")
    batch = stack.wait_batch("refused", 1, timeout=20)
    assert batch["status"] == "finished" and batch["counts"]["failed"] == 1, batch
    job = stack.job("gone-image")
    assert "invalid input" in job["fail_reason"] and "base64_array" in job["fail_reason"], job
    assert sim.stats()["submissions"] == 0


def test_a_long_parked_job_keeps_its_images(lean_stack: Stack, sim: Any) -> None:
    import tasks
    from worker import control
    from worker.store import keys
    from worker.store.runtime import runtime

    stack = lean_stack
    stack.ledger.trip_breaker("test: hold the job longer than its images live")
    # The producer stores the image for 120 s: a busy machine may deliver the task after the worker's 6 s
    # (its job then fails, its image gone before it started); from the park on, the worker's 6 s apply.
    stack_support.apply_env_here({**stack.env, "MJQ_IMAGE_TTL_S": "120"})
    try:
        result = tasks.imagine.delay("parked with an image prompt", base64_array=[png_data_uri("purple")])
    finally:
        stack_support.apply_env_here(stack.env)
    parked = keys.waiting("fast")  # this job (an earlier test's may wait beside it)
    stack.wait(lambda: stack.redis.zscore(parked, result.id) is not None, 60, "the job parked")
    (ref,) = stack.job(result.id)["request"]["base64_array"]
    key = f"mjq:img:{ref[4:]}"
    time.sleep(15.0)  # 2.5 times MJQ_IMAGE_TTL_S
    assert stack.redis.exists(key), "the parked job's image expired"
    control.resume_submitting(runtime())
    assert result.get(timeout=60)["status"] == "succeeded"
    stack.wait(lambda: not stack.redis.exists(key), 60, "the finished job's image to expire")


# ---------------------------------------------------------------------------------------------------------
# pacing 1 s, one fast slot


def test_every_submit_attempt_is_paced_and_counted(paced_stack: Stack, sim: Any) -> None:
    import tasks

    stack = paced_stack
    sim.faults(http_500_rate=1.0, fault_scope="submit")
    job_id = tasks.imagine.delay("refused three times").id
    lease_kept: list[bool] = []
    deadline = patience.deadline(60)  # three paced attempts take about 2 s
    while stack.job(job_id).get("status") not in ("failed", "succeeded"):
        job = stack.job(job_id)
        if job.get("status") == "queued" and int(job.get("attempts") or 0) >= 1:  # waiting for its retry
            lease_kept.append(stack.redis.zscore("mjq:slots:fast", job_id) is not None)
        assert time.monotonic() < deadline, "the job never ended"
        time.sleep(0.05)
    job = stack.job(job_id)
    assert job["fail_reason"].startswith("gave up after 3 failed attempts"), job["fail_reason"]
    assert sim.stats()["faults"]["http_500"] == 3
    # the simulator's log of the three POSTs (arrival times, its clock): each retry waited for the 1 s pace
    # (the unpaced retries come within MJQ_SUBMIT_RETRY_MAX_S = 0.3 s); a POST may reach the simulator a little
    # after the worker's pace check, so a gap may look shorter by that transit, never by a whole pace
    log = [(at, fault) for at, state, fault in sim.submits() if state == job_id]
    assert [fault for _, fault in log] == ["http_500"] * 3, log
    posts = [at for at, _ in log]
    gaps = [later - earlier for earlier, later in itertools.pairwise(posts)]
    assert all(gap >= 0.5 for gap in gaps) and posts[-1] - posts[0] >= 1.5, f"submits not paced 1 s apart: {gaps}"
    day = time.strftime("%Y%m%d", time.gmtime())
    assert stack.redis.get(f"mjq:daily:{day}") == "3"  # every POST counts towards MJQ_DAILY_CAP
    assert lease_kept and all(lease_kept), "a retry waiting for the pace gave up its slot"


# ---------------------------------------------------------------------------------------------------------
# webhooks on, a 1 s slot lease and one fast slot


def test_the_lease_outlives_the_wait_for_the_first_poll(lease_stack: Stack, sim: Any) -> None:
    """Every callback lost: only the first poll (after 3.5 s) sees the 2.5 s job end; its slot must hold."""
    import tasks

    stack = lease_stack
    sim.faults(drop_callback_rate=1.0, duration_s={"FAST": 250.0})
    first = tasks.imagine.delay("holds the only slot")
    stack.wait_status(first.id, {"submitted", "running"})
    second = tasks.imagine.delay("waits for it")
    done = [r.get(timeout=30) for r in (first, second)]
    assert all(d["status"] == "succeeded" for d in done)
    assert sim.stats()["peak_concurrency"]["FAST"] == 1, "a second job took the slot of a running one"
    assert done[1]["submitted_at"] >= done[0]["finished_at"]


def test_callbacks_keep_the_lease_of_a_job_whose_answer_was_lost(lease_stack: Stack, sim: Any) -> None:
    """No accepted answer renews this lease: the job is known from its callbacks only, each must renew it."""
    import tasks
    from tests.support.sim import wait_for_task

    sim.faults(read_delay_rate=1.0, read_delay_s=3.0, duration_s={"FAST": 250.0}, progress_step=10)
    first = tasks.imagine.delay("known by its callbacks")
    wait_for_task(sim, "known by its callbacks")
    sim.faults(read_delay_rate=0.0)
    second = tasks.imagine.delay("must wait for the slot")
    assert first.get(timeout=30)["status"] == "succeeded"
    assert second.get(timeout=30)["status"] == "succeeded"
    assert sim.stats()["peak_concurrency"]["FAST"] == 1, "a second job took the slot of a running one"
