"""The benchmark still works (a smoke-size run of all ten, real stacks), and its report is right.

Nothing here times anything: the figures are published by ``make bench``, never asserted. What is checked is
behaviour: figures written as each phase ends, a phase at its time bound giving a partial figure rather than
an exception, a stopped run keeping what it measured and saying what did not run, the machine load recorded.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench.__main__ import BENCHMARKS, SIZES, _chosen, phases
from bench.bounds import Reached, batch_bound_s, mark, wait_bounded
from bench.load import LoadMeter, busy_cpu_s
from bench.report import README_END, README_START, Figure, markdown, results_document, update_readme
from bench.runner import Phase, Recorder, Stopped, default_signals, stop_on_signals
from bench.stack import UpstreamRun, percentile, scaled_env

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


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_wait_that_reaches_its_bound_says_how_far_it_got_instead_of_raising() -> None:
    clock = FakeClock()
    done = iter(range(1000))
    reached = wait_bounded(lambda: next(done), 50, 10.0, poll_s=1.0, clock=clock, sleep=clock.sleep)
    assert reached.partial and reached.done < 50 and reached.wanted == 50 and reached.bound_s == 10.0
    assert "of 50 in the 10 s bound" in reached.describe()
    clock = FakeClock()
    finished = wait_bounded(lambda: 50, 50, 10.0, clock=clock, sleep=clock.sleep)
    assert not finished.partial and finished.done == 50
    # enough progress but never finished (e.g. jobs still in the queue): partial too
    clock = FakeClock()
    assert wait_bounded(lambda: 50, 50, 3.0, finished=lambda: False, clock=clock, sleep=clock.sleep).partial


def test_bounds_grow_with_the_size_of_the_phase() -> None:
    assert batch_bound_s(100, 0.3, 3) < batch_bound_s(1000, 0.3, 3)
    assert batch_bound_s(1000, 0.3, 3) == pytest.approx(30 + 2 * 100)


def test_a_side_stopped_at_its_bound_marks_the_figures_it_reached_partial() -> None:
    short = Reached(40, 100, 12.0, 12.0, complete=False)
    figures = mark([Figure("1 utilisation", "jobs/s ÷ C/D", 0.9, baseline="b", baseline_value=0.8)],
                   Reached(100, 100, 5.0, 60.0), short)
    assert figures[0].partial and figures[0].notes["reached"] == short.describe()
    assert not mark([Figure("1 x", "m", 1.0)], Reached(1, 1, 1.0, 2.0))[0].partial
    # the README says so beside the figure, and a side that reached nothing is "–", not an exception
    nothing = UpstreamRun([], 0, 0)
    assert math.isnan(nothing.utilisation(3)) and math.isnan(nothing.makespan_s)
    empty = mark([Figure("6 fan-out", "total time", nothing.makespan_s, "s")], short)
    doc = results_document([*figures, *empty], {"size": "smoke", "time_factor": 0.005, "capacity": 3, "queue": 10},
                           1.0)
    assert doc["figures"][1]["value"] is None  # strict JSON: NaN is written as null
    json.dumps(doc, allow_nan=False)
    table = markdown(doc)
    assert "jobs/s ÷ C/D (partial: 40 of 100 in the 12 s bound) | 0.9 |" in table
    assert "| 6 fan-out | total time (partial: 40 of 100 in the 12 s bound) | – |" in table


def _recorder(tmp_path: Path, chosen: list[str]) -> Recorder:
    phase_list = [
        Phase("first", "first phase", ("utilisation", "requests")),
        Phase("second", "second phase", ("enqueue",)),
        Phase("third", "third phase", ("scale",)),
    ]
    config = {"size": "smoke", "time_factor": 0.005, "capacity": 3, "queue": 10}
    return Recorder(tmp_path / "results.json", config, BENCHMARKS, chosen, phase_list,
                    Console(file=io.StringIO(), width=150))


def test_each_phase_writes_its_figures_as_soon_as_it_ends(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, ["utilisation", "requests", "enqueue", "scale"])
    out = tmp_path / "results.json"
    with rec.phase("first"):
        rec.add([Figure("1 utilisation", "u", 0.99), Figure("2 requests/job", "r", 1.01),
                 Figure("4 continuation", "not chosen", 1.0)])
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [f["measure"] for f in doc["figures"]] == ["u", "r"]  # benchmarks not chosen are left out
    assert doc["complete"] is False and doc["benchmarks"]["utilisation"] == "done"
    assert doc["benchmarks"]["scale"] == "pending" and doc["load"]["cores"] >= 1
    with rec.phase("second"):
        raise RuntimeError("broken")  # recorded, and the run goes on
    with rec.phase("third"):
        rec.add([Figure("5 scale", "rss", 140.0, partial=True, notes={"reached": "3 of 4"})])
    doc = rec.finish()
    assert doc["complete"] is True and doc["not_run"] == [] and doc["interrupted"] is None
    assert doc["benchmarks"] == {"utilisation": "done", "requests": "done", "enqueue": "failed",
                                 "scale": "partial"}
    assert json.loads(out.read_text(encoding="utf-8"))["figures"][-1]["partial"] is True
    assert any("broken" in e for e in doc["errors"])


def test_a_stopped_run_keeps_every_figure_and_says_what_did_not_run(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, ["utilisation", "enqueue", "scale"])
    with rec.phase("first"):
        rec.add([Figure("1 utilisation", "u", 0.99)])
    with pytest.raises(KeyboardInterrupt), rec.phase("second"):
        raise Stopped("SIGTERM")
    doc = rec.finish()
    assert [f["measure"] for f in doc["figures"]] == ["u"]
    assert doc["complete"] is False and doc["interrupted"] == {"by": "SIGTERM", "phase": "second"}
    assert doc["not_run"] == ["enqueue", "scale"] and doc["phases_not_run"] == ["second", "third"]
    assert doc["benchmarks"] == {"utilisation": "done", "enqueue": "interrupted", "scale": "not_run"}
    assert "Not run: enqueue, scale (the run was stopped by SIGTERM during second)." in markdown(doc)


def test_ctrl_c_mid_phase_leaves_every_figure_on_disk_and_what_did_not_run(tmp_path: Path) -> None:
    """A real SIGINT to this process while a phase runs, as Ctrl-C on ``python -m bench`` sends it: the file
    on disk already holds the figures of the phases before it (a benchmark whose baseline was still to come
    included), and the run's last write says where it stopped and what did not run."""
    rec = _recorder(tmp_path, ["utilisation", "requests", "enqueue", "scale"])
    out = tmp_path / "results.json"
    with rec.phase("first"):
        rec.add([Figure("1 utilisation", "own", 0.99)])  # its baseline comes in the next phase
    stop_on_signals(None)
    try:
        with pytest.raises(Stopped, match="SIGINT"), rec.phase("second"):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(400):
                time.sleep(0.05)  # the handler raises here
    finally:
        default_signals()
    on_disk = json.loads(out.read_text(encoding="utf-8"))  # written by the phase's end, before finish()
    assert [f["measure"] for f in on_disk["figures"]] == ["own"]
    assert on_disk["interrupted"] == {"by": "SIGINT (Ctrl-C)", "phase": "second"}
    rec.finish()
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["complete"] is False and doc["not_run"] == ["enqueue", "scale"]
    assert doc["benchmarks"]["utilisation"] == "done" and doc["phases_not_run"] == ["second", "third"]


