"""The dashboard: server-rendered pages (Jinja2) on the HTTP API's app at ``/``, live through server-sent events.

Who may look: a service key (typed into the login form, kept in an HttpOnly SameSite=Strict cookie, or sent as
``Authorization: Bearer``) sees what the HTTP API lets it see; ``MJQ_DASHBOARD_AUTH`` basic auth sees every
batch. Buttons call what the CLI and the API call (``worker.control``; a press is ``tasks.followups.press``).
Live parts are ``<div data-live="/events/...">``: a small script replaces their HTML with each event, which the
server renders from the same partial template as the first page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sse_starlette.sse import EventSourceResponse

from tasks.followups import press as press_task
from worker import control
from worker.jobs.kinds import JOB_ID_RE
from worker.keyfile import KeyFileError, ServiceKey
from worker.pricing import MICROS, fmt_money
from worker.reports import dashboard as pages
from worker.reports.export import format_time
from worker.service.api.service import Service, may_see_batch, may_see_job
from worker.store import keys

log = logging.getLogger("mjqueue.dashboard")

HERE = Path(__file__).resolve().parent
COOKIE = "mjq_dashboard"
LIVE_EVERY_S = 1.0  # how often a live part is rendered again and sent
ACTIONS = ("pause", "resume", "cancel")


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a service key's name, or ``MJQ_DASHBOARD_AUTH``'s user (who sees everything)."""

    name: str
    admin: bool
    key: ServiceKey | None = None

    def sees_batch(self, svc: Service, batch_id: str) -> bool:
        return self.key is None or may_see_batch(svc, self.key, batch_id)

    def sees_job(self, svc: Service, job_id: str, job: Any) -> bool:
        return self.key is None or may_see_job(svc, self.key, job_id, job)


