"""The HTTP API (``mjq serve``): jobs and batches for services that do not import our code.

Every route goes through the producer API (``tasks.<kind>.apply_async``, ``worker.producer.submit_jobs``), the
prompt-file reader of ``mjq batch`` (``worker.batchfile``) and the CLI's controls (``worker.control``), so a
request is validated, enqueued and steered exactly as from Python or the command line.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile

import tasks
from worker import control
from worker.batchfile import (
    MAX_PERMUTATIONS,
    BatchFileError,
    BatchPlan,
    Defaults,
    Reject,
    RowError,
    parse_bot,
    parse_mode,
    read_batch_data,
    validate_plan,
)
from worker.jobs.kinds import ID_RULE, JOB_ID_RE
from worker.jobs.start import check_pin
from worker.keyfile import KeyFileError, ServiceKey
from worker.logs import configure as configure_logging
from worker.mjapi.errors import InvalidInput
from worker.producer import configure_batch, submit_jobs
from worker.reports.export import FORMATS, write_manifest
from worker.reports.money import batch_money
from worker.reports.progress import FAILED, Snapshot
from worker.reports.upstreams import upstreams_report
from worker.service.api.errors import REQUEST_ID, ApiError, Guard, install, request_id
from worker.service.api.models import JobIn, task_call
from worker.service.api.service import Service, may_see_batch, may_see_job
from worker.service.dashboard import mount as mount_dashboard
from worker.settings import Settings, get_settings
from worker.store.deliveries import batch_callbacks

log = logging.getLogger("mjqueue.api")

BATCH_TYPES = {
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "application/json-lines": ".jsonl",
    "application/x-jsonlines": ".jsonl",
    "text/csv": ".csv",
    "text/plain": ".txt",
}
ACTIONS = ("pause", "resume", "cancel", "requeue")


# ---------------------------------------------------------------------------------------------------- helpers


def _batch_visible(svc: Service, key: ServiceKey, batch_id: str) -> dict[str, Any]:
    """The batch's ledger record if this key may see it; 404 otherwise (another key's batch is not there)."""
    try:
        info = svc.backend.batch(batch_id)
    except LookupError:
        raise ApiError(404, f"no batch {batch_id!r}", field="batch_id") from None
    if not may_see_batch(svc, key, batch_id):
        raise ApiError(404, f"no batch {batch_id!r}", field="batch_id")
    return info


def _job_view(svc: Service, job_id: str) -> dict[str, Any]:
    """The job result dict plus ``final`` (ended and through its finishing step: image downloaded, result
    stored); a job enqueued whose record no worker has created yet reads as queued."""
    ledger = svc.backend.ledger
    try:
        view = ledger.job_result(job_id)
    except KeyError:
        return {"job_id": job_id, "status": "queued", "final": False}
    view["final"] = ledger.unfinished([job_id]) == 0
    return view


def _check_priority(key: ServiceKey, priority: int | None, field: str = "priority") -> None:
    if priority is not None and priority < key.max_priority:
        raise ApiError(
            403,
            f"field '{field}': this key may ask for priority {key.max_priority}-9, not {priority}",
            field=field,
            rule=f"at least {key.max_priority} for key {key.name!r}",
        )


def _take_quota(svc: Service, key: ServiceKey, n: int) -> None:
    if not svc.records.take_quota(key.name, n, key.daily_jobs):
        used = svc.records.quota_used(key.name)
        raise ApiError(
            429,
            f"daily quota of key {key.name!r} reached: {used} of {key.daily_jobs} jobs used today (UTC),"
            f" {n} more asked",
            rule="daily_jobs",
        )


def _claim_batch(svc: Service, key: ServiceKey, batch_id: str, field: str = "batch") -> None:
    """Posting into a batch: a new one becomes this key's; another key's (or one made by `mjq batch`) is 403."""
    if not JOB_ID_RE.match(batch_id):
        raise ApiError(422, f"field '{field}': must be {ID_RULE}", field=field, rule=f"must be {ID_RULE}")
    exists = bool(svc.backend.ledger.batch(batch_id))
    owner = svc.records.owner("batch", batch_id)
    if owner is None and not exists:
        owner = svc.records.claim_batch(batch_id, key.name)
    if owner != key.name and not key.admin:
        raise ApiError(403, f"batch {batch_id!r} belongs to another key", field=field, rule="not your batch")


def _hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- jobs


def _create_jobs(
    svc: Service, key: ServiceKey, jobs: Sequence[JobIn], idem_key: str | None
) -> tuple[int, list[dict[str, Any]]]:
    """Validate every job, then enqueue those not known yet; (HTTP status, job views)."""
    if not jobs:
        raise ApiError(422, "field 'body': give a job object or a non-empty list of jobs", field="body")
    if idem_key is not None and not JOB_ID_RE.match(idem_key):
        raise ApiError(422, f"header 'Idempotency-Key': must be {ID_RULE}", field="Idempotency-Key")
    ids: list[str] = []
    for i, job in enumerate(jobs):
        if job.job_id is not None:
            ids.append(job.job_id)
        elif idem_key is not None:
            suffix = "" if len(jobs) == 1 else f"/{i}"
            ids.append(f"api-{_hash(key.name, idem_key + suffix)[:24]}")
        else:
            ids.append(uuid.uuid4().hex)
    def where(index: int) -> str:
        return f"[{index}]." if len(jobs) > 1 else ""

    calls: list[tuple[str, dict[str, Any]]] = []
    for i, (job, job_id) in enumerate(zip(jobs, ids, strict=True)):
        try:
            name, kwargs = task_call(job, job_id)
            check_pin(job.kind, kwargs, svc.rt)  # before anything of the request is queued
        except InvalidInput as exc:
            raise ApiError.invalid(exc, field_prefix=where(i)) from None
        if kwargs.get("callback_url") and key.callback_secret:
            kwargs["callback_signer"] = key.name  # signed with the key's own secret (a name travels, no secret)
        calls.append((name, kwargs))
        _check_priority(key, job.priority, f"{where(i)}priority")
        if job.batch:
            _claim_batch(svc, key, job.batch, f"{where(i)}batch")
    # idempotency: one record per request key (header) or per job id
    body_hash = _hash(*(job.body_hash() for job in jobs))
    by_id = [f"job:{job_id}" for job_id, job in zip(ids, jobs, strict=True) if job.job_id]
    claims = [idem_key] if idem_key is not None else by_id
    replay = False
    for claim_key in claims:
        got = svc.records.claim_request(key.name, claim_key, body_hash, ids)
        if not got.first:
            if got.body_hash != body_hash:
                raise ApiError(
                    409,
                    f"idempotency key {claim_key.removeprefix('job:')!r} was used with a different request body",
                    field="Idempotency-Key" if idem_key is not None else "job_id",
                    rule="same key, same body",
                )
            replay = True
    ledger = svc.backend.ledger
    known = ledger.existing(ids)
    foreign = [j for j in known if not may_see_job(svc, key, j, ledger.get_job(j))]
    if foreign:
        for claim_key in claims:
            svc.records.forget_request(key.name, claim_key)
        raise ApiError(409, f"job id {foreign[0]!r} is taken", field="job_id", rule="choose another job_id")
    fresh = [(call, job_id) for call, job_id in zip(calls, ids, strict=True) if job_id not in known]
    mine = {job_id for job_id in ids if svc.records.owner("job", job_id) == key.name}
    fresh = [(call, job_id) for call, job_id in fresh if not (replay and job_id in mine)]
    owned, taken = svc.records.claim_jobs(key.name, [job_id for _, job_id in fresh])
    try:
        if taken:  # another key sent this id first, its job perhaps not recorded by a worker yet
            raise ApiError(409, f"job id {taken[0]!r} is taken", field="job_id", rule="choose another job_id")
        _take_quota(svc, key, len(fresh))
    except ApiError:
        svc.records.release_jobs(owned)
        if not replay:
            for claim_key in claims:
                svc.records.forget_request(key.name, claim_key)
        raise
    svc.records.add_jobs(key.name, [job_id for _, job_id in fresh])
    for sent, ((name, kwargs), job_id) in enumerate(fresh):
        try:
            getattr(tasks, name).apply_async(kwargs=kwargs)
        except InvalidInput as exc:
            svc.records.release_jobs([j for _, j in fresh[sent:] if j in owned])
            for claim_key in claims:
                svc.records.forget_request(key.name, claim_key)
            index = ids.index(job_id)
            raise ApiError.invalid(exc, field_prefix=where(index)) from None
        batch_id = kwargs.get("batch_id")
        if batch_id:
            ledger.ensure_batch(str(batch_id))
            ledger.expect_jobs(str(batch_id), [job_id])
    if fresh:
        svc.metrics.jobs_created.labels(key.name).inc(len(fresh))
    status = 201 if fresh else 200
    return status, [_job_view(svc, job_id) for job_id in ids]


def _list_jobs(
    svc: Service, key: ServiceKey, batch: str | None, status: str | None, cursor: str | None, limit: int
) -> dict[str, Any]:
    try:
        position = int(cursor) if cursor else 0
        if position < 0:
            raise ValueError
    except ValueError:
        raise ApiError(422, "field 'cursor': use the next_cursor of the previous page", field="cursor") from None
    ledger = svc.backend.ledger
    if batch is not None:
        _batch_visible(svc, key, batch)
        all_ids = ledger.batch_job_ids(batch)

        def page(start: int, count: int) -> list[str]:
            return all_ids[start : start + count]
    else:
        owner = None if key.admin else key.name

        def page(start: int, count: int) -> list[str]:
            return svc.records.job_ids(owner, start, count)

    found: list[dict[str, Any]] = []
    while len(found) < limit:
        ids = page(position, limit)
        if not ids:
            return {"jobs": found, "next_cursor": None}
        for job_id in ids:
            position += 1
            view = _job_view(svc, job_id)
            if status is None or view.get("status") == status:
                found.append(view)
                if len(found) == limit:
                    break
    more = bool(page(position, 1))
    return {"jobs": found, "next_cursor": str(position) if more else None}


# ---------------------------------------------------------------------------------------------------- batches


def _batch_format(content_type: str, filename: str | None, fmt: str | None) -> str:
    if fmt is not None:
        suffix = {"jsonl": ".jsonl", "csv": ".csv", "txt": ".txt"}.get(fmt.lower())
        if suffix is None:
            raise ApiError(422, "field 'format': use jsonl, csv or txt", field="format", rule="jsonl | csv | txt")
        return suffix
    if filename:
        suffix = PurePath(filename).suffix.lower()
        if suffix in (".jsonl", ".ndjson", ".csv", ".txt"):
            return ".jsonl" if suffix == ".ndjson" else suffix
    suffix = BATCH_TYPES.get(content_type.split(";")[0].strip().lower(), "")
    if not suffix:
        raise ApiError(
            415,
            "a batch body is JSONL (application/x-ndjson), CSV (text/csv), text (text/plain) or a multipart upload"
            " (field 'file'); or give ?format=jsonl|csv|txt",
            field="Content-Type",
        )
    return suffix


def _reject_view(rej: Reject) -> dict[str, Any]:
    return {"row": rej.row, "field": rej.field, "reason": rej.reason, "text": rej.text}


def _submit_batch(
    svc: Service, key: ServiceKey, data: bytes, suffix: str, options: Mapping[str, Any]
) -> tuple[int, dict[str, Any]]:
    """The rules of ``mjq batch``, on bytes sent over HTTP (no local files); (HTTP status, summary)."""
    try:
        mode = parse_mode(options.get("mode"), "mode")
        bot = str(options.get("bot") or "mj")
        parse_bot(bot, "bot")
        then = validate_plan(options.get("then"), "then", files=False)
    except RowError as exc:
        raise ApiError(422, str(exc), field=exc.field, rule=exc.reason) from None
    priority = options.get("priority")
    _check_priority(key, priority)
    batch_id = options.get("batch_id") or f"api-{_hash(key.name, hashlib.sha256(data).hexdigest())[:16]}"
    _claim_batch(svc, key, batch_id, "batch_id")
    defaults = Defaults(mode=mode, bot=bot, then=then, priority=priority)
    try:
        plan = read_batch_data(
            data, Path(f"upload{suffix}"), defaults, max_permutations=MAX_PERMUTATIONS, scope=batch_id, files=False,
            upstreams=svc.rt.pool.served_modes(),
        )
    except BatchFileError as exc:
        raise ApiError(400, str(exc), field="body") from None
    _refuse_urgent_rows(plan, key)
    summary: dict[str, Any] = {
        "batch_id": batch_id,
        "rows": plan.rows,
        "jobs": len(plan.jobs),
        "by_mode": plan.count_by_mode(),
        "followup_jobs": plan.followup_jobs(),
        "warnings": plan.warnings,
        "rejected": [_reject_view(r) for r in plan.rejected],
    }
    if not plan.jobs:
        raise ApiError(422, "no runnable rows", field="body", rule="every row was rejected", batch=summary)
    try:  # the batch options are checked (and recorded) before any quota is used or job sent
        configure_batch(
            svc.backend, batch_id, budget=options.get("budget"), callback_url=options.get("callback_url"),
            callback_signer=key.name if options.get("callback_url") and key.callback_secret else None,
        )
    except InvalidInput as exc:
        raise ApiError.invalid(exc) from None
    new = len(plan.jobs) - len(svc.backend.ledger.existing([j.job_id for j in plan.jobs]))
    _take_quota(svc, key, new)
    submitted, skipped = submit_jobs(svc.backend, plan.jobs, batch_id)
    summary.update(submitted=submitted, skipped=skipped)
    if submitted:
        svc.metrics.jobs_created.labels(key.name).inc(submitted)
    return (201 if submitted else 200), summary


def _refuse_urgent_rows(plan: BatchPlan, key: ServiceKey) -> None:
    """Rows asking for a priority more urgent than the key may use are rejected like any bad row."""
    if key.max_priority <= 0:
        return
    keep = []
    for job in plan.jobs:
        if job.priority is not None and job.priority < key.max_priority:
            reason = f"this key may ask for priority {key.max_priority}-9, not {job.priority}"
            plan.rejected.append(Reject(job.row, "priority", reason, job.prompt[:200]))
        else:
            keep.append(job)
    plan.jobs[:] = keep


def _batch_view(svc: Service, batch_id: str, info: Mapping[str, Any]) -> dict[str, Any]:
    snap = Snapshot.from_batch(batch_id, info)
    jobs = svc.backend.ledger.batch_jobs(batch_id)
    reasons: dict[str, int] = {}
    for job in jobs:
        if job.get("status") in FAILED:
            reason = str(job.get("fail_reason") or job.get("status"))
            reasons[reason] = reasons.get(reason, 0) + 1
    finished_at = [float(j["finished_at"]) for j in jobs if j.get("finished_at")]
    started = float(info.get("created_at") or time.time())
    rate = snap.finished / max(1e-6, (max(finished_at) - started)) if finished_at and snap.finished else 0.0
    remaining = max(0, snap.total - snap.finished)
    return {
        "batch_id": batch_id,
        "status": snap.status,
        "total": snap.total,
        "finished": snap.finished,
        "progress": round(snap.finished / snap.total, 4) if snap.total else 0.0,
        "eta_s": round(remaining / rate, 1) if rate > 0 and remaining else (0.0 if not remaining else None),
        "counts": {
            "succeeded": snap.done,
            "failed": snap.failed,
            "ended": snap.ended,
            "running": snap.running,
            "queued": snap.queued,
        },
        "by_state": dict(snap.counts),
        "failures_by_reason": reasons,
        "money": batch_money(batch_id, info, svc.rt),
        "callbacks": batch_callbacks(info),
        "created_at": info.get("created_at"),
        "meta": {k: v for k, v in (info.get("meta") or {}).items() if k != "callback_signer"},
    }


def _control(svc: Service, batch_id: str, action: str, statuses: Sequence[str]) -> dict[str, Any]:
    rt = svc.rt
    if action == "pause":
        count = control.pause_batch(batch_id, rt)
    elif action == "resume":
        count = control.resume_batch(batch_id, rt)
    elif action == "cancel":
        count = control.cancel_batch(batch_id, rt)
    else:
        try:
            count = control.requeue(batch_id, statuses, rt=rt)
        except ValueError as exc:
            raise ApiError(422, f"field 'status': {exc}", field="status", rule=str(exc)) from None
    return {"batch_id": batch_id, "action": action, "count": count}


def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> ServiceKey:
    """The service key of a request (``Authorization: Bearer <key>``): 401 when missing or unknown."""
    svc: Service = request.app.state.svc
    if not authorization:
        raise ApiError(401, "missing Authorization: Bearer <key>", field="Authorization")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "use Authorization: Bearer <key>", field="Authorization")
    try:
        key = svc.keys.find(token.strip())
    except KeyFileError as exc:
        log.error("keys file unusable: %s", exc)
        raise ApiError(503, "the server's keys file is unusable (see its log)") from None
    if key is None:
        raise ApiError(401, "unknown key", field="Authorization")
    return key


Caller = Annotated[ServiceKey, Depends(caller)]


CONTROL_DOCS = {
    "pause": "Submit nothing more from the batch (jobs already upstream finish).",
    "resume": "Let a paused batch submit again.",
    "cancel": "Queued jobs are never submitted; jobs upstream run to their end.",
    "requeue": "Run again the jobs in `status` (failed, timed_out, cancelled, needs_review; default failed and"
    " timed_out).",
}


def _steer_route(svc: Service, action: str) -> Callable[..., dict[str, Any]]:
    """The route of one batch control (a function per action, so the action is not a request parameter)."""

    def steer(key: Caller, batch_id: str, status: Annotated[list[str] | None, Query()] = None) -> dict[str, Any]:
        _batch_visible(svc, key, batch_id)
        return _control(svc, batch_id, action, status or ["failed", "timed_out"])

    return steer


# ---------------------------------------------------------------------------------------------------- the app


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app (settings default to the process settings)."""
    svc = Service(settings or get_settings())
    app = FastAPI(
        title="mjqueue",
        version="1",
        summary="Midjourney jobs through mjqueue: jobs, batches, manifests and controls.",
        description="Bearer keys from MJQ_SERVE_KEYS_FILE (`mjq serve-key add NAME`). Errors are"
        ' `{"error": {"status", "message", "field", "rule", "request_id"}}`.',
    )
    app.state.svc = svc
    install(app)
    app.add_middleware(Guard, limit=svc.settings.serve_max_body_bytes)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        await run_in_threadpool(svc.metrics.requests.labels(path, str(response.status_code)).inc)
        response.headers.setdefault(REQUEST_ID, request_id(request))
        return response


    @app.get("/healthz", tags=["service"])
    def healthz() -> JSONResponse:
        """Redis answers (the API can enqueue and read the ledger)."""
        try:
            ok = bool(svc.backend.redis.ping())
        except Exception as exc:  # any Redis trouble is "not healthy", with its reason
            return JSONResponse({"ok": False, "error": f"redis: {exc}"}, status_code=503)
        return JSONResponse({"ok": ok, "keys": svc.keys.count()})

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus text: jobs by state, batches, slots in use, waiting jobs, submits today, API requests."""
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/upstreams", tags=["service"])
    def get_upstreams(key: Caller) -> dict[str, Any]:
        """The `mjq upstreams` table: each upstream's state and why, slots in use, submits today, last hour."""
        return {"upstreams": upstreams_report(svc.rt)}

    @app.post("/v1/jobs", tags=["jobs"], status_code=201)
    def post_jobs(
        key: Caller,
        body: Annotated[JobIn | list[JobIn], Body()],
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> JSONResponse:
        """Enqueue one job (an object) or several (a list); 201 when created, 200 when all were known."""
        jobs = body if isinstance(body, list) else [body]
        status, views = _create_jobs(svc, key, jobs, idempotency_key)
        return JSONResponse(views if isinstance(body, list) else views[0], status_code=status)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(key: Caller, job_id: str) -> dict[str, Any]:
        """The job result (the dict `.get()` returns in Python)."""
        job = svc.backend.ledger.get_job(job_id) if JOB_ID_RE.match(job_id) else None
        if not JOB_ID_RE.match(job_id) or not may_see_job(svc, key, job_id, job):
            raise ApiError(404, f"no job {job_id!r}", field="job_id")
        return _job_view(svc, job_id)

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(
        key: Caller,
        batch: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    ) -> dict[str, Any]:
        """Your jobs (a batch's with ``batch``), oldest first, ``status`` to filter; page on with ``next_cursor``."""
        return _list_jobs(svc, key, batch, status, cursor, limit or svc.settings.serve_page_size)

    @app.post(
        "/v1/batches",
        tags=["batches"],
        status_code=201,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/csv": {"schema": {"type": "string"}},
                    "multipart/form-data": {
                        "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
                    },
                },
                "required": True,
            }
        },
    )
    async def post_batch(
        request: Request,
        key: Caller,
        batch_id: str | None = None,
        mode: str | None = None,
        then: str | None = None,
        priority: Annotated[int | None, Query(ge=0, le=9)] = None,
        bot: str | None = None,
        format: Literal["jsonl", "csv", "txt"] | None = None,
        budget: Annotated[str | None, Query(description="most the batch may spend (MJQ_CURRENCY)")] = None,
        callback_url: Annotated[
            str | None, Query(description="POST the signed batch summary there once when the batch finishes")
        ] = None,
    ) -> JSONResponse:
        """A prompt file as the body (JSONL, CSV or text) or a multipart upload (``file``), with the rules of
        ``mjq batch``: rejected rows are in the answer, the rest is enqueued; posting it again resumes.
        ``budget`` and ``callback_url`` are batch options (the batch callback fires once, with the summary)."""
        content_type = request.headers.get("content-type", "")
        options: dict[str, Any] = {"batch_id": batch_id, "mode": mode, "then": then, "priority": priority, "bot": bot,
                                   "budget": budget, "callback_url": callback_url}
        filename = None
        if content_type.lower().startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=20)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "field 'file': the multipart upload needs a file part named 'file'", field="file")
            data = await upload.read()
            filename = upload.filename
            for name in ("batch_id", "mode", "then", "bot", "priority", "budget", "callback_url"):
                value = form.get(name)
                if isinstance(value, str) and value and options.get(name) is None:
                    options[name] = value
            if isinstance(options["priority"], str):
                try:
                    options["priority"] = int(options["priority"])
                except ValueError:
                    raise ApiError(422, "field 'priority': must be a whole number 0-9", field="priority") from None
        else:
            data = await request.body()
        suffix = _batch_format(content_type, filename, format)
        status, summary = await run_in_threadpool(_submit_batch, svc, key, data, suffix, options)
        return JSONResponse(summary, status_code=status)

    @app.get("/v1/batches/{batch_id}", tags=["batches"])
    def get_batch(key: Caller, batch_id: str) -> dict[str, Any]:
        """Counts, progress, ETA, failures by reason, spend (``money``) and callback delivery (``callbacks``);
        of a batch archived by retention, its summary with ``archived: true`` (where its manifest went)."""
        archived = svc.backend.ledger.archived(batch_id) if JOB_ID_RE.match(batch_id) else None
        if archived is not None and not svc.backend.ledger.batch(batch_id) and may_see_batch(svc, key, batch_id):
            return {**archived, "archived": True}
        return _batch_view(svc, batch_id, _batch_visible(svc, key, batch_id))

    @app.get("/v1/batches/{batch_id}/manifest", tags=["batches"], response_class=PlainTextResponse)
    def get_manifest(key: Caller, batch_id: str, format: Literal["jsonl", "csv"] = "jsonl") -> Response:
        """The manifest of ``mjq export``: one row per job (JSONL or CSV)."""
        _batch_visible(svc, key, batch_id)
        assert format in FORMATS
        out = io.StringIO()
        write_manifest(svc.backend.ledger.batch_jobs(batch_id), format, out)
        media = "application/x-ndjson" if format == "jsonl" else "text/csv"
        return Response(out.getvalue(), media_type=f"{media}; charset=utf-8")

    for action in ACTIONS:
        app.post(
            f"/v1/batches/{{batch_id}}/{action}", tags=["batches"], summary=f"{action} a batch",
            description=CONTROL_DOCS[action],
        )(_steer_route(svc, action))

    mount_dashboard(app, svc)  # the pages at / (signed in with a key or MJQ_DASHBOARD_AUTH)
    return app


def serve(settings: Settings | None = None) -> None:
    """Run the HTTP API with uvicorn (``mjq serve``)."""
    import uvicorn

    settings = settings or get_settings()
    configure_logging(settings)  # levels too (log_level=None: uvicorn leaves them; access lines at DEBUG)
    uvicorn.run(create_app(settings), host=settings.serve_host, port=settings.serve_port, log_level=None,
                log_config=None)
