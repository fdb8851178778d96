"""Prices of upstream requests: parsing the price tables, a job's price key, and money as integer micro-units.

Money is kept in Redis as integers of micro-units (1 USD = 1,000,000) so sums never drift the way floats do.
A request kind with no price is *unknown* (``None``), never 0: an estimate says so, and a job with no known
price under a budget is not submitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

MICROS = 1_000_000

# The request kinds a price table may name (the upstream's own request kinds; an action job is priced by the
# kind of its button).
PRICE_KINDS = (
    "imagine", "upscale", "variation", "reroll", "zoom", "pan", "blend", "describe", "swap_face", "modal", "upload",
)
_ACTION_PRICE_KEYS = {"UPSCALE": "upscale", "VARIATION": "variation", "REROLL": "reroll", "ZOOM": "zoom",
                      "PAN": "pan"}


class PriceError(ValueError):
    """A price table or amount that breaks a rule; the message names the variable and the rule."""


def to_micros(amount: str | float | Decimal, name: str = "amount") -> int:
    """An amount ("1.25", 0.1) as integer micro-units; negative, non-finite or finer than 1e-6 is an error."""
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation as exc:
        raise PriceError(f"{name}: {amount!r} is not a number") from exc
    if not value.is_finite() or value < 0:
        raise PriceError(f"{name}: {amount!r} must be a finite number >= 0")
    micros = value * MICROS
    if micros != micros.to_integral_value():
        raise PriceError(f"{name}: {amount!r} has more than 6 decimal places")
    return int(micros)


def parse_prices(text: str, name: str = "MJQ_PRICES") -> dict[str, int]:
    """``"imagine=0.1,upscale=0.05"`` -> ``{"imagine": 100000, "upscale": 50000}`` (micros)."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise PriceError(f"{name}: {part!r} must be KIND=AMOUNT (e.g. imagine=0.1)")
        if key not in PRICE_KINDS:
            raise PriceError(f"{name}: unknown request kind {key!r}; kinds are {', '.join(PRICE_KINDS)}")
        if key in out:
            raise PriceError(f"{name}: {key!r} is priced twice")
        out[key] = to_micros(value, f"{name} {key}")
    return out


def price_key(kind: str, action: str | None = None) -> str:
    """The price-table key of a job: its request kind, or for an action job the kind of its button."""
    if kind == "action":
        return _ACTION_PRICE_KEYS.get(str(action or "").upper(), "action")
    return kind


def price_of(
    tables: Mapping[str, Mapping[str, int]], key: str, mode: str
) -> int | None:
    """The price (micros) of ``key`` in ``mode``: the mode's own table first, then the base table (``""``)."""
    for table in (tables.get(mode) or {}, tables.get("") or {}):
        if key in table:
            return int(table[key])
    return None


def fmt_money(micros: int | None, currency: str) -> str:
    """``1250000, "USD"`` -> ``"1.25 USD"``; unknown stays unknown."""
    if micros is None:
        return f"unknown {currency}"
    value = Decimal(micros) / MICROS
    text = f"{value:,.2f}" if value == value.quantize(Decimal("0.01")) else f"{value:,.6f}".rstrip("0")
    return f"{text} {currency}"
