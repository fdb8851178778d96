"""The simulator against mj-proxy-api.md: lifecycle, capacity and queue, modes, counters, reads, images."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
from PIL import Image

from simulator.server import SimulatorAdmin
from tests.support.sim import SimApi


def test_lifecycle_progress_rises_to_success(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    task_id = sim_api.imagine("a lighthouse at dusk", state="job-1")
    seen: list[tuple[str, str]] = []
    while not seen or seen[-1][0] != "SUCCESS":
        task = sim_api.fetch(task_id)
        if not seen or seen[-1] != (task["status"], task["progress"]):
            seen.append((task["status"], task["progress"]))
        time.sleep(0.01)
    statuses = [s for s, _ in seen]
    assert statuses[0] in ("SUBMITTED", "IN_PROGRESS") and statuses[-1] == "SUCCESS"
    assert statuses == sorted(statuses, key=["SUBMITTED", "IN_PROGRESS", "SUCCESS"].index), "never backwards"
    percents = [int(p.rstrip("%")) for _, p in seen]
    assert percents == sorted(percents) and percents[-1] == 100
    assert len({p for p in percents if 0 < p < 100}) >= 2, seen  # polls see it rise (every step: callbacks)
    assert task["id"] == task_id and task["state"] == "job-1" and task["action"] == "IMAGINE"
    assert task["submitTime"] <= task["startTime"] < task["finishTime"]
    duration = (task["finishTime"] - task["startTime"]) / 1000
    assert 0.5 <= duration <= 0.7  # FAST 60 s x 0.01, spread 10%
    assert task["imageUrl"] == f"{sim.url}/images/{task_id}.png"
    assert task["prompt"] == task["promptEn"] == task["properties"]["finalPrompt"] == "a lighthouse at dusk"
    assert task["failReason"] is None and len(task["buttons"]) == 9 and task["mode"] == "FAST"


def test_capacity_queue_and_queue_full(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(concurrency={"FAST": 2}, queue_size=2, time_factor=1.0)
    answers = [sim_api.post("/mj/submit/imagine", {"prompt": f"cat {i}"}) for i in range(5)]
    assert [a["code"] for a in answers] == [1, 1, 22, 22, 23]
    assert [a["properties"].get("numberOfQueues") for a in answers[2:4]] == [0, 1]
    assert answers[4]["result"] is None and "队列已满" in answers[4]["description"]
    assert len(sim.tasks()) == 4, "a queue-full submit creates nothing"
    statuses = sorted(sim_api.fetch(str(a["result"]))["status"] for a in answers[:4])
    assert statuses == ["NOT_START", "NOT_START", "SUBMITTED", "SUBMITTED"]
    stats = sim.stats()
    assert (stats["running"], stats["queued"], stats["queue_full"], stats["accepted"]) == (2, 2, 1, 4)
    # another mode still has free slots: it runs, the shared queue does not block it
    relax = sim_api.post("/mj/submit/imagine", {"prompt": "relaxed", "accountFilter": {"modes": ["RELAX"]}})
    assert relax["code"] == 1


def test_queued_tasks_start_as_slots_free_and_peaks_are_recorded(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(concurrency={"FAST": 2}, queue_size=20, time_factor=0.002)
    ids = [sim_api.imagine(f"queued {i}") for i in range(8)]
    tasks = [sim_api.wait(i, timeout=60) for i in ids]
    assert all(t["status"] == "SUCCESS" for t in tasks)
    events = sorted([(t["startTime"], 1) for t in tasks] + [(t["finishTime"], -1) for t in tasks])
    running = peak = 0
    for _, delta in events:  # ends sort before starts at the same millisecond
        running += delta
        peak = max(peak, running)
    assert peak == 2
    by_start = sorted(tasks, key=lambda t: t["startTime"])
    late = [t["id"] for t in by_start[2:] if not any(f["finishTime"] <= t["startTime"] for f in tasks)]
    assert not late, f"four rounds of two: every task after the first two waited for one to finish: {late}"
    stats = sim.stats()
    assert stats["peak_concurrency"] == {"FAST": 2, "RELAX": 0, "TURBO": 0}
    assert stats["peak_in_flight"] >= 6 and stats["tasks_by_status"] == {"SUCCESS": 8}


def test_speed_mode_selection(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(time_factor=1.0)
    by_prefix = sim_api.post("/mj-relax/mj/submit/imagine", {"prompt": "p"})["result"]
    by_filter = sim_api.post("/mj/submit/imagine", {"prompt": "p", "accountFilter": {"modes": ["TURBO"]}})["result"]
    by_flag = sim_api.post("/mj/submit/imagine", {"prompt": "p --relax"})["result"]
    default = sim_api.post("/mj/submit/imagine", {"prompt": "p"})["result"]
    prefix_wins = sim_api.post("/mj-fast/mj/submit/imagine", {"prompt": "p --relax",
                                                             "accountFilter": {"modes": ["TURBO"]}})["result"]
    modes = [sim_api.fetch(str(i))["mode"] for i in (by_prefix, by_filter, by_flag, default, prefix_wins)]
    assert modes == ["RELAX", "TURBO", "RELAX", "FAST", "FAST"]
    assert sim.stats()["peak_concurrency"] == {"FAST": 2, "RELAX": 2, "TURBO": 1}
    assert sim_api.http.get(f"/mj-turbo/mj/task/{by_prefix}/fetch").json()["id"] == str(by_prefix)


def test_counters_per_endpoint_and_per_state(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    first = sim_api.imagine("counted", state="job-A")
    sim_api.imagine("counted again", state="job-A")
    sim_api.imagine("other", state="job-B")
    sim_api.post("/mj-turbo/mj/submit/imagine", {"prompt": ""})  # refused, still a submission
    sim_api.fetch(first)
    sim_api.fetch(first)
    sim_api.http.post("/mj/task/list-by-condition", json={"ids": [first]})
    stats = sim.stats()
    assert stats["requests"] == {
        "POST /mj/submit/imagine": 3, "POST /mj-turbo/mj/submit/imagine": 1,
        "GET /mj/task/{task_id}/fetch": 2, "POST /mj/task/list-by-condition": 1,
    }
    assert stats["submissions"] == 4 and stats["accepted"] == 3
    assert stats["submissions_by_state"] == {"job-A": 2, "job-B": 1}
    assert stats["accepted_by_state"] == {"job-A": 2, "job-B": 1}
    sim.reset()
    assert sim.stats()["submissions"] == 0 and sim.tasks() == []


def test_list_by_condition_and_unknown_ids(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    a, b = sim_api.imagine("one"), sim_api.imagine("two")
    listed = sim_api.http.post("/mj/task/list-by-condition", json={"ids": [b, "404404", int(a)]}).json()
    assert [t["id"] for t in listed] == [b, a]
    unknown = sim_api.http.get("/mj/task/777/fetch")
    assert unknown.status_code == 404  # proxy dialect
    sim.faults(dialect="vendor")
    unknown = sim_api.http.get("/mj/task/777/fetch")
    assert unknown.status_code == 200 and unknown.content == b""
    sim.faults(dialect="proxy", unknown_task="empty")
    assert sim_api.http.get("/mj/task/777/fetch").content == b""


def _png(url: str) -> tuple[Image.Image, bytes]:
    response = httpx.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image, response.content


def test_images_are_real_pngs(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(time_factor=0.002)
    red, blue = sim_api.finished("a red apple"), sim_api.finished("a blue whale")
    grid, raw = _png(red["imageUrl"])
    assert grid.format == "PNG" and grid.size == (256, 256)
    assert _png(red["imageUrl"])[1] == raw, "the same image every time"
    corners = {grid.getpixel((5, 250)), grid.getpixel((250, 5))}
    assert len(corners) == 2, "four tiles of different colours"
    assert _png(blue["imageUrl"])[0].getpixel((2, 2)) != grid.getpixel((2, 2)), "colour follows the prompt"
    upscale = sim_api.action(red["id"], sim_api.button(red, "upsample::2"))
    single, _ = _png(sim_api.wait(str(upscale["result"]))["imageUrl"])
    assert single.size == (128, 128)
    assert httpx.get(f"{sim.url}/images/999.png").status_code == 404


def test_image_seed(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(time_factor=0.002)
    done = sim_api.finished("seeded")
    seed = sim_api.http.get(f"/mj/task/{done['id']}/image-seed").json()
    assert seed["code"] == 1 and str(seed["result"]).isdigit()
    assert sim_api.http.get(f"/mj/task/{done['id']}/image-seed").json()["result"] == seed["result"]
    sim.faults(time_factor=1.0)
    running = sim_api.imagine("not yet")
    assert sim_api.http.get(f"/mj/task/{running}/image-seed").json()["code"] == 4
    assert sim_api.http.get("/mj/task/123/image-seed").status_code == 404


def test_stats_shape(sim: SimulatorAdmin) -> None:
    stats: dict[str, Any] = sim.stats()
    expected = {"requests", "submissions", "submissions_by_state", "accepted", "queue_full", "peak_concurrency",
                "peak_in_flight", "running", "queued", "tasks_by_status", "callbacks_sent", "callbacks_dropped",
                "balance", "faults"}
    assert expected <= set(stats)
