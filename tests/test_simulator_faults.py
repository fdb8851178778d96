"""Fault injection, account troubles in both dialects, auth, and the admin API itself."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from simulator.server import SimulatorAdmin
from tests.support import patience
from tests.support.sim import SIM_KEY, SimApi, wait_for_task


def _held(seen: Callable[[], bool], *, answered: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Whether ``seen()`` was true at a look taken while ``answered()`` was still false (looks every 10 ms):
    the order of two events, not a duration."""
    deadline = patience.deadline(timeout)
    while time.monotonic() < deadline and not answered():
        if seen():
            return True
        time.sleep(0.01)
    return False


def test_http_500_and_429_with_retry_after(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(http_500_rate=1.0)
    response = sim_api.http.post("/mj/submit/imagine", json={"prompt": "x", "state": "s"})
    assert response.status_code == 500 and response.json()["result"] is None
    assert sim_api.http.get("/mj/task/1/fetch").status_code == 500, "reads fail too by default"
    sim.faults(http_500_rate=0.0, http_429_rate=1.0, retry_after_s=7)
    limited = sim_api.http.post("/mj/submit/imagine", json={"prompt": "x", "state": "s"})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    stats = sim.stats()
    assert stats["submissions"] == 0 and stats["submissions_by_state"] == {}, "refused before the app saw it"
    assert stats["requests"]["POST /mj/submit/imagine"] == 2
    assert stats["faults"] == {"http_500": 2, "http_429": 1}, "every injected fault is counted"
    sim.faults(fault_scope="submit")
    assert sim_api.http.get("/mj/task/1/fetch").status_code == 404, "submit-only faults spare reads"


def test_partial_rates_are_seeded(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    def outcomes() -> list[int]:
        sim.reset(config=True)
        sim.faults(http_500_rate=0.5, queue_size=100, time_factor=1.0, concurrency={"FAST": 100})
        return [sim_api.http.post("/mj/submit/imagine", json={"prompt": "x"}).status_code for _ in range(30)]

    first = outcomes()
    assert 5 < first.count(500) < 25 and set(first) == {200, 500}
    assert outcomes() == first, "the same seed gives the same faults"


def test_read_delay_creates_the_task_then_answers_late(sim: SimulatorAdmin) -> None:
    # the answer comes 5 s late; the client gives up after 1 s: it times out long before the answer
    sim.faults(read_delay_rate=1.0, read_delay_s=5.0)
    with httpx.Client(base_url=sim.url, headers={"mj-api-secret": SIM_KEY}, timeout=1.0) as client, \
            pytest.raises(httpx.ReadTimeout):
        client.post("/mj/submit/imagine", json={"prompt": "slow", "state": "lost-answer"})
    wait_for_task(sim, "slow", timeout=30)
    tasks = sim.tasks()
    assert [t["state"] for t in tasks] == ["lost-answer"], "the task exists although the answer was lost"
    assert sim.stats()["submissions_by_state"] == {"lost-answer": 1}
    assert sim.stats()["faults"] == {"late_answer": 1}


def test_image_delay_holds_downloads_in_flight(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    import threading

    sim.faults(time_factor=0.002)
    url = sim_api.finished("a slow picture")["imageUrl"]
    sim.faults(image_delay_rate=1.0, image_delay_s=3.0)
    answer: list[httpx.Response] = []
    download = threading.Thread(target=lambda: answer.append(httpx.get(url, timeout=60)))
    download.start()
    seen = _held(lambda: sim.stats()["images_in_flight"] == 1, answered=lambda: bool(answer))
    assert seen, "a held download is visible while it waits, before its answer"
    download.join()
    assert answer[0].status_code == 200 and answer[0].content.startswith(b"\x89PNG")
    assert sim.stats()["images_in_flight"] == 0
    assert sim.stats()["faults"] == {"image_delay": 1}


def test_poll_delay_holds_fetches_and_lists_in_flight(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    import threading

    sim.faults(time_factor=0.002)
    task_id = str(sim_api.finished("a slow poll")["id"])
    sim.faults(poll_delay_rate=1.0, poll_delay_s=3.0)
    answers: list[object] = []

    def listed() -> None:
        answers.append(sim_api.http.post("/mj/task/list-by-condition", json={"ids": [task_id]}).json())

    reads = [threading.Thread(target=lambda: answers.append(sim_api.fetch(task_id))), threading.Thread(target=listed)]
    for read in reads:
        read.start()
    seen = _held(lambda: sim.stats()["polls_in_flight"] == 2, answered=lambda: bool(answers))
    assert seen, "held polls are visible while they wait, before their answers"
    for read in reads:
        read.join()
    assert sim.stats()["polls_in_flight"] == 0
    assert len(answers) == 2 and sim.stats()["faults"] == {"poll_delay": 2}


def test_submit_log_has_every_submit_with_its_state(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(http_429_rate=1.0, retry_after_s=1)
    assert sim_api.http.post("/mj/submit/imagine", json={"prompt": "x", "state": "job-1"}).status_code == 429
    sim.faults(http_429_rate=0.0)
    sim_api.imagine("x", state="job-1")
    sim_api.imagine("y")  # no state: not in the log
    log = sim.submits()
    assert [(state, fault) for _, state, fault in log] == [("job-1", "http_429"), ("job-1", "")]
    assert log[0][0] <= log[1][0]
    sim.reset(config=True)
    assert sim.submits() == []


def test_stuck_tasks_never_finish_until_forced(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(stuck_rate=1.0, time_factor=0.002, concurrency={"FAST": 1}, queue_size=0)
    stuck = sim_api.imagine("stuck")
    time.sleep(0.3)  # more than twice the normal duration
    task = sim_api.fetch(stuck)
    assert (task["status"], task["progress"], task["finishTime"]) == ("IN_PROGRESS", "10%", 0)
    sim.faults(stuck_rate=0.0)
    assert sim_api.finished("not blocked by the stuck one")["status"] == "SUCCESS"
    assert sim.stats()["stuck"] == 1
    assert sim.finish(stuck) and sim_api.fetch(stuck)["status"] == "SUCCESS"
    assert not sim.finish(stuck), "already finished"


def test_server_timeout_fails_stuck_tasks(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(stuck_rate=1.0, task_timeout_s=10, time_factor=0.01)  # 0.1 s
    task_id = sim_api.imagine("stuck, then timed out")
    task = sim_api.wait(task_id)
    assert task["status"] == "FAILURE" and "timeout" in task["failReason"]
    assert task["finishTime"] - task["startTime"] == pytest.approx(100, abs=2)
    assert sim.stats()["stuck"] == 0


def test_failure_rate(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(failure_rate=1.0, time_factor=0.002)
    task = sim_api.wait(sim_api.imagine("doomed"))
    assert task["status"] == "FAILURE" and task["failReason"] and task["buttons"] == []
    assert task["finishTime"] > 0 and task["progress"] != "100%"
    assert sim_api.http.get(f"/mj/task/{task['id']}/image-seed").json()["code"] == 4


@pytest.mark.parametrize(("dialect", "code"), [("proxy", 24), ("vendor", 4)])
def test_banned_words(sim: SimulatorAdmin, sim_api: SimApi, dialect: str, code: int) -> None:
    sim.faults(dialect=dialect, banned_words=["gore"])
    answer = sim_api.post("/mj/submit/imagine", {"prompt": "Full of GORE", "state": "b"})
    assert answer["code"] == code and answer["result"] is None
    assert answer["properties"]["bannedWord"] == "gore" and "敏感词" in answer["description"]
    stats = sim.stats()
    assert stats["accepted"] == 0 and stats["submissions_by_state"] == {"b": 1}
    assert sim_api.post("/mj/submit/imagine", {"prompt": "a kitten"})["code"] == 1


def test_balance_runs_out_proxy_dialect(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(balance=2, concurrency={"FAST": 1}, queue_size=0, time_factor=1.0)
    assert sim_api.post("/mj/submit/imagine", {"prompt": "one"})["code"] == 1
    assert sim_api.post("/mj/submit/imagine", {"prompt": "full"})["code"] == 23, "queue full costs nothing"
    sim.faults(concurrency={"FAST": 3})
    assert sim_api.post("/mj/submit/imagine", {"prompt": "two"})["code"] == 1
    refused = sim_api.http.post("/mj/submit/imagine", json={"prompt": "three"})
    assert refused.status_code == 400
    assert refused.json()["code"] == 4 and refused.json()["description"] == "quota_not_enough"
    assert sim.stats()["balance"] == 0 and sim.stats()["accepted"] == 2


def test_balance_and_account_in_vendor_dialect(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(dialect="vendor", balance=0)
    credit = sim_api.http.post("/mj/submit/imagine", json={"prompt": "x"})
    assert credit.status_code == 200 and credit.json()["code"] == 25
    sim.faults(balance=None, account_unavailable=True)
    assert sim_api.post("/mj/submit/imagine", {"prompt": "x"})["code"] == 24
    sim.faults(account_unavailable=False, concurrency={"FAST": 1}, queue_size=0, time_factor=1.0)
    accepted = sim_api.post("/mj/submit/imagine", {"prompt": "x"})
    assert accepted["code"] == 1 and isinstance(accepted["result"], int), "vendor ids are JSON numbers"
    busy = sim_api.post("/mj/submit/imagine", {"prompt": "x"})
    assert busy["code"] == 23 and busy["result"] is None


def test_account_unavailable_proxy_dialect(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(account_unavailable=True)
    answer = sim_api.post("/mj/submit/imagine", {"prompt": "x"})
    assert answer == {"code": 3, "description": "无可用的账号实例", "properties": {}, "result": None}
    assert sim.stats()["accepted"] == 0
    sim.faults(account_unavailable=False)
    accepted = sim_api.post("/mj/submit/imagine", {"prompt": "x"})
    assert isinstance(accepted["result"], str), "self-hosted servers answer the id as a string"


def test_auth(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    body = {"prompt": "x"}
    assert httpx.post(f"{sim.url}/mj/submit/imagine", json=body).status_code == 401
    wrong = httpx.post(f"{sim.url}/mj/submit/imagine", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["code"] == 401
    assert httpx.get(f"{sim.url}/mj/task/1/fetch", headers={"mj-api-secret": "nope"}).status_code == 401
    ok = httpx.post(f"{sim.url}/mj/submit/imagine", json=body, headers={"mj-api-secret": SIM_KEY})
    assert ok.json()["code"] == 1
    assert httpx.get(f"{sim.url}/mj-fast/mj/task/1/fetch", headers={"Authorization": f"Bearer {SIM_KEY}"}
                     ).status_code == 404
    assert sim.stats()["submissions"] == 1, "refused calls are no submissions"
    sim.faults(api_key=None)
    assert httpx.post(f"{sim.url}/mj/submit/imagine", json=body).json()["code"] == 1, "no key: open"
    assert "api_key" not in sim.config()


def test_admin_faults_validate_merge_and_reset(sim: SimulatorAdmin) -> None:
    with pytest.raises(ValueError, match="no_such_fault"):
        sim.faults(no_such_fault=1)
    with pytest.raises(ValueError, match="http_500_rate"):
        sim.faults(http_500_rate=1.5)
    config = sim.faults(concurrency={"relax": 7}, duration_s={"TURBO": 5})
    assert config["concurrency"] == {"FAST": 3, "RELAX": 7, "TURBO": 3}, "dict fields merge per mode"
    assert config["duration_s"]["TURBO"] == 5 and config["duration_s"]["FAST"] == 60
    sim.reset(config=False)
    assert sim.config()["concurrency"]["RELAX"] == 7, "a plain reset keeps the configuration"
    sim.reset(config=True)
    assert sim.config()["concurrency"]["RELAX"] == 3 and sim.config()["time_factor"] == 0.01


def test_forbidden_answers_403_to_every_api_call(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(forbidden=True)
    refused = sim_api.http.post("/mj/submit/imagine", json={"prompt": "x", "state": "s"})
    assert refused.status_code == 403 and refused.json() == {
        "code": 403, "description": "this key may not use this endpoint", "result": None
    }
    assert sim_api.http.get("/mj/task/1/fetch").status_code == 403
    assert sim.stats()["submissions"] == 0 and sim.stats()["faults"] == {"forbidden": 2}
    with httpx.Client(base_url=sim.url) as anonymous:  # a wrong key is still 401 first
        assert anonymous.post("/mj/submit/imagine", json={"prompt": "x"}).status_code == 401


def test_image_errors_answer_500_once_each_then_the_rate(sim: SimulatorAdmin, sim_api: SimApi) -> None:
    sim.faults(time_factor=0.002)
    url = sim_api.finished("a picture that fails to download")["imageUrl"]
    sim.faults(image_errors=2)
    assert [httpx.get(url, timeout=5).status_code for _ in range(3)] == [500, 500, 200]
    assert sim.config()["image_errors"] == 0
    sim.faults(image_error_rate=1.0)
    assert all(httpx.get(url, timeout=5).status_code == 500 for _ in range(3))
    assert sim.stats()["faults"] == {"image_500": 5}