def test_a_phase_of_several_measurements_writes_each_as_it_is_made(tmp_path: Path) -> None:
    """The scale series adds one size at a time: a stop at its 100,000 keeps the smaller sizes on disk."""
    rec = _recorder(tmp_path, ["scale"])
    out = tmp_path / "results.json"
    seen: list[dict[str, Any]] = []
    with rec.phase("third"):  # (it records what the block raises: the checks come after it)
        seen.append(json.loads(out.read_text(encoding="utf-8")))
        rec.add([Figure("5 scale", "1,000", 1.0)])
        seen.append(json.loads(out.read_text(encoding="utf-8")))
    assert rec.errors == [] and len(seen) == 2
    assert seen[0]["running"] == "third" and seen[0]["figures"] == []  # the file says which phase runs
    assert [f["measure"] for f in seen[1]["figures"]] == ["1,000"]  # written before the phase ended


def test_a_baseline_from_a_later_phase_replaces_the_figures_recorded_without_it(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, ["utilisation", "enqueue"])
    with rec.phase("first"):
        rec.add([Figure("1 utilisation", "p95", 120.0), Figure("3 enqueue", "rate", 900.0)])
    with rec.phase("second"):
        rec.add([Figure("1 utilisation", "p95", 120.0, "ms", "polling only", 190.0)], replacing="utilisation")
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert [(f["measure"], f["baseline_value"]) for f in doc["figures"]] == [("rate", None), ("p95", 190.0)]


