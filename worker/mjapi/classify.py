"""The one response classifier: (HTTP status, body, dialect, headers) -> SubmitResult, or an MJError.

Both clients call it; nothing else reads result codes.  The dialect (``proxy`` for self-hosted servers,
``vendor`` for the aggregator's document) decides codes 23 and 24 when the answer itself says nothing more;
recognisable answers win over the dialect: a ``bannedWord`` property or a banned/敏感 text is a banned
prompt, a balance text is out of credit, an account text is account unavailable, in either dialect.
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
    Forbidden,
    MJError,
    NotFound,
    OutOfCredit,
    QueueFull,
    RateLimited,
    Rejected,
    ServerError,
    Unauthorized,
    UpstreamSystemError,
    ValidationRejected,
)
from worker.mjapi.models import Outcome, SubmitResult

Dialect = Literal["proxy", "vendor"]
DIALECTS: tuple[Dialect, ...] = ("proxy", "vendor")

SUBMITTED, IN_QUEUE, EXISTED, CODE_23, CODE_24, NO_BALANCE = 1, 22, 21, 23, 24, 25
NOT_FOUND, VALIDATION_ERROR, FAILURE = 3, 4, 9

_BANNED = re.compile(r"banned|sensitive|prohibited|敏感|违禁|违规|屏蔽", re.I)
_CREDIT = re.compile(r"balance|credit|quota|余额|额度|积分|欠费", re.I)
_ACCOUNT = re.compile(r"account|instance|账号|账户|帐号|实例", re.I)
_QUEUE_FULL = re.compile(r"queue (is )?full|队列已满|排队已满|queue_full", re.I)
_MODAL = re.compile(r"窗口等待|modal|waiting", re.I)
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
    """Errors the answer makes unambiguous whatever the dialect (the checks are ordered: "account
    balance" is about credit, "account banned" about the account, "banned word" about the prompt)."""
    args: dict[str, Any] = {"code": code, "status": status, "description": description}
    word = properties.get("bannedWord") or properties.get("banned_word")
    if word:
        return BannedPrompt(
            _describe("banned prompt", code, status, description) + f" [banned word: {word}]",
            banned_word=str(word),
            **args,
        )
    if code == NO_BALANCE or _CREDIT.search(description):
        return OutOfCredit(_describe("out of credit", code, status, description), **args)
    if code in (CODE_24, FAILURE, NOT_FOUND) and _ACCOUNT.search(description):  # 3 "无可用的账号实例": no account
        return AccountUnavailable(_describe("account unavailable", code, status, description), **args)
    if code in (CODE_24, VALIDATION_ERROR, FAILURE, None) and _BANNED.search(description):
        return BannedPrompt(_describe("banned prompt", code, status, description), **args)
    if _QUEUE_FULL.search(description):
        return QueueFull(_describe("queue full", code, status, description), **args)
    return None


def _error_for_code(
    code: int, status: int, description: str, properties: Mapping[str, Any], dialect: Dialect
) -> MJError:
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


def _error_for_status(status: int, body: Any, headers: Mapping[str, str] | None, dialect: Dialect) -> MJError:
    payload = body if isinstance(body, Mapping) else {}
    description = _text(
        payload.get("description")
        or payload.get("message")
        or payload.get("error")
        or (body if isinstance(body, str) else "")
    )
    code = payload.get("code") if isinstance(payload.get("code"), int) else None
    properties = _properties(payload)
    args: dict[str, Any] = {"code": code, "status": status, "description": description}
    retry_after = retry_after_seconds(_headers_get(headers, "retry-after"))
    if status == 429:
        return RateLimited(
            _describe("rate limited", code, status, description), retry_after=retry_after, **args
        )
    if status >= 500:
        return ServerError(
            _describe("upstream server error", code, status, description), retry_after=retry_after, **args
        )
    if status == 401:
        return Unauthorized(_describe("unauthorized (check MJQ_API_KEY)", code, status, description), **args)
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


def raise_for_status(
    status: int, body: Any, dialect: Dialect = "proxy", headers: Mapping[str, str] | None = None
) -> None:
    """Raise the error an HTTP error status means (>= 400); the body refines it."""
    if status >= 400:
        raise _error_for_status(status, body, headers, dialect)


def check_code(body: Any, status: int = 200, dialect: Dialect = "proxy") -> Mapping[str, Any]:
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
    raise _error_for_code(code, status, description, properties, dialect)


def classify(
    status: int, body: Any, dialect: Dialect = "proxy", headers: Mapping[str, str] | None = None
) -> SubmitResult:
    """What a submit answer means: a ``SubmitResult`` (accepted, exists, modal) or a raised ``MJError``."""
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, not {dialect!r}")
    raise_for_status(status, body, dialect, headers)
    answer = check_code(body, status, dialect)
    code = int(answer["code"])
    description = _text(answer.get("description"))
    raw_properties = answer.get("properties")
    properties = dict(raw_properties) if isinstance(raw_properties, Mapping) else {}
    task_id = _task_id(answer.get("result"))
    outcome: Outcome
    if code == EXISTED:
        outcome = "modal" if _is_modal(description, properties) else "exists"
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
