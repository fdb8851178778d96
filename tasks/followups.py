"""Follow-up tasks: each takes the parent job result as its first argument and presses the right button.

They compose as Celery canvases::

    imagine.s("a red fox") | group(upscale.s(i) for i in range(1, 5))
    imagine.s(p) | upscale.s(2) | zoom.s(2.0)
    imagine.s(p) | vary.s(3, strength="strong")

Each body checks its arguments against the one follow-up vocabulary (``worker.plans.buttons``) and calls
``press_button`` (``worker.jobs.followups``); a bad argument fails only that child.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.jobs.followups import follow_up, index_of, modal_input, number, one_of, parent_of, press_button
from worker.jobs.start import JobTask
from worker.mjapi.errors import InvalidInput
from worker.plans import masks
from worker.plans.buttons import CUSTOM_ZOOM, PAN_DIRECTIONS, STRENGTHS, UPSCALE_KINDS, ZOOM_OUT, Want, offers
from worker.store.runtime import runtime


def mask_reference(mask: str, field: str = "mask", base_dir: Path | None = None) -> str:
    """Store a mask (data URI, ``img:`` reference or image file path) once in Redis; return its reference."""
    return masks.mask_reference(mask, runtime(), field, base_dir)


@follow_up("upscale")
def upscale(self: JobTask, parent: Any, index: int) -> dict[str, Any]:
    """U1–U4: upscale one image of a grid."""
    return press_button(self, parent, Want("upscale", index=index_of(index)))


@follow_up("vary")
def vary(self: JobTask, parent: Any, index: int | None = None, strength: str = "subtle") -> dict[str, Any]:
    """V1–V4 after a grid (``index``); Vary (Subtle/Strong) after an upscale (no index).

    A grid has one V<i> button whose strength is the account's variation mode, so there the requested strength
    cannot be pressed: it is recorded with the child (``meta.strength``, ``meta.strength_from`` = ``account``)
    rather than silently dropped. After an upscale it picks the button (``strength_from`` = ``button``).
    """
    one_of(strength, STRENGTHS, "strength")
    if index:
        want, decided_by = Want("vary", index=index_of(index), arg=strength), "account"
    else:
        want, decided_by = Want("vary", arg=strength), "button"
    return press_button(self, parent, want, meta={"strength": strength, "strength_from": decided_by})


@follow_up("reroll")
def reroll(self: JobTask, parent: Any) -> dict[str, Any]:
    """🔄: the same prompt again."""
    return press_button(self, parent, Want("reroll"))


@follow_up("zoom")
def zoom(self: JobTask, parent: Any, factor: float = 2.0) -> dict[str, Any]:
    """Zoom Out 2x or 1.5x of an upscaled image."""
    key = f"{number(factor, 'factor'):g}"
    if key not in ZOOM_OUT:
        raise InvalidInput("factor", f"zoom out is {' or '.join(ZOOM_OUT)} (use custom_zoom for {factor!r})")
    return press_button(self, parent, Want("zoom", arg=key))


@follow_up("custom_zoom")
def custom_zoom(self: JobTask, parent: Any, prompt: str | None = None, factor: float = 1.5) -> dict[str, Any]:
    """Custom Zoom: the modal step with ``<prompt> --zoom <factor>`` (the parent's prompt when none is given)."""
    value = number(factor, "factor")
    low, high = CUSTOM_ZOOM
    if not low <= value <= high:
        raise InvalidInput("factor", f"custom zoom takes {low} to {high}, not {factor!r}")
    base = prompt or (parent_of(parent).get("final_prompt") or parent_of(parent).get("prompt") or "")
    return press_button(self, parent, Want("custom_zoom"), modal={"prompt": f"{base} --zoom {value:g}".strip()})


@follow_up("pan")
def pan(self: JobTask, parent: Any, direction: str) -> dict[str, Any]:
    """Pan left, right, up or down."""
    one_of(direction, PAN_DIRECTIONS, "direction")
    return press_button(self, parent, Want("pan", arg=direction))


@follow_up("upscale_more")
def upscale_more(self: JobTask, parent: Any, kind: str = "subtle") -> dict[str, Any]:
    """The upscale buttons an upscaled image offers: 2x, 4x (v5), subtle, creative (v6)."""
    one_of(kind, UPSCALE_KINDS, "kind")
    return press_button(self, parent, Want("upscale_more", arg=kind))


@follow_up("vary_region")
def vary_region(self: JobTask, parent: Any, mask: str, prompt: str | None = None) -> dict[str, Any]:
    """Vary (Region): the modal step with a mask (``mask_reference()`` keeps it out of the broker)."""
    if not isinstance(mask, str) or not mask:
        raise InvalidInput("mask", "Vary (Region) needs a mask (data URI, img: reference or image file)")
    return press_button(self, parent, Want("vary_region"), modal=modal_input(self, prompt, mask))


@follow_up("remix")
def remix(self: JobTask, parent: Any, prompt: str, index: int | None = None) -> dict[str, Any]:
    """A variation with a new prompt, through remix mode: V``index`` (default V1) of a grid, Vary (Strong) of
    an upscaled image (which has no V<i>; an index there fails listing what it offers)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput("prompt", "remix needs a new prompt")
    if index is not None:
        want = Want("vary", index=index_of(index))
    elif offers(parent_of(parent).get("buttons") or [], Want("vary", index=1)):
        want = Want("vary", index=1)
    else:
        want = Want("vary", arg="strong")
    return press_button(self, parent, want, modal={"prompt": prompt.strip()}, account_filter={"remix": True})


@follow_up("press")
def press(
    self: JobTask, parent: Any, label_or_custom_id: str, prompt: str | None = None, mask: str | None = None
) -> dict[str, Any]:
    """Escape hatch: press the button with this exact label, emoji or customId.

    ``prompt``/``mask`` answer its modal step (Custom Zoom, Vary (Region), anything on a remix account);
    without them such a button fails the child with "needs the modal step".
    """
    if not isinstance(label_or_custom_id, str) or not label_or_custom_id.strip():
        raise InvalidInput("label_or_custom_id", "give a button label, emoji or customId")
    want = Want("press", arg=label_or_custom_id)
    return press_button(self, parent, want, modal=modal_input(self, prompt, mask) or None)


FOLLOW_UP_TASKS = (upscale, vary, reroll, zoom, custom_zoom, pan, upscale_more, vary_region, remix, press)


