"""The simulator's server profiles (plus, trueai, java, newapi, vendor): each one's distinctive answers, with the
real servers' exact bodies (shared/upstreams.md), over real HTTP to the session simulator."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from simulator.__main__ import build_parser, config_from_args
from simulator.config import SimConfig
from simulator.server import SimulatorAdmin
from tests.support import patience
from tests.support.sim import SIM_KEY, png_data_uri

SECRET = {"mj-api-secret": SIM_KEY}
TERMINAL = ("SUCCESS", "FAILURE", "CANCEL")


class Api:
    """Raw HTTP with one profile's headers."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, headers=headers, timeout=10.0)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, json=body)

    def submit(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.post(path, body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def fetch(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/mj/task/{task_id}/fetch")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, task_id: str, until: tuple[str, ...] = TERMINAL, timeout: float = 20.0) -> dict[str, Any]:
        deadline = patience.deadline(timeout)
        while True:
            task = self.fetch(task_id)
            if task["status"] in until:
                return task
            assert time.monotonic() < deadline, f"task {task_id} still {task['status']!r}"
            time.sleep(0.01)

    def finished(self, prompt: str, **fields: Any) -> dict[str, Any]:
        answer = self.submit("/mj/submit/imagine", {"prompt": prompt, **fields})
        assert answer["code"] in (1, 22), answer
        task = self.wait(str(answer["result"]))
        assert task["status"] == "SUCCESS", task
        return task


@pytest.fixture
def api(sim: SimulatorAdmin) -> Iterator[Api]:
    client = Api(sim.url, SECRET)  # the one header every profile accepts
    yield client
    client.http.close()


def use(sim: SimulatorAdmin, profile: str, **changes: Any) -> None:
    """Play ``profile`` with its own auth rule, 500x faster than real time."""
    sim.faults(**{"profile": profile, "lenient_auth": False, "time_factor": 0.002, **changes})


def button(task: dict[str, Any], needle: str) -> str:
    return next(str(b["customId"]) for b in task["buttons"] if needle in b["customId"])


# -- selecting a profile ------------------------------------------------------------------------------------

def test_profile_from_flag_env_config_and_admin(sim: SimulatorAdmin, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_from_args(build_parser().parse_args([])).profile == "plus", "the default"
    java = config_from_args(build_parser().parse_args(["--profile", "java"]))
    assert (java.profile, java.dialect) == ("java", "proxy")
    vendor = config_from_args(build_parser().parse_args(["--profile", "vendor"]))
    assert vendor.dialect == "vendor", "the vendor profile speaks the vendor's code table"
    assert config_from_args(build_parser().parse_args(["--profile", "vendor", "--dialect", "proxy"])).dialect == "proxy"
    monkeypatch.setenv("SIM_PROFILE", "newapi")
    assert config_from_args(build_parser().parse_args([])).profile == "newapi"
    assert SimConfig(profile="vendor").dialect == "vendor" and SimConfig().profile == "plus"
    with pytest.raises(ValueError, match="profile"):
        sim.faults(profile="nope")
    assert sim.faults(profile="vendor")["dialect"] == "vendor"
    assert sim.faults(profile="trueai")["dialect"] == "proxy"
    sim.reset(config=True)
    assert (sim.config()["profile"], sim.config()["dialect"]) == ("plus", "proxy")


# -- auth ---------------------------------------------------------------------------------------------------

AUTH_CASES = [
    ("plus", {"mj-api-secret": SIM_KEY}, True),
    ("plus", {"Authorization": f"Bearer {SIM_KEY}"}, False),
    ("java", {"mj-api-secret": SIM_KEY}, True),
    ("java", {"Authorization": f"Bearer {SIM_KEY}"}, False),
    ("trueai", {"Authorization": SIM_KEY}, True),
    ("trueai", {"Authorization": f"Bearer {SIM_KEY}"}, False),
    ("trueai", {"mj-api-secret": SIM_KEY}, True),
    ("trueai", {"Authorization": "other", "mj-api-secret": SIM_KEY}, False),
    ("newapi", {"Authorization": f"Bearer sk-{SIM_KEY}"}, True),
    ("newapi", {"Authorization": f"Bearer {SIM_KEY}"}, True),
    ("newapi", {"mj-api-secret": SIM_KEY}, True),
    ("newapi", {"Authorization": "Bearer sk-other", "mj-api-secret": SIM_KEY}, False),
    ("vendor", {"Authorization": f"Bearer {SIM_KEY}"}, True),
    ("vendor", {"mj-api-secret": SIM_KEY}, True),
]


@pytest.mark.parametrize(("profile", "headers", "accepted"), AUTH_CASES)
def test_auth_per_profile(sim: SimulatorAdmin, profile: str, headers: dict[str, str], accepted: bool) -> None:
    use(sim, profile)
    response = httpx.post(f"{sim.url}/mj/submit/imagine", json={"prompt": "auth"}, headers=headers)
    if accepted:
        assert response.status_code == 200 and response.json()["code"] == 1
        return
    assert response.status_code == 401
    if profile == "newapi":
        assert response.json() == {"error": {"message": "无效的令牌", "type": "new_api_error"}}
    else:
        assert response.content == b"", "Plus, Java and trueai refuse with an empty body"


def test_vendor_refusal_and_lenient_auth(sim: SimulatorAdmin) -> None:
    use(sim, "vendor")
    wrong = httpx.post(f"{sim.url}/mj/submit/imagine", json={"prompt": "x"}, headers={"mj-api-secret": "nope"})
    assert wrong.status_code == 401 and wrong.json()["code"] == 401
    use(sim, "plus", lenient_auth=True)
    bearer = httpx.post(f"{sim.url}/mj/submit/imagine", json={"prompt": "x"},
                        headers={"Authorization": f"Bearer {SIM_KEY}"})
    assert bearer.json()["code"] == 1, "lenient_auth accepts the worker's Bearer default on any profile"


def test_newapi_token_exhausted(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "newapi", token_exhausted=True)
    response = api.post("/mj/submit/imagine", {"prompt": "x"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "new_api_error" and error["message"].startswith("该令牌额度已用尽")
    assert sim.stats()["accepted"] == 0


# -- unknown ids, account, limits -----------------------------------------------------------------------------

@pytest.mark.parametrize(("profile", "status", "body"), [
    ("java", 200, b""), ("trueai", 204, b""), ("vendor", 200, b""), ("plus", 404, None), ("newapi", 400, None),
])
def test_unknown_id_on_fetch(sim: SimulatorAdmin, api: Api, profile: str, status: int, body: bytes | None) -> None:
    use(sim, profile)
    response = api.http.get("/mj/task/1234567890/fetch")
    assert response.status_code == status
    if body is not None:
        assert response.content == body
    elif profile == "newapi":
        assert response.json() == {"code": 4, "description": "task_no_found ", "type": "upstream_error"}
    else:
        assert response.json()["code"] == 3


@pytest.mark.parametrize(("profile", "code", "text"), [
    ("plus", 3, "无可用的账号实例"), ("java", 3, "无可用的账号实例"), ("trueai", 3, "无可用的账号实例"),
    ("newapi", 3, "无可用的账号实例"), ("vendor", 24, "账号不可用 (account unavailable)"),
])
def test_account_unavailable(sim: SimulatorAdmin, api: Api, profile: str, code: int, text: str) -> None:
    use(sim, profile, account_unavailable=True)
    answer = api.submit("/mj/submit/imagine", {"prompt": "x"})
    assert (answer["code"], answer["description"], answer["result"]) == (code, text, None)
    assert sim.stats()["accepted"] == 0


def test_trueai_limits_queue_full_and_system_error(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "trueai")
    for kind, text in [("concurrent", "并发数已达上限"), ("queue", "队列数已达上限"),
                       ("daily", "用户今日绘图次数已达上限")]:
        sim.faults(user_limit=kind)
        answer = api.submit("/mj/submit/imagine", {"prompt": "x"})
        assert (answer["code"], answer["description"], answer["result"]) == (4, text, None)
    sim.faults(user_limit="", system_error=True)
    assert api.submit("/mj/submit/imagine", {"prompt": "x"})["description"] == "提交失败，系统异常"
    sim.faults(system_error=False, concurrency={"FAST": 1}, queue_size=0, time_factor=1.0)
    assert api.submit("/mj/submit/imagine", {"prompt": "runs"})["code"] == 1
    full = api.submit("/mj/submit/imagine", {"prompt": "no room"})
    assert (full["code"], full["description"]) == (9, "提交失败，队列已满，请稍后重试"), "trueai has no code 23"
    assert sim.stats()["accepted"] == 1


def test_trueai_rate_limit_then_ban(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "trueai", http_429_rate=1.0, ban_after_429s=2, ban_s=100)  # 0.2 s at this time factor
    for _ in range(2):
        limited = api.post("/mj/submit/imagine", {"prompt": "x"})
        assert (limited.status_code, limited.content) == (429, b"") and "retry-after" not in limited.headers
    sim.faults(http_429_rate=0.0)
    banned = api.post("/mj/submit/imagine", {"prompt": "x"})
    assert (banned.status_code, banned.content) == (403, b"")
    assert api.http.get("/mj/task/1/fetch").status_code == 403, "the ban covers every call"
    deadline = patience.deadline(20)
    while api.post("/mj/submit/imagine", {"prompt": "x"}).status_code == 403:
        assert time.monotonic() < deadline, "the ban clears itself"
        time.sleep(0.05)
    assert sim.stats()["faults"]["http_429"] == 2


def test_trueai_bans_later_and_binds_strictly(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "trueai", banned_words=["gore"])
    answer = api.submit("/mj/submit/imagine", {"prompt": "full of gore"})
    assert answer["code"] == 1, "trueai does not check words at submit"
    task = api.wait(str(answer["result"]))
    assert (task["status"], task["failReason"]) == ("FAILURE", "可能包含敏感词")
    odd = api.http.post("/mj/submit/imagine", content=b"{not json", headers={"content-type": "application/json"})
    assert odd.status_code == 200 and odd.json()["success"] is False and odd.json()["code"] == -1


# -- trueai task JSON, images, remix, prefixes --------------------------------------------------------------

def test_trueai_task_json_and_grid_images(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "trueai")
    grid = api.finished("four tiles")
    assert grid["parentId"] is None and grid["mode"] == "FAST" and grid["seed"].isdigit()
    urls = grid["imageUrls"]
    assert len(urls) == 4 and all(set(u) == {"url", "thumbnail"} for u in urls)
    tiles = [httpx.get(u["url"], timeout=10) for u in urls]
    assert all(t.status_code == 200 and t.headers["content-type"] == "image/png" for t in tiles)
    assert {Image.open(io.BytesIO(t.content)).size for t in tiles} == {(128, 128)}, "a quadrant of the 256 grid"
    assert len({t.content for t in tiles}) == 4, "four different images"
    thumb = httpx.get(urls[0]["thumbnail"], timeout=10)
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    upscale_answer = api.submit("/mj/submit/action", {"taskId": grid["id"], "customId": button(grid, "upsample::2")})
    upscale = api.wait(str(upscale_answer["result"]))
    assert (upscale["action"], upscale["parentId"], upscale["imageUrls"]) == ("UPSCALE", grid["id"], [])
    hd = api.submit("/mj/submit/action", {"taskId": upscale["id"], "customId": button(upscale, "2x_subtle")})
    assert api.wait(str(hd["result"]))["action"] == "UPSCALE_HD"
    zoom = api.submit("/mj/submit/action", {"taskId": upscale["id"], "customId": button(upscale, "CustomZoom")})
    assert zoom["code"] == 21 and zoom["description"] == "Waiting for window confirm"
    assert api.fetch(str(zoom["result"]))["progress"] is None, "progress null before the start"
    assert api.submit("/mj/submit/modal", {"taskId": zoom["result"], "prompt": "x --zoom 2"})["code"] == 1
    assert api.wait(str(zoom["result"]))["action"] == "ZOOM"
    region = api.submit("/mj/submit/action", {"taskId": upscale["id"], "customId": button(upscale, "Inpaint")})
    api.submit("/mj/submit/modal", {"taskId": region["result"], "maskBase64": png_data_uri()})
    assert api.wait(str(region["result"]))["action"] == "VARIATION"
    missing = api.post("/mj/submit/action", {"taskId": "4040404", "customId": button(grid, "upsample::1")})
    assert missing.status_code == 404 and missing.json()["code"] == 3


def test_trueai_remix_needs_enable_remix(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "trueai", remix=True)
    grid = api.finished("remix account")
    plain = api.submit("/mj/submit/action", {"taskId": grid["id"], "customId": button(grid, "variation::1")})
    assert plain["code"] == 1, "without enableRemix no modal wait"
    asked = api.submit("/mj/submit/action", {"taskId": grid["id"], "customId": button(grid, "variation::2"),
                                             "enableRemix": True})
    assert asked["code"] == 21 and asked["properties"]["remix"] is True
    assert api.fetch(str(asked["result"]))["status"] == "MODAL"


@pytest.mark.parametrize(("prefix", "mode"), [("/mj-fast", "FAST"), ("/mj-relax", "RELAX"), ("/mj-turbo", "TURBO")])
def test_trueai_and_newapi_speed_prefixes(sim: SimulatorAdmin, api: Api, prefix: str, mode: str) -> None:
    for profile in ("trueai", "newapi"):
        use(sim, profile)
        answer = api.submit(f"{prefix}/mj/submit/imagine", {"prompt": f"{profile} {mode}"})
        assert answer["code"] == 1
        assert next(t for t in sim.tasks() if t["id"] == answer["result"])["mode"] == mode


# -- java -----------------------------------------------------------------------------------------------------

def test_java_routes_and_task_json(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "java", concurrency={"FAST": 0}, queue_size=5)
    waiting = api.submit("/mj/submit/imagine", {"prompt": "waits"})
    task = api.fetch(str(waiting["result"]))
    assert task["status"] == "NOT_START" and task["startTime"] is None and task["finishTime"] is None
    assert isinstance(task["submitTime"], int) and task["submitTime"] > 1_000_000_000_000, "epoch ms"
    assert "buttons" not in task
    for path in ("/mj/submit/action", "/mj/submit/modal", "/mj/insight-face/swap",
                 "/mj/submit/upload-discord-images"):
        missing = api.post(path, {"taskId": "1"})
        assert missing.status_code == 404 and missing.json()["error"] == "Not Found", path
    assert api.http.get(f"/mj/task/{waiting['result']}/image-seed").status_code == 404
    assert api.post("/mj-fast/mj/submit/imagine", {"prompt": "x"}).status_code == 404, "no speed prefixes"


def test_java_change_and_simple_change(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "java")
    grid = api.finished("change me", state="g")
    assert "buttons" not in grid and isinstance(grid["finishTime"], int)
    upscale = api.submit("/mj/submit/change", {"action": "UPSCALE", "taskId": grid["id"], "index": 2, "state": "u"})
    assert upscale["code"] == 1
    done = api.wait(str(upscale["result"]))
    assert (done["action"], done["status"], done["state"]) == ("UPSCALE", "SUCCESS", "u")
    again = api.submit("/mj/submit/change", {"action": "UPSCALE", "taskId": grid["id"], "index": 2})
    assert again["code"] == 1 and again["result"] != upscale["result"], "no 'task exists' on Java any more"
    for content, action in ((f"{grid['id']} V3", "VARIATION"), (f"{grid['id']} R", "REROLL")):
        answer = api.submit("/mj/submit/simple-change", {"content": content})
        assert answer["code"] == 1 and api.wait(str(answer["result"]))["action"] == action
    assert api.submit("/mj/submit/simple-change", {"content": "nonsense"}) == {
        "code": 4, "description": "content参数错误", "properties": {}, "result": None}
    assert api.submit("/mj/submit/change", {"action": "UPSCALE", "taskId": grid["id"], "index": 5})["code"] == 4
    assert api.submit("/mj/submit/change", {"action": "UPSCALE", "taskId": "4040", "index": 1})["code"] == 3
    assert api.submit("/mj/submit/change", {"action": "UPSCALE", "taskId": done["id"], "index": 1})[
        "description"] == "关联任务不允许执行变化"


def test_change_routes_are_java_only(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "plus")
    assert api.post("/mj/submit/change", {"action": "UPSCALE", "taskId": "1", "index": 1}).status_code == 404


# -- newapi ---------------------------------------------------------------------------------------------------

def test_newapi_rewrites_21_and_22_to_1(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "newapi", remix=True, newapi_poll_s=1)
    grid = api.finished("relayed")
    remix = api.submit("/mj/submit/action", {"taskId": grid["id"], "customId": button(grid, "variation::1")})
    assert remix["code"] == 1 and remix["description"] == "窗口等待", "a modal wait that looks submitted"
    assert api.wait(str(remix["result"]), until=("MODAL",))["status"] == "MODAL"
    upscale = api.wait(str(api.submit("/mj/submit/action", {"taskId": grid["id"],
                                                            "customId": button(grid, "upsample::1")})["result"]))
    zoom = api.submit("/mj/submit/action", {"taskId": upscale["id"], "customId": button(upscale, "CustomZoom")})
    assert zoom["code"] == 21, "custom zoom (and inpaint) keep their 21"
    sim.faults(concurrency={"FAST": 0}, queue_size=5)
    queued = api.submit("/mj/submit/imagine", {"prompt": "waits"})
    assert queued["code"] == 1 and queued["properties"]["numberOfQueues"] == 0, "a 22 rewritten"


def test_newapi_strips_hooks_and_filters(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "newapi", notify_hook="http://127.0.0.1:9/global")
    answer = api.submit("/mj/submit/imagine", {"prompt": "no hooks", "notifyHook": "http://127.0.0.1:9/hook",
                                               "accountFilter": {"modes": ["RELAX"]}})
    task = next(t for t in sim.tasks() if t["id"] == answer["result"])
    assert task["mode"] == "FAST", "accountFilter stripped: the mode only travels in the path prefix"
    assert task["properties"]["notifyHook"] == "", "no callback for the client, not even the global hook"


def test_newapi_task_copy(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "newapi", newapi_poll_s=20_000)  # 40 s: never polled during this test
    fresh = api.fetch(str(api.submit("/mj/submit/imagine", {"prompt": "unpolled"})["result"]))
    assert (fresh["status"], fresh["progress"], fresh["startTime"], fresh["finishTime"]) == ("", "0%", 0, 0)
    assert "mode" not in fresh and "botType" not in fresh
    sim.faults(newapi_poll_s=1)
    task = api.finished("polled")
    assert task["imageUrl"] == f"{sim.url}/mj/image/{task['id']}" and task["failReason"] == ""
    image = httpx.get(task["imageUrl"], timeout=10)  # served without a token
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    listed = api.post("/mj/task/list-by-condition", {"ids": [task["id"]]})
    assert listed.json() == [task]


def test_newapi_fails_tasks_after_its_hour(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "newapi", stuck_rate=1.0, newapi_poll_s=1, newapi_timeout_s=50)  # 0.1 s
    task = api.wait(str(api.submit("/mj/submit/imagine", {"prompt": "never ends"})["result"]))
    assert (task["status"], task["failReason"]) == ("FAILURE", "上游任务超时（超过1小时）")
    upstream = next(t for t in sim.tasks() if t["id"] == task["id"])
    assert upstream["status"] == "IN_PROGRESS", "only the gateway's copy failed"


def test_newapi_group_saturated_and_do_request_failed(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "newapi", group_saturated=True)
    saturated = api.post("/mj/submit/imagine", {"prompt": "x"})
    assert saturated.status_code == 429 and saturated.json() == {
        "code": 30, "description": "当前分组负载已饱和，请稍后再试，或升级账户以提升服务质量。",
        "type": "upstream_error",
    }
    sim.faults(group_saturated=False, do_request_failed_rate=1.0)
    failed = api.post("/mj/submit/imagine", {"prompt": "maybe created", "state": "job-5"})
    assert failed.status_code == 400
    assert failed.json() == {"code": 5, "description": "do_request_failed ", "type": "upstream_error"}
    created = [t for t in sim.tasks() if t["state"] == "job-5"]
    assert len(created) == 1, "the upstream did create the task: findable by its state"
    assert sim.stats()["faults"]["do_request_failed"] == 1


# -- plus and vendor ------------------------------------------------------------------------------------------

def test_plus_and_vendor_keep_todays_answers(sim: SimulatorAdmin, api: Api) -> None:
    use(sim, "plus", concurrency={"FAST": 1}, queue_size=1, time_factor=1.0)
    assert api.submit("/mj/submit/imagine", {"prompt": "a"})["code"] == 1
    assert api.submit("/mj/submit/imagine", {"prompt": "b"})["code"] == 22
    assert api.submit("/mj/submit/imagine", {"prompt": "c"})["code"] == 23
    sim.reset(config=False)
    use(sim, "vendor", concurrency={"FAST": 1}, queue_size=0, time_factor=1.0)
    accepted = api.submit("/mj/submit/imagine", {"prompt": "a"})
    assert accepted["code"] == 1 and isinstance(accepted["result"], int), "vendor ids are JSON numbers"
    assert api.submit("/mj/submit/imagine", {"prompt": "b"})["description"] == "系统繁忙，请稍后再试 (system busy)"
