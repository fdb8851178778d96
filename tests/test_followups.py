"""Follow-up actions as Celery canvases, through a real worker and the simulator over HTTP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
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
    assert sorted(j["custom_id"].split("::")[3] for j in upscales) == ["1", "2", "3", "4"]
    zoomed = [j for j in jobs.values() if "Outpaint::50" in (j["custom_id"] or "")]
    assert len(zoomed) == 1
    second = jobs[zoomed[0]["parent_job"]]
    assert second["custom_id"].startswith("MJ::JOB::upsample::2::")
    assert zoomed[0]["root_job"] == root["job_id"]
    assert all(n == 1 for n in sim.stats()["submissions_by_state"].values())


def test_the_same_case_as_a_one_line_plan(stack: Stack, sim: Any) -> None:
    import tasks

    tasks.imagine.delay("a lighthouse", batch_id="plan", then="U1, U2>zoom:2x, U3, U4")
    batch = stack.wait_batch("plan", 6, timeout=40)
    assert batch["counts"]["succeeded"] == 6 and batch["planned"] == 0, batch
    actions = sorted(_button_kind(j["custom_id"]) for j in stack.ledger.batch_jobs("plan") if j["parent_job"])
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
    modal_before = _modal_requests(sim)
    results = _results(group(c.clone((upscaled,)) for c in children).apply_async(), 40)
    assert [r["status"] for r in results] == ["succeeded"] * len(children), [r for r in results]
    assert all(r["image_url"] and r["image_path"] for r in results), results
    # the modal step really ran: the upstream's final prompt is the modal's, and it was POSTed once per modal job
    assert results[5]["final_prompt"].endswith("--zoom 1.8")
    assert "a red hat" in results[6]["final_prompt"]
    assert _modal_requests(sim) - modal_before == 2
    region = repr(stack.job(results[6]["job_id"]))  # the mask travelled by reference (its message: shed by now)
    assert "data:image" not in region and "img:" in region, region
    grid = (imagine.s("again") | reroll.s() | vary.s(3, strength="strong") | upscale.s(1)).apply_async()
    final = grid.get(timeout=40)
    assert final["status"] == "succeeded" and final["custom_id"].startswith("MJ::JOB::upsample::1::")
    lineage = [final]
    while lineage[-1].get("parent_job"):
        lineage.append(stack.job(lineage[-1]["parent_job"]))
    assert [_button_kind(j.get("custom_id") or j["action"]) for j in lineage] == [
        "upsample", "variation", "reroll", "IMAGINE",
    ]


def _modal_requests(sim: Any) -> int:
    """How many ``/mj/submit/modal`` requests the simulator received."""
    return int(sim.stats()["requests"].get("POST /mj/submit/modal", 0))


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
    from worker.plans.runner import start_plan
    from worker.store.runtime import runtime

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


def test_bad_follow_up_arguments_fail_the_child_and_the_batch_finishes(stack: Stack, sim: Any) -> None:
    """Arguments that fail validation fail only their child, as a failed job with the reason; the rest of its
    branch is skipped and the batch, which planned them all, still finishes."""
    from tasks import imagine
    from tasks.followups import custom_zoom, pan, upscale, upscale_more, vary, vary_region, zoom

    bad = [
        (upscale.s(7), "index"),
        (vary.s(strength="medium"), "strength"),
        (pan.s("sideways"), "direction"),
        (upscale_more.s("8x") | zoom.s(2.0), "kind"),  # the zoom after it is skipped
        (zoom.s(3.0), "factor"),
        (custom_zoom.s(factor=5), "factor"),
        (vary_region.s("no/such/mask.png"), "mask"),
        (vary_region.s("data:image/png;base64,AAAA"), "mask"),  # stored by reference, refused by the worker
    ]
    canvas = imagine.s("bad arguments", batch_id="bad-args") | upscale.s(1) | group(
        *(sig for sig, _ in bad), zoom.s(2.0)
    )
    canvas.apply_async()
    batch = stack.wait_batch("bad-args", 12, timeout=40)
    assert batch["status"] == "finished" and batch["planned"] == 0, batch
    assert batch["counts"]["failed"] == 8 and batch["counts"]["skipped"] == 1, batch
    assert batch["counts"]["succeeded"] == 3, batch  # imagine, U1 and the good zoom
    failed = [j for j in stack.ledger.batch_jobs("bad-args") if j["status"] == "failed"]
    reasons = sorted(str(j["fail_reason"]) for j in failed)
    for _sig, field in bad:
        assert any(f"field '{field}'" in reason for reason in reasons), (field, reasons)
    assert all(j["parent_job"] for j in failed)  # recorded as children of the upscale, in its lineage


def test_a_step_failing_mid_sequence_skips_the_rest_of_its_branch(stack: Stack, sim: Any) -> None:
    import tasks

    tasks.imagine.delay("a chain that breaks", batch_id="mid", then="U1>press:Nope>zoom:2x>upscale:2x, U3>zoom:2x")
    batch = stack.wait_batch("mid", 7, timeout=40)
    assert batch["status"] == "finished" and batch["planned"] == 0, batch
    counts = batch["counts"]
    assert (counts["succeeded"], counts["failed"], counts["skipped"]) == (4, 1, 2), batch
    failed = next(j for j in stack.ledger.batch_jobs("mid") if j["status"] == "failed")
    assert "Nope" in failed["fail_reason"] and "offers" in failed["fail_reason"]
    assert _button_kind(stack.job(failed["parent_job"])["custom_id"]) == "upsample"


def test_region_masks_are_read_where_the_plan_is_given(
    stack: Stack, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mask path in a plan is read by the producer (relative to its directory, or to the prompt file) and
    stored by reference; the worker, which runs in another directory, never reads it."""
    import tasks
    from worker.batchfile import read_batch_file
    from worker.mjapi.errors import InvalidInput
    from worker.plans.runner import start_plan
    from worker.store.runtime import runtime

    folder = tmp_path / "prompts"
    (folder / "masks").mkdir(parents=True)
    (folder / "masks" / "hat.png").write_bytes(_png_bytes())
    (folder / "rows.csv").write_text('prompt,then\na lighthouse,"U1>region:masks/hat.png:""a red hat"""\n')
    plan = read_batch_file(folder / "rows.csv")
    assert not plan.rejected, plan.rejected
    [row] = plan.jobs
    tasks.imagine.delay(row.prompt, batch_id="masks", then=row.then)  # as `mjq batch` enqueues it
    monkeypatch.chdir(folder / "masks")  # a plan given here: relative to the producer's directory
    tasks.imagine.delay("a harbour", batch_id="masks", then="U2>region:hat.png")
    batch = stack.wait_batch("masks", 6, timeout=40)
    assert batch["counts"]["succeeded"] == 6 and batch["status"] == "finished", batch
    roots = [j for j in stack.ledger.batch_jobs("masks") if not j["parent_job"]]
    assert all('region:"img:' in stack.job(j["job_id"])["then"] for j in roots)
    regions = [j for j in stack.ledger.batch_jobs("masks") if "Inpaint" in (j["custom_id"] or "")]
    assert len(regions) == 2 and all(j["image_url"] for j in regions)
    assert any("a red hat" in (j["final_prompt"] or "") for j in regions)
    assert _modal_requests(sim) == 2

    with pytest.raises(InvalidInput) as refused:
        tasks.imagine.delay("never queued", batch_id="masks-bad", then="U1>region:missing.png")
    assert refused.value.field == "then" and "missing.png" in str(refused.value)
    (folder / "masks" / "not-an-image.png").write_text("hello")
    with pytest.raises(InvalidInput) as not_image:
        tasks.imagine.delay("never queued", batch_id="masks-bad", then="U1>region:not-an-image.png")
    assert not_image.value.field == "then" and "not a JPEG" in str(not_image.value)
    assert not stack.ledger.batch("masks-bad")

    # a stored plan that still names a file (a record made some other way) is not read by the worker: its
    # planned children are counted skipped, so the batch finishes instead of waiting for them
    parent = roots[0]["job_id"]
    stack.ledger.update(parent, {"then": "U3>region:hat.png"})
    assert start_plan(parent, runtime()) is False
    assert stack.ledger.batch("masks")["counts"]["skipped"] == 2
    assert "mask" in stack.job(parent)["plan_error"]


