"""The fake Midjourney Proxy HTTP API (Starlette): every endpoint of the spec, plus an admin API.

Order of checks on a submit, as a gateway in front of a self-hosted server does them: count the request,
auth (401), injected HTTP faults (500/429), count the submission (per ``state``), credit left, input
validation, banned words, account availability, capacity (queue full: nothing is created), then the task is
created, charged and admitted, and the answer may be delayed (``read_delay``: the task exists regardless).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from simulator import answers, profiles
from simulator.callbacks import CallbackDispatcher
from simulator.config import MODES, SimConfig, profile_dialect
from simulator.engine import (
    GRID_ACTIONS,
    IMAGE_ACTIONS,
    TERMINAL,
    Engine,
    SimTask,
    action_for_custom_id,
    image_seed,
)
from simulator.images import render_png, render_tile, sniff_mime

Handler = Callable[[Request], Awaitable[Response]]
BodyHandler = Callable[[Request, dict[str, Any]], Awaitable[Response]]
SPEED_PREFIXES = {"/mj-fast": "FAST", "/mj-relax": "RELAX", "/mj-turbo": "TURBO"}
PROMPT_FLAGS = {"--relax": "RELAX", "--fast": "FAST", "--turbo": "TURBO"}
FETCH_PATH = re.compile(r"/mj/task/([^/]+)/fetch")
MAX_BODY = 30 * 1024 * 1024
MAX_IMAGE = 4 * 1024 * 1024
MAX_PROMPT = 8192
SUBMIT_LOG_MAX = 200_000  # a long demo run keeps the latest submits only
DIMENSIONS = ("PORTRAIT", "SQUARE", "LANDSCAPE")
BOT_TYPES = ("MID_JOURNEY", "NIJI_JOURNEY")
JAVA_MISSING = frozenset({"/mj/submit/action", "/mj/submit/modal", "/mj/insight-face/swap",
                          "/mj/submit/upload-discord-images", "/mj/task/{task_id}/image-seed", "/mj/image/{task_id}"})
JAVA_ONLY = frozenset({"/mj/submit/change", "/mj/submit/simple-change"})
NEWAPI_ONLY = frozenset({"/mj/image/{task_id}"})
CHANGE_ACTIONS = {"UPSCALE": "upsample", "VARIATION": "variation", "REROLL": "reroll"}
SIMPLE_CHANGE = re.compile(r"\s*(\S+)\s+(?:([UV])([1-4])|R)\s*")


class Answer(Exception):
    """A finished API answer raised from deep inside a handler."""

    def __init__(self, response: Response, fault: str = "") -> None:
        super().__init__("answer")
        self.response = response
        self.fault = fault  # an injected HTTP fault (http_500, http_429), for the submit log


class SimulatorApp:
    """Routes bound to one engine; ``base_url`` (for absolute image URLs) is learnt from the first /mj
    request when not given."""

    def __init__(self, config: SimConfig, base_url: str = "") -> None:
        self.config = config
        self.initial = config.model_copy(deep=True)
        self.engine = Engine(config)
        self.base_url = base_url.rstrip("/")
        self.dispatcher = CallbackDispatcher(self.engine, self.base_url)
        self.fetch_endpoint = self._endpoint("/mj/task/{task_id}/fetch", "GET", self.fetch, submit=False)
        # every submit request that carried a ``state``: (epoch s, state, injected fault or ""), so a test can
        # prove when each job was sent again (Retry-After honoured, nothing re-sent after a lost answer)
        self.submit_log: deque[tuple[float, str, str]] = deque(maxlen=SUBMIT_LOG_MAX)
        # answers held by the ``image_delay`` / ``poll_delay`` faults right now (a kill can aim at one)
        self.held: Counter[str] = Counter()
        self.ban_until = 0.0  # trueai: every /mj call is 403 until then (after too many 429s)
        self.recent_429s = 0
        self.dispatcher.shape = self._shape

    # -- checks ------------------------------------------------------------------------------------------

    def _invalid(self, message: str) -> Answer:
        return Answer(answers.validation(message, self.config.dialect))

    def _learn_base(self, request: Request) -> None:
        if not self.base_url:
            self.base_url = f"{request.url.scheme}://{request.url.netloc}"
            self.dispatcher.base_url = self.base_url

    def _authorised(self, request: Request, key: str) -> bool:
        """The profile's rule: Plus/Java read ``mj-api-secret`` only; trueai the raw ``Authorization`` value
        ("Bearer " is part of the token), ``mj-api-secret`` only without one; new-api ``Bearer sk-...`` or
        ``mj-api-secret`` when Authorization is empty; vendor (and ``lenient_auth``) either header."""
        headers, profile = request.headers, self.config.profile
        bearer, secret = headers.get("authorization", ""), headers.get("mj-api-secret", "")

        def same(given: str, wanted: str) -> bool:
            return hmac.compare_digest(given.encode(), wanted.encode())

        if self.config.lenient_auth or profile == "vendor":
            return same(bearer, f"Bearer {key}") or same(secret, key)
        if profile == "trueai":
            return same(bearer if "authorization" in headers else secret, key)
        if profile == "newapi":
            token = (bearer or secret).removeprefix("Bearer ").removeprefix("sk-")
            return same(token, key.removeprefix("sk-"))
        return same(secret, key)

    def _unauthorized(self) -> Response:
        profile = self.config.profile
        if profile == "newapi":
            return answers.newapi_unauthorized("无效的令牌")
        return answers.unauthorized() if profile == "vendor" or self.config.lenient_auth else answers.empty(401)

    def _check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if key and not self._authorised(request, key):
            raise Answer(self._unauthorized())
        if self.config.token_exhausted:
            self.engine.faults["token_exhausted"] += 1
            masked = (key or "").removeprefix("sk-")[:4]
            raise Answer(answers.newapi_unauthorized(f"该令牌额度已用尽 TokenStatusExhausted[sk-{masked}***]"))
        if self.ban_until > time.time():
            self.engine.faults["http_403"] += 1
            raise Answer(answers.empty(403), "http_403")
        if self.config.forbidden:
            self.engine.faults["forbidden"] += 1
            raise Answer(answers.forbidden())

    def _http_faults(self) -> None:
        config, rng = self.config, self.engine.rng
        if config.http_500_rate and rng.random() < config.http_500_rate:
            self.engine.faults["http_500"] += 1
            raise Answer(answers.server_error(), "http_500")
        if config.http_429_rate and rng.random() < config.http_429_rate:
            self.engine.faults["http_429"] += 1
            if config.profile != "trueai":
                raise Answer(answers.rate_limited(config.retry_after_s), "http_429")
            self.recent_429s += 1  # trueai's IP limiter: empty 429s, then a 403 ban that clears itself
            if config.ban_after_429s and self.recent_429s >= config.ban_after_429s:
                self.recent_429s = 0
                self.ban_until = time.time() + config.ban_s * config.time_factor
            raise Answer(answers.empty(429), "http_429")

    async def _log_faulted_submit(self, request: Request, fault: str) -> None:
        """A submit refused by an injected fault never reaches the submission counter: log its ``state``."""
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return
        state = body.get("state") if isinstance(body, dict) else None
        if isinstance(state, str) and state:
            self.submit_log.append((time.time(), state, fault))

    async def _body(self, request: Request, api: bool = False) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise Answer(answers.error(413, 4, "body too large"))
        trueai = api and self.config.profile == "trueai"  # a body it cannot bind: 200 success false
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise Answer(answers.trueai_unbindable("malformed JSON") if trueai
                         else answers.error(400, 4, "malformed JSON")) from None
        if not isinstance(body, dict):
            raise Answer(answers.trueai_unbindable("body must be a JSON object") if trueai
                         else answers.error(400, 4, "body must be a JSON object"))
        return body

    def _image(self, value: Any, field: str) -> bytes:
        if not isinstance(value, str) or not value.startswith("data:image/") or ";base64," not in value:
            raise self._invalid(f"{field}: must be a data:image/...;base64 URI")
        try:
            data = base64.b64decode(value.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise self._invalid(f"{field}: invalid base64") from None
        if not data:
            raise self._invalid(f"{field}: empty image")
        if len(data) > MAX_IMAGE:
            raise self._invalid(f"{field}: image larger than 4 MB")
        return data

    def _images(self, body: dict[str, Any], field: str, low: int, high: int) -> list[bytes]:
        images = body.get(field)
        if images is None and low == 0:
            return []
        if not isinstance(images, list) or not low <= len(images) <= high:
            raise self._invalid(f"{field}: {low} to {high} images")
        return [self._image(image, f"{field}[{i}]") for i, image in enumerate(images)]

    def _enum(self, body: dict[str, Any], field: str, allowed: tuple[str, ...]) -> None:
        value = body.get(field)
        if value is not None and value not in allowed:
            raise self._invalid(f"{field}: must be one of {', '.join(allowed)}")

    def _store_upload(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()[:32]
        self.engine.uploads[key] = data
        return key

    def _mode(self, request: Request, body: dict[str, Any], prompt: str = "", default: str = "FAST") -> str:
        """Speed: path prefix, else ``accountFilter.modes[0]``, else a --fast/--relax/--turbo flag, else default."""
        prefix = request.scope.get("mj_speed")
        if isinstance(prefix, str):
            return prefix
        account_filter = body.get("accountFilter")
        modes = account_filter.get("modes") if isinstance(account_filter, dict) else None
        if isinstance(modes, list) and modes and str(modes[0]).upper() in MODES:
            return str(modes[0]).upper()
        for flag, mode in PROMPT_FLAGS.items():
            if flag in prompt:
                return mode
        return default

    def _count_submission(self, body: dict[str, Any]) -> str | None:
        """Every submit that reached the server counts, per ``state`` too: the proof nothing went twice."""
        self.engine.submissions += 1
        state = body.get("state")
        if isinstance(state, str) and state:
            self.engine.submissions_by_state[state] += 1
            self.submit_log.append((time.time(), state, ""))
            return state
        return None

    def _check_credit(self) -> None:
        balance = self.config.balance
        if balance is not None and balance <= 0:
            raise Answer(answers.out_of_credit(self.config.dialect))

    def _check_banned(self, prompt: str) -> bool:
        """Refuse a banned prompt; trueai accepts it and FAILS the task later (True: doom the task)."""
        lowered = prompt.lower()
        for word in self.config.banned_words:
            if word and word.lower() in lowered:
                if self.config.profile == "trueai":
                    return True
                raise Answer(answers.banned(word, prompt, self.config.dialect))
        return False

    def _check_account(self) -> None:
        config = self.config
        if config.account_unavailable:
            raise Answer(answers.account_unavailable(config.dialect))
        if config.user_limit:
            raise Answer(answers.user_limit(config.user_limit))
        if config.system_error:
            self.engine.faults["system_error"] += 1
            raise Answer(answers.system_error(config.dialect))
        if config.group_saturated:
            raise Answer(answers.newapi_error(429, 30, answers.NEWAPI_SATURATED))

    def _check_room(self, mode: str) -> None:
        if not self.engine.has_room(mode):
            self.engine.queue_full += 1
            if self.config.profile == "trueai":
                raise Answer(answers.trueai_queue_full())
            raise Answer(answers.queue_full(self.config.dialect))

    def _charge(self) -> None:
        if self.config.balance is not None:
            self.config.balance -= 1

    async def _admit(self, task: SimTask, relayed_as: str | None = None) -> Response:
        """Run or queue an accepted task; then, maybe, answer too late for the client (it exists anyway)."""
        dialect = self.config.dialect
        if self.engine.enqueue(task):
            response = answers.queued(task.id, self.engine.queued_count() - 1, dialect)
        else:
            response = answers.submitted(task.id, dialect)
        config = self.config
        if config.profile == "newapi" and config.do_request_failed_rate and \
                self.engine.rng.random() < config.do_request_failed_rate:
            self.engine.faults["do_request_failed"] += 1  # the upstream took it, the gateway gave up waiting
            return answers.newapi_error(400, 5, "do_request_failed ")
        return await self._late(self._relayed(response, relayed_as or task.action))

    def _relayed(self, response: Response, action: str) -> Response:
        """new-api rewrites codes 21 and 22 to 1 for every action but inpaint and custom zoom."""
        if self.config.profile != "newapi" or action in ("INPAINT", "CUSTOM_ZOOM"):
            return response
        body = json.loads(bytes(response.body))
        if body.get("code") in (21, 22):
            body["code"] = 1
        return JSONResponse(body, response.status_code)

    async def _late(self, response: Response) -> Response:
        config = self.config
        if config.read_delay_rate and self.engine.rng.random() < config.read_delay_rate:
            self.engine.faults["late_answer"] += 1
            await asyncio.sleep(config.read_delay_s)
        return response

    # -- submit endpoints --------------------------------------------------------------------------------

    async def _create(self, request: Request, action: str, body: dict[str, Any], prompt: str,
                      image_key: str | None = None) -> Response:
        doomed = self._check_banned(prompt)
        self._check_account()
        mode = self._mode(request, body, prompt)
        self._check_room(mode)
        self._charge()
        task = self.engine.new_task(action, mode, prompt, self._state(body), self._hook(body))
        if doomed:
            task.fail, task.fail_reason = True, "可能包含敏感词"
        task.image_key = image_key
        task.bot_type = str(body.get("botType") or "MID_JOURNEY")
        return await self._admit(task)

    @staticmethod
    def _state(body: dict[str, Any]) -> str | None:
        state = body.get("state")
        return state if isinstance(state, str) and state else None

    @staticmethod
    def _hook(body: dict[str, Any]) -> str | None:
        hook = body.get("notifyHook")
        return hook if isinstance(hook, str) and hook else None

    async def imagine(self, request: Request, body: dict[str, Any]) -> Response:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise self._invalid("prompt: must not be empty")
        if len(prompt) > MAX_PROMPT:
            raise self._invalid(f"prompt: longer than {MAX_PROMPT} characters")
        self._enum(body, "botType", BOT_TYPES)
        self._images(body, "base64Array", 0, 5)
        return await self._create(request, "IMAGINE", body, prompt.strip())

    async def blend(self, request: Request, body: dict[str, Any]) -> Response:
        images = self._images(body, "base64Array", 2, 5)
        self._enum(body, "dimensions", DIMENSIONS)
        self._enum(body, "botType", BOT_TYPES)
        return await self._create(request, "BLEND", body, f"blend of {len(images)} images")

    async def describe(self, request: Request, body: dict[str, Any]) -> Response:
        key = self._store_upload(self._image(body.get("base64"), "base64"))
        self._enum(body, "botType", BOT_TYPES)
        return await self._create(request, "DESCRIBE", body, "", image_key=key)

    async def swap_face(self, request: Request, body: dict[str, Any]) -> Response:
        self._image(body.get("sourceBase64"), "sourceBase64")
        self._image(body.get("targetBase64"), "targetBase64")
        return await self._create(request, "SWAP_FACE", body, "face swap")

    def _parent(self, task_id: str) -> SimTask:
        parent = self.engine.tasks.get(task_id)
        if parent is None:  # trueai says it with HTTP 404 too
            status = 404 if self.config.profile == "trueai" else 200
            raise Answer(answers.not_found("关联任务不存在或已失效", self.config.dialect, status))
        self.engine.advance()
        return parent

    async def action(self, request: Request, body: dict[str, Any]) -> Response:
        dialect = self.config.dialect
        task_id, custom_id = body.get("taskId"), body.get("customId")
        if not isinstance(task_id, str | int) or not str(task_id):
            raise self._invalid("taskId: required")
        if not isinstance(custom_id, str) or not custom_id.startswith("MJ::"):
            raise self._invalid("customId: required, shaped MJ::...")
        parent = self._parent(str(task_id))
        view = self.engine.view(parent, self.base_url)
        if view["status"] != "SUCCESS":
            raise self._invalid("taskId: the task has not finished successfully")
        if custom_id not in {b["customId"] for b in view["buttons"]}:
            raise self._invalid("customId: not a button of this task")
        account_filter = body.get("accountFilter")
        remix = self.config.remix or (isinstance(account_filter, dict) and bool(account_filter.get("remix")))
        if self.config.profile == "trueai":  # a remix account stops at the modal only when asked to
            remix = remix and body.get("enableRemix") is True
        kind = action_for_custom_id(custom_id, remix)
        if kind is None:
            raise self._invalid("customId: this button does not start a job")
        action, modal_needs = kind
        existing = self.engine.existing_actions.get((parent.id, custom_id))
        if existing is not None and action == "UPSCALE":
            status = self.engine.progress(self.engine.tasks[existing], time.time())[0]
            return self._relayed(answers.exists(existing, status, dialect), action)
        return await self._follow_up(request, body, parent, custom_id, action, modal_needs)

    async def _follow_up(self, request: Request, body: dict[str, Any], parent: SimTask, custom_id: str,
                         action: str, modal_needs: str | None) -> Response:
        """Create the task a button (or a Java change) starts: at once, or waiting in MODAL."""
        doomed = self._check_banned(parent.prompt)
        self._check_account()
        mode = self._mode(request, body, default=parent.mode)
        if modal_needs is None:
            self._check_room(mode)
        self._charge()
        task = self.engine.new_task(action, mode, parent.prompt, self._state(body), self._hook(body))
        task.parent_id, task.custom_id, task.bot_type = parent.id, custom_id, parent.bot_type
        if doomed:
            task.fail, task.fail_reason = True, "可能包含敏感词"
        self.engine.existing_actions[(parent.id, custom_id)] = task.id
        if modal_needs is not None:
            task.status, task.modal_needs = "MODAL", modal_needs
            self.engine.changed.add(task.id)
            text = "Waiting for window confirm" if self.config.profile == "trueai" else "窗口等待"
            answer = answers.modal(task.id, parent.prompt, modal_needs == "any", self.config.dialect, text)
            return await self._late(self._relayed(answer, action))
        return await self._admit(task)

    async def change(self, request: Request, body: dict[str, Any]) -> Response:
        """Java's ``/mj/submit/change``: ``action`` UPSCALE / VARIATION / REROLL, ``taskId``, ``index`` 1-4."""
        action, task_id, index = body.get("action"), body.get("taskId"), body.get("index")
        if action not in CHANGE_ACTIONS:
            raise self._invalid("action参数错误")
        if not isinstance(task_id, str | int) or not str(task_id):
            raise self._invalid("taskId不能为空")
        if action != "REROLL" and (not isinstance(index, int) or not 1 <= index <= 4):
            raise self._invalid("index参数错误")
        return await self._change(request, body, str(task_id), str(action), index if isinstance(index, int) else 0)

    async def simple_change(self, request: Request, body: dict[str, Any]) -> Response:
        """Java's ``/mj/submit/simple-change``: ``content`` like "1320098173412546 U1" (U1-4, V1-4 or R)."""
        content = body.get("content")
        match = SIMPLE_CHANGE.fullmatch(content) if isinstance(content, str) else None
        if match is None:
            raise self._invalid("content参数错误")
        task_id, letter, digit = match.groups()
        action = {"U": "UPSCALE", "V": "VARIATION"}.get(letter or "", "REROLL")
        return await self._change(request, body, task_id, action, int(digit or 0))

    async def _change(self, request: Request, body: dict[str, Any], task_id: str, action: str,
                      index: int) -> Response:
        parent = self._parent(task_id)
        if self.engine.progress(parent, time.time())[0] != "SUCCESS":
            raise self._invalid("关联任务状态错误")
        if parent.action not in ("IMAGINE", "VARIATION", "REROLL", "BLEND"):
            raise self._invalid("关联任务不允许执行变化")
        h = parent.message_hash  # no "task exists" answer: Java removed it in 2024
        custom_id = (f"MJ::JOB::reroll::0::{h}::SOLO" if action == "REROLL"
                     else f"MJ::JOB::{CHANGE_ACTIONS[action]}::{index}::{h}")
        return await self._follow_up(request, body, parent, custom_id, action, None)

    async def modal(self, request: Request, body: dict[str, Any]) -> Response:
        task = self.engine.tasks.get(str(body.get("taskId", "")))
        if task is None:
            status = 404 if self.config.profile == "trueai" else 200
            raise Answer(answers.not_found("任务不存在 (task not found)", self.config.dialect, status))
        if task.status != "MODAL":
            raise self._invalid("taskId: the task is not waiting for a modal")
        prompt, mask = body.get("prompt"), body.get("maskBase64")
        if task.modal_needs == "mask":
            self._image(mask, "maskBase64")
        if task.modal_needs == "prompt" and not (isinstance(prompt, str) and prompt.strip()):
            raise self._invalid("prompt: this action needs a prompt")
        if isinstance(prompt, str) and prompt.strip() and self._check_banned(prompt):
            task.fail, task.fail_reason = True, "可能包含敏感词"
        self._check_room(task.mode)
        if isinstance(prompt, str) and prompt.strip():
            task.prompt = prompt.strip()
        task.status, task.modal_needs = "NOT_START", None
        return await self._admit(task, relayed_as="MODAL")

    async def upload(self, request: Request, body: dict[str, Any]) -> Response:
        images = self._images(body, "base64Array", 1, 10)
        names = [f"{self._store_upload(data)}.{sniff_mime(data).split('/')[-1]}" for data in images]
        return answers.result(1, "上传成功", [f"{self.base_url}/uploads/{name}" for name in names])

    # -- reads -------------------------------------------------------------------------------------------

    async def _hold(self, kind: str, rate: float, seconds: float) -> None:
        """Answer late, now and then (``rate``): the request stays in flight ``seconds``, counted in ``held``."""
        if rate and self.engine.rng.random() < rate:
            self.engine.faults[f"{kind}_delay"] += 1
            self.held[kind] += 1
            try:
                await asyncio.sleep(seconds)
            finally:
                self.held[kind] -= 1

    async def fetch(self, request: Request) -> Response:
        await self._hold("poll", self.config.poll_delay_rate, self.config.poll_delay_s)
        task = self.engine.tasks.get(request.path_params["task_id"])
        config = self.config
        if task is None:
            return answers.unknown_task(config.unknown_task, config.dialect, config.profile)
        self.engine.advance()
        if config.profile in ("plus", "vendor"):  # the upstream's own view: serialised once when final
            return Response(self.engine.view_json(task, self.base_url), media_type="application/json")
        return JSONResponse(self._view(task, time.time()))

    async def list_by_condition(self, request: Request, body: dict[str, Any]) -> Response:
        ids = body.get("ids")
        if not isinstance(ids, list):
            raise self._invalid("ids: must be a list")
        await self._hold("poll", self.config.poll_delay_rate, self.config.poll_delay_s)
        self.engine.advance()
        now = time.time()
        tasks = (self.engine.tasks.get(str(i)) for i in ids)
        return JSONResponse([self._view(t, now) for t in tasks if t is not None])

    def _view(self, task: SimTask, now: float) -> dict[str, Any]:
        """The task as this profile's server answers it (new-api: its own copy, as of its last poll)."""
        config, engine = self.config, self.engine
        if config.profile != "newapi":
            return self._shape(task, engine.view(task, self.base_url, now))
        poll = config.newapi_poll_s * config.time_factor
        polls = int((now - task.created) // poll)
        at = task.created + polls * poll
        deadline = task.created + config.newapi_timeout_s * config.time_factor
        first_late = task.created + (int((deadline - task.created) // poll) + 1) * poll  # first poll past it
        timed_out = at >= first_late and engine.progress(task, first_late)[0] not in TERMINAL
        if timed_out:
            at = first_late  # its copy never changes again
        view = engine.view(task, self.base_url, at if polls else task.created)
        return profiles.newapi_view(view, self.base_url, polls > 0, timed_out)

    def _shape(self, task: SimTask, view: dict[str, Any]) -> dict[str, Any]:
        """The upstream view in this profile's wire shape (callbacks too)."""
        profile = self.config.profile
        if profile == "java":
            return profiles.java_view(view)
        if profile == "trueai":
            hd = (task.custom_id or "").startswith("MJ::JOB::upsample_")
            return profiles.trueai_view(view, self.base_url, image_seed(task.id), task.parent_id, hd,
                                        task.action in GRID_ACTIONS)
        return view

    async def image_seed(self, request: Request) -> Response:
        task = self.engine.tasks.get(request.path_params["task_id"])
        if task is None:
            return answers.unknown_task("404" if self.config.unknown_task == "dialect" else self.config.unknown_task,
                                        self.config.dialect, self.config.profile)
        self.engine.advance()
        if task.status != "SUCCESS" or task.action not in IMAGE_ACTIONS:
            return answers.validation("seed only for finished image tasks", self.config.dialect)
        return answers.result(1, "成功", image_seed(task.id))

    # -- files -------------------------------------------------------------------------------------------

    async def image(self, request: Request) -> Response:
        task = self.engine.tasks.get(request.path_params["task_id"])
        self.engine.advance()
        if task is None or self.engine.progress(task, time.time())[0] not in ("SUCCESS", "IN_PROGRESS"):
            return Response(status_code=404)
        config = self.config
        if config.image_errors or (config.image_error_rate and self.engine.rng.random() < config.image_error_rate):
            config.image_errors = max(0, config.image_errors - 1)
            self.engine.faults["image_500"] += 1
            return Response(b"image store unavailable", status_code=500, media_type="text/plain")
        await self._hold("image", config.image_delay_rate, config.image_delay_s)
        if task.action == "DESCRIBE" and task.image_key in self.engine.uploads:
            data = self.engine.uploads[task.image_key or ""]
            return Response(data, media_type=sniff_mime(data))
        tile = request.path_params.get("n")
        if tile is not None:  # trueai's imageUrls: one of the four grid images (thumbnail: half its size)
            if task.action not in GRID_ACTIONS or not 1 <= tile <= 4:
                return Response(status_code=404)
            png = await asyncio.to_thread(render_tile, task.prompt, _label(task), tile,
                                          request.query_params.get("thumb") == "1")
        else:
            png = await asyncio.to_thread(render_png, task.prompt, task.action in GRID_ACTIONS, _label(task))
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    async def uploaded(self, request: Request) -> Response:
        data = self.engine.uploads.get(request.path_params["name"].split(".")[0])
        return Response(data, media_type=sniff_mime(data)) if data else Response(status_code=404)

    # -- admin -------------------------------------------------------------------------------------------

    async def admin_stats(self, request: Request) -> Response:
        held = {"images_in_flight": self.held["image"], "polls_in_flight": self.held["poll"]}
        return JSONResponse({**self.engine.stats(), **held})

    async def admin_config(self, request: Request) -> Response:
        return JSONResponse(self.config.public())

    async def admin_faults(self, request: Request) -> Response:
        """Patch the configuration; dict fields (durations, concurrency) merge per mode."""
        body = await self._body(request)
        if "profile" in body and "dialect" not in body:  # the profile's dialect unless both are given
            body["dialect"] = profile_dialect(str(body["profile"]))
        current = self.config.model_dump()
        for name, value in body.items():
            if isinstance(current.get(name), dict) and isinstance(value, dict):
                body[name] = {**current[name], **{str(k).upper(): v for k, v in value.items()}}
        try:
            patched = SimConfig.model_validate({**current, **body})
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        for name in body:
            setattr(self.config, name, getattr(patched, name))
        if "seed" in body:
            self.engine.reseed()
        self.engine.advance()  # a larger concurrency starts queued tasks at once
        return JSONResponse(self.config.public())

    async def admin_reset(self, request: Request) -> Response:
        """Forget tasks and counters; ``{"config": true}`` also restores the start-up configuration."""
        body = await self._body(request)
        if body.get("config", False):
            for name in SimConfig.model_fields:
                setattr(self.config, name, getattr(self.initial, name))
        self.engine.reset()
        self.dispatcher.reset()
        self.submit_log.clear()
        self.ban_until, self.recent_429s = 0.0, 0
        return JSONResponse(self.config.public())

    async def admin_tasks(self, request: Request) -> Response:
        self.engine.advance()
        now = time.time()
        return JSONResponse([self.engine.view(t, self.base_url, now) for t in self.engine.tasks.values()])

    async def admin_callbacks(self, request: Request) -> Response:
        """When each task's terminal callback was sent (epoch seconds), for latency measurements."""
        return JSONResponse(self.engine.final_callback_at)

    async def admin_submits(self, request: Request) -> Response:
        """The submit log: ``[[epoch s, state, fault], ...]`` in arrival order."""
        return JSONResponse(list(self.submit_log))

    async def admin_finish(self, request: Request) -> Response:
        done = self.engine.force_finish(request.path_params["task_id"])
        return JSONResponse({"finished": done}, 200 if done else 404)

    # -- wiring ------------------------------------------------------------------------------------------

    def _endpoint(self, path: str, method: str, run: Handler, *, submit: bool, counted: bool = True,
                  public: bool = False) -> Handler:
        """Wrap a handler: request counter (by prefix + route), auth, HTTP faults, submission counter."""
        is_api = path.startswith("/mj/")

        async def endpoint(request: Request) -> Response:
            if is_api:  # the API caller's view of our host (not a health check's localhost)
                self._learn_base(request)
            profile = self.config.profile
            missing = (path in JAVA_MISSING or request.scope.get("mj_prefix")) if profile == "java" \
                else (path in JAVA_ONLY or (path in NEWAPI_ONLY and profile != "newapi"))
            if is_api and missing:  # a route this server does not have
                return answers.java_not_found(path) if profile == "java" else Response(status_code=404)
            if counted:
                self.engine.requests[f"{method} {request.scope.get('mj_prefix', '')}{path}"] += 1
            try:
                if is_api and not public:
                    self._check_auth(request)
                    if submit or self.config.fault_scope == "all":
                        self._http_faults()
                return await run(request)
            except Answer as answer:
                if answer.fault and submit:
                    await self._log_faulted_submit(request, answer.fault)
                return answer.response

        return endpoint

    def _with_body(self, handler: BodyHandler, *, submission: bool) -> Handler:
        async def run(request: Request) -> Response:
            body = await self._body(request, api=True)
            if self.config.profile == "newapi":  # the gateway deletes both before relaying
                body.pop("notifyHook", None)
                body.pop("accountFilter", None)
            if submission:
                self._count_submission(body)
                self._check_credit()
            return await handler(request, body)

        return run

    def routes(self) -> list[Route]:
        submits: list[tuple[str, BodyHandler, bool]] = [
            ("/mj/submit/imagine", self.imagine, True), ("/mj/submit/blend", self.blend, True),
            ("/mj/submit/describe", self.describe, True), ("/mj/submit/action", self.action, True),
            ("/mj/insight-face/swap", self.swap_face, True), ("/mj/submit/modal", self.modal, False),
            ("/mj/submit/upload-discord-images", self.upload, False),
            ("/mj/submit/change", self.change, True), ("/mj/submit/simple-change", self.simple_change, True),
        ]
        routes = [Route(p, self._endpoint(p, "POST", self._with_body(h, submission=s), submit=True),
                        methods=["POST"]) for p, h, s in submits]
        listing = "/mj/task/list-by-condition"
        routes.append(Route(listing, self._endpoint(
            listing, "POST", self._with_body(self.list_by_condition, submission=False), submit=False),
            methods=["POST"]))
        reads: list[tuple[str, Handler]] = [
            ("/mj/task/{task_id}/image-seed", self.image_seed),
            ("/images/{task_id}.png", self.image), ("/images/{task_id}/{n:int}.png", self.image),
            ("/uploads/{name}", self.uploaded),
        ]
        routes += [Route(p, self._endpoint(p, "GET", h, submit=False), methods=["GET"]) for p, h in reads]
        # new-api serves the images itself, without a token
        image = "/mj/image/{task_id}"
        routes.append(Route(image, self._endpoint(image, "GET", self.image, submit=False, public=True),
                            methods=["GET"]))
        routes.append(Route("/mj/task/{task_id}/fetch", self.fetch_endpoint, methods=["GET"]))
        admin: list[tuple[str, str, Handler]] = [
            ("/admin/stats", "GET", self.admin_stats), ("/admin/faults", "GET", self.admin_config),
            ("/admin/faults", "POST", self.admin_faults), ("/admin/reset", "POST", self.admin_reset),
            ("/admin/tasks", "GET", self.admin_tasks), ("/admin/callbacks", "GET", self.admin_callbacks),
            ("/admin/submits", "GET", self.admin_submits),
            ("/admin/tasks/{task_id}/finish", "POST", self.admin_finish),
        ]
        routes += [Route(p, self._endpoint(p, m, h, submit=False, counted=False), methods=[m]) for p, m, h in admin]
        return routes


def _label(task: SimTask) -> str:
    """What the picture says it is, e.g. ``[upscale 2]`` for U2."""
    parts = (task.custom_id or "").split("::")
    index = parts[3] if len(parts) > 4 and parts[3].isdigit() else ""
    return f"[{task.action.lower()} {index}]".replace(" ]", "]")


class Front:
    """ASGI middleware: ``/mj-fast/mj/...`` selects the speed and is served as ``/mj/...``; the hot poll
    (``GET /mj/task/{id}/fetch``) goes straight to its endpoint, skipping routing (same endpoint, same checks)."""

    def __init__(self, app: ASGIApp, sim: SimulatorApp) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for prefix, mode in SPEED_PREFIXES.items():
                if scope["path"].startswith(prefix + "/"):
                    scope = {**scope, "path": scope["path"][len(prefix):], "mj_speed": mode, "mj_prefix": prefix}
                    scope.pop("raw_path", None)
                    break
            if scope["method"] == "GET" and (match := FETCH_PATH.fullmatch(scope["path"])):
                scope["path_params"] = {"task_id": match.group(1)}
                response = await self.sim.fetch_endpoint(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(config: SimConfig, base_url: str = "") -> Starlette:
    """The simulator as an ASGI app; ``app.state.sim`` is the :class:`SimulatorApp` behind it.

    ``base_url`` makes ``imageUrl`` absolute; left empty it is learnt from the first request's Host."""
    sim = SimulatorApp(config, base_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sim.dispatcher.start()
        yield
        await sim.dispatcher.stop()

    app = Starlette(routes=sim.routes(), lifespan=lifespan)
    app.state.sim = sim
    app.add_middleware(Front, sim=sim)
    return app
