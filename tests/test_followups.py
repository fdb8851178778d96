"""Follow-up actions as Celery canvases, through a real worker and the simulator over HTTP."""

from __future__ import annotations

import time
from typing import Any

from celery import group

from tests.support.images import png_data_uri
from tests.support.stack import Stack


def _results(async_result: Any, timeout: float = 30) -> list[dict[str, Any]]:
    value = async_result.get(timeout=timeout, propagate=False)
    return value if isinstance(value, list) else [value]


def test_generate_upscale_all_four_then_zoom_the_second(stack: Stack, sim: Any) -> None:
    """The acceptance case as a Python canvas."""
    from tasks import imagine
    from tasks.followups import upscale, zoom

    canvas = imagine.s("a lighthouse", batch_id="canvas") | group(
        upscale.s(1), upscale.s(2) | zoom.s(2.0), upscale.s(3), upscale.s(4)
    )
    canvas.apply_async()
    batch = stack.wait_batch("canvas", 6, timeout=40)
    assert batch["counts"]["succeeded"] == 6, batch
    jobs = {j["job_id"]: j for j in stack.ledger.batch_jobs("canvas")}
    root = next(j for j in jobs.values() if not j["parent_job"])
    upscales = [j for j in jobs.values() if j["parent_job"] == root["job_id"]]
    assert sorted(j["action"].split("::")[3] for j in upscales) == ["1", "2", "3", "4"]
    zoomed = [j for j in jobs.values() if "Outpaint::50" in (j["action"] or "")]
    assert len(zoomed) == 1
    second = jobs[zoomed[0]["parent_job"]]
    assert second["action"].startswith("MJ::JOB::upsample::2::")
    assert zoomed[0]["root_job"] == root["job_id"]
    assert all(n == 1 for n in sim.stats()["submissions_by_state"].values())


def test_the_same_case_as_a_one_line_plan(stack: Stack, sim: Any) -> None:
    import tasks

    tasks.imagine.delay("a lighthouse", batch_id="plan", then="U1, U2>zoom:2x, U3, U4")
    batch = stack.wait_batch("plan", 6, timeout=40)
    assert batch["counts"]["succeeded"] == 6 and batch["planned"] == 0, batch
    actions = sorted(_button_kind(j["action"]) for j in stack.ledger.batch_jobs("plan") if j["parent_job"])
    assert actions == ["Outpaint", "upsample", "upsample", "upsample", "upsample"]


def test_three_deep_sequence_and_every_kind(stack: Stack, sim: Any) -> None:
    from tasks import imagine
    from tasks.followups import custom_zoom, pan, press, reroll, upscale, upscale_more, vary, vary_region

    mask = png_data_uri(color="white")
    upscaled = (imagine.s("deep", batch_id="deep") | upscale.s(2)).apply_async().get(timeout=30)
    assert upscaled["status"] == "succeeded"
    children = [
        vary.s(strength="subtle"), vary.s(strength="strong"), zoom_15(), pan.s("left"), upscale_more.s("creative"),
        custom_zoom.s(factor=1.8), vary_region.s(mask, prompt="a red hat"), press.s("Zoom Out 2x"),
    ]
    results = _results(group(c.clone((upscaled,)) for c in children).apply_async(), 40)
    assert [r["status"] for r in results] == ["succeeded"] * len(children), [r for r in results]
    assert results[5]["prompt"].endswith("--zoom 1.8")
    assert "a red hat" in results[6]["prompt"]
    assert "base64" not in repr(stack.job(results[6]["job_id"]).get("message"))  # the mask travelled by reference
    grid = (imagine.s("again") | reroll.s() | vary.s(3, strength="strong") | upscale.s(1)).apply_async()
    final = grid.get(timeout=40)
    assert final["status"] == "succeeded" and final["action"].startswith("MJ::JOB::upsample::1::")
    lineage = [final]
    while lineage[-1].get("parent_job"):
        lineage.append(stack.job(lineage[-1]["parent_job"]))
    assert [_button_kind(j["action"]) for j in lineage] == [
        "upsample", "variation", "reroll", "IMAGINE",
    ]


