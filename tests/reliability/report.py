"""The figures of each scenario: printed, appended as JSON lines, and (full-size runs) written into the README.

The README's results table sits between ``README_START`` and ``README_END``; a full-size run (``--full``) in
which every selected scenario passed and none was deselected rewrites it from the measured figures, so the
table is never pasted by hand. The reduced run (CI, ``make test``) never touches the README.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

README_START = "<!-- reliability:start -->"
README_END = "<!-- reliability:end -->"


def results_path() -> Path:
    """Where each scenario's figures are appended as one JSON line (env ``RELIABILITY_RESULTS`` overrides).

    Not an ``MJQ_`` variable: the stack fixtures replace those when they switch configurations.
    """
    env = os.environ.get("RELIABILITY_RESULTS")
    return Path(env) if env else Path(tempfile.gettempdir()) / "mjq-reliability" / "results.jsonl"


@dataclass
class Figures:
    """What one scenario measured; ``problems`` empty means the audit found nothing wrong."""

    scenario: str
    size: str = "reduced"
    jobs: int = 0
    roots: int = 0
    follow_ups: int = 0
    lost: int = 0
    missing: int = 0
    open_jobs: int = 0
    duplicate_submits: int = 0
    resubmits: int = 0
    accepted: int = 0
    recorded_upstream: int = 0
    exists: int = 0
    needs_review: int = 0
    needs_review_paid: int = 0
    leaked_leases: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # a few fail reasons per end state
    seconds: float = 0.0
    notes: str = ""  # one short line for the README (e.g. the webhook load rate)
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def outcome(self) -> str:
        if self.ok:
            done = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
            return f"ok ({done})"
        return "FAIL: " + "; ".join(self.problems[:3])

    def line(self) -> str:
        return (
            f"[{self.scenario}] jobs={self.jobs} (roots {self.roots}, follow-ups {self.follow_ups}) "
            f"lost={self.lost} duplicate_submits={self.duplicate_submits} resubmits={self.resubmits} "
            f"accepted={self.accepted} recorded={self.recorded_upstream} exists={self.exists} "
            f"needs_review={self.needs_review} (paid {self.needs_review_paid}) leaked_leases={self.leaked_leases} "
            f"{self.seconds:.1f}s -> {self.outcome} {self.notes} {self.extra or ''}"
        )


RESULTS: list[Figures] = []


def record(fig: Figures) -> None:
    """Print the figures and append them to the results file."""
    RESULTS.append(fig)
    print("\n" + fig.line())
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(fig)
    data["outcome"] = fig.outcome
    data["at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")


def summary(figures: list[Figures], seed: int) -> list[str]:
    """The terminal summary of a run: where the figures are, then one line per scenario."""
    lines = [
        "",
        f"reliability results, seed {seed} (replay: RELIABILITY_SEED={seed}); JSON lines in {results_path()}, "
        f"table in {write_table(figures)}:",
        f"{'scenario':<38} {'size':<7} {'jobs':>5} {'lost':>5} {'dup':>4} {'resub':>5} {'review':>6} {'secs':>6}  "
        "outcome",
    ]
    lines += [
        f"{fig.scenario:<38} {fig.size:<7} {fig.jobs:>5} {fig.lost:>5} {fig.duplicate_submits:>4} "
        f"{fig.resubmits:>5} {fig.needs_review:>6} {fig.seconds:>6.1f}  {fig.outcome} {fig.notes}"
        for fig in figures
    ]
    return lines


def from_dict(data: dict[str, Any]) -> Figures:
    """Figures back from ``asdict`` (how an xdist worker hands them to the controller)."""
    known = {k: v for k, v in data.items() if k in Figures.__dataclass_fields__}
    return Figures(**known)


def table(figures: list[Figures]) -> list[str]:
    """The figures as Markdown table lines."""
    lines = [
        "| scenario | jobs | lost | duplicate submits | resubmits | needs review | seconds | outcome | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {f.scenario} | {f.jobs} | {f.lost} | {f.duplicate_submits} | {f.resubmits} | {f.needs_review} "
        f"| {f.seconds:.1f} | {f.outcome} | {f.notes} |"
        for f in figures
    ]
    return lines


def write_table(figures: list[Figures]) -> Path:
    """This session's figures as a Markdown file next to the JSON lines."""
    size = "full" if any(f.size == "full" for f in figures) else "reduced"
    path = results_path().with_name(f"results-{size}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(table(figures)) + "\n", encoding="utf-8")
    return path


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def write_readme(readme: Path, figures: list[Figures], *, seed: int, run_s: float) -> bool:
    """Replace the README's table between the markers with these figures; False when the markers are missing."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} by `make reliability` on this machine ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}, simulator time factor 0.002), whole run {_duration(run_s)}, "
        f"seed {seed} (replay with `RELIABILITY_SEED={seed}`). Written by the run itself "
        "(`tests/reliability/report.py`), not by hand:"
    )
    block = "\n".join([README_START, *textwrap.wrap(header, 110), "", *table(figures), README_END])
    readme.write_text(text[:start] + block + text[end + len(README_END):], encoding="utf-8")
    return True
