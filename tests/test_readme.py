"""The README stays true to the code: every setting, every CLI command and the two commands are documented."""

from __future__ import annotations

import re
from pathlib import Path

from worker.settings import Settings, settings_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_it_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    head = README[:1500]
    assert head.index("make demo") < head.index("make test")
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*(exec\s+)?make test\s*$", ci, re.MULTILINE), ci


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [f"MJQ_{name.upper()}" for name in Settings.model_fields if f"MJQ_{name.upper()}" not in README]
    assert not missing, f"settings missing from README.md: {missing}"
    assert settings_table() in README, "README's configuration table is stale: paste `mjq config --markdown`"


def test_every_cli_command_is_documented() -> None:
    from worker.cli import app

    names = [command.name for command in app.registered_commands if command.name]
    assert len(names) >= 10
    missing = [name for name in names if f"mjq {name}" not in README]
    assert not missing, f"CLI commands missing from README.md: {missing}"


def test_benchmark_and_reliability_results_are_published() -> None:
    assert "## Benchmarks" in README and "## Reliability" in README
    for section in ("## Benchmarks", "## Reliability"):
        body = README.split(section, 1)[1].split("\n## ", 1)[0]
        assert "|" in body and re.search(r"\d", body), f"{section} has no result table"


def test_the_flower_section_says_how_parked_and_running_jobs_read() -> None:
    """Parked jobs end their task as RETRY "parked: ..." (tests/test_ops.py checks it through Flower); a job the
    upstream renders reads STARTED and holds no worker, so a worker's Active count is 0 meanwhile."""
    section = README.split("### Queues and Flower", 1)[1].split("\n## ", 1)[0]
    flat = " ".join(section.split())
    assert "*started -> ignored*" not in flat and "*Started* then *ignored*" not in flat
    assert "shows as *retry* with `parked: waiting for a fast slot`" in flat
    assert "reads 0 while jobs run" in flat
