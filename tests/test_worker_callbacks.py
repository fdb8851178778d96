"""Webhooks on: jobs finish from callbacks long before the first safety-net poll; with every callback lost
they still finish by polling; a lost submit answer is reconciled by the callback that carries our job id."""

from __future__ import annotations

from typing import Any

from tests.support.stack import Stack


def test_jobs_finish_by_webhook(hook_stack: Stack, sim: Any) -> None:
    import tasks

    # turbo: the simulated job takes 0.25 s, the safety-net poll comes 2.0 s + 0.5 s after the submit (10x)
    results = [tasks.imagine.delay(f"hooked {i}", mode="turbo") for i in range(3)]
    done = [r.get(timeout=60) for r in results]
    assert all(d["status"] == "succeeded" and d["image_path"] for d in done)
    # finished by their callbacks, before any safety-net poll: no job was ever polled, and the simulator got
    # no poll request at all (neither a fetch nor a list-by-condition)
    assert all(hook_stack.job(d["job_id"])["settled_by"] == "webhook" for d in done)
    assert all(not hook_stack.job(d["job_id"]).get("polls") for d in done)
    stats = sim.stats()
    assert not [k for k in stats["requests"] if "/fetch" in k or "list-by-condition" in k], stats["requests"]
    assert stats["callbacks_sent"] > 0


def test_jobs_finish_by_polling_when_every_callback_is_lost(hook_stack: Stack, sim: Any) -> None:
    import tasks

    sim.faults(drop_callback_rate=1.0)
    results = [tasks.imagine.delay(f"unheard {i}") for i in range(3)]
    done = [r.get(timeout=20) for r in results]
    assert all(d["status"] == "succeeded" for d in done)
    assert all(hook_stack.job(d["job_id"])["settled_by"] == "poll" for d in done)
    assert sim.stats()["callbacks_dropped"] > 0


def test_duplicate_and_reordered_callbacks_finish_once(hook_stack: Stack, sim: Any) -> None:
    import tasks

    sim.faults(duplicate_callbacks=True, reorder_callbacks=True)
    results = [tasks.imagine.delay(f"noisy {i}", batch_id="noisy") for i in range(4)]
    assert all(r.get(timeout=20)["status"] == "succeeded" for r in results)
    batch = hook_stack.ledger.batch("noisy")
    assert batch["counts"]["succeeded"] == 4 and batch["total"] == 4


def test_lost_answer_is_reconciled_by_the_callback(hook_stack: Stack, sim: Any) -> None:
    import tasks

    sim.faults(read_delay_rate=1.0, read_delay_s=3.0)
    result = tasks.imagine.delay("answer lost, callback arrives").get(timeout=20)
    assert result["status"] == "succeeded" and result["upstream_id"]
    assert sim.stats()["submissions_by_state"] == {result["job_id"]: 1}
