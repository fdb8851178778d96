"""Money: price tables, the spend ledger, budgets atomic with the slot lease (two worker processes racing),
a batch held by its budget not blocking another batch in the same mode, and charged failures counted apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.stack import CONFIGS, Stack, WorkerProcess, use_config
from worker import control
from worker.batchfile import Defaults, read_batch_file
from worker.pricing import PriceError, fmt_money, parse_prices, price_key, price_of, to_micros
from worker.reports.estimate import estimate
from worker.reports.money import batch_money, money_line
from worker.settings import Settings
from worker.store.runtime import runtime

CONFIGS["money"] = {
    "MJQ_PRICES": "imagine=0.1,upscale=0.05",
    "MJQ_PRICES_RELAX": "imagine=0.03",
    "MJQ_CHARGES_FAILURES": "true",
}

CONFIGS["money_refund"] = {"MJQ_PRICES": "imagine=0.1", "MJQ_CHARGES_FAILURES": "false"}


@pytest.fixture
def money_stack(stack_manager: Any, sim: Any) -> Stack:
    return use_config(stack_manager, "money", sim)


def test_price_tables_parse_in_micros_and_name_the_variable() -> None:
    assert parse_prices("imagine=0.1, upscale=0.05") == {"imagine": 100_000, "upscale": 50_000}
    assert parse_prices("") == {}
    for bad, rule in (("imagine", "KIND=AMOUNT"), ("paint=1", "unknown request kind"), ("imagine=-1", ">= 0"),
                      ("imagine=0.0000001", "6 decimal"), ("imagine=1,imagine=2", "twice"), ("imagine=x", "number")):
        with pytest.raises(PriceError, match=rule) as info:
            parse_prices(bad, "MJQ_PRICES_RELAX")
        assert "MJQ_PRICES_RELAX" in str(info.value)
    assert to_micros("1.25") == 1_250_000 and to_micros(0.1) == 100_000


def test_price_keys_and_per_mode_tables_unknown_is_not_zero() -> None:
    tables = {"": {"imagine": 100_000, "upscale": 50_000}, "relax": {"imagine": 30_000}}
    assert price_key("imagine") == "imagine"
    assert price_key("action", "UPSCALE") == "upscale" and price_key("action", "ZOOM") == "zoom"
    assert price_of(tables, "imagine", "relax") == 30_000
    assert price_of(tables, "upscale", "relax") == 50_000  # the base table when the mode does not say
    assert price_of(tables, "imagine", "fast") == 100_000
    assert price_of(tables, "zoom", "fast") is None
    assert fmt_money(None, "USD") == "unknown USD" and fmt_money(1_850_000, "USD") == "1.85 USD"


def test_estimate_counts_follow_ups_and_permutations_and_adds_up(tmp_path: Path) -> None:
    """A prompt file with permutations and plans: exact counts per kind and mode; the cost adds up; a kind
    with no price is unknown, never 0."""
    src = tmp_path / "night.csv"
    src.write_text('prompt,then,mode\n"x {1,2,3}","U1-4",fast\n"y","U2 > zoom:2x, V1",relax\n"z",,relax\n')
    plan = read_batch_file(src, Defaults())
    settings = Settings(prices="imagine=0.1,upscale=0.05,zoom=0.07", prices_relax="imagine=0.03",
                        slots_fast=3, slots_relax=2, expected_fast_s=60, expected_relax_s=120)
    est = estimate(plan, settings)
    rows = {(k["mode"], k["kind"]): k for k in est["by_kind"]}
    assert {key: k["jobs"] for key, k in rows.items()} == {
        ("fast", "imagine"): 3, ("fast", "upscale"): 12,
        ("relax", "imagine"): 2, ("relax", "upscale"): 1, ("relax", "zoom"): 1, ("relax", "variation"): 1,
    }
    assert est["jobs"] == len(plan.jobs) + plan.followup_jobs() == 20
    assert est["unknown_prices"] == ["variation"] and rows[("relax", "variation")]["cost"] is None
    known = sum(k["cost"] for k in est["by_kind"] if k["cost"] is not None)
    assert est["cost"]["total"] == pytest.approx(known) == pytest.approx(3 * 0.1 + 12 * 0.05 + 2 * 0.03 + 0.05 + 0.07)
    assert est["wall_s"] == 360  # the longer mode: relax 5 jobs over 2 slots of 120 s (fast: 15 / 3 x 60 s = 300)
    assert "unknown" in est["text"] and "imagines" in est["text"]


def test_budget_stops_at_the_crossing_job_with_two_workers_racing(
    money_stack: Stack, sim: Any, tmp_path: Path
) -> None:
    """10 of 25 imagines at 0.10 fit a 1.00 budget, never 11; the held ones do not block another batch in the
    same mode; raising the budget releases exactly the jobs that fit."""
    import tasks

    stack = money_stack
    host_b = {**stack.env, "MJQ_STATE_DIR": str(tmp_path / "b-state"), "MJQ_MEDIA_DIR": str(tmp_path / "b-media")}
    second = WorkerProcess(host_b, tmp_path / "worker-b.log", beat=False).start(stack.redis_url, timeout_s=60)
    try:
        sim.faults(concurrency={"FAST": 50, "RELAX": 50, "TURBO": 50}, queue_size=100)
        stack.ledger.set_budget("capped", to_micros("1.00"))
        for i in range(25):
            tasks.imagine.delay(f"capped {i}", mode="fast", batch_id="capped")
        for i in range(6):
            tasks.imagine.delay(f"free {i}", mode="fast", batch_id="free")
        free = stack.wait_batch("free", 6, timeout=120)
        assert free["counts"]["succeeded"] == 6, free["counts"]
        stack.wait(lambda: _settled(stack, "capped", 10), timeout=120, what="10 capped jobs done, 15 held")
        info = stack.ledger.batch("capped")
        assert info["counts"]["succeeded"] == 10 and info["counts"]["queued"] == 15, info["counts"]
        assert info["spent_micros"] == 1_000_000 and info["hold_reason"] == "budget"
        line = money_line(batch_money("capped", info, runtime()))  # what `mjq status capped` prints
        assert line.startswith("spent 1.00 USD, committed 0.00 USD of budget 1.00 USD; held: budget"), line
        stats = sim.stats()
        ids = stack.ledger.batch_job_ids("capped")
        assert sum(1 for i in ids if stats["submissions_by_state"].get(i)) == 10  # never an 11th submit
        assert all(stats["submissions_by_state"].get(i, 0) <= 1 for i in ids)
        costs = [stack.ledger.job_result(i)["cost"] for i in ids]
        assert sorted(c for c in costs if c is not None) == [0.1] * 10

        assert control.set_budget("capped", "1.5", runtime()) == 15
        stack.wait(lambda: _settled(stack, "capped", 15), timeout=120, what="5 more capped jobs done")
        info = stack.ledger.batch("capped")
        assert info["counts"]["succeeded"] == 15 and info["spent_micros"] == 1_500_000, info
        assert stack.ledger.spent_today() == 2_100_000  # 15 capped + 6 free at 0.10
    finally:
        second.stop()


def _settled(stack: Stack, batch_id: str, done: int) -> bool:
    """``done`` jobs succeeded, the rest queued and held by the budget (none in flight)."""
    info = stack.ledger.batch(batch_id)
    counts = info.get("counts") or {}
    held = stack.ledger.redis.zcard(f"mjq:held:{batch_id}")
    rest = info.get("total", 0) - done
    return bool(counts.get("succeeded") == done and held == rest and held == counts.get("queued"))


def test_prices_per_mode_and_a_charged_failure_counted(money_stack: Stack, sim: Any) -> None:
    import tasks

    stack = money_stack
    tasks.imagine.delay("relaxed", mode="relax", batch_id="modes")
    tasks.imagine.delay("fast one", mode="fast", batch_id="modes")
    stack.wait_batch("modes", 2, timeout=60)
    costs = sorted(j["cost"] for j in (stack.ledger.job_result(i) for i in stack.ledger.batch_job_ids("modes")))
    assert costs == [0.03, 0.1]

    sim.faults(failure_rate=1.0)
    for i in range(3):
        tasks.imagine.delay(f"doomed {i}", mode="fast", batch_id="charged")
    info = stack.wait_batch("charged", 3, timeout=60)
    assert info["counts"]["failed"] == 3
    assert info["charged_failed_n"] == 3 and info["charged_failed_micros"] == 300_000
    assert "charged for 3 failed jobs: 0.30 USD" in money_line(batch_money("charged", info, runtime()))
    assert info["spent_micros"] == 300_000  # the upstream kept the money: still spent


@pytest.mark.parametrize("profile", ["default", "trueai"])
def test_split_grid_gives_four_images_without_an_upstream_request(money_stack: Stack, sim: Any, profile: str) -> None:
    """A real simulator grid: four files of a quarter's size each; cut by Pillow, or the upstream's imageUrls
    (trueai) fetched from its CDN; either way the only upstream submit is the imagine itself."""
    import tasks

    stack = money_stack
    if profile != "default":
        sim.faults(profile=profile)
    tasks.imagine.delay("four for one", mode="fast", batch_id="split", split_grid=True, job_id=f"split-{profile}")
    stack.wait_batch("split", 1, timeout=60)
    stack.wait(lambda: bool(stack.job(f"split-{profile}").get("download")), timeout=60, what="download")
    result = stack.ledger.job_result(f"split-{profile}")
    assert result["status"] == "succeeded" and len(result["image_paths"]) == 4, result
    with Image.open(result["image_path"]) as grid:
        width, height = grid.size
    for path in result["image_paths"]:
        with Image.open(path) as tile:
            assert tile.size == (width // 2, height // 2), (path, tile.size, (width, height))
    assert stack.job(f"split-{profile}")["split_from"] == ("cut" if profile == "default" else "image_urls")
    assert sum(sim.stats()["submissions_by_state"].values()) == 1


def test_a_failure_after_acceptance_is_refunded_once_and_an_unknown_price_under_a_budget_waits(
    stack_manager: Any, sim: Any
) -> None:
    import tasks

    stack = use_config(stack_manager, "money_refund", sim)
    sim.faults(failure_rate=1.0)
    for i in range(2):
        tasks.imagine.delay(f"refunded {i}", mode="fast", batch_id="refunded")
    info = stack.wait_batch("refunded", 2, timeout=60)
    assert info["counts"]["failed"] == 2 and info.get("spent_micros") == 0 and "charged_failed_n" not in info
    assert stack.ledger.spent_today() == 0
    assert all(stack.job(i)["refunded_micros"] == 100_000 for i in stack.ledger.batch_job_ids("refunded"))

    sim.faults(failure_rate=0.0)
    tasks.imagine.delay("priced grid", mode="fast", batch_id="unpriced", then="U1", budget=5, job_id="unpriced")
    stack.wait(lambda: stack.ledger.redis.zcard("mjq:held:unpriced") == 1, timeout=60, what="the upscale held")
    info = stack.ledger.batch("unpriced")
    assert info["hold_reason"] == "budget" and info["hold_detail"] == "no price for upscale", info
    assert info["spent_micros"] == 100_000 and info["budget_micros"] == 5_000_000
