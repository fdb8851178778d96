"""The simulator's buttons, follow-up actions, the modal step, "already exists", and the image endpoints."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest

from simulator.server import SimulatorAdmin
from tests.support.sim import SimApi, png_data_uri

HASH = r"[0-9a-f-]{36}"


@pytest.fixture(autouse=True)
def _quick(sim: SimulatorAdmin) -> None:
    sim.faults(time_factor=0.002)


def test_grid_buttons_after_imagine(sim_api: SimApi) -> None:
    task = sim_api.finished("grid")
    buttons = task["buttons"]
    labels = [b["label"] for b in buttons]
    assert labels == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4", ""]
    message_hash = task["properties"]["messageHash"]
    assert re.fullmatch(HASH, message_hash)
    assert buttons[1]["customId"] == f"MJ::JOB::upsample::2::{message_hash}"
    assert buttons[6]["customId"] == f"MJ::JOB::variation::3::{message_hash}"
    assert buttons[8] == {"customId": f"MJ::JOB::reroll::0::{message_hash}::SOLO", "emoji": "🔄", "label": "",
                          "style": 2, "type": 2}


def test_buttons_per_action(sim_api: SimApi) -> None:
    grid = sim_api.finished("lineage")
    upscale = sim_api.wait(str(sim_api.action(grid["id"], sim_api.button(grid, "upsample::1"))["result"]))
    assert upscale["action"] == "UPSCALE" and upscale["status"] == "SUCCESS"
    h = upscale["properties"]["messageHash"]
    assert h != grid["properties"]["messageHash"]
    by_id = {b["customId"]: (b["label"], b["emoji"]) for b in upscale["buttons"]}
    assert by_id == {
        f"MJ::JOB::upsample_v6_2x_subtle::1::{h}::SOLO": ("Upscale (Subtle)", ""),
        f"MJ::JOB::upsample_v6_2x_creative::1::{h}::SOLO": ("Upscale (Creative)", ""),
        f"MJ::JOB::low_variation::1::{h}::SOLO": ("Vary (Subtle)", "🪄"),
        f"MJ::JOB::high_variation::1::{h}::SOLO": ("Vary (Strong)", "🪄"),
        f"MJ::Inpaint::1::{h}::SOLO": ("Vary (Region)", "🖌️"),
        f"MJ::Outpaint::50::1::{h}::SOLO": ("Zoom Out 2x", "🔍"),
        f"MJ::Outpaint::75::1::{h}::SOLO": ("Zoom Out 1.5x", "🔍"),
        f"MJ::CustomZoom::{h}": ("Custom Zoom", "🔍"),
        f"MJ::JOB::pan_left::1::{h}::SOLO": ("", "⬅️"),
        f"MJ::JOB::pan_right::1::{h}::SOLO": ("", "➡️"),
        f"MJ::JOB::pan_up::1::{h}::SOLO": ("", "⬆️"),
        f"MJ::JOB::pan_down::1::{h}::SOLO": ("", "⬇️"),
        f"MJ::BOOKMARK::{h}": ("", "❤️"),
    }
    expected = [("variation::2", grid, "VARIATION"), ("reroll", grid, "REROLL"),
                ("high_variation", upscale, "VARIATION"), ("Outpaint::50", upscale, "ZOOM"),
                ("pan_left", upscale, "PAN"), ("upsample_v6_2x_subtle", upscale, "UPSCALE")]
    for needle, parent, action in expected:
        answer = sim_api.action(parent["id"], sim_api.button(parent, needle), state=f"s-{needle}")
        assert answer["code"] == 1, (needle, answer)
        child = sim_api.wait(str(answer["result"]))
        assert (child["action"], child["status"], child["state"]) == (action, "SUCCESS", f"s-{needle}")
        assert len(child["buttons"]) == (13 if action == "UPSCALE" else 9), needle


def test_refused_actions(sim_api: SimApi) -> None:
    grid = sim_api.finished("refusals")
    assert sim_api.action("4040404", sim_api.button(grid, "upsample::1"))["code"] == 3
    assert sim_api.action(grid["id"], "MJ::JOB::upsample::1::not-a-hash")["code"] == 4
    assert sim_api.action(grid["id"], "not a custom id")["code"] == 4
    upscale = sim_api.wait(str(sim_api.action(grid["id"], sim_api.button(grid, "upsample::3"))["result"]))
    assert sim_api.action(upscale["id"], sim_api.button(upscale, "BOOKMARK"))["code"] == 4, "no job to make"
    running = sim_api.imagine("still running")
    sim_api.wait(running, until=("SUBMITTED", "IN_PROGRESS"))
    assert sim_api.action(running, grid["buttons"][0]["customId"])["code"] == 4


def test_repeating_an_upscale_answers_already_exists(sim_api: SimApi) -> None:
    grid = sim_api.finished("twice")
    u1 = sim_api.button(grid, "upsample::1")
    first, again = sim_api.action(grid["id"], u1), sim_api.action(grid["id"], u1)
    assert first["code"] == 1
    assert again["code"] == 21 and again["result"] == first["result"] and "任务已存在" in again["description"]
    assert again["properties"]["status"] in ("SUBMITTED", "IN_PROGRESS", "SUCCESS")
    v1 = sim_api.button(grid, "variation::1")
    assert sim_api.action(grid["id"], v1)["result"] != sim_api.action(grid["id"], v1)["result"]


def test_vary_region_goes_through_the_modal_with_a_mask(sim_api: SimApi) -> None:
    upscale = sim_api.wait(str(sim_api.action((g := sim_api.finished("region"))["id"],
                                              sim_api.button(g, "upsample::4"))["result"]))
    waiting = sim_api.action(upscale["id"], sim_api.button(upscale, "Inpaint"), state="job-inpaint")
    assert waiting["code"] == 21 and "窗口等待" in waiting["description"]
    assert waiting["properties"]["status"] == "MODAL" and waiting["properties"]["finalPrompt"] == "region"
    task_id = str(waiting["result"])
    assert sim_api.fetch(task_id)["status"] == "MODAL"
    assert sim_api.post("/mj/submit/modal", {"taskId": task_id})["code"] == 4, "a mask is required"
    done = sim_api.post("/mj/submit/modal", {"taskId": task_id, "maskBase64": png_data_uri(),
                                             "prompt": "a red hat"})
    assert done["code"] == 1 and str(done["result"]) == task_id
    finished = sim_api.wait(task_id)
    assert (finished["action"], finished["status"], finished["prompt"]) == ("INPAINT", "SUCCESS", "a red hat")
    assert finished["state"] == "job-inpaint" and len(finished["buttons"]) == 9
    assert sim_api.post("/mj/submit/modal", {"taskId": task_id, "prompt": "again"})["code"] == 4
    assert sim_api.post("/mj/submit/modal", {"taskId": "9999"})["code"] == 3


def test_custom_zoom_needs_a_prompt_and_remix_stops_variations(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    grid = sim_api.finished("zoomable")
    upscale = sim_api.wait(str(sim_api.action(grid["id"], sim_api.button(grid, "upsample::2"))["result"]))
    zoom = sim_api.action(upscale["id"], sim_api.button(upscale, "CustomZoom"))
    assert zoom["code"] == 21 and zoom["properties"]["status"] == "MODAL"
    assert sim_api.post("/mj/submit/modal", {"taskId": zoom["result"]})["code"] == 4
    assert sim_api.post("/mj/submit/modal", {"taskId": zoom["result"], "prompt": "zoomable --zoom 1.8"})["code"] == 1
    assert sim_api.wait(str(zoom["result"]))["action"] == "CUSTOM_ZOOM"
    # remix asked by the request's accountFilter, or switched on for the account
    remix = sim_api.action(grid["id"], sim_api.button(grid, "variation::1"), accountFilter={"remix": True})
    assert remix["code"] == 21 and remix["properties"]["remix"] is True
    assert sim_api.post("/mj/submit/modal", {"taskId": remix["result"]})["code"] == 1, "remix prompt optional"
    sim.faults(remix=True)
    for needle in ("reroll", "variation::2"):
        assert sim_api.action(grid["id"], sim_api.button(grid, needle))["code"] == 21
    assert sim_api.action(upscale["id"], sim_api.button(upscale, "pan_up"))["code"] == 21
    assert sim_api.action(grid["id"], sim_api.button(grid, "upsample::3"))["code"] == 1, "upscale: no modal"


def test_describe_gives_four_prompts(sim_api: SimApi) -> None:
    image = png_data_uri((10, 120, 200))
    answer = sim_api.post("/mj/submit/describe", {"base64": image, "state": "d-1"})
    assert answer["code"] == 1
    task = sim_api.wait(str(answer["result"]))
    assert task["action"] == "DESCRIBE" and task["status"] == "SUCCESS" and task["buttons"] == []
    lines = task["prompt"].split("\n\n")
    assert [line[:3] for line in lines] == ["1️⃣", "2️⃣", "3️⃣", "4️⃣"]
    assert task["promptEn"] == task["properties"]["finalPrompt"] == task["prompt"]
    served = httpx.get(task["imageUrl"])
    assert served.content == base64.b64decode(image.split(",", 1)[1]), "imageUrl is the described image"
    again = sim_api.wait(str(sim_api.post("/mj/submit/describe", {"base64": image})["result"]))
    assert again["prompt"] == task["prompt"], "the same image is described the same way"
    assert sim_api.post("/mj/submit/describe", {"base64": "data:image/png;base64,@@@"})["code"] == 4


def test_blend_swap_face_and_upload(sim_api: SimApi) -> None:
    images = [png_data_uri((i * 60, 20, 20)) for i in range(3)]
    assert sim_api.post("/mj/submit/blend", {"base64Array": images[:1]})["code"] == 4
    assert sim_api.post("/mj/submit/blend", {"base64Array": images, "dimensions": "WIDE"})["code"] == 4
    blend = sim_api.post("/mj/submit/blend", {"base64Array": images, "dimensions": "LANDSCAPE"})
    task = sim_api.wait(str(blend["result"]))
    assert task["action"] == "BLEND" and len(task["buttons"]) == 9
    swap = sim_api.post("/mj/insight-face/swap", {"sourceBase64": images[0], "targetBase64": images[1]})
    swapped = sim_api.wait(str(swap["result"]))
    assert swapped["action"] == "SWAP_FACE" and swapped["status"] == "SUCCESS" and swapped["imageUrl"]
    assert sim_api.post("/mj/insight-face/swap", {"sourceBase64": images[0]})["code"] == 4
    upload = sim_api.post("/mj/submit/upload-discord-images", {"base64Array": images[:2]})
    assert upload["code"] == 1 and len(upload["result"]) == 2
    fetched = httpx.get(upload["result"][1])
    assert fetched.headers["content-type"] == "image/png"
    assert fetched.content == base64.b64decode(images[1].split(",", 1)[1])
    assert sim_api.post("/mj/submit/upload-discord-images", {"base64Array": []})["code"] == 4


def test_imagine_validation_by_dialect(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    bad: list[dict[str, Any]] = [
        {"prompt": ""}, {"prompt": "  "}, {"prompt": "x" * 9000}, {"prompt": "ok", "botType": "DALL_E"},
        {"prompt": "ok", "base64Array": ["http://example.com/a.png"]},
    ]
    assert [sim_api.post("/mj/submit/imagine", b)["code"] for b in bad] == [4] * len(bad)
    sim.faults(dialect="vendor")
    refused = sim_api.post("/mj/submit/imagine", {"prompt": ""})
    assert refused["code"] == 21 and refused["result"] is None, "vendor: parameter error, no task id"
    assert sim.stats()["accepted"] == 0
    malformed = sim_api.http.post("/mj/submit/imagine", content=b"{not json")
    assert malformed.status_code == 400
