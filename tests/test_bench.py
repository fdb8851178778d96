"""The benchmark still works (a smoke-size run of all six, real stacks), and its report is right.

Nothing here times anything: the figures are published by ``make bench``, never asserted.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import bounds
from bench.load import LoadMeter
from bench.report import README_END, README_START, Figure, markdown, results_document, update_readme
from bench.stack import percentile, scaled_env

ROOT = Path(__file__).resolve().parents[1]


def test_percentile_interpolates() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 95) == 5.0
    assert math.isnan(percentile([], 50))


def test_a_figure_with_a_baseline_gets_its_ratio() -> None:
    assert Figure("1 x", "m", 3.0, baseline="b", baseline_value=4.0).ratio == pytest.approx(0.75)
    assert Figure("1 x", "m", 3.0).ratio is None


def test_scaled_env_scales_the_default_timings() -> None:
    env = scaled_env(0.01)
    assert env["MJQ_EXPECTED_FAST_S"] == "0.6" and env["MJQ_POLL_MAX_S"] == "0.3"


def test_readme_table_is_replaced_between_its_markers(tmp_path: Path) -> None:
    doc = results_document(
        [Figure("1 utilisation", "jobs/s ÷ C/D", 0.97, baseline="one at a time", baseline_value=0.31,
                target="≥ 0.95", met=True)],
        {"size": "smoke", "time_factor": 0.005, "capacity": 3, "queue": 10},
        12.0,
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\nold table\n{README_END}\n\nafter\n", encoding="utf-8")
    update_readme(readme, doc)
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and "after" in text
    assert "| 1 utilisation | jobs/s ÷ C/D | 0.97 | one at a time: 0.31 | 3.13 | ≥ 0.95 | yes |" in text
    assert markdown(doc) in text
    (tmp_path / "bare.md").write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="markers"):
        update_readme(tmp_path / "bare.md", doc)


def test_smoke_run_measures_every_benchmark_against_its_baseline(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    figures = doc["figures"]
    assert {f["benchmark"].split()[0] for f in figures} == {"1", "2", "3", "4", "5", "6"}
    assert all(math.isfinite(f["value"]) for f in figures), figures
    compared = [f for f in figures if f["baseline"]]
    assert len(compared) >= 10 and all(f["baseline_value"] is not None for f in compared)
    by_measure = {f["measure"]: f for f in figures}
    # behaviour, not timing: mjqueue never overfills the account, the naive fire-everything always does
    full = by_measure["queue-full answers"]
    assert full["value"] == 0 and full["baseline_value"] > 0
    assert doc["config"]["size"] == "smoke" and doc["machine"] and doc["errors"] == []
    assert doc["complete"] is True and doc["not_run"] == []
    assert {"loadavg_start", "loadavg_end", "cpu_s_ours", "cpu_s_others"} <= set(doc["load"]), doc["load"]


def test_a_phase_that_reaches_its_bound_ends_with_a_partial_note() -> None:
    assert bounds.wait_until(lambda: True, 0.5, "quick") and bounds.take_notes() == []
    assert not bounds.wait_until(lambda: False, 0.3, "batch b", lambda: "7 of 10 jobs done")
    [note] = bounds.take_notes()
    assert note.startswith("batch b: stopped at its bound") and "7 of 10 jobs done" in note
    assert bounds.take_notes() == []  # each step gets only its own notes


def test_a_partial_figure_is_marked_in_the_table_and_the_load_is_recorded() -> None:
    figure = Figure("5 scale", "worker RSS", 120.0, "MB", partial=True)
    doc = results_document([figure], {"size": "smoke", "time_factor": 0.005, "capacity": 3, "queue": 10}, 1.0,
                           load=LoadMeter().summary(), not_run=["fanout"], complete=False)
    assert doc["complete"] is False and doc["not_run"] == ["fanout"]
    text = markdown(doc)
    assert "120 MB (partial)" in text and "Machine load: load average" in text


def test_a_stopped_run_keeps_the_figures_it_measured(tmp_path: Path) -> None:
    """SIGTERM after the first benchmark's figures were written: they stay, and the rest is named not run."""
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    run = subprocess.Popen(
        [sys.executable, "-m", "bench", "--size", "smoke", "--only", "enqueue", "--only", "scale", "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out.exists() and json.loads(out.read_text(encoding="utf-8"))["figures"]):
            assert run.poll() is None and time.monotonic() < deadline, "no figure was written before the end"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 130
    finally:
        if run.poll() is None:
            run.kill()
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert {f["benchmark"].split()[0] for f in doc["figures"]} == {"3"}
    assert doc["complete"] is False and doc["not_run"] == ["scale"] and "interrupted" in doc["errors"]
