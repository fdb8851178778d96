"""`mjq doctor` and the check at start of `mjq worker`, against the real simulator process playing each server
profile (its own auth rule), a wrong key, a closed port, and a stack with webhooks for `--submit`."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from simulator.server import SimulatorAdmin
from tests.support import patience
from tests.support.mjq import BIN, mjq
from tests.support.sim import SIM_KEY
from tests.support.stack import Stack
from worker.devstack.redisserver import free_port
from worker.mjapi import MidjourneyClient
from worker.mjapi.doctor import Report, diagnose, startup_warnings


def use(sim: SimulatorAdmin, profile: str) -> None:
    sim.faults(profile=profile, lenient_auth=False)


@pytest.fixture
def client(sim: SimulatorAdmin) -> Iterator[MidjourneyClient]:
    made = MidjourneyClient(sim.url, SIM_KEY, timeout=5.0)
    yield made
    made.close()


def status(report: Report, name: str) -> str | None:
    return next((c.status for c in report.checks if c.name == name), None)


@pytest.mark.parametrize("profile", ["plus", "trueai", "java", "newapi", "vendor"])
def test_each_server_is_recognised_and_nothing_is_spent(
    sim: SimulatorAdmin, client: MidjourneyClient, profile: str
) -> None:
    use(sim, profile)
    report = diagnose(client)
    assert report.ok, report.as_dict()
    assert report.looks_like == profile, report.as_dict()
    for name in ("reach", "auth", "unknown fetch", "list-by-condition", "profile"):
        assert status(report, name) == "ok", (name, report.as_dict())
    assert report.advice["MJQ_API_PROFILE"] == profile
    assert (status(report, "follow-ups") == "warn") is (profile == "java")
    stats = sim.stats()
    assert stats["accepted"] == 0 and not sim.tasks(), "a probe created a task"


def test_newapi_advice_polling_and_the_mode_in_the_path(sim: SimulatorAdmin, client: MidjourneyClient) -> None:
    use(sim, "newapi")
    report = diagnose(client, webhook_base_url=f"http://127.0.0.1:{free_port()}")
    assert status(report, "callbacks") == "warn" and status(report, "speed mode") == "warn"
    assert report.advice["MJQ_API_PATH_FAST"] == "/mj-fast"
    assert status(report, "webhook") == "fail" and not report.ok, "a webhook URL nobody answers is a failure"


@pytest.mark.parametrize("profile", ["plus", "java", "newapi", "trueai"])
def test_a_wrong_key_is_a_failure_that_names_the_key(sim: SimulatorAdmin, profile: str) -> None:
    use(sim, profile)
    with MidjourneyClient(sim.url, "wrong-key", timeout=5.0) as wrong:
        report = diagnose(wrong)
        warnings = startup_warnings(wrong)
    assert not report.ok and status(report, "auth") == "fail"
    assert "MJQ_API_KEY" in next(c.hint for c in report.checks if c.name == "auth")
    assert warnings and "refuses" in warnings[0] and "wrong-key" not in " ".join(warnings)
    if profile == "newapi":
        assert report.looks_like == "newapi", "its 401 body says new-api"


def test_the_other_auth_header_is_suggested(sim: SimulatorAdmin) -> None:
    use(sim, "plus")  # mj-api-secret only
    with MidjourneyClient(sim.url, SIM_KEY, auth_header="bearer", timeout=5.0) as bearer:
        report = diagnose(bearer)
    assert status(report, "auth") == "fail"
    assert report.advice == {"MJQ_API_AUTH_HEADER": "mj-api-secret"}


def test_a_closed_port_is_unreachable() -> None:
    with MidjourneyClient(f"http://127.0.0.1:{free_port()}", SIM_KEY, connect_timeout=2.0) as closed:
        report = diagnose(closed)
        warnings = startup_warnings(closed)
    assert not report.ok and [c.name for c in report.checks] == ["reach", "webhook"]
    assert status(report, "reach") == "fail" and "MJQ_API_BASE_URL" in report.checks[0].hint
    assert "not reachable" in warnings[0]


def _env(url: str, key: str = SIM_KEY, **more: str) -> dict[str, str]:
    return {"MJQ_API_BASE_URL": url, "MJQ_API_KEY": key, "MJQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            **more}  # fmt: skip


def test_the_command_exits_0_or_1_and_speaks_json(sim: SimulatorAdmin) -> None:
    use(sim, "trueai")
    good = mjq(None, "doctor", "--json", env=_env(sim.url))
    assert good.code == 0, good
    data = good.json()
    assert data["ok"] and data["profile"] == {"configured": "auto", "looks_like": "trueai",
                                              "reasons": ["an unknown id is answered 204 No Content"]}  # fmt: skip
    wrong = mjq(None, "doctor", env=_env(sim.url, "wrong-key"))
    assert wrong.code == 1 and "check MJQ_API_KEY" in wrong.out and "wrong-key" not in wrong.out + wrong.err
    closed = mjq(None, "doctor", "--json", env=_env(f"http://127.0.0.1:{free_port()}"))
    assert closed.code == 1 and closed.json()["checks"][0]["status"] == "fail"
    mismatch = mjq(None, "doctor", env=_env(sim.url, MJQ_API_PROFILE="java"))
    assert mismatch.code == 0 and "MJQ_API_PROFILE=trueai" in mismatch.out


def test_submit_spends_one_imagine_and_sees_the_callbacks(hook_stack: Stack, sim: SimulatorAdmin) -> None:
    env = {k: v for k, v in hook_stack.env.items() if k.startswith("MJQ_")}
    run = mjq(None, "doctor", "--submit", "--json", "--wait-s", "20", env=env)
    assert run.code == 0, run
    checks = {c["name"]: c for c in run.json()["checks"]}
    assert checks["submit"]["status"] == "ok" and checks["callbacks"]["status"] == "ok", checks
    assert sim.stats()["accepted"] == 1
    # new-api drops the hook: said, but not a failure (polling works)
    use(sim, "newapi")
    sim.faults(lenient_auth=True)
    hook_stack.redis.delete(*hook_stack.redis.keys("mjq:seen:*"))
    run = mjq(None, "doctor", "--submit", "--json", "--wait-s", "20", env=env)
    checks = {c["name"]: c for c in run.json()["checks"]}
    assert run.code == 0 and checks["callbacks"]["status"] == "warn", checks
    assert "MJQ_CALLBACKS_MISSING_AFTER" in checks["callbacks"]["hint"]


def test_submit_is_not_tried_when_something_fails(sim: SimulatorAdmin) -> None:
    use(sim, "plus")
    run = mjq(None, "doctor", "--submit", "--json", env=_env(sim.url, "wrong-key"))
    assert run.code == 1 and run.json()["checks"][-1]["name"] == "submit"
    assert sim.stats()["accepted"] == 0 and sim.stats()["submissions"] == 0


def test_mjq_worker_warns_loudly_at_start_and_keeps_going(redis_url: str, sim: SimulatorAdmin) -> None:
    use(sim, "plus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    env.update(_env(sim.url, "wrong-key"), MJQ_REDIS_URL=redis_url, COLUMNS="120")
    process = subprocess.Popen([str(BIN / "mjq"), "worker", "-c", "1", "-n", f"doctor-{time.monotonic_ns()}@%h"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen: list[str] = []
    try:
        assert process.stdout is not None
        deadline = patience.deadline(60)
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            seen.append(line)
            if "ready." in line or not line:
                break
        assert process.poll() is None, "".join(seen)  # a warning, not a crash
    finally:
        process.terminate()
        process.wait(timeout=30)
    text = "".join(seen)
    assert "warning: the upstream" in text and "refuses us" in text and "MJQ_API_KEY" in text, text
    assert "wrong-key" not in text


def test_config_shows_the_profile_and_what_it_implies(sim: SimulatorAdmin) -> None:
    run = mjq(None, "config", "--json", env=_env(sim.url, MJQ_API_PROFILE="newapi",
                                                  MJQ_WEBHOOK_BASE_URL="http://127.0.0.1:9",
                                                  MJQ_WEBHOOK_SECRET="x" * 32))  # fmt: skip
    assert run.code == 0, run
    profile: dict[str, Any] = run.json()["profile"]
    assert profile["name"] == "newapi" and profile["auth_header_sent"] == "mj-api-secret: <key>"
    assert profile["callbacks"].startswith("none expected") and "path prefix" in profile["speed_mode"]
    shown = mjq(None, "config", env=_env(sim.url, MJQ_API_PROFILE="trueai", MJQ_API_PATH_FAST="/mj-fast"))
    assert "trueai-org/midjourney-proxy" in shown.out and "fast /mj-fast" in shown.out
    assert "enableRemix" in shown.out
