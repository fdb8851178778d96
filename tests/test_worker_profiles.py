"""The key end-to-end paths on more than one real server: the same worker (``MJQ_API_PROFILE=auto``, the
default) against the simulator playing ``plus`` and the ``newapi`` relay (21/22 rewritten to 1, no callbacks,
accountFilter stripped, its own lagging task copy, 400 ``task_no_found``, 429 code 30, 400 code 5).

A few representative tests per profile on the shared ``poll`` / ``hook`` stacks (the rest of the worker suite
runs on ``plus``): imagine -> U1, a remix through the modal step (found late on newapi), an unknown fetch, an
answer lost and busy answers in each server's own words, and a relay found sending no callbacks.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.mjq import mjq
from tests.support.stack import Stack
from worker.store.runtime import runtime

PROFILES = ("plus", "newapi")


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest, stack: Stack, sim: Any) -> str:
    """The polling stack, the simulator playing one server (after both were reset)."""
    sim.faults(profile=request.param)
    return str(request.param)


def test_imagine_then_u1_and_a_remix(profile: str, stack: Stack, sim: Any) -> None:
    """On a remix account V1 stops at the modal step: Plus says so (code 21), new-api answers code 1 (with the
    modal text, or a poll then sees MODAL): either way the remix prompt is sent once."""
    import tasks

    sim.faults(remix=True)
    batch_id = f"u1-remix-{profile}"
    tasks.imagine.delay("a red fox", batch_id=batch_id, then='U1, remix:"a blue fox"')
    batch = stack.wait_batch(batch_id, 3, timeout=60)
    jobs = stack.ledger.batch_jobs(batch_id)
    assert batch["counts"]["succeeded"] == 3, [(j["job_id"], j["status"], j.get("fail_reason")) for j in jobs]
    children = {j["action"]: j for j in jobs if j["parent_job"]}
    assert children["UPSCALE"]["custom_id"].startswith("MJ::JOB::upsample::1::")
    remixed = children["VARIATION"]
    assert remixed["final_prompt"] == "a blue fox" and remixed["image_url"], remixed
    modal_posts = sim.stats()["requests"].get("POST /mj/submit/modal", 0)
    assert modal_posts == 1, "the modal step is sent once"
    assert all(n == 1 for n in sim.stats()["submissions_by_state"].values())


def test_an_unknown_id_is_no_task(profile: str, stack: Stack, sim: Any) -> None:
    import tasks

    assert tasks.fetch_task.delay("9123456789012345678").get(timeout=20) is None
    assert tasks.list_tasks.delay(["9123456789012345678"]).get(timeout=20) == []


def test_an_answer_lost_in_each_servers_words_is_never_resent(profile: str, stack: Stack, sim: Any) -> None:
    """Plus: the answer never comes (read timeout); new-api: HTTP 400 code 5 do_request_failed (it gave up
    waiting, the upstream may have the task). Both: needs_review after one POST."""
    import tasks
    from worker.jobs.start import JobFailed

    if profile == "newapi":
        sim.faults(do_request_failed_rate=1.0)
    else:
        sim.faults(read_delay_rate=1.0, read_delay_s=3.0)
    lost = tasks.imagine.delay(f"an answer lost on {profile}")
    with pytest.raises(JobFailed, match="needs_review"):
        lost.get(timeout=30)
    sim.faults(do_request_failed_rate=0.0, read_delay_rate=0.0)
    time.sleep(0.5)
    job = stack.job(lost.id)
    assert job["status"] == "needs_review" and "answer lost" in job["fail_reason"], job
    if profile == "newapi":
        assert "do_request_failed" in job["fail_reason"]
    assert sim.stats()["requests"]["POST /mj/submit/imagine"] == 1


def test_busy_answers_are_waited_out(profile: str, stack: Stack, sim: Any) -> None:
    """Plus: queue full (code 23); new-api: HTTP 429 code 30, group saturated. Retried without using up the
    attempts, then accepted once the upstream has room."""
    import tasks

    busy = {"group_saturated": True} if profile == "newapi" else {"queue_size": 0, "concurrency": {"FAST": 0}}
    sim.faults(**busy)
    job = tasks.imagine.delay(f"wait for room on {profile}")
    stack.wait(lambda: int(stack.job(job.id).get("busy_answers") or 0) >= 3, 20, "three busy answers")
    sim.faults(group_saturated=False, queue_size=10, concurrency={"FAST": 3})
    assert job.get(timeout=30)["status"] == "succeeded"
    assert sim.stats()["accepted"] == 1, "accepted once; the busy answers cost nothing"


def test_a_relay_without_callbacks_is_put_on_the_polling_schedule(hook_stack: Stack, sim: Any) -> None:
    """Webhooks on, new-api drops notifyHook: after MJQ_CALLBACKS_MISSING_AFTER (5) jobs finished by polling,
    the upstream is polled from the expected duration on, said once in the log, in `mjq config` and in
    `mjq doctor`; a callback puts it back."""
    import tasks

    sim.faults(profile="newapi")
    switch = "switching to the polling schedule"
    said_before = hook_stack.log_path.read_text(errors="replace").count(switch)  # the log outlives a test
    first = [tasks.imagine.delay(f"relay job {i}") for i in range(5)]
    assert all(r.get(timeout=60)["status"] == "succeeded" for r in first)
    assert all(hook_stack.job(r.id)["settled_by"] == "poll" for r in first)

    def said() -> int:
        return hook_stack.log_path.read_text(errors="replace").count(switch) - said_before

    hook_stack.wait(lambda: said() >= 1, 20, "the switch in the log")
    more = [tasks.imagine.delay(f"relay job {i}") for i in range(5, 8)]
    assert all(r.get(timeout=60)["status"] == "succeeded" for r in more)
    assert said() == 1, "said once"
    env = {k: v for k, v in hook_stack.env.items() if k.startswith("MJQ_")}
    shown = mjq(None, "config", "--json", env=env).json()["profile"]
    assert shown["callbacks_missing"] and "polling schedule" in shown["callbacks"], shown
    doctor = mjq(None, "doctor", "--json", env=env)
    checks = {c["name"]: c for c in doctor.json()["checks"]}
    assert checks["callbacks (seen)"]["status"] == "warn", checks
    # the upstream sends callbacks again (another server behind the same URL): back to the webhook schedule
    sim.faults(profile="plus")
    again = tasks.imagine.delay("a callback again")
    assert again.get(timeout=60)["status"] == "succeeded"
    assert hook_stack.job(again.id)["settled_by"] == "webhook"
    assert not runtime().observed.callbacks_missing()
    assert not mjq(None, "config", "--json", env=env).json()["profile"]["callbacks_missing"]
