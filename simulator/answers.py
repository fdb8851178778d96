"""Every answer of the fake upstream, per code dialect, in one place (the README's dialect table mirrors it).

The shapes follow the real servers: the Java midjourney-proxy and its C# "Plus" fork for the ``proxy``
dialect, the aggregator's document for ``vendor``.  Where a dialect has no code for a situation we answer
what the real deployments of that family answer:

============================  ==========================================  ====================================
situation                     proxy (self-hosted, maybe behind a gateway)  vendor (aggregator document)
============================  ==========================================  ====================================
submitted / queued            1 / 22 (+ ``numberOfQueues``)                 1 / 22, ``result`` as a JSON number
validation error              200, code 4                                  200, code 21 without a task id
task not found (action)       200, code 3                                  200, code 21 without a task id
queue full                    200, code 23 "队列已满"                       200, code 23 "系统繁忙" (system busy)
banned prompt                 200, code 24 + ``properties.bannedWord``      200, code 4 + ``properties.bannedWord``
out of credit                 400, code 4 "quota_not_enough" (Go gateway)   200, code 25 "余额不足"
account unavailable           200, code 3 "无可用的账号实例"                 200, code 24 "账号不可用"
unknown task on fetch         404                                          200 with an empty body
============================  ==========================================  ====================================
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from simulator.config import Dialect


def result(code: int, description: str, value: Any = None, properties: dict[str, Any] | None = None,
           status: int = 200) -> JSONResponse:
    """A submit result ``{"code", "description", "properties", "result"}``."""
    body = {"code": code, "description": description, "properties": properties or {}, "result": value}
    return JSONResponse(body, status)


def error(status: int, code: int, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An HTTP error with the documented error body."""
    return JSONResponse({"code": code, "description": description, "result": None}, status, headers=headers)


def wire_id(task_id: str, dialect: Dialect) -> int | str:
    """Vendor answers carry the id as a JSON number, self-hosted servers as a string: both are real."""
    return int(task_id) if dialect == "vendor" else task_id


def submitted(task_id: str, dialect: Dialect) -> Response:
    return result(1, "提交成功", wire_id(task_id, dialect))


def queued(task_id: str, ahead: int, dialect: Dialect) -> Response:
    return result(22, f"排队中，前面还有{ahead}个任务", wire_id(task_id, dialect),
                  {"numberOfQueues": ahead, "discordInstanceId": "sim-instance-1"})


def exists(task_id: str, status: str, dialect: Dialect) -> Response:
    return result(21, "任务已存在", wire_id(task_id, dialect), {"status": status})


def modal(task_id: str, final_prompt: str, remix: bool, dialect: Dialect, text: str = "窗口等待") -> Response:
    return result(21, text, wire_id(task_id, dialect),
                  {"status": "MODAL", "finalPrompt": final_prompt, "remix": remix})


def validation(message: str, dialect: Dialect) -> Response:
    return result(21 if dialect == "vendor" else 4, message)


def not_found(message: str, dialect: Dialect, status: int = 200) -> Response:
    return result(21 if dialect == "vendor" else 3, message, status=status)


def queue_full(dialect: Dialect) -> Response:
    if dialect == "vendor":
        return result(23, "系统繁忙，请稍后再试 (system busy)")
    return result(23, "队列已满，请稍后尝试")


def banned(word: str, prompt: str, dialect: Dialect) -> Response:
    properties = {"promptEn": prompt, "bannedWord": word}
    if dialect == "vendor":
        return result(4, f"prompt contains a banned word: {word} (可能包含敏感词)", properties=properties)
    return result(24, "可能包含敏感词", properties=properties)


def out_of_credit(dialect: Dialect) -> Response:
    if dialect == "vendor":
        return result(25, "余额不足 (insufficient balance)")
    # self-hosted servers have no balance; the Go gateways that sell them (one-api/new-api) answer this
    return JSONResponse({"code": 4, "description": "quota_not_enough", "type": "upstream_error",
                         "result": None}, 400)


def account_unavailable(dialect: Dialect) -> Response:
    if dialect == "vendor":
        return result(24, "账号不可用 (account unavailable)")
    return result(3, "无可用的账号实例")  # every self-hosted server's code (Java, Plus, trueai)


# -- per profile (simulator/profiles.py): the servers' own texts --------------------------------------------

USER_LIMITS = {"concurrent": "并发数已达上限", "queue": "队列数已达上限", "daily": "用户今日绘图次数已达上限"}
NEWAPI_SATURATED = "当前分组负载已饱和，请稍后再试，或升级账户以提升服务质量。"


def empty(status: int) -> Response:
    """A bare status: trueai's 429 and 403, Java's and Plus's 401."""
    return Response(b"", status)


def user_limit(kind: str) -> Response:
    """trueai's temporary per-user limits: code 4 with the limit's text (busy, or the day's quota)."""
    return result(4, USER_LIMITS[kind])


def trueai_queue_full() -> Response:
    return result(9, "提交失败，队列已满，请稍后重试")


def system_error(dialect: Dialect) -> Response:
    if dialect == "vendor":
        return result(23, "系统异常 (system error)")
    return result(9, "提交失败，系统异常")


def newapi_error(status: int, code: int, description: str) -> Response:
    """new-api's own MJ errors: ``{"code", "description": "<desc> <result>", "type": "upstream_error"}``."""
    return JSONResponse({"code": code, "description": description, "type": "upstream_error"}, status)


def newapi_unauthorized(message: str) -> Response:
    return JSONResponse({"error": {"message": message, "type": "new_api_error"}}, 401)


def java_not_found(path: str) -> Response:
    """Spring Boot's answer for a route the Java server does not have."""
    return JSONResponse({"timestamp": "2026-01-01T00:00:00.000+00:00", "status": 404, "error": "Not Found",
                         "path": path}, 404)


def trueai_unbindable(message: str) -> Response:
    return JSONResponse({"success": False, "code": -1, "message": message}, 200)


def unknown_task(style: str, dialect: Dialect, profile: str = "plus") -> Response:
    """Fetch of an id the server does not know: the profile's answer (Java an empty 200, trueai 204, new-api
    400 ``task_no_found``; Plus and vendor by dialect: 404, or 200 with an empty body), or ``style`` forced."""
    if style == "dialect":
        by_dialect = "empty" if dialect == "vendor" else "404"
        style = {"java": "empty", "trueai": "204", "newapi": "400"}.get(profile, by_dialect)
    if style == "empty":
        return Response(b"", media_type="application/json")
    if style == "204":
        return Response(status_code=204)
    if style == "400":
        return newapi_error(400, 4, "task_no_found ")
    return error(404, 3, "任务不存在 (task not found)")


def server_error() -> Response:
    return error(500, 9, "Internal Server Error")


def rate_limited(retry_after_s: float) -> Response:
    return error(429, 429, "请求过于频繁 (too many requests)", {"Retry-After": f"{retry_after_s:g}"})


def unauthorized() -> Response:
    return error(401, 401, "invalid api key")


def forbidden() -> Response:
    return error(403, 403, "this key may not use this endpoint")
