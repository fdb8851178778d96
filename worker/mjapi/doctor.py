"""``mjq doctor``: what the configured upstream is and whether mjqueue can work with it, spending nothing.

The probes are requests no server charges for: a fetch and a list-by-condition of an id that does not exist,
and an action on that made-up task (its route exists, or not: the Java server has none). Their raw answers
say whether the key is accepted (and by which header), how the server answers an unknown id, and which
server family it looks like (``/work/shared/upstreams.md``):

=====================================================  ===========
unknown fetch 204                                      trueai
unknown fetch 400 ``task_no_found``, new-api 401 body  newapi
no ``/mj/submit/action`` route (a bare 404)            java
action on a made-up task answers code 21               vendor
anything else                                          plus
=====================================================  ===========

``check_submit`` spends one imagine to see whether callbacks reach our webhook; what "arrived" means is told
by the caller (the CLI reads it from Redis: no Redis here). ``startup_warnings`` is the short check that
``mjq up`` and ``mjq worker`` run before starting (reachability and the key).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from worker.mjapi.client import MidjourneyClient, Probe
from worker.mjapi.errors import MJError
from worker.mjapi.profiles import PROFILES

__all__ = ["Check", "Report", "check_submit", "diagnose", "looks_like", "startup_warnings"]

Status = Literal["ok", "warn", "fail"]
CALLBACK_GRACE_S = 3.0  # --submit: how long after the test job ended a callback may still come
OTHER_HEADER = {"mj-api-secret": "bearer", "bearer": "mj-api-secret"}


@dataclass(frozen=True)
class Check:
    """One line of the report: what was tried, how it went, what to do about it."""

    name: str
    status: Status
    detail: str
    hint: str = ""


@dataclass
class Report:
    base_url: str
    configured: str  # the profile in use (MJQ_API_PROFILE)
    looks_like: str | None = None  # the profile the answers point to (None: could not tell)
    reasons: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    advice: dict[str, str] = field(default_factory=dict)  # variable -> value worth setting

    @property
    def ok(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def add(self, name: str, status: Status, detail: str, hint: str = "") -> Check:
        check = Check(name, status, detail, hint)
        self.checks.append(check)
        return check

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "upstream": self.base_url,
            "profile": {"configured": self.configured, "looks_like": self.looks_like, "reasons": self.reasons},
            "checks": [vars(c) for c in self.checks],
            "advice": self.advice,
        }


def made_up_id() -> str:
    """A task id no server holds: 19 digits, like a real one, starting with 9."""
    return "9" + "".join(secrets.choice("0123456789") for _ in range(18))


def _text(body: Any) -> str:
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            return f"{error.get('message', '')} {error.get('type', '')}"
        return f"{body.get('code', '')} {body.get('description', '')} {body.get('type', '')}"
    return "" if body is None else str(body)[:200]


def _shown(answer: Probe) -> str:
    body = "empty body" if answer.body in (None, "") else _text(answer.body).strip()[:80]
    return f"HTTP {answer.status}, {body}"


def _is_newapi(answer: Probe) -> bool:
    text = _text(answer.body)
    return "new_api_error" in text or "task_no_found" in text or "upstream_error" in text


def _route_missing(answer: Probe) -> bool:
    """A bare 404 (Spring's ``{"error": "Not Found", "path": ...}`` or empty), not a code 3 "no such task"."""
    body = answer.body
    return answer.status == 404 and not (isinstance(body, Mapping) and isinstance(body.get("code"), int))


def looks_like(fetch: Probe | None, action: Probe | None, auth: Probe | None = None) -> tuple[str | None, list[str]]:
    """The profile the probe answers point to, and why."""
    if action is not None and _route_missing(action):
        return "java", ["no /mj/submit/action route (a bare 404)"]
    if fetch is not None and fetch.status == 204:
        return "trueai", ["an unknown id is answered 204 No Content"]
    for answer, what in ((fetch, "an unknown id"), (auth, "a refused key")):
        if answer is not None and _is_newapi(answer):
            return "newapi", [f"{what} is answered the new-api way ({_shown(answer)})"]
    if action is not None and isinstance(action.body, Mapping) and action.body.get("code") == 21:
        return "vendor", ["an action on a made-up task is answered code 21 (the vendor table's parameter error)"]
    if fetch is not None and fetch.status < 500 and fetch.status != 401:
        return "plus", [f"Plus-like answers (unknown id: {_shown(fetch)})"]
    return None, []


def _reach(client: MidjourneyClient, task_id: str) -> tuple[Probe | None, str | None]:
    try:
        return client.probe("GET", f"/mj/task/{task_id}/fetch"), None
    except MJError as exc:
        return None, str(exc)


def _other_header_works(client: MidjourneyClient, task_id: str) -> bool:
    other = client.with_auth_header(OTHER_HEADER[client.auth_header])
    try:
        answer, _ = _reach(other, task_id)
    finally:
        other.close()
    return answer is not None and answer.status != 401


def _auth(report: Report, client: MidjourneyClient, answer: Probe, task_id: str) -> bool:
    if answer.status != 401:
        if answer.status == 403:
            report.add("auth", "fail", f"the upstream refuses us: {_shown(answer)}",
                       "a 403 is a key without rights, an IP allow-list or a temporary block after 429s")  # fmt: skip
            return False
        report.add("auth", "ok", f"key accepted with the {client.auth_header} header")
        return True
    if _other_header_works(client, task_id):
        other = OTHER_HEADER[client.auth_header]
        report.add("auth", "fail", f"HTTP 401 with the {client.auth_header} header; the {other} header works",
                   f"set MJQ_API_AUTH_HEADER={other}")  # fmt: skip
        report.advice["MJQ_API_AUTH_HEADER"] = other
    else:
        report.add("auth", "fail", f"the key is refused: {_shown(answer)}", "check MJQ_API_KEY")
    return False


def _unknown_fetch(report: Report, client: MidjourneyClient, answer: Probe, task_id: str) -> None:
    try:
        task = client.fetch(task_id)
    except MJError as exc:
        report.add("unknown fetch", "fail", f"{_shown(answer)} is read as an error ({exc})",
                   "tell us: mjqueue should read this answer as 'no such task'")  # fmt: skip
        return
    if task is None:
        report.add("unknown fetch", "ok", f"{_shown(answer)}: read as 'no such task'")
    else:
        report.add("unknown fetch", "warn", f"a made-up id {task_id} came back as a task ({task.status})")


def _list(report: Report, client: MidjourneyClient, task_id: str) -> None:
    try:
        found = client.list_by_condition([task_id])
    except MJError as exc:
        report.add("list-by-condition", "fail", str(exc), "polls of many jobs at once need this route")
        return
    report.add("list-by-condition", "ok" if not found else "warn", f"{len(found)} task(s) for one made-up id")


def _action(client: MidjourneyClient, task_id: str) -> Probe | None:
    body = {"taskId": task_id, "customId": f"MJ::JOB::upsample::1::{secrets.token_hex(16)}"}
    try:
        return client.probe("POST", "/mj/submit/action", body)  # a made-up parent: no task, nothing charged
    except MJError:
        return None


def _webhook(report: Report, webhook_base_url: str | None, timeout_s: float) -> None:
    if not webhook_base_url:
        report.add("webhook", "ok", "MJQ_WEBHOOK_BASE_URL unset: polling only")
        return
    url = f"{webhook_base_url}/healthz"
    try:  # a plain request: the API key never goes to our own webhook
        answer = httpx.get(url, timeout=timeout_s, follow_redirects=False)
    except httpx.HTTPError as exc:
        report.add("webhook", "fail", f"{url} is not reachable from here ({type(exc).__name__})",
                   "start `mjq webhook` (or `mjq up`), or fix MJQ_WEBHOOK_BASE_URL")  # fmt: skip
        return
    if answer.status_code == 200:
        report.add("webhook", "ok", f"{url} answers (the upstream must reach it too)")
    else:
        report.add("webhook", "fail", f"{url} answers HTTP {answer.status_code}",
                   "MJQ_WEBHOOK_BASE_URL must point at `mjq webhook`")  # fmt: skip


def _advise(report: Report, mode_paths: Mapping[str, str], webhook_base_url: str | None) -> None:
    guess, configured = report.looks_like, report.configured
    if guess is None:
        return
    profile = PROFILES[guess]
    if configured == "auto":
        report.add("profile", "ok", f"looks like {guess} ({profile.title}); auto reads it",
                   f"MJQ_API_PROFILE={guess} makes it explicit")  # fmt: skip
        report.advice.setdefault("MJQ_API_PROFILE", guess)
    elif configured != guess:
        report.add("profile", "warn", f"MJQ_API_PROFILE={configured}, but the answers look like {guess}",
                   f"set MJQ_API_PROFILE={guess} (or auto)")  # fmt: skip
        report.advice["MJQ_API_PROFILE"] = guess
    else:
        report.add("profile", "ok", f"{guess} ({profile.title}), as configured")
    if guess == "java":
        report.add("follow-ups", "warn", "this server has no /mj/submit/action: U/V, zoom, pan and remix fail"
                   " before sending", "use a Plus-compatible server for follow-ups")  # fmt: skip
    if profile.callbacks is False and webhook_base_url:
        report.add("callbacks", "warn", f"{guess} drops notifyHook: no callbacks will come",
                   "polling tracks the jobs (MJQ_API_PROFILE=newapi polls from the start)")  # fmt: skip
    if profile.mode_in == "path" and not mode_paths:
        report.add("speed mode", "warn", "accountFilter is stripped here: the mode travels in the path",
                   "set MJQ_API_PATH_FAST=/mj-fast, MJQ_API_PATH_RELAX=/mj-relax, MJQ_API_PATH_TURBO=/mj-turbo"
                   " (trueai and relays read it there)")  # fmt: skip
        report.advice.setdefault("MJQ_API_PATH_FAST", "/mj-fast")


def diagnose(
    client: MidjourneyClient,
    *,
    webhook_base_url: str | None = None,
    mode_paths: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> Report:
    """Every probe that spends nothing, and what they say."""
    report = Report(client.base_url + client.path_prefix, client.profile.name)
    task_id = made_up_id()
    answer, unreachable = _reach(client, task_id)
    if answer is None:
        report.add("reach", "fail", unreachable or "no answer", "check MJQ_API_BASE_URL and that the server runs")
        _webhook(report, webhook_base_url, timeout_s)
        return report
    report.add("reach", "ok", f"{report.base_url} answers ({_shown(answer)})")
    authorised = _auth(report, client, answer, task_id)
    action = None
    if authorised:
        _unknown_fetch(report, client, answer, task_id)
        _list(report, client, task_id)
        action = _action(client, task_id)
    report.looks_like, report.reasons = looks_like(answer if authorised else None, action, answer)
    _webhook(report, webhook_base_url, timeout_s)
    _advise(report, mode_paths or {}, webhook_base_url)
    return report


def startup_warnings(client: MidjourneyClient) -> list[str]:
    """The short check at start (``mjq up``, ``mjq worker``): reachable, key accepted. Lines to warn with;
    empty when both hold."""
    task_id = made_up_id()
    answer, unreachable = _reach(client, task_id)
    where = client.base_url + client.path_prefix
    if answer is None:
        return [f"the upstream {where} is not reachable: {unreachable}",
                "jobs will wait (nothing is lost); check MJQ_API_BASE_URL, then `mjq doctor`"]  # fmt: skip
    report = Report(where, client.profile.name)
    if _auth(report, client, answer, task_id):
        return []
    check = report.checks[-1]
    return [f"the upstream {where} refuses us: {check.detail}",
            f"{check.hint}; submitting would stop at the first job. `mjq doctor` says more"]  # fmt: skip


def check_submit(
    client: MidjourneyClient,
    report: Report,
    *,
    notify_hook: str | None,
    state: str,
    callback_seen: Callable[[], bool],
    wait_s: float,
    poll_s: float = 1.0,
) -> None:
    """Spend one imagine and watch it: does it finish, and does a callback reach our webhook meanwhile?"""
    try:
        answer = client.imagine("mjq doctor: a small test image of a lighthouse", notify_hook=notify_hook, state=state)
    except MJError as exc:
        report.add("submit", "fail", f"the test imagine was refused: {exc}")
        return
    if answer.task_id is None:
        report.add("submit", "fail", f"accepted without a task id: {answer.description}")
        return
    report.add("submit", "ok", f"imagine accepted as task {answer.task_id} ({answer.outcome}); one job spent")
    deadline, status, ended_at = time.monotonic() + wait_s, "", None
    while time.monotonic() < deadline:
        try:
            task = client.fetch(answer.task_id)
        except MJError:
            task = None
        status = str(task.status or "") if task is not None else status
        if status in ("SUCCESS", "FAILURE", "CANCEL"):
            ended_at = ended_at or time.monotonic()
            # callbacks come with the changes; a few seconds after the end none is coming
            if not notify_hook or callback_seen() or time.monotonic() - ended_at > CALLBACK_GRACE_S:
                break
        time.sleep(poll_s)
    finished = status in ("SUCCESS", "FAILURE", "CANCEL")
    late = "" if finished else f" after {wait_s:g}s"
    report.add("test job", "ok" if finished else "warn", f"task {answer.task_id} {status or 'not visible yet'}{late}")
    if notify_hook is None:
        return
    if callback_seen():
        report.add("callbacks", "ok", "a callback reached our webhook")
    else:
        report.add("callbacks", "warn", "no callback reached our webhook",
                   "the upstream drops notifyHook or cannot reach MJQ_WEBHOOK_BASE_URL: mjqueue switches to the"
                   " polling schedule by itself (MJQ_CALLBACKS_MISSING_AFTER)")  # fmt: skip
