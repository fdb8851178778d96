"""The plan grammar: parsing, round trips, job counts, errors that point at the token, compiled canvases."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from celery import group
from celery.canvas import _chain

from tasks.pipelines import PlanError, check_masks, compile, count_jobs, parse
from worker.mjapi.errors import InvalidInput
from worker.plans import grammar
from worker.plans.grammar import map_masks
from worker.store.runtime import runtime

ROUND_TRIPS = [
    ("U1-4", 4),
    ("U2>zoom:2x", 2),
    ("U1, V3:strong", 2),
    ("U1>vary:subtle>U2", 3),
    ("U1-4>zoom:1.5x", 8),
    ("reroll>V2>U1", 3),
    ("U2>(zoom:2x, pan:left, upscale:creative)", 4),
    ("U1>customzoom:1.8", 2),
    ('U1>customzoom:1.8:"a wide shot"', 2),
    ('U3>remix:"a blue fox"', 2),
    ('remix:2:"a blue fox"', 1),
    ('remix:"a fox", remix:4:"a wolf">U1', 3),
    ('U1>region:"img:0f0f":"a hat"', 2),
    ('U1>press:"Zoom Out 2x"', 2),
    ("U4>region:mask.png", 2),
    ("V1-4", 4),
    ("U1, U2>zoom:2x, U3, U4", 5),
    ("U1>vary:strong>U2>upscale:subtle", 4),
    ("U1>pan:up, U2>pan:down, U3>pan:right", 6),
]


@pytest.mark.parametrize(("text", "jobs"), ROUND_TRIPS)
def test_round_trip_and_count(text: str, jobs: int) -> None:
    tree = parse(text)
    again = parse(tree.to_text())
    assert again == tree
    assert tree.to_text() == parse(again.to_text()).to_text()
    assert count_jobs(text) == jobs


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("U5", "U5"),
        ("U1>>U2", ">"),
        ("U1, , U2", ","),
        ("zoom:3x", "zoom:3x"),
        ("pan:sideways", "pan:sideways"),
        ("V2:medium", "V2:medium"),
        ("U1-1", "U1-1"),
        ("(U1, U2", "end of plan"),
        ("U1 U2", "U2"),
        ("(U1, U2)>zoom:2x", ">"),
        ("customzoom:5", "customzoom:5"),
        ('remix:"open', '"open'),
        ('remix:5:"a fox"', 'remix:5:"a fox"'),
        ("remix:2:", "remix:2:"),
        ("teleport", "teleport"),
        ("", ""),
    ],
)
def test_errors_point_at_the_token(text: str, token: str) -> None:
    with pytest.raises(PlanError) as info:
        parse(text)
    assert info.value.field == "then"
    assert repr(token) in str(info.value) or token in str(info.value)
    assert "column" in str(info.value)


def test_compile_builds_the_expected_canvas() -> None:
    fan_out = compile("U1-4")
    assert isinstance(fan_out, group)
    assert [t.task for t in fan_out.tasks] == ["tasks.followups.upscale"] * 4
    assert [t.args for t in fan_out.tasks] == [(1,), (2,), (3,), (4,)]
    seq = compile("U2>zoom:2x")
    assert isinstance(seq, _chain)
    assert [(t.task, t.args) for t in seq.tasks] == [
        ("tasks.followups.upscale", (2,)), ("tasks.followups.zoom", (2.0,))
    ]
    strong = compile("V3:strong")
    assert strong.task == "tasks.followups.vary" and strong.args == (3,) and strong.kwargs == {"strength": "strong"}
    custom = compile('customzoom:1.8:"wide"')
    assert custom.task == "tasks.followups.custom_zoom" and custom.args == ("wide", 1.8)
    remix = compile('remix:2:"a blue fox"')
    assert remix.task == "tasks.followups.remix" and remix.args == ("a blue fox",) and remix.kwargs == {"index": 2}
    assert compile('remix:"a blue fox"').kwargs == {"index": None}


def test_masks_are_replaced_in_place_and_plans_without_masks_come_back_as_written() -> None:
    assert map_masks(" U1-4 ,U2>zoom:2x ", str.upper) == "U1-4 ,U2>zoom:2x"
    changed = map_masks('U1>(region:a.png:"a hat", zoom:2x), U2>region:b.png', lambda m: f"img:{m[0]}")
    assert changed == 'U1>(region:"img:a":"a hat", zoom:2x), U2>region:"img:b"'
    assert count_jobs(changed) == 5


def test_mask_files_are_checked_relative_to_the_folder_given(tmp_path: Path) -> None:
    from tests.support.images import png_data_uri

    (tmp_path / "hat.png").write_bytes(base64.b64decode(png_data_uri().split(",", 1)[1]))
    (tmp_path / "note.png").write_text("not an image")
    assert check_masks("U1>region:hat.png", tmp_path) == f"U1>region:{(tmp_path / 'hat.png').resolve()}"
    for plan, words in (("U1>region:gone.png", "cannot read"), ("U1>region:note.png", "not a JPEG")):
        with pytest.raises(InvalidInput) as info:
            check_masks(plan, tmp_path)
        assert info.value.field == "then" and words in str(info.value)
    with pytest.raises(InvalidInput) as worker_side:
        grammar.store_masks("U1>region:hat.png", runtime(), tmp_path, files=False)  # the worker never reads a file
    assert worker_side.value.field == "then" and "img: reference" in str(worker_side.value)
