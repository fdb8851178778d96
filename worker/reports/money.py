"""What a batch (and the day) cost: spent, committed, budget, hold and charged failures, for `mjq status`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from worker.pricing import MICROS, fmt_money
from worker.store.runtime import Runtime


def batch_money(batch_id: str, info: Mapping[str, Any], rt: Runtime) -> dict[str, Any]:
    """The money of one batch in MJQ_CURRENCY (amounts as numbers; ``budget`` None = no budget)."""
    budget = info.get("budget_micros")
    return {
        "currency": rt.settings.currency,
        "spent": int(info.get("spent_micros") or 0) / MICROS,
        "committed": rt.ledger.committed(batch_id) / MICROS,
        "budget": int(budget) / MICROS if budget is not None else None,
        "held_by": info.get("hold_reason") or None,
        "held_detail": info.get("hold_detail") or None,
        "charged_failed_jobs": int(info.get("charged_failed_n") or 0),
        "charged_failed": int(info.get("charged_failed_micros") or 0) / MICROS,
        "spent_today": rt.ledger.spent_today(upstreams=rt.pool.names) / MICROS,
    }


def money_line(money: Mapping[str, Any]) -> str:
    """``spent 1.20 USD, committed 0.30 USD of budget 2.00 USD; held: budget (budget reached); today 5.00 USD``."""
    cur = str(money["currency"])

    def amount(value: float) -> str:
        return fmt_money(round(value * MICROS), cur)

    text = f"spent {amount(money['spent'])}, committed {amount(money['committed'])}"
    if money["budget"] is not None:
        text += f" of budget {amount(money['budget'])}"
    if money["held_by"]:
        text += f"; held: {money['held_by']} ({money['held_detail'] or ''})"
    if money["charged_failed_jobs"]:
        text += f"; charged for {money['charged_failed_jobs']} failed jobs: {amount(money['charged_failed'])}"
    return text + f"; today {amount(money['spent_today'])}"


def batch_summary(batch_id: str, info: Mapping[str, Any], rt: Runtime) -> dict[str, Any]:
    """What a finished batch did and cost, in one dict: the body of its callback and the text of its alert."""
    counts = {state: n for state, n in (info.get("counts") or {}).items() if n}
    return {
        "batch_id": batch_id,
        "status": info.get("status"),
        "total": int(info.get("total") or 0),
        "counts": counts,
        "created_at": info.get("created_at"),
        "finished_at": time.time(),
        "money": batch_money(batch_id, info, rt),
    }


def summary_line(summary: Mapping[str, Any]) -> str:
    """``succeeded 9, failed 1 (of 10); spent 1.00 USD; charged for 1 failed jobs: 0.10 USD``."""
    counts = ", ".join(f"{state} {n}" for state, n in sorted(summary["counts"].items()))
    money = summary["money"]
    cur = str(money["currency"])
    text = f"{counts} (of {summary['total']}); spent {fmt_money(round(money['spent'] * MICROS), cur)}"
    if money["budget"] is not None:
        text += f" of budget {fmt_money(round(money['budget'] * MICROS), cur)}"
    if money["charged_failed_jobs"]:
        text += f"; charged for {money['charged_failed_jobs']} failed jobs: "
        text += fmt_money(round(money["charged_failed"] * MICROS), cur)
    return text