def test_modal_step_without_input_fails_the_follow_up(stack: Stack, sim: Any) -> None:
    """A follow-up that stops at the modal step with nothing to answer it fails with the reason; the raw
    ``tasks.action`` still returns the "awaiting modal" result for ``tasks.modal``."""
    import tasks
    from tasks.followups import press, upscale, vary

    upscaled = (tasks.imagine.s("no modal input") | upscale.s(1)).apply_async().get(timeout=30)
    lacking = press.s("Custom Zoom").delay(upscaled).get(timeout=20, propagate=False)
    assert isinstance(lacking, Exception) and "needs the modal step" in str(lacking), lacking
    given = press.s("Custom Zoom", prompt="wider --zoom 1.6").delay(upscaled).get(timeout=20)
    assert given["status"] == "succeeded" and given["image_url"] and given["final_prompt"].endswith("--zoom 1.6")
    custom_zoom_id = next(b["custom_id"] for b in upscaled["buttons"] if "CustomZoom" in b["custom_id"])
    raw = tasks.action.delay(upscaled["upstream_id"], custom_zoom_id).get(timeout=20)
    assert raw["status"] == "succeeded" and raw["extra"]["awaiting_modal"] is True and not raw["image_url"]

    sim.faults(remix=True)  # remix account: variations stop at the modal step too
    grid = tasks.imagine.delay("a grid on a remix account", batch_id="no-modal").get(timeout=20)
    promptless = dict(grid, prompt=None, final_prompt=None)
    outcomes = _results(group(vary.s(2), press.s("V1")).apply_async((promptless,)), 30)
    assert all(isinstance(o, Exception) and "needs the modal step" in str(o) for o in outcomes), outcomes
    batch = stack.wait_batch("no-modal", 3, timeout=20)
    assert batch["counts"]["failed"] == 2 and batch["status"] == "finished", batch
    assert all(j["upstream_id"] for j in stack.ledger.batch_jobs("no-modal"))  # the MODAL task upstream is named


