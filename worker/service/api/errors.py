"""Every error of the HTTP API as one JSON shape, the body size limit, and request ids.

``{"error": {"status": 422, "field": "priority", "rule": "must be between 0 and 9", "message": "...",
"request_id": "..."}}``: the field and rule are those of ``InvalidInput`` (the same message the Python API
raises). An unexpected error answers 500 with the request id, which is in the log with the traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.mjapi.errors import InvalidInput

log = logging.getLogger("mjqueue.api")

REQUEST_ID = "X-Request-ID"


class ApiError(Exception):
    """An answer other than success: status, message, and the field and rule when input is at fault."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, rule: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.rule, self.extra = status, message, field, rule, extra

    @classmethod
    def invalid(cls, exc: InvalidInput | ValueError, status: int = 422, field_prefix: str = "") -> ApiError:
        """From ``InvalidInput`` (same message); ``field_prefix`` (``[3].``) says which job of a list."""
        field = getattr(exc, "field", None) or None
        rule = getattr(exc, "rule", None) or None
        message = str(exc)
        if field_prefix and field:
            message = message.replace(f"field '{field}'", f"field '{field_prefix}{field}'", 1)
            field = field_prefix + field
        return cls(status, message, field=field, rule=rule)


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or "-")


def error_body(
    status: int, message: str, rid: str, field: str | None = None, rule: str | None = None, **extra: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {"status": status, "message": message, "request_id": rid}
    if field:
        error["field"] = field
    if rule:
        error["rule"] = rule
    error.update(extra)
    return {"error": error}


def _respond(
    request: Request, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    out = {REQUEST_ID: request_id(request), **(headers or {})}
    return JSONResponse(dict(body), status_code=status, headers=out)


def _loc(loc: Sequence[Any]) -> str:
    """``("body", 0, "priority")`` -> ``[0].priority``; ``("query", "limit")`` -> ``limit``."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("JobIn", "list[JobIn]"):  # the union's branch names say nothing to a caller
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def install(app: FastAPI) -> None:
    """Exception handlers for our errors, FastAPI's validation errors, HTTP errors and anything unexpected."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body = error_body(exc.status, exc.message, request_id(request), exc.field, exc.rule, **exc.extra)
        return _respond(request, exc.status, body, headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _loc(first.get("loc") or ())
        rule = str(first.get("msg") or "invalid")
        if first.get("type") == "json_invalid":
            body = error_body(400, f"malformed JSON: {rule}", request_id(request), "body", rule)
            return _respond(request, 400, body)
        details = [{"field": _loc(e.get("loc") or ()), "rule": str(e.get("msg"))} for e in errors[:20]]
        body = error_body(422, f"field '{field}': {rule}", request_id(request), field, rule, errors=details)
        return _respond(request, 422, body)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return _respond(request, exc.status_code, error_body(exc.status_code, str(exc.detail), request_id(request)))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id(request)
        log.error("request %s %s %s failed", rid, request.method, request.url.path, exc_info=exc)
        body = error_body(500, f"internal error (request id {rid}; the server log has the details)", rid)
        return _respond(request, 500, body)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


class BodyTooLarge(HTTPException):
    """Raised while the body is read (so FastAPI passes it on as it is), answered as 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes (MJQ_SERVE_MAX_BODY_BYTES)")


class Guard:
    """ASGI middleware: a request id for every request, and the body cut off past ``limit`` bytes (413)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, rid, self.limit)
            return
        seen = 0
        limit = self.limit

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


async def _too_large(send: Send, rid: str, limit: int) -> None:
    response = JSONResponse(
        error_body(413, str(BodyTooLarge(limit).detail), rid), status_code=413, headers={REQUEST_ID: rid}
    )
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
