"""The one response classifier, as a pure function: every answer shape of both dialects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from worker.mjapi import (
    AccountUnavailable,
    AnswerLost,
    BannedPrompt,
    Forbidden,
    MJError,
    NotFound,
    OutOfCredit,
    QueueFull,
    RateLimited,
    Rejected,
    RetryLater,
    ServerError,
    StopSubmitting,
    Unauthorized,
    UpstreamSystemError,
    ValidationRejected,
    classify,
)
from worker.mjapi.classify import Dialect, retry_after_seconds


def body(code: int, description: str = "", result: Any = None, **properties: Any) -> dict[str, Any]:
    return {"code": code, "description": description, "result": result, "properties": properties}


@pytest.mark.parametrize("dialect", ["proxy", "vendor"])
def test_accepted_answers(dialect: Dialect) -> None:
    submitted = classify(200, body(1, "提交成功", 1320098173412546), dialect)
    assert (submitted.outcome, submitted.task_id, submitted.code) == ("submitted", "1320098173412546", 1)
    queued = classify(200, body(22, "排队中，前面还有3个任务", "17"), dialect)
    assert (queued.outcome, queued.task_id, queued.queue_position) == ("queued", "17", 3)
    by_property = classify(200, body(22, "in queue", "18", numberOfQueues=5), dialect)
    assert by_property.queue_position == 5
    exists = classify(200, body(21, "任务已存在", "555"), dialect)
    assert (exists.outcome, exists.task_id) == ("exists", "555")
    modal = classify(200, body(21, "窗口等待", 556, finalPrompt="a cat", remix=True), dialect)
    assert (modal.outcome, modal.task_id, modal.properties["finalPrompt"]) == ("modal", "556", "a cat")
    modal_by_status = classify(200, body(21, "", "557", status="MODAL", finalPrompt="x"), dialect)
    assert modal_by_status.outcome == "modal"
    english = classify(200, body(21, "Waiting for window confirm", "558"), dialect)
    assert english.outcome == "modal"


CASES: list[tuple[int, Any, Dialect, dict[str, str] | None, type[MJError], int | None]] = [
    # code 21 without a task id is a parameter error in both dialects
    (200, body(21, "参数错误"), "proxy", None, ValidationRejected, 21),
    (200, body(21, "parameter error"), "vendor", None, ValidationRejected, 21),
    # 23: queue full for self-hosted proxies, system error in the vendor document
    (200, body(23, "队列已满，请稍后尝试"), "proxy", None, QueueFull, 23),
    (200, body(23, "系统异常"), "vendor", None, UpstreamSystemError, 23),
    (200, body(23, "queue is full"), "vendor", None, QueueFull, 23),  # recognised whatever the dialect
    # 24: banned prompt (proxy) vs account unavailable (vendor); recognisable answers win
    (200, body(24, "可能包含敏感词"), "proxy", None, BannedPrompt, 24),
    (200, body(24, "账号不可用"), "vendor", None, AccountUnavailable, 24),
    (200, body(24, "", bannedWord="nsfw"), "vendor", None, BannedPrompt, 24),
    (200, body(24, "banned prompt"), "vendor", None, BannedPrompt, 24),
    (200, body(24, "account is banned"), "proxy", None, AccountUnavailable, 24),
    (200, body(24, "no account instance available"), "proxy", None, AccountUnavailable, 24),
    # 25 and balance texts: out of credit
    (200, body(25, "余额不足"), "vendor", None, OutOfCredit, 25),
    (200, body(25, ""), "proxy", None, OutOfCredit, 25),
    (200, body(4, "insufficient balance"), "proxy", None, OutOfCredit, 4),
    # older servers
    (200, body(3, "任务不存在"), "proxy", None, NotFound, 3),
    (200, body(4, "prompt不能为空"), "proxy", None, ValidationRejected, 4),
    (200, body(9, "无可用的账号实例"), "proxy", None, AccountUnavailable, 9),
    (200, body(9, "提交失败"), "proxy", None, UpstreamSystemError, 9),
    (200, body(77, "new code"), "proxy", None, Rejected, 77),
    # HTTP errors
    (400, body(4, "bad params"), "proxy", None, ValidationRejected, 4),
    (400, None, "vendor", None, ValidationRejected, None),
    (401, {"code": 401, "description": "invalid key"}, "proxy", None, Unauthorized, 401),
    (403, {"code": 403, "description": "forbidden"}, "proxy", None, Forbidden, 403),
    (403, {"description": "insufficient balance"}, "proxy", None, OutOfCredit, None),
    (404, None, "proxy", None, NotFound, None),
    (429, None, "vendor", {"Retry-After": "7"}, RateLimited, None),
    (500, "<html>oops</html>", "proxy", None, ServerError, None),
    (503, None, "proxy", {"retry-after": "2"}, ServerError, None),
    # a 2xx answer without a result code: it may have been accepted
    (200, "<html>gateway</html>", "proxy", None, AnswerLost, None),
    (200, None, "proxy", None, AnswerLost, None),
    (200, {"result": "123"}, "vendor", None, AnswerLost, None),
]


@pytest.mark.parametrize(("status", "answer", "dialect", "headers", "expected", "code"), CASES)
def test_error_answers(
    status: int, answer: Any, dialect: Dialect, headers: dict[str, str] | None, expected: type[MJError],
    code: int | None,
) -> None:  # fmt: skip
    with pytest.raises(MJError) as info:
        classify(status, answer, dialect, headers)
    error = info.value
    assert type(error) is expected, f"{type(error).__name__}: {error}"
    assert error.code == code
    assert error.status == status
    assert error.retryable is isinstance(error, RetryLater)
    assert str(error)


def test_retry_after_and_banned_word_are_carried() -> None:
    with pytest.raises(RateLimited) as rate:
        classify(429, None, "proxy", {"Retry-After": "7"})
    assert rate.value.retry_after == 7.0 and rate.value.retryable
    with pytest.raises(BannedPrompt) as banned:
        classify(200, body(24, "可能包含敏感词", bannedWord="gore"))
    assert banned.value.banned_word == "gore" and "gore" in str(banned.value) and not banned.value.retryable
    with pytest.raises(OutOfCredit) as credit:
        classify(200, body(25, "余额不足"), "vendor")
    assert isinstance(credit.value, StopSubmitting) and not credit.value.retryable


def test_retry_after_formats() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("3.5") == 3.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30)), now=now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30)), now=now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_long_descriptions_are_truncated_and_dialect_checked() -> None:
    with pytest.raises(ValidationRejected) as info:
        classify(200, body(4, "x" * 5000))
    assert len(str(info.value)) < 400
    with pytest.raises(ValueError, match="dialect"):
        classify(200, body(1, "", "1"), "nonesuch")


def test_client_scrubs_an_echoed_key_from_error_texts() -> None:
    from worker.mjapi import MidjourneyClient

    with MidjourneyClient("http://127.0.0.1:9", "sk-echoed-key") as client:
        error = client._scrub(ValidationRejected("bad key sk-echoed-key", description="got sk-echoed-key"))
    assert "sk-echoed-key" not in str(error) and "sk-echoed-key" not in (error.description or "")
    assert "sk-echoed-key" not in repr(client) and "api_key=set" in repr(client)


@pytest.mark.parametrize("dialect", ["proxy", "vendor"])
@pytest.mark.parametrize(
    ("description", "kind"),
    [
        ("无可用的账号实例", AccountUnavailable),  # the real servers' "no usable account" (upstreams.md)
        ("账号不可用: 1234567890", AccountUnavailable),
        ("关联任务不存在或已失效", NotFound),  # the same code 3 for an unknown parent task
    ],
)
def test_code_3_is_an_account_problem_or_a_missing_task_by_its_text(
    dialect: Dialect, description: str, kind: type[MJError]
) -> None:
    with pytest.raises(MJError) as info:
        classify(200, body(3, description), dialect)
    assert type(info.value) is kind, info.value
    assert isinstance(info.value, StopSubmitting) == (kind is AccountUnavailable)
