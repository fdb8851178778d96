"""One button resolver: find the button that means "U2", "Vary (Strong)", "Zoom Out 2x"... on a finished job.

Buttons are matched by meaning — the customId pattern first, the label or emoji second — never by position,
because servers and model versions order and label them differently (see ``mj-proxy-api.md``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.mjapi.errors import InvalidInput

# The one follow-up vocabulary (the plan grammar, the follow-up tasks and the resolver all read it).
ZOOM_OUT = {"2": "50", "1.5": "75"}  # Zoom Out 2x is Outpaint::50, 1.5x is Outpaint::75
CUSTOM_ZOOM = (1.0, 2.0)  # the factors Custom Zoom takes
STRENGTHS = ("subtle", "strong")
PAN_DIRECTIONS = ("left", "right", "up", "down")
PAN_EMOJI = {"left": "⬅️", "right": "➡️", "up": "⬆️", "down": "⬇️"}
UPSCALE_MORE = {
    "2x": (r"upsample_v\d+_2x::", "Upscale (2x)"),
    "4x": (r"upsample_v\d+_4x::", "Upscale (4x)"),
    "subtle": (r"upsample_v\d+_2x_subtle::", "Upscale (Subtle)"),
    "creative": (r"upsample_v\d+_2x_creative::", "Upscale (Creative)"),
}
UPSCALE_KINDS = tuple(UPSCALE_MORE)


class ButtonNotOffered(InvalidInput):
    """The parent job has no button with that meaning; the message lists what it does offer."""


@dataclass(frozen=True)
class Want:
    """What a follow-up wants to press, described by meaning.

    ``kind``: upscale | vary | reroll | zoom | custom_zoom | pan | upscale_more | vary_region | press.
    ``arg``: the index (1-4), strength (subtle | strong), factor ("2" | "1.5"), direction, upscale kind, or
    the raw label/customId for ``press``.
    """

    kind: str
    arg: str = ""
    index: int | None = None

    def describe(self) -> str:
        parts = [self.kind] + [p for p in (str(self.index) if self.index else "", self.arg) if p]
        return " ".join(parts)


def _field(button: Mapping[str, Any], snake: str, camel: str) -> str:
    value = button.get(snake, button.get(camel))
    return "" if value is None else str(value)


def custom_id(button: Mapping[str, Any]) -> str:
    return _field(button, "custom_id", "customId")


def _patterns(want: Want) -> tuple[list[str], list[str]]:
    """(customId regexes, exact labels/emoji) that mean ``want``."""
    i = want.index
    kind, arg = want.kind, want.arg.lower()
    if kind == "upscale":
        return [rf"^MJ::JOB::upsample::{i}::"], [f"U{i}"]
    if kind == "vary" and i:
        # A grid has one V<i> button; its strength is the account's variation mode, so ``arg`` cannot pick one
        # (tasks.followups.vary records the strength asked for with the child instead).
        return [rf"^MJ::JOB::variation::{i}::"], [f"V{i}"]
    if kind == "vary":
        name = "high_variation" if arg == "strong" else "low_variation"
        return [rf"^MJ::JOB::{name}::"], ["Vary (Strong)" if arg == "strong" else "Vary (Subtle)"]
    if kind == "reroll":
        return [r"^MJ::JOB::reroll::"], ["🔄"]
    if kind == "zoom":
        percent = ZOOM_OUT.get(arg.removesuffix(".0"), "")
        return [rf"^MJ::Outpaint::{percent}::"], [f"Zoom Out {arg.removesuffix('.0')}x"]
    if kind == "custom_zoom":
        return [r"^MJ::CustomZoom::"], ["Custom Zoom"]
    if kind == "pan":
        return [rf"^MJ::JOB::pan_{arg}::"], [PAN_EMOJI.get(arg, "")]
    if kind == "upscale_more":
        regex, label = UPSCALE_MORE.get(arg, ("$^", ""))
        return [rf"^MJ::JOB::{regex}"], [label]
    if kind == "vary_region":
        return [r"^MJ::Inpaint::"], ["Vary (Region)"]
    if kind == "press":
        return [rf"^{re.escape(want.arg)}$"], [want.arg]
    raise InvalidInput(f"field 'action': unknown follow-up kind {kind!r}")


def offered(buttons: Iterable[Mapping[str, Any]]) -> list[str]:
    """Readable names of the buttons a job offers, for error messages."""
    names = []
    for button in buttons:
        label = _field(button, "label", "label") or _field(button, "emoji", "emoji")
        parts = custom_id(button).split("::")
        kind = parts[2] if len(parts) > 2 and parts[1] == "JOB" else (parts[1] if len(parts) > 1 else "?")
        names.append(f"{label} ({kind})" if label else kind)
    return names


def offers(buttons: Iterable[Mapping[str, Any]], want: Want) -> bool:
    """Whether ``buttons`` have one that means ``want`` (e.g. a grid offers ``Want("vary", index=1)``)."""
    try:
        resolve(buttons, want)
    except ButtonNotOffered:
        return False
    return True


def resolve(buttons: Iterable[Mapping[str, Any]], want: Want) -> Mapping[str, Any]:
    """The button of ``buttons`` that means ``want``; raises ``ButtonNotOffered`` listing what is there."""
    buttons = list(buttons)
    regexes, labels = _patterns(want)
    for regex in regexes:
        for button in buttons:
            if re.search(regex, custom_id(button)):
                return button
    for button in buttons:
        if labels and (_field(button, "label", "label") in labels or _field(button, "emoji", "emoji") in labels):
            return button
    listing = ", ".join(offered(buttons)) or "no buttons"
    raise ButtonNotOffered(f"field 'buttons': the parent job offers no {want.describe()!r} button; it offers {listing}")