def _basic_user(svc: Service, header: str) -> str | None:
    """The user of a right ``Authorization: Basic`` header, when ``MJQ_DASHBOARD_AUTH`` is set."""
    expected = svc.settings.dashboard_auth.get_secret_value()
    if not expected:
        return None
    try:
        given = base64.b64decode(header, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    if hmac.compare_digest(given.encode(), expected.encode()):
        return given.partition(":")[0]
    return None


def _key_viewer(svc: Service, token: str) -> Viewer | None:
    try:
        key = svc.keys.find(token.strip())
    except KeyFileError as exc:
        log.error("keys file unusable: %s", exc)
        return None
    return Viewer(key.name, key.admin, key) if key is not None else None


def viewer(svc: Service, request: Request) -> Viewer | None:
    """The signed-in viewer of a request, None when there is none."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        user = _basic_user(svc, value.strip())
        return Viewer(user, True) if user else None
    if scheme.lower() == "bearer" and value.strip():
        return _key_viewer(svc, value)
    cookie = request.cookies.get(COOKIE)
    return _key_viewer(svc, cookie) if cookie else None


def _same_origin(request: Request) -> bool:
    """A form post comes from our own pages (browsers send Origin; basic auth would follow a foreign form)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _money(value: float | None, currency: str) -> str:
    return "–" if value is None else fmt_money(round(value * MICROS), currency)


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = format_time
    templates.env.filters["money"] = _money
    templates.env.filters["urlquote"] = lambda text: quote(str(text), safe="")
    return templates


def mount(app: FastAPI, svc: Service) -> None:
    """Add the dashboard's pages, events, media and static files to the API's app."""
    templates = _templates()
    pace = pages.Pace()
    router = APIRouter(include_in_schema=False)
    page_size = svc.settings.dashboard_page_size

    def render(request: Request, name: str, who: Viewer, status: int = 200, **context: Any) -> HTMLResponse:
        context.update(viewer=who, basic=bool(svc.settings.dashboard_auth.get_secret_value()))
        return templates.TemplateResponse(request, name, context, status_code=status)

    def partial(name: str, **context: Any) -> str:
        return templates.get_template(name).render(**context)

    def login_first(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    def not_found(request: Request, who: Viewer, what: str) -> HTMLResponse:
        return render(request, "missing.html", who, status=404, what=what)

    def events(request: Request, make: Callable[[], str]) -> EventSourceResponse:
        async def stream() -> AsyncIterator[dict[str, str]]:
            while not await request.is_disconnected():
                yield {"event": "update", "data": await run_in_threadpool(make)}
                await asyncio.sleep(LIVE_EVERY_S)

        return EventSourceResponse(stream(), ping=15)

    def visible_batches(who: Viewer) -> list[str] | None:
        if who.admin:
            return None
        ids = [str(i) for i in svc.backend.redis.zrange(keys.BATCHES, 0, -1)]
        return [i for i in ids if who.sees_batch(svc, i)]

    def batches_html(who: Viewer) -> str:
        return partial("_batches.html", batches=pages.batches(svc.rt, pace, visible_batches(who)))

    def batch_live_html(batch_id: str) -> str:
        info = svc.backend.ledger.batch(batch_id)
        summary = pages.batch_summary(svc.rt, batch_id, info, pace) if info else None
        groups, failed = pages.failure_groups(svc.rt, batch_id)
        return partial("_batch_live.html", b=summary, groups=groups, failed=failed)

    def upstreams_html() -> str:
        return partial("_upstreams.html", upstreams=pages.upstream_rows(svc.rt))

    # ------------------------------------------------------------------------------------------ signing in

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/", error: str = "") -> HTMLResponse:
        return templates.TemplateResponse(
            request, "login.html",
            {"next": next if next.startswith("/") else "/", "error": error, "viewer": None,
             "basic": bool(svc.settings.dashboard_auth.get_secret_value())},
        )

    @router.post("/login")
    def login(request: Request, key: Annotated[str, Form()], next: Annotated[str, Form()] = "/") -> Response:
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        if not _same_origin(request) or _key_viewer(svc, key) is None:
            return RedirectResponse(f"/login?error=unknown+key&next={quote(target, safe='')}", status_code=303)
        answer = RedirectResponse(target, status_code=303)
        answer.set_cookie(COOKIE, key.strip(), httponly=True, samesite="strict", path="/")
        return answer

    @router.get("/login/basic")
    def login_basic(request: Request) -> Response:
        """Asks the browser for ``MJQ_DASHBOARD_AUTH`` (basic auth), then goes to the batches."""
        who = viewer(svc, request)
        if who is not None or not svc.settings.dashboard_auth.get_secret_value():
            return RedirectResponse("/", status_code=303)
        return Response("sign in", status_code=401, headers={"WWW-Authenticate": 'Basic realm="mjqueue"'})

    @router.post("/logout")
    def logout() -> Response:
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(COOKIE, path="/")
        return answer

    # ------------------------------------------------------------------------------------------ batches

    @router.get("/", response_class=HTMLResponse)
    def batches_page(request: Request) -> Response:
        who = viewer(svc, request)
        if who is None:
            return login_first(request)
        return render(request, "batches.html", who, live=batches_html(who))

    @router.get("/events/batches")
    def batches_events(request: Request) -> Response:
        who = viewer(svc, request)
        if who is None:
            return Response("sign in", status_code=401)
        return events(request, lambda: batches_html(who))

    @router.get("/batches/{batch_id}", response_class=HTMLResponse)
    def batch_page(request: Request, batch_id: str, cursor: int = 0, done: str = "") -> Response:
        who = viewer(svc, request)
        if who is None:
            return login_first(request)
        if not JOB_ID_RE.match(batch_id) or not who.sees_batch(svc, batch_id) or not svc.backend.ledger.batch(
            batch_id
        ):
            return not_found(request, who, f"batch {batch_id}")
        gallery = pages.gallery_page(svc.rt, batch_id, cursor, page_size)
        return render(request, "batch.html", who, batch_id=batch_id, live=batch_live_html(batch_id),
                      gallery=gallery, done=done)

    @router.get("/events/batches/{batch_id}")
    def batch_events(request: Request, batch_id: str) -> Response:
        who = viewer(svc, request)
        if who is None or not JOB_ID_RE.match(batch_id) or not who.sees_batch(svc, batch_id):
            return Response("no such batch", status_code=404)
        return events(request, lambda: batch_live_html(batch_id))

    def steer(batch_id: str, action: str, reason: str | None) -> str:
        rt = svc.rt
        if action == "pause":
            return f"paused ({control.pause_batch(batch_id, rt)} jobs held)"
        if action == "resume":
            return f"resumed ({control.resume_batch(batch_id, rt)} jobs back to waiting)"
        if action == "cancel":
            return f"cancelled {control.cancel_batch(batch_id, rt)} queued jobs"
        count = control.requeue(batch_id, pages.REQUEUE_BY_CLICK, rt=rt, reason=reason)
        return f"requeued {count} jobs" + (f" ({reason})" if reason else "")

    def batch_action(action: str) -> Callable[..., Response]:
        def act(request: Request, batch_id: str, reason: Annotated[str | None, Form()] = None) -> Response:
            who = viewer(svc, request)
            if who is None:
                return Response("sign in", status_code=401)
            if not _same_origin(request):
                return Response("cross-site form refused", status_code=403)
            if not JOB_ID_RE.match(batch_id) or not who.sees_batch(svc, batch_id):
                return Response("no such batch", status_code=404)
            done = steer(batch_id, action, reason)
            return RedirectResponse(f"/batches/{batch_id}?done={quote(done)}", status_code=303)

        return act

    for action in (*ACTIONS, "requeue"):
        router.post(f"/batches/{{batch_id}}/{action}")(batch_action(action))

    # ------------------------------------------------------------------------------------------ jobs

    def job_or_none(who: Viewer, job_id: str) -> dict[str, Any] | None:
        if not JOB_ID_RE.match(job_id):
            return None
        record = svc.backend.ledger.get_job(job_id)
        return record if record is not None and who.sees_job(svc, job_id, record) else None

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: str, done: str = "") -> Response:
        who = viewer(svc, request)
        if who is None:
            return login_first(request)
        detail = pages.job_detail(svc.rt, job_id) if job_or_none(who, job_id) else None
        if detail is None:
            return not_found(request, who, f"job {job_id}")
        return render(request, "job.html", who, d=detail, job=detail["job"], done=done)

    @router.post("/jobs/{job_id}/press")
    def press(request: Request, job_id: str, custom_id: Annotated[str, Form()]) -> Response:
        """Press one of the job's buttons: the follow-up ``tasks.followups.press`` with the job's result."""
        who = viewer(svc, request)
        if who is None:
            return Response("sign in", status_code=401)
        if not _same_origin(request):
            return Response("cross-site form refused", status_code=403)
        if job_or_none(who, job_id) is None:
            return Response("no such job", status_code=404)
        parent = svc.backend.ledger.job_result(job_id)
        offered = {str(b.get("custom_id")) for b in parent.get("buttons") or []}
        if parent.get("status") != "succeeded" or custom_id not in offered:
            return RedirectResponse(f"/jobs/{job_id}?done={quote('that button is not offered')}", status_code=303)
        sent = press_task.apply_async(args=[parent, custom_id])
        return RedirectResponse(f"/jobs/{job_id}?done={quote(f'pressed: follow-up task {sent.id}')}",
                                status_code=303)

    def media(request: Request, job_id: str, names: tuple[str, ...]) -> Response:
        who = viewer(svc, request)
        record = job_or_none(who, job_id) if who is not None else None
        if record is None:
            return Response("no such image", status_code=404)
        root = Path(svc.settings.media_dir).resolve()
        for name in names:
            value = record.get(name)
            if value:
                path = Path(str(value)).resolve()
                if path.is_relative_to(root) and path.is_file():
                    return FileResponse(path, headers={"Cache-Control": "private, max-age=86400"})
        url = record.get("image_public_url") or record.get("image_url")
        if url and str(url).startswith(("http://", "https://")):
            return RedirectResponse(str(url), status_code=302)
        return Response("no such image", status_code=404)

    @router.get("/media/{job_id}/thumb")
    def thumb(request: Request, job_id: str) -> Response:
        return media(request, job_id, ("thumb_path", "image_path"))

    @router.get("/media/{job_id}/image")
    def image(request: Request, job_id: str) -> Response:
        return media(request, job_id, ("image_path",))

    # ------------------------------------------------------------------------------------------ upstreams

    @router.get("/upstreams", response_class=HTMLResponse)
    def upstreams_page(request: Request) -> Response:
        who = viewer(svc, request)
        if who is None:
            return login_first(request)
        return render(request, "upstreams.html", who, live=upstreams_html())

    @router.get("/events/upstreams")
    def upstreams_events(request: Request) -> Response:
        if viewer(svc, request) is None:
            return Response("sign in", status_code=401)
        return events(request, upstreams_html)

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static")
