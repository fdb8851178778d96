"""The one button resolver: by customId pattern first, label/emoji second, never by position."""

from __future__ import annotations

import random

import pytest

from worker.plans.buttons import ButtonNotOffered, Want, resolve

H = "6c4fa0e3-0d3b-4bb6-8b8b-1d2a3c4b5e6f"
GRID = [
    *({"customId": f"MJ::JOB::upsample::{i}::{H}", "label": f"U{i}", "emoji": ""} for i in range(1, 5)),
    *({"customId": f"MJ::JOB::variation::{i}::{H}", "label": f"V{i}", "emoji": ""} for i in range(1, 5)),
    {"customId": f"MJ::JOB::reroll::0::{H}::SOLO", "label": "", "emoji": "🔄"},
]
UPSCALED = [
    {"customId": f"MJ::JOB::upsample_v6_2x_subtle::1::{H}::SOLO", "label": "Upscale (Subtle)"},
    {"customId": f"MJ::JOB::upsample_v6_2x_creative::1::{H}::SOLO", "label": "Upscale (Creative)"},
    {"customId": f"MJ::JOB::upsample_v5_4x::1::{H}::SOLO", "label": "Upscale (4x)"},
    {"customId": f"MJ::JOB::low_variation::1::{H}::SOLO", "label": "Vary (Subtle)"},
    {"customId": f"MJ::JOB::high_variation::1::{H}::SOLO", "label": "Vary (Strong)"},
    {"customId": f"MJ::Inpaint::1::{H}::SOLO", "label": "Vary (Region)"},
    {"customId": f"MJ::Outpaint::50::1::{H}::SOLO", "label": "Zoom Out 2x"},
    {"customId": f"MJ::Outpaint::75::1::{H}::SOLO", "label": "Zoom Out 1.5x"},
    {"customId": f"MJ::CustomZoom::{H}", "label": "Custom Zoom"},
    *({"customId": f"MJ::JOB::pan_{d}::1::{H}::SOLO", "emoji": e} for d, e in
      (("left", "⬅️"), ("right", "➡️"), ("up", "⬆️"), ("down", "⬇️"))),
    {"customId": f"MJ::BOOKMARK::{H}", "emoji": "❤️"},
]


@pytest.mark.parametrize(
    ("buttons", "want", "expected"),
    [
        (GRID, Want("upscale", index=3), "MJ::JOB::upsample::3::"),
        (GRID, Want("vary", index=2, arg="strong"), "MJ::JOB::variation::2::"),
        (GRID, Want("reroll"), "MJ::JOB::reroll::0::"),
        (UPSCALED, Want("vary", arg="subtle"), "MJ::JOB::low_variation::"),
        (UPSCALED, Want("vary", arg="strong"), "MJ::JOB::high_variation::"),
        (UPSCALED, Want("zoom", arg="2"), "MJ::Outpaint::50::"),
        (UPSCALED, Want("zoom", arg="1.5"), "MJ::Outpaint::75::"),
        (UPSCALED, Want("custom_zoom"), "MJ::CustomZoom::"),
        (UPSCALED, Want("vary_region"), "MJ::Inpaint::"),
        (UPSCALED, Want("pan", arg="down"), "MJ::JOB::pan_down::"),
        (UPSCALED, Want("upscale_more", arg="creative"), "MJ::JOB::upsample_v6_2x_creative::"),
        (UPSCALED, Want("upscale_more", arg="4x"), "MJ::JOB::upsample_v5_4x::"),
        (UPSCALED, Want("press", arg="Zoom Out 1.5x"), "MJ::Outpaint::75::"),
        (UPSCALED, Want("press", arg=f"MJ::CustomZoom::{H}"), "MJ::CustomZoom::"),
    ],
)
def test_resolves_by_meaning_whatever_the_order(buttons: list[dict[str, str]], want: Want, expected: str) -> None:
    shuffled = list(buttons)
    random.Random(7).shuffle(shuffled)
    assert resolve(shuffled, want)["customId"].startswith(expected)


def test_snake_case_buttons_from_job_results() -> None:
    snake = [{"custom_id": b["customId"], "label": b.get("label", ""), "emoji": b.get("emoji", "")} for b in GRID]
    assert resolve(snake, Want("upscale", index=4))["custom_id"].startswith("MJ::JOB::upsample::4::")


def test_label_is_the_fallback_when_the_custom_id_shape_is_unknown() -> None:
    odd = [{"customId": "MJ::Something::new::1", "label": "Zoom Out 2x"}]
    assert resolve(odd, Want("zoom", arg="2"))["label"] == "Zoom Out 2x"


def test_missing_button_lists_what_is_offered() -> None:
    with pytest.raises(ButtonNotOffered) as info:
        resolve(GRID, Want("zoom", arg="2"))
    message = str(info.value)
    assert info.value.field == "buttons"
    assert "zoom 2" in message and "U1" in message and "V4" in message and "reroll" in message
