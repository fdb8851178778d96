"""Figures, the printed table, ``bench/results.json`` and the README's benchmark section."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


@dataclass
class Figure:
    """One measured figure and the baseline it is compared with (measured in the same run)."""

    benchmark: str
    measure: str
    value: float
    unit: str = ""
    baseline: str = ""
    baseline_value: float | None = None
    ratio: float | None = None  # value / baseline_value unless the benchmark defines it otherwise
    target: str = ""
    met: bool | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    partial: bool = False  # a phase stopped at its time bound: the figure covers what it reached (notes say)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline_value:
            self.ratio = self.value / self.baseline_value


def _num(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def _met(figure: Figure) -> str:
    return "" if figure.met is None else ("yes" if figure.met else "**no**")


def machine() -> str:
    cores = os.cpu_count() or 0
    return f"{platform.system()} {platform.machine()}, {cores} cores, Python {platform.python_version()}"


def print_table(figures: Sequence[Figure], console: Console) -> None:
    table = Table(title="mjqueue benchmarks", title_justify="left")
    for name in ("benchmark", "measure", "mjqueue", "baseline", "ratio", "target", "met"):
        table.add_column(name, justify="right" if name in ("mjqueue", "ratio") else "left")
    for f in figures:
        base = f"{f.baseline}: {_num(f.baseline_value, f.unit)}" if f.baseline else ""
        met = "" if f.met is None else ("[green]yes[/]" if f.met else "[red]no[/]")
        value = _num(f.value, f.unit) + (" [yellow](partial)[/]" if f.partial else "")
        table.add_row(f.benchmark, f.measure, value, base, _num(f.ratio), f.target, met)
    console.print(table)


def results_document(
    figures: Sequence[Figure],
    config: dict[str, Any],
    seconds: float,
    errors: Sequence[str] = (),
    *,
    load: dict[str, Any] | None = None,
    not_run: Sequence[str] = (),
    complete: bool = True,
) -> dict[str, Any]:
    """``complete`` is False while the run goes on or when it was stopped; ``not_run`` names the benchmarks
    that produced no figure (yet)."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "config": config,
        "seconds": round(seconds, 1),
        "complete": complete,
        "load": load or {},
        "figures": [asdict(f) for f in sorted(figures, key=lambda f: f.benchmark.split()[0])],
        "not_run": list(not_run),
        "errors": list(errors),
    }


def load_line(load: dict[str, Any]) -> str:
    """How busy the machine was during the run, so a figure taken on a busy machine is recognisable."""
    if not load:
        return ""
    start, end = load.get("loadavg_start") or [0, 0, 0], load.get("loadavg_end") or [0, 0, 0]
    return (f"Machine load: load average {start[0]:.2f} at the start, {end[0]:.2f} at the end; other processes "
            f"used {load.get('cpu_s_others', 0):,.0f} CPU-seconds of {load.get('cpu_s_available', 0):,.0f} "
            f"available ({load.get('others_share', 0):.0%}), this run {load.get('cpu_s_ours', 0):,.0f}.")


def write_results(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def markdown(document: dict[str, Any]) -> str:
    """The README table: every figure with its baseline and ratio."""
    config = document["config"]
    lines = [
        f"Measured {document['date']} on {document['machine']} by `make bench` "
        f"({document['seconds']:.0f} s, `{config['size']}` size, simulator time factor {config['time_factor']:g}: "
        f"a 60 s fast job takes {60 * config['time_factor']:g} s; account: {config['capacity']} fast jobs at "
        f"once + {config['queue']} queued). Ratios compare with a baseline measured in the same run.",
        "",
        *([load_line(document["load"]), ""] if document.get("load") else []),
        "| # | measure | mjqueue | baseline (same run) | ratio | target | met |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for raw in document["figures"]:
        f = Figure(**raw)
        base = f"{f.baseline}: {_num(f.baseline_value, f.unit)}" if f.baseline else "–"
        value = _num(f.value, f.unit) + (" (partial)" if f.partial else "")
        lines.append(
            f"| {f.benchmark} | {f.measure} | {value} | {base} | {_num(f.ratio)} | "
            f"{f.target or '–'} | {_met(f) or '–'} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, document: dict[str, Any]) -> None:
    """Replace the text between the README's bench markers with the new table."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {README_START} ... {README_END} markers")
    block = f"{README_START}\n{markdown(document)}\n{README_END}"
    readme.write_text(pattern.sub(lambda _m: block, text, count=1), encoding="utf-8")
