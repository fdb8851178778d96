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
    partial: bool = False  # a side stopped at its time bound: the figure is what it reached (notes["reached"])

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


def _measure(figure: Figure) -> str:
    """The measure, with how far a partial figure got."""
    if not figure.partial:
        return figure.measure
    return f"{figure.measure} (partial: {figure.notes.get('reached', 'stopped at its time bound')})"


def machine() -> str:
    cores = os.cpu_count() or 0
    return f"{platform.system()} {platform.machine()}, {cores} cores, Python {platform.python_version()}"


def print_table(figures: Sequence[Figure], console: Console, title: str = "mjqueue benchmarks") -> None:
    table = Table(title=title, title_justify="left")
    for name in ("benchmark", "measure", "mjqueue", "baseline", "ratio", "target", "met"):
        table.add_column(name, justify="right" if name in ("mjqueue", "ratio") else "left")
    for f in figures:
        base = f"{f.baseline}: {_num(f.baseline_value, f.unit)}" if f.baseline else ""
        met = "" if f.met is None else ("[green]yes[/]" if f.met else "[red]no[/]")
        measure = _measure(f) if not f.partial else f"{_measure(f)} [yellow]partial[/]"
        table.add_row(f.benchmark, measure, _num(f.value, f.unit), base, _num(f.ratio), f.target, met)
    console.print(table)


def _finite(value: Any) -> Any:
    """NaN/inf (a side that reached nothing) as null: results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def results_document(
    figures: Sequence[Figure],
    config: dict[str, Any],
    seconds: float,
    errors: Sequence[str] = (),
    **status: Any,
) -> dict[str, Any]:
    """``status``: what the run adds (``complete``, ``benchmarks``, ``not_run``, ``interrupted``, ``phases``,
    ``load``)."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "config": config,
        "seconds": round(seconds, 1),
        **status,
        "figures": [_finite(asdict(f)) for f in figures],
        "errors": list(errors),
    }


def write_results(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
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
        "| # | measure | mjqueue | baseline (same run) | ratio | target | met |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for raw in document["figures"]:
        f = Figure(**{**raw, "value": _nan(raw["value"])})
        base = f"{f.baseline}: {_num(f.baseline_value, f.unit)}" if f.baseline else "–"
        lines.append(
            f"| {f.benchmark} | {_measure(f)} | {_num(f.value, f.unit)} | {base} | {_num(f.ratio)} | "
            f"{f.target or '–'} | {_met(f) or '–'} |"
        )
    if document.get("load"):
        lines += ["", describe_load(document["load"])]
    if document.get("not_run"):
        lines += ["", f"Not run: {', '.join(document['not_run'])}{_why(document)}."]
    return "\n".join(lines)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _why(document: dict[str, Any]) -> str:
    stop = document.get("interrupted")
    return f" (the run was stopped by {stop['by']} during {stop['phase']})" if stop else ""


def describe_load(load: dict[str, Any]) -> str:
    """One line for the README and the console: how busy the machine was while the figures were taken."""
    start, end = load["loadavg_start"], load["loadavg_end"]
    return (
        f"Machine load during the run: load average (1/5/15 min) {'/'.join(f'{v:g}' for v in start)} at start, "
        f"{'/'.join(f'{v:g}' for v in end)} at end; other processes took {load['other_cpu_s']:,.0f} CPU-s "
        f"({load['other_cores']:.2f} of {load['cores']} cores on average), the benchmark itself "
        f"{load['own_cpu_s']:,.0f} CPU-s in {load['wall_s']:,.0f} s."
    )


def update_readme(readme: Path, document: dict[str, Any]) -> None:
    """Replace the text between the README's bench markers with the new table."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {README_START} ... {README_END} markers")
    block = f"{README_START}\n{markdown(document)}\n{README_END}"
    readme.write_text(pattern.sub(lambda _m: block, text, count=1), encoding="utf-8")