def _button_kind(action: str) -> str:
    """``MJ::JOB::upsample::2::<h>`` -> upsample; ``MJ::Outpaint::50::1::<h>`` -> Outpaint; IMAGINE -> IMAGINE."""
    parts = (action or "").split("::")
    return parts[2] if len(parts) > 2 and parts[1] == "JOB" else (parts[1] if len(parts) > 1 else action)


def zoom_15() -> Any:
    from tasks.followups import zoom

    return zoom.s(1.5)


def test_repeated_upscale_returns_the_existing_job(stack: Stack, sim: Any) -> None:
    from tasks import imagine
    from tasks.followups import upscale

    parent = imagine.delay("twice").get(timeout=20)
    first = upscale.s(1).delay(parent).get(timeout=20)
    second = upscale.s(1).delay(parent).get(timeout=20)
    assert first["status"] == second["status"] == "succeeded"
    assert first["upstream_id"] == second["upstream_id"]
    assert sim.stats()["accepted"] == 2  # the imagine and one upscale: the repeat created nothing upstream


def test_missing_button_fails_only_that_child(stack: Stack, sim: Any) -> None:
    from tasks import imagine
    from tasks.followups import upscale, zoom

    imagine.s("no zoom on a grid", batch_id="missing").apply_async().get(timeout=20)
    parent = stack.ledger.batch_jobs("missing")[0]
    res = group(zoom.s(2.0), upscale.s(3)).apply_async((parent,))
    outcomes = _results(res, 30)
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert len(failed) == 1 and "offers" in str(failed[0]) and "U1" in str(failed[0])
    batch = stack.wait_batch("missing", 3, timeout=20)
    assert batch["counts"]["failed"] == 1 and batch["counts"]["succeeded"] == 2


def test_failed_parent_never_submits_children(stack: Stack, sim: Any) -> None:
    import tasks

    sim.faults(banned_words=["forbidden"])
    tasks.imagine.delay("a forbidden thing", batch_id="orphans", then="U1-4>zoom:2x")
    batch = stack.wait_batch("orphans", 1, timeout=20)
    assert batch["counts"]["failed"] == 1 and batch["counts"]["skipped"] == 8 and batch["planned"] == 0
    assert batch["status"] == "finished"
    assert sim.stats()["accepted"] == 0


def test_a_lost_plan_is_sent_again_with_the_same_follow_ups(stack: Stack, sim: Any) -> None:
    """A plan whose messages were lost (worker killed, broker pop lost) is sent again by housekeeping; the
    follow-ups have ids derived from the parent, so sending twice creates (and pays for) each one once."""
    import tasks
    from tasks.followups import start_plan
    from worker.runtime import runtime

    parent = tasks.imagine.delay("a plan that got lost", batch_id="lost-plan").id
    assert stack.wait_status(parent, {"succeeded"})["status"] == "succeeded"
    # the state a crash right after the finish step leaves: the plan is due, no follow-up exists, a watch is due
    stack.ledger.update(parent, {"then": "U1-2"})
    stack.redis.zadd("mjq:expected", {f"plan/{parent}": time.time() - 1})
    stack.wait(lambda: len(stack.ledger.children(parent)) == 2, 20, "the plan sent again")
    assert start_plan(parent, runtime()) is False, "all follow-ups exist: nothing is sent"
    children = stack.ledger.children(parent)
    for child in children:
        assert stack.wait_status(child["job_id"], {"succeeded"})["status"] == "succeeded"
    stack.redis.zadd("mjq:expected", {f"plan/{parent}": time.time() - 1})  # a late second watch changes nothing
    stack.wait(lambda: stack.redis.zcard("mjq:expected") == 0, 10, "the watch to end")
    assert [c["job_id"] for c in stack.ledger.children(parent)] == [c["job_id"] for c in children]
    assert all(n == 1 for n in sim.stats()["submissions_by_state"].values())
    assert sim.stats()["accepted"] == 3