def test_load_is_the_machine_busy_time_less_our_own() -> None:
    assert busy_cpu_s("cpu  100 0 50 1000 30 5 5 10 0 0\ncpu0 1 2 3\n") * os.sysconf("SC_CLK_TCK") == 170
    load = LoadMeter.start().read()
    assert set(load) >= {"loadavg_start", "loadavg_end", "other_cpu_s", "own_cpu_s", "other_cores"}
    assert load["other_cpu_s"] >= 0 and len(load["loadavg_start"]) == 3
    doc = results_document([], {"size": "smoke", "time_factor": 0.005, "capacity": 3, "queue": 10}, 1.0, load=load)
    assert "Machine load during the run: load average (1/5/15 min)" in markdown(doc)


def test_only_takes_numbers_names_and_lists_and_every_benchmark_has_its_phases() -> None:
    assert _chosen(["1", "scale"]) == {"utilisation", "scale"}
    assert _chosen(["3,fanout", "continuation"]) == {"enqueue", "fanout", "latency"}
    assert _chosen(None) == set(BENCHMARKS)
    assert _chosen(["7"]) == _chosen(["series"]) == {"series"}
    assert _chosen(["8"]) == _chosen(["pool"]) == {"pool"}
    assert _chosen(["7,8", "9", "dashboard"]) == {"series", "pool", "api", "dashboard"}
    assert [_chosen([str(i)]) for i in range(1, 11)] == [{name} for name in BENCHMARKS]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        _chosen(["11"])
    assert _chosen(["9"]) == _chosen(["api"]) == _chosen(["http"]) == {"api"}
    assert _chosen(["10"]) == _chosen(["dashboard"]) == {"dashboard"}
    for name in BENCHMARKS:
        planned = phases(SIZES["smoke"], {name})
        assert planned and all(name in p.benchmarks for p in planned)


def test_a_run_stopped_by_its_time_limit_writes_what_did_not_run(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "smoke", "--only", "enqueue,scale", "--time-limit", "1",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 130, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["complete"] is False and doc["interrupted"]["by"] == "the time limit"
    assert "scale" in doc["not_run"] and doc["load"]["wall_s"] > 0
    assert "not run:" in run.stdout


@pytest.mark.timeout(1200)  # about 50 s idle; ten benchmarks with their baselines on a machine whose cores are busy
def test_smoke_run_measures_every_benchmark_against_its_baseline(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1100,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    figures = doc["figures"]
    assert {f["benchmark"].split()[0] for f in figures} == {"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}
    # a side that hit its time bound (a busy machine) gives a partial figure, never a lost run
    assert all(f["partial"] or math.isfinite(f["value"]) for f in figures), figures
    assert doc["complete"] is True and doc["not_run"] == [] and doc["interrupted"] is None
    assert set(doc["benchmarks"]) == set(BENCHMARKS)
    assert set(doc["benchmarks"].values()) <= {"done", "partial"}, doc["benchmarks"]
    assert all(p["status"] in ("done", "partial") and p["seconds"] is not None for p in doc["phases"])
    assert doc["load"]["own_cpu_s"] > 0 and len(doc["load"]["loadavg_end"]) == 3
    compared = [f for f in figures if f["baseline"]]
    assert len(compared) >= 10 and all(f["baseline_value"] is not None for f in compared)
    by_measure = {f["measure"]: f for f in figures}
    # behaviour, not timing: mjqueue never overfills the account (how often the naive fire-everything is refused
    # depends on how fast a loaded machine fires, so it is only required to have been measured)
    full = by_measure["queue-full answers"]
    assert full["value"] == 0 and full["baseline_value"] is not None and full["notes"]["fire_jobs"] > 0
    assert doc["config"]["size"] == "smoke" and doc["machine"] and doc["errors"] == []


def test_a_stop_swallowed_by_a_finalizer_is_delivered_again() -> None:
    """The time limit can fire while a ``__del__`` runs (Celery's AsyncResult has one), and Python ignores what
    a finalizer raises: the stop must come again, or the run never ends."""

    class Finalized:
        def __del__(self) -> None:
            raise Stopped("the time limit")  # as if the alarm's handler had run inside this finalizer

    stop_on_signals(None)
    try:
        with pytest.raises(Stopped, match="the time limit"):
            Finalized()  # dropped at once: its finalizer raises, Python reports it as unraisable
            for _ in range(400):
                time.sleep(0.05)  # the stop arrives again within a moment
    finally:
        default_signals()