def test_remix_presses_v_of_a_grid_or_vary_strong_of_an_upscale(stack: Stack, sim: Any) -> None:
    import tasks

    plan = 'remix:"a blue fox", remix:3:"a green fox", U1>remix:"a grey fox"'
    tasks.imagine.delay("a red fox", batch_id="remix", then=plan)
    batch = stack.wait_batch("remix", 5, timeout=40)
    assert batch["counts"]["succeeded"] == 5, batch
    jobs = [j for j in stack.ledger.batch_jobs("remix") if j["parent_job"]]
    by_prompt = {j["final_prompt"]: j for j in jobs if j["final_prompt"] != "a red fox"}
    assert by_prompt["a blue fox"]["custom_id"].startswith("MJ::JOB::variation::1::")
    assert by_prompt["a green fox"]["custom_id"].startswith("MJ::JOB::variation::3::")
    assert by_prompt["a grey fox"]["custom_id"].startswith("MJ::JOB::high_variation::")
    assert all(j["image_url"] and j["buttons"] for j in by_prompt.values())
    assert _modal_requests(sim) == 3


def test_a_remix_account_answers_the_modal_with_the_parent_prompt(stack: Stack, sim: Any) -> None:
    """On a remix account vary, reroll and pan stop at the modal step; the follow-up answers it itself."""
    import tasks

    sim.faults(remix=True)
    tasks.imagine.delay("a harbour at dawn", batch_id="remix-account", then="V2, reroll, U1>(pan:left, vary:subtle)")
    batch = stack.wait_batch("remix-account", 6, timeout=40)
    assert batch["counts"]["succeeded"] == 6, batch
    children = [j for j in stack.ledger.batch_jobs("remix-account") if j["parent_job"]]
    moved = [j for j in children if _button_kind(j["custom_id"]) != "upsample"]
    assert sorted(_button_kind(j["custom_id"]) for j in moved) == ["low_variation", "pan_left", "reroll", "variation"]
    assert all(j["image_url"] and j["final_prompt"] == "a harbour at dawn" for j in moved), moved
    assert _modal_requests(sim) == 4


def test_strength_on_a_grid_is_recorded_not_pressed(stack: Stack, sim: Any) -> None:
    """A grid has one V3 (the account's variation mode decides its strength); the strength asked for is kept."""
    import tasks

    tasks.imagine.delay("strengths", batch_id="strength", then="V3:strong, U1>vary:strong")
    assert stack.wait_batch("strength", 4, timeout=40)["counts"]["succeeded"] == 4
    jobs = {_button_kind(j["custom_id"]): stack.job(j["job_id"]) for j in stack.ledger.batch_jobs("strength")}
    assert jobs["variation"]["custom_id"].startswith("MJ::JOB::variation::3::")
    assert jobs["variation"]["meta"]["strength"] == "strong"
    assert jobs["variation"]["meta"]["strength_from"] == "account"
    assert jobs["high_variation"]["meta"]["strength_from"] == "button"


