"""The one response classifier: (HTTP status, body, profile, headers) -> SubmitResult, or an MJError.

Both clients call it; nothing else reads result codes.  The profile (``worker.mjapi.profiles``; the old
dialect names ``proxy`` = ``auto`` and ``vendor`` still work) decides codes 23 and 24 when the answer itself
says nothing more; recognisable answers win in every profile, read from the code, the description text and
the HTTP status together (the real bodies are in ``/work/shared/upstreams.md``):

- a ``bannedWord`` property or a banned/敏感 text: banned prompt (``Rejected``);
- code 5 ``do_request_failed``, ``*_unknown``, ``insert_*_failed``: the request may have been created
  upstream (``AnswerLost``: never resent);
- "今日绘图次数已达上限": daily limit (``DailyLimitReached``: stop until the next UTC day);
- balance/quota texts, code 25: out of credit;
- queue full, "并发数已达上限", "队列数已达上限", "负载已饱和", 繁忙/busy, any 429: ``Busy`` (retried, not counted);
- an account text with code 3/9/24 ("无可用的账号实例", "账号不可用"): account unavailable (the breaker);
- "系统异常", "服务暂不可用", "提交…任务异常": upstream trouble (``UpstreamSystemError``: retried, counted);
- HTTP 403 with an empty body right after 429s (``after_429``): a temporary block (``TemporarilyBlocked``: cool
  down, resume by itself) - trueai's IP limiter; without 429s before it, an empty 403 is a refusal for good
  (``Forbidden``: a key, an IP allow-list or a firewall), and resuming by itself would only hit it again;
- code 1/21/22 whose description is a modal wait ("窗口等待", "Waiting for window confirm"): modal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from worker.mjapi.errors import (
    AccountUnavailable,
    AnswerLost,
    BannedPrompt,
    Busy,
    DailyLimitReached,
    Forbidden,
    MJError,
    NotFound,
    OutOfCredit,
    QueueFull,
    RateLimited,
    Rejected,
    ServerError,
    TemporarilyBlocked,
    Unauthorized,
    UpstreamSystemError,
    ValidationRejected,
)
from worker.mjapi.models import Outcome, SubmitResult
from worker.mjapi.profiles import PROFILE_NAMES, Profile, profile_for

Dialect = Literal["proxy", "vendor"]
DIALECTS: tuple[str, ...] = ("proxy", *PROFILE_NAMES)  # profile names, and the old dialect alias "proxy"
ProfileIn = Profile | str

SUBMITTED, IN_QUEUE, EXISTED, CODE_23, CODE_24, NO_BALANCE = 1, 22, 21, 23, 24, 25
NOT_FOUND, VALIDATION_ERROR, REQUEST_FAILED, FAILURE, SATURATED = 3, 4, 5, 9, 30

_BANNED = re.compile(r"banned|sensitive|prohibited|敏感|违禁|违规|屏蔽", re.I)
_CREDIT = re.compile(r"balance|credit|quota|余额|额度|积分|欠费", re.I)
_ACCOUNT = re.compile(r"account|instance|账号|账户|帐号|实例", re.I)
_QUEUE_FULL = re.compile(r"queue (is )?full|队列已满|排队已满|queue_full", re.I)
_MODAL = re.compile(r"窗口等待|modal|waiting", re.I)
_MODAL_LATE = re.compile(r"窗口等待|waiting for window|modal", re.I)  # on a code 1/22 answer: stricter
_BUSY = re.compile(r"繁忙|busy|并发数已达上限|队列数已达上限|负载已饱和|saturat|concurrency limit", re.I)
_DAILY = re.compile(r"今日.{0,8}次数已达上限|daily (limit|quota)", re.I)
_TROUBLE = re.compile(r"系统异常|服务暂不可用|提交.{0,30}任务异常|system error|service unavailable", re.I)
_LOST = re.compile(r"do_request_failed|[a-z]+_unknown\b|insert_[a-z_]*_failed", re.I)
_NO_TASK = re.compile(r"task_no_found|task_not_found|任务不存在|不存在或已失效|task not found", re.I)
_FIRST_NUMBER = re.compile(r"\d+")
_MAX_TEXT = 300


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _text(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def _task_id(result: Any) -> str | None:
    if isinstance(result, bool) or result is None:
        return None
    if isinstance(result, int | str) and str(result).strip():
        return str(result).strip()
    return None


def _queue_position(properties: Mapping[str, Any], description: str) -> int | None:
    for key in ("numberOfQueues", "queuePosition", "queue_position", "position"):
        value = properties.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    found = _FIRST_NUMBER.search(description)
    return int(found.group()) if found else None


def _is_modal(description: str, properties: Mapping[str, Any]) -> bool:
    if _MODAL.search(description):
        return True
    status = str(properties.get("status") or properties.get("taskStatus") or "").upper()
    return status == "MODAL" and ("remix" in properties or "finalPrompt" in properties)


def _properties(body: Mapping[str, Any]) -> Mapping[str, Any]:
    value = body.get("properties")
    return value if isinstance(value, Mapping) else {}


def _headers_get(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _describe(kind: str, code: int | None, status: int | None, description: str) -> str:
    where = ", ".join(
        p for p in (f"code {code}" if code is not None else "", f"HTTP {status}" if status else "") if p
    )
    return f"{kind} ({where}): {description}" if description else f"{kind} ({where})"


def _recognised(
    code: int | None, status: int | None, description: str, properties: Mapping[str, Any]
) -> MJError | None:
    """Errors the answer makes unambiguous whatever the profile (the checks are ordered: "account
    balance" is about credit, "account banned" about the account, "banned word" about the prompt)."""
    args: dict[str, Any] = {"code": code, "status": status, "description": description}
    word = properties.get("bannedWord") or properties.get("banned_word")
    if word:
        return BannedPrompt(
            _describe("banned prompt", code, status, description) + f" [banned word: {word}]",
            banned_word=str(word),
            **args,
        )
    if code == REQUEST_FAILED or _LOST.search(description):
        return AnswerLost(
            _describe("answer lost: the upstream may have created the task", code, status, description), **args
        )
    if _DAILY.search(description):
        return DailyLimitReached(_describe("daily limit reached", code, status, description), **args)
    if code == NO_BALANCE or _CREDIT.search(description):
        return OutOfCredit(_describe("out of credit", code, status, description), **args)
    if _QUEUE_FULL.search(description):
        return QueueFull(_describe("queue full", code, status, description), **args)
    if code == SATURATED or _BUSY.search(description):
        return Busy(_describe("upstream busy", code, status, description), **args)
    if code in (NOT_FOUND, CODE_24, FAILURE) and _ACCOUNT.search(description):
        return AccountUnavailable(_describe("account unavailable", code, status, description), **args)
    if _TROUBLE.search(description):
        return UpstreamSystemError(_describe("upstream trouble", code, status, description), **args)
    if code in (CODE_24, VALIDATION_ERROR, FAILURE, None) and _BANNED.search(description):
        return BannedPrompt(_describe("banned prompt", code, status, description), **args)
    if _NO_TASK.search(description):
        return NotFound(_describe("not found", code, status, description), **args)
    return None


def _error_for_code(
    code: int, status: int, description: str, properties: Mapping[str, Any], dialect: Dialect
) -> MJError:
    """``dialect`` is the profile's ``codes`` column: how bare codes 23 and 24 read."""
    known = _recognised(code, status, description, properties)
    if known is not None:
        return known
    args: dict[str, Any] = {"code": code, "status": status, "description": description}
    if code == CODE_24:
        if dialect == "vendor":
            return AccountUnavailable(_describe("account unavailable", code, status, description), **args)
        return BannedPrompt(_describe("banned prompt", code, status, description), **args)
    if code == CODE_23:
        if dialect == "proxy":
            return QueueFull(_describe("queue full", code, status, description), **args)
        return UpstreamSystemError(_describe("upstream system error", code, status, description), **args)
    if code in (EXISTED, VALIDATION_ERROR):
        return ValidationRejected(_describe("rejected as invalid", code, status, description), **args)
    if code == NOT_FOUND:
        return NotFound(_describe("not found", code, status, description), **args)
    if code == FAILURE:
        return UpstreamSystemError(_describe("upstream failure", code, status, description), **args)
    return Rejected(_describe("unexpected result code", code, status, description), **args)


def _error_text(payload: Mapping[str, Any], body: Any) -> str:
    error = payload.get("error")
    if isinstance(error, Mapping):  # new-api: {"error": {"message": ..., "type": "new_api_error"}}
        error = error.get("message") or error.get("code") or error.get("type")
    return _text(
        payload.get("description")
        or payload.get("message")
        or error
        or (body if isinstance(body, str) else "")
    ).strip()


def _error_for_status(
    status: int, body: Any, headers: Mapping[str, str] | None, dialect: Dialect, after_429: bool = False
) -> MJError:
    payload = body if isinstance(body, Mapping) else {}
    description = _error_text(payload, body)
    code = payload.get("code") if isinstance(payload.get("code"), int) else None
    properties = _properties(payload)
    args: dict[str, Any] = {"code": code, "status": status, "description": description}
    retry_after = retry_after_seconds(_headers_get(headers, "retry-after"))
    if code == REQUEST_FAILED or _LOST.search(description):  # any status: the relay may have created the task
        return AnswerLost(
            _describe("answer lost: the upstream may have created the task", code, status, description), **args
        )
    if status == 429:
        return RateLimited(
            _describe("rate limited", code, status, description), retry_after=retry_after, **args
        )
    if status >= 500:
        return ServerError(
            _describe("upstream server error", code, status, description), retry_after=retry_after, **args
        )
    if status == 401:
        if _CREDIT.search(description):  # new-api: 401 "该令牌额度已用尽"
            return OutOfCredit(_describe("out of credit", code, status, description), **args)
        return Unauthorized(_describe("unauthorized (check MJQ_API_KEY)", code, status, description), **args)
    if status == 403 and not description and code is None:
        if after_429:
            return TemporarilyBlocked(
                _describe("temporarily blocked (HTTP 403 with an empty body, after 429s)", code, status, ""), **args
            )
        return Forbidden(
            _describe(
                "forbidden (HTTP 403 with an empty body and no 429 before it: the key, an IP allow-list or a"
                " firewall refuses us)", code, status, ""),
            **args,
        )
    known = _recognised(code, status, description, properties)
    if known is not None:
        return known
    if status == 403:
        return Forbidden(_describe("forbidden", code, status, description), **args)
    if status == 404:
        return NotFound(_describe("not found", code, status, description), **args)
    if code is not None and code not in (SUBMITTED, IN_QUEUE, EXISTED):
        return _error_for_code(code, status, description, properties, dialect)
    return ValidationRejected(_describe("rejected as invalid", code, status, description), **args)


def _codes(profile: ProfileIn) -> Dialect:
    if isinstance(profile, Profile):
        return profile.codes
    try:
        return profile_for(profile).codes
    except ValueError:
        raise ValueError(f"dialect must be one of {DIALECTS}, not {profile!r}") from None


def raise_for_status(
    status: int,
    body: Any,
    dialect: ProfileIn = "proxy",
    headers: Mapping[str, str] | None = None,
    *,
    after_429: bool = False,
) -> None:
    """Raise the error an HTTP error status means (>= 400); the body refines it. ``after_429``: the upstream
    answered 429 shortly before (an empty 403 is then a temporary block)."""
    if status >= 400:
        raise _error_for_status(status, body, headers, _codes(dialect), after_429)


def check_code(body: Any, status: int = 200, dialect: ProfileIn = "proxy") -> Mapping[str, Any]:
    """The body of a 2xx code/description/result answer; raise for error codes and unreadable answers.

    Codes 1, 21 and 22 pass (21 only with a task id); the caller reads ``result``.
    """
    if (
        not isinstance(body, Mapping)
        or not isinstance(body.get("code"), int)
        or isinstance(body["code"], bool)
    ):
        raise AnswerLost(
            f"unreadable answer (HTTP {status}): no result code; the request may have been accepted",
            status=status,
        )
    code = int(body["code"])
    description = _text(body.get("description"))
    properties = _properties(body)
    if code in (SUBMITTED, IN_QUEUE) or (code == EXISTED and _task_id(body.get("result")) is not None):
        return body
    raise _error_for_code(code, status, description, properties, _codes(dialect))


def classify(
    status: int,
    body: Any,
    dialect: ProfileIn = "proxy",
    headers: Mapping[str, str] | None = None,
    *,
    after_429: bool = False,
) -> SubmitResult:
    """What a submit answer means: a ``SubmitResult`` (accepted, exists, modal) or a raised ``MJError``.

    ``dialect`` is a profile (``worker.mjapi.profiles``) or its name; ``proxy`` is the old name of ``auto``.
    """
    dialect = _codes(dialect)
    raise_for_status(status, body, dialect, headers, after_429=after_429)
    answer = check_code(body, status, dialect)
    code = int(answer["code"])
    description = _text(answer.get("description"))
    raw_properties = answer.get("properties")
    properties = dict(raw_properties) if isinstance(raw_properties, Mapping) else {}
    task_id = _task_id(answer.get("result"))
    outcome: Outcome
    if code == EXISTED:
        outcome = "modal" if _is_modal(description, properties) else "exists"
    elif _MODAL_LATE.search(description):  # new-api rewrites 21 "窗口等待" to 1; 22 may say it too
        outcome = "modal"
    else:
        outcome = "queued" if code == IN_QUEUE else "submitted"
    return SubmitResult(
        code=code,
        description=description,
        task_id=task_id,
        properties=properties,
        outcome=outcome,
        queue_position=_queue_position(properties, description) if code == IN_QUEUE else None,
    )
