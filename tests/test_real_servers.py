"""The answers of the four real servers (``/work/shared/upstreams.md``), read by the one classifier and the
client's parsers, as pure functions: each body below is what that server sends."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.sim import png_data_uri
from worker.mjapi import (
    AccountUnavailable,
    AnswerLost,
    Busy,
    DailyLimitReached,
    Forbidden,
    MidjourneyClient,
    MJError,
    NotFound,
    OutOfCredit,
    QueueFull,
    RateLimited,
    StopSubmitting,
    TemporarilyBlocked,
    Unsupported,
    UpstreamSystemError,
    classify,
)
from worker.mjapi.profiles import PROFILES, profile_for
from worker.settings import Settings


def body(code: int, description: str = "", result: Any = None, **properties: Any) -> dict[str, Any]:
    return {"code": code, "description": description, "result": result, "properties": properties}


REAL: list[tuple[str, int, Any, type[MJError]]] = [
    # code 3: no usable account (all four), not "not found"
    ("java", 200, body(3, "无可用的账号实例"), AccountUnavailable),
    ("plus", 200, body(3, "账号不可用: 1234567890"), AccountUnavailable),
    ("trueai", 200, body(3, "无可用的账号实例"), AccountUnavailable),
    ("auto", 200, body(3, "关联任务不存在或已失效"), NotFound),
    ("trueai", 404, body(3, "关联任务不存在或已失效"), NotFound),
    # the vendor table's code 24 account texts
    ("vendor", 200, body(24, "账号不可用"), AccountUnavailable),
    ("auto", 200, body(24, "账号不可用 (account unavailable)"), AccountUnavailable),
    # trueai code 4: per-user limits are busy, the daily limit stops, server trouble is counted
    ("trueai", 200, body(4, "并发数已达上限"), Busy),
    ("trueai", 200, body(4, "队列数已达上限"), Busy),
    ("auto", 200, body(4, "用户今日绘图次数已达上限"), DailyLimitReached),
    ("auto", 200, body(4, "服务暂不可用，请稍后再试"), UpstreamSystemError),
    ("auto", 200, body(4, "提交imagine任务异常"), UpstreamSystemError),
    # code 9
    ("auto", 200, body(9, "提交失败，系统异常"), UpstreamSystemError),
    ("trueai", 200, body(9, "提交失败，队列已满，请稍后重试"), QueueFull),
    # new-api relay
    ("newapi", 400, {"code": 5, "description": "do_request_failed", "type": "upstream_error"}, AnswerLost),
    ("auto", 400, {"code": 4, "description": "get_channel_unknown", "type": "new_api_error"}, AnswerLost),
    ("auto", 500, {"code": 4, "description": "insert_midjourney_task_failed"}, AnswerLost),
    ("newapi", 429, {"code": 30, "description": "当前分组负载已饱和"}, RateLimited),
    ("newapi", 401, {"error": {"message": "该令牌额度已用尽 TokenStatusExhausted", "type": "new_api_error"}},
     OutOfCredit),
    ("newapi", 400, {"code": 4, "description": "quota_not_enough", "type": "new_api_error"}, OutOfCredit),
    # trueai: IP rate limit; an empty 403 with no 429 before it is a refusal (see the after_429 test below)
    ("trueai", 429, None, RateLimited),
    ("trueai", 403, None, Forbidden),
    ("auto", 403, "", Forbidden),
    ("auto", 403, {"code": 403, "description": "forbidden"}, Forbidden),
]  # fmt: skip


@pytest.mark.parametrize(("profile", "status", "answer", "expected"), REAL)
def test_real_answers(profile: str, status: int, answer: Any, expected: type[MJError]) -> None:
    with pytest.raises(MJError) as info:
        classify(status, answer, profile)
    assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
    assert info.value.status == status
    # auto reads every real answer the same as the server's own profile
    with pytest.raises(expected):
        classify(status, answer, "auto")


@pytest.mark.parametrize("profile", ["trueai", "auto", "plus"])
def test_an_empty_403_is_a_temporary_block_only_right_after_429s(profile: str) -> None:
    """trueai bans an IP for some minutes after too many 429s, answering 403 with an empty body; that answer with
    no 429 before it (a key without rights, an IP allow-list, a firewall) would only come back after a cool-down,
    so it stops until `mjq resume`, saying why."""
    for body_ in (None, ""):
        with pytest.raises(TemporarilyBlocked, match="after 429s"):
            classify(403, body_, profile, after_429=True)
        with pytest.raises(Forbidden, match="no 429 before it") as info:
            classify(403, body_, profile)
        assert type(info.value) is Forbidden
    with pytest.raises(Forbidden) as described:  # a 403 that says something is read by what it says
        classify(403, {"code": 403, "description": "forbidden"}, profile, after_429=True)
    assert type(described.value) is Forbidden


def test_remix_actions_carry_enable_remix_where_the_profile_says() -> None:
    remix = {"task_id": "1712345", "custom_id": "MJ::JOB::variation::1::h", "account_filter": {"remix": True}}
    plain = {"task_id": "1712345", "custom_id": "MJ::JOB::variation::1::h"}
    for name, flagged in (("trueai", True), ("auto", True), ("plus", False), ("newapi", False)):
        assert PROFILES[name].remix_flag is flagged
        with MidjourneyClient("http://upstream.invalid", "k", profile=name) as client:
            wire = client._submit_call(client._request("action", **remix)).body
            assert wire.get("enableRemix") is (True if flagged else None), name
            assert "enableRemix" not in client._submit_call(client._request("action", **plain)).body
            imagine = client._submit_call(client._request("imagine", prompt="x", account_filter={"remix": True}))
            assert "enableRemix" not in imagine.body, "only actions open the remix modal"


def test_busy_is_retried_and_stops_are_stops() -> None:
    assert issubclass(RateLimited, Busy) and issubclass(QueueFull, Busy) and Busy.retryable
    assert not issubclass(UpstreamSystemError, Busy) and UpstreamSystemError.retryable
    assert issubclass(DailyLimitReached, StopSubmitting) and DailyLimitReached.resume == "next_utc_day"
    assert issubclass(TemporarilyBlocked, StopSubmitting) and TemporarilyBlocked.resume == "cooldown"
    assert not isinstance(AnswerLost(), Busy) and AnswerLost.ambiguous


@pytest.mark.parametrize(
    ("code", "description"),
    [(1, "窗口等待"), (22, "窗口等待"), (1, "Waiting for window confirm"), (21, "Waiting for window confirm")],
)
def test_modal_waits_hidden_in_other_codes(code: int, description: str) -> None:
    """new-api rewrites 21 to 1; a modal wait is read from the description whatever the code."""
    answer = classify(200, body(code, description, "1712345", finalPrompt="a cat", remix=True), "newapi")
    assert (answer.outcome, answer.task_id) == ("modal", "1712345")
    plain = classify(200, body(22, "排队中，前面还有2个任务", "1712346"), "auto")
    assert plain.outcome == "queued"


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (200, None),  # java: 200, empty body
        (204, None),  # trueai: 204
        (404, None),
        (400, {"code": 4, "description": "task_no_found ", "type": "upstream_error"}),  # new-api
        (200, {"code": 4, "description": "task_no_found", "result": None}),
    ],
)
def test_fetch_of_an_unknown_id_is_none(status: int, answer: Any) -> None:
    with MidjourneyClient("http://upstream.invalid", "k") as client:
        assert client._fetch_call("1712345").parse(status, answer, {}) is None


def test_list_by_condition_skips_a_task_that_does_not_parse() -> None:
    tasks = [
        {"id": "1", "status": "SUCCESS", "progress": "100%", "submitTime": None, "imageUrl": "https://c/1.png",
         "imageUrls": [{"url": "https://c/1_0.png", "thumbnail": "t"}], "buttons": None},
        {"id": None, "status": "SUCCESS"},  # no usable id: skipped, polled again alone
        {"id": "3", "status": "", "progress": None, "startTime": 0, "finishTime": None},  # new-api, trueai
        "not a task",
    ]  # fmt: skip
    with MidjourneyClient("http://upstream.invalid", "k") as client:
        read = client._list_call(["1", "2", "3"]).parse(200, tasks, {})
    assert [t.id for t in read] == ["1", "3"]
    assert read[0].image_urls == ["https://c/1_0.png"]
    assert (read[1].status, read[1].progress) == ("", None)


def test_profiles_table_and_the_old_dialect_alias() -> None:
    assert set(PROFILES) == {"auto", "plus", "trueai", "java", "newapi", "vendor"}
    assert all(p.auth == "mj-api-secret" for p in PROFILES.values())
    assert profile_for("auto", "vendor").name == "vendor" and profile_for("proxy").name == "auto"
    assert not PROFILES["java"].supports("action") and PROFILES["newapi"].callbacks is False
    settings = Settings(api_dialect="vendor")
    assert settings.api_profile_name == "vendor"
    default = Settings()
    assert default.api_auth_header == "mj-api-secret" and default.api_profile_name == "auto"


def test_java_has_no_action_route_and_says_so_before_sending() -> None:
    client = MidjourneyClient("http://upstream.invalid", "k", profile="java")
    with client, pytest.raises(Unsupported, match=r"java .* has no /mj/submit/action"):
        client.action("1712345", "MJ::JOB::upsample::1::abc")


def test_submit_paths_and_timeouts() -> None:
    options: dict[str, Any] = {"mode_paths": {"fast": "/mj-fast", "relax": "/mj-relax"}, "submit_timeout": 90.0}
    png = png_data_uri()
    with MidjourneyClient("http://upstream.invalid", "k", **options) as client:
        relax = client._submit_call(client._request("imagine", prompt="a cat", account_filter={"modes": ["RELAX"]}))
        assert relax.path == "/mj-relax/mj/submit/imagine" and relax.timeout is None
        turbo = client._submit_call(client._request("imagine", prompt="a cat", account_filter={"modes": ["TURBO"]}))
        assert turbo.path == "/mj/submit/imagine"
        blend = client._submit_call(client._request("blend", base64_array=[png, png]))
        assert blend.timeout == 90.0


def test_bookmark_is_refused_before_sending_and_buttons_name_their_kind() -> None:
    from worker.mjapi import InvalidInput, validate_request
    from worker.mjapi.models import action_kind

    with pytest.raises(InvalidInput, match="bookmark"):
        validate_request("action", {"task_id": "1", "custom_id": "MJ::BOOKMARK::3f1c"})
    assert action_kind("MJ::JOB::upsample::2::h") == "UPSCALE"
    assert action_kind("MJ::JOB::upsample_v6_2x_subtle::1::h::SOLO") == "UPSCALE"
    assert action_kind("MJ::JOB::high_variation::1::h::SOLO") == action_kind("MJ::Inpaint::1::h::SOLO") == "VARIATION"
    assert action_kind("MJ::CustomZoom::h") == action_kind("MJ::Outpaint::50::1::h::SOLO") == "ZOOM"
    assert action_kind("MJ::JOB::pan_left::1::h::SOLO") == "PAN"
    assert action_kind("MJ::JOB::reroll::0::h::SOLO") == "REROLL"


def test_timed_stops_end_by_themselves() -> None:
    from worker.jobs.start import stop_until

    now = 1_767_225_599.0  # 2025-12-31 23:59:59 UTC
    assert stop_until(DailyLimitReached("x"), 300.0, now) == 1_767_225_600.0  # the next UTC midnight
    assert stop_until(TemporarilyBlocked("x"), 300.0, now) == now + 300.0
    assert stop_until(AccountUnavailable("x"), 300.0, now) is None  # until `mjq resume`


def test_times_zero_or_null_read_as_not_reached() -> None:
    from worker.mjapi import Task

    task = Task.read({"id": "9", "status": "", "progress": None, "submitTime": 0, "startTime": None})
    assert (task.submit_time, task.start_time, task.status) == (None, None, "")


def test_a_relay_without_callbacks_gets_the_polling_schedule() -> None:
    from worker.jobs.tracking import first_poll_delay, next_poll_delay

    hooks = {"webhook_base_url": "https://hooks.example", "webhook_secret": "s" * 32, "poll_jitter": 0.0}
    plus = Settings(**hooks, api_profile="plus")  # type: ignore[arg-type]
    newapi = Settings(**hooks, api_profile="newapi")  # type: ignore[arg-type]
    assert first_poll_delay("fast", plus) == plus.expected_fast_s + plus.webhook_poll_s
    assert first_poll_delay("fast", newapi) == newapi.expected_fast_s  # no callbacks will come: poll at once
    # an upstream found sending none (worker.store.observed) gets the same schedule
    assert first_poll_delay("fast", plus, missing=True) == plus.expected_fast_s
    assert next_poll_delay(0, "fast", plus, missing=True) == plus.poll_initial_s
    assert next_poll_delay(0, "fast", plus) == plus.webhook_poll_s