def test_follow_ups_run_on_the_queue_of_their_parent(stack: Stack, sim: Any) -> None:
    """Follow-ups of a batch job go to ``track``, the queue of work under way, read before the batch's own
    roots (plans and chain links alike); of a single job to ``interactive``: the queue each message arrived on
    is kept with the job (its stored message's, kept as ``queue`` once it succeeded)."""
    import tasks
    from tasks.followups import upscale, zoom

    tasks.imagine.delay("batch work", batch_id="queues", then="U1>zoom:2x")
    chained = (tasks.imagine.s("batch chain", batch_id="queues") | upscale.s(2) | zoom.s(2.0)).apply_async()
    single = (tasks.imagine.s("a single job") | upscale.s(3) | zoom.s(2.0)).apply_async().get(timeout=30)
    chained.get(timeout=30)
    batch = stack.wait_batch("queues", 6, timeout=30)
    assert batch["counts"]["succeeded"] == 6, batch
    for job in stack.ledger.batch_jobs("queues"):
        record = stack.job(job["job_id"])
        assert record["queue"] == ("track" if job["parent_job"] else "batch"), job
        if job["parent_job"]:  # waits for a slot by its root's age (depth first), grandchildren included
            assert record["root_created_at"] == stack.job(record["root_job"])["created_at"], record
    lineage = [single]
    while lineage[-1].get("parent_job"):
        lineage.append(stack.job(lineage[-1]["parent_job"]))
    assert len(lineage) == 3
    assert all(stack.job(j["job_id"])["queue"] == "interactive" for j in lineage)


def _png_bytes() -> bytes:
    import base64

    return base64.b64decode(png_data_uri(color="white").split(",", 1)[1])


def test_flower_shows_a_follow_up_by_its_parent_and_never_a_mask_key(stack: Stack, sim: Any) -> None:
    """A follow-up's first argument is the parent's whole result: Flower shows its job id instead, and a
    Vary (Region) mask (stored in Redis by hash) as ``image``."""
    import tasks
    from tasks.followups import upscale, vary_region
    from tests.support.events import TaskEvents
    from worker.app import app

    with TaskEvents(app) as events:
        canvas = tasks.imagine.s("a garden gate") | upscale.s(1) | vary_region.s(png_data_uri(), "an open gate")
        result = canvas.delay()
        final = result.get(timeout=40)
        stack.wait(lambda: bool(events.for_task(result.id, "task-sent")), 10, "the region task's sent event")
    assert final["status"] == "succeeded" and final["image_url"]
    sent = events.for_task(result.id, "task-sent")
    shown = f"{sent[0].get('args')} {sent[0].get('kwargs')}"
    parent = stack.ledger.get_job(final["parent_job"]) or {}
    assert f"parent={parent['job_id']} (succeeded)" in shown, shown
    assert "img:" not in shown and "base64" not in shown and "buttons" not in shown, shown
    assert "image" in shown and "an open gate" in shown, shown


def test_flower_sees_the_jobs_not_the_plumbing_and_no_phantom_worker(stack: Stack, sim: Any) -> None:
    """Polls, finishing and housekeeping send no task events (Flower's task list is for jobs), and the events
    the finishing step sends for a job carry the hostname of a real worker, not a name of their own."""
    import tasks
    from tasks.followups import upscale
    from tests.support.events import TaskEvents
    from worker.app import PLUMBING_TASKS, app

    with TaskEvents(app) as events:
        result = (tasks.imagine.s("a lighthouse in fog") | upscale.s(2)).delay()
        final = result.get(timeout=120)
        stack.wait(lambda: bool(events.for_task(result.id, "task-succeeded")), 60, "the follow-up's success event")
        stack.wait(lambda: any(e.get("type") == "worker-heartbeat" for e in events.snapshot()), 60, "a heartbeat")
    assert final["status"] == "succeeded"
    seen = events.snapshot()
    named = {e.get("uuid"): e.get("name") for e in seen if e.get("name")}
    assert named and not PLUMBING_TASKS & set(named.values()), sorted(str(v) for v in set(named.values()))
    job_ids = {final["job_id"], final["parent_job"]}
    assert job_ids <= set(named), named
    workers = {e.get("hostname") for e in seen if e.get("type") in ("worker-heartbeat", "worker-online")}
    finishing = [e for e in seen if e.get("uuid") in job_ids and e.get("type") == "task-succeeded"]
    assert finishing and {e.get("hostname") for e in finishing} <= workers, (finishing, workers)
    assert not any(e.get("uuid") not in named and e.get("type", "").startswith("task-") for e in seen)
