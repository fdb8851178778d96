"""The notifyHook receiver: ``POST /hook/{job_id}/{token}`` -> the one ``settle`` step.

The token is an HMAC of the job id with the webhook secret, so only the upstream we gave the URL to can post.
Callbacks are hints (lost, duplicated, reordered in practice): a body must name the job's upstream id (or
carry our job id in ``state`` while the submit answer is not recorded yet); duplicates and regressions change
nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from worker.jobs import hooks_seen
from worker.jobs import kinds as requests
from worker.jobs import settle as outcomes
from worker.logs import configure as configure_logging
from worker.mjapi.models import Task
from worker.settings import Settings, get_settings, webhook_secret_problem
from worker.store import runtime

log = logging.getLogger("mjqueue.webhook")


class BodyTooLarge(Exception):
    pass


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (without reading further) once it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status)


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app (settings default to the process settings)."""
    settings = settings or get_settings()
    unusable = webhook_secret_problem(settings.webhook_secret.get_secret_value())

    async def hook(request: Request) -> JSONResponse:
        if unusable:  # tokens made with an empty or known secret can be forged: accept none
            return _error(503, f"MJQ_WEBHOOK_SECRET {unusable}")
        job_id = str(request.path_params["job_id"])
        token = str(request.path_params["token"])
        if not hmac.compare_digest(token.encode(), requests.webhook_token(job_id, settings).encode()):
            return _error(403, "bad token")
        try:
            raw = await read_limited(request, settings.webhook_max_body_bytes)
        except BodyTooLarge:
            return _error(413, f"body over {settings.webhook_max_body_bytes} bytes")
        try:
            body: Any = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deeper than the parser goes
            return _error(400, "malformed JSON")
        if not isinstance(body, dict) or "id" not in body:
            return _error(400, "expected a task object with an id")
        rt = runtime.runtime()
        outcome = await run_in_threadpool(_settle, rt, job_id, body)
        if outcome == "unknown":
            return _error(404, "unknown job")
        if outcome == "mismatch":
            return _error(409, "task does not belong to this job")
        return JSONResponse({"ok": True, "outcome": outcome})

    async def healthz(_request: Request) -> JSONResponse:
        rt = runtime.runtime()
        ok = await run_in_threadpool(rt.redis.ping)
        return JSONResponse({"ok": bool(ok)})

    return Starlette(
        routes=[
            Route("/hook/{job_id}/{token}", hook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def _settle(rt: Any, job_id: str, body: dict[str, Any]) -> str:
    """The callback read as the client's ``Task`` (fields of a wrong type read as absent) and settled; its
    valid token says the upstream sends callbacks (``worker.jobs.hooks_seen``)."""
    hooks_seen.callback_arrived(rt, job_id)
    try:
        task = Task.read(body)
    except ValueError:  # no usable id: it cannot be this job's task
        return "unknown" if rt.ledger.status(job_id) is None else "mismatch"
    return outcomes.settle(job_id, task, "webhook", rt)


def serve(settings: Settings | None = None) -> None:
    """Run the webhook server with uvicorn (``mjq webhook``)."""
    import uvicorn

    settings = settings or get_settings()
    configure_logging(settings)  # levels too (log_level=None: uvicorn leaves them; access lines at DEBUG)
    uvicorn.run(
        create_app(settings), host=settings.webhook_host, port=settings.webhook_port, log_level=None,
        log_config=None,
    )
