"""The fake Midjourney Proxy HTTP API (Starlette): every endpoint of the spec, plus an admin API."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator.callbacks import CallbackDispatcher
from simulator.config import MODES, SimConfig
from simulator.engine import GRID_ACTIONS, Engine, SimTask, action_for_custom_id
from simulator.images import render_png

Handler = Callable[[Request], Awaitable[Response]]
SPEED_PREFIXES = {"/mj-fast": "FAST", "/mj-relax": "RELAX", "/mj-turbo": "TURBO"}
PROMPT_FLAGS = {"--relax": "RELAX", "--fast": "FAST", "--turbo": "TURBO"}
MAX_BODY = 30 * 1024 * 1024


class Answer(Exception):
    """A finished API answer raised from deep inside a handler."""

    def __init__(self, response: Response) -> None:
        self.response = response


def result(code: int, description: str, value: Any = None, properties: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "description": description, "properties": properties or {}, "result": value})


class SimulatorApp:
    """Routes bound to one engine; ``base_url`` is learnt from the first request when not given."""

    def __init__(self, config: SimConfig, base_url: str = "") -> None:
        self.config = config
        self.initial = config.model_copy(deep=True)
        self.engine = Engine(config)
        self.base_url = base_url
        self.dispatcher = CallbackDispatcher(self.engine, base_url)

    # -- helpers -----------------------------------------------------------------------------------------

    def _validation(self, message: str) -> Answer:
        code = 21 if self.config.dialect == "vendor" else 4
        return Answer(result(code, message))

    def _learn_base(self, request: Request) -> None:
        if not self.base_url:
            self.base_url = f"{request.url.scheme}://{request.url.netloc}"
            self.dispatcher.base_url = self.base_url

    def _check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        bearer = request.headers.get("authorization", "")
        secret = request.headers.get("mj-api-secret", "")
        if bearer != f"Bearer {key}" and secret != key:
            raise Answer(JSONResponse({"code": 401, "description": "invalid api key", "result": None}, 401))

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise Answer(JSONResponse({"code": 4, "description": "body too large", "result": None}, 413))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise Answer(JSONResponse({"code": 4, "description": "malformed JSON", "result": None}, 400)) from None
        if not isinstance(body, dict):
            raise Answer(JSONResponse({"code": 4, "description": "body must be an object", "result": None}, 400))
        return body

    def _image(self, value: Any, field: str) -> bytes:
        if not isinstance(value, str) or not value.startswith("data:image/") or ";base64," not in value:
            raise self._validation(f"{field}: must be a data:image/...;base64 URI")
        try:
            data = base64.b64decode(value.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise self._validation(f"{field}: invalid base64") from None
        if len(data) > 4 * 1024 * 1024:
            raise self._validation(f"{field}: image larger than 4 MB")
        return data

    def _store_upload(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()[:32]
        self.engine.uploads[key] = data
        return key

    def _mode(self, request: Request, body: dict[str, Any], prompt: str = "") -> str:
        prefix = request.scope.get("mj_speed")
        if isinstance(prefix, str):
            return prefix
        modes = (body.get("accountFilter") or {}).get("modes") or []
        if modes and str(modes[0]).upper() in MODES:
            return str(modes[0]).upper()
        for flag, mode in PROMPT_FLAGS.items():
            if flag in prompt:
                return mode
        return "FAST"

    def _gate(self, body: dict[str, Any]) -> None:
        """Faults and account checks applied before any submit is looked at."""
        config, rng = self.config, self.engine.rng
        if rng.random() < config.http_500_rate:
            raise Answer(JSONResponse({"code": 9, "description": "internal server error", "result": None}, 500))
        if rng.random() < config.http_429_rate:
            raise Answer(JSONResponse({"code": 9, "description": "too many requests", "result": None}, 429,
                                      headers={"Retry-After": f"{config.retry_after_s:g}"}))
        if config.account_unavailable:
            if config.dialect == "vendor":
                raise Answer(result(24, "账号不可用 (account unavailable)"))
            raise Answer(result(9, "无可用的账号实例 (no account instance available)"))

    def _charge(self, prompt: str) -> None:
        """Banned words, balance; raises the refusal, or takes one credit."""
        lowered = prompt.lower()
        for word in self.config.banned_words:
            if word and word.lower() in lowered:
                banned = {"promptEn": prompt, "bannedWord": word}
                raise Answer(result(24, "可能包含敏感词 (banned prompt)", properties=banned))
        balance = self.config.balance
        if balance is not None:
            if balance <= 0:
                raise Answer(result(25, "余额不足 (insufficient balance)"))
            self.config.balance = balance - 1

    def _admit(self, task: SimTask) -> Response:
        waited = self.engine.enqueue(task, time.time())
        # vendor answers carry the id as a JSON number, self-hosted servers as a string: both are real
        task_id: int | str = int(task.id) if self.config.dialect == "vendor" else task.id
        if waited:
            ahead = sum(len(q) for q in self.engine.queued.values()) - 1
            return result(22, f"排队中，前面还有{ahead}个任务", task_id, {"numberOfQueues": ahead})
        return result(1, "提交成功", task_id)

    def _queue_full(self) -> Answer:
        self.engine.queue_full += 1
        return Answer(result(23, "队列已满，请稍后尝试 (queue full)"))

    def _count_submission(self, body: dict[str, Any]) -> str | None:
        """Every submit is counted, per ``state`` too: the proof that nothing was submitted twice."""
        self.engine.submissions += 1
        state = body.get("state")
        if isinstance(state, str) and state:
            self.engine.submissions_by_state[state] += 1
            return state
        return None

    async def _answer(self, response: Response) -> Response:
        if self.engine.rng.random() < self.config.read_delay_rate:
            await asyncio.sleep(self.config.read_delay_s)
        return response

    # -- submit endpoints --------------------------------------------------------------------------------

    async def _create(self, request: Request, action: str, body: dict[str, Any], prompt: str,
                      image_key: str | None = None) -> Response:
        state = self._count_submission(body)
        self._gate(body)
        mode = self._mode(request, body, prompt)
        if not self.engine.has_room(mode):
            raise self._queue_full()
        self._charge(prompt)
        task = self.engine.new_task(action, mode, prompt, state, body.get("notifyHook") or None)
        task.image_key = image_key
        task.description = f"/{action.lower()}"
        return await self._answer(self._admit(task))

    async def imagine(self, request: Request, body: dict[str, Any]) -> Response:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise self._validation("prompt: must not be empty")
        for i, image in enumerate(body.get("base64Array") or []):
            self._image(image, f"base64Array[{i}]")
        return await self._create(request, "IMAGINE", body, prompt.strip())

    async def blend(self, request: Request, body: dict[str, Any]) -> Response:
        images = body.get("base64Array") or []
        if not isinstance(images, list) or not 2 <= len(images) <= 5:
            raise self._validation("base64Array: blend takes 2 to 5 images")
        for i, image in enumerate(images):
            self._image(image, f"base64Array[{i}]")
        if body.get("dimensions", "SQUARE") not in ("PORTRAIT", "SQUARE", "LANDSCAPE"):
            raise self._validation("dimensions: must be PORTRAIT, SQUARE or LANDSCAPE")
        return await self._create(request, "BLEND", body, f"blend of {len(images)} images")

    async def describe(self, request: Request, body: dict[str, Any]) -> Response:
        key = self._store_upload(self._image(body.get("base64"), "base64"))
        return await self._create(request, "DESCRIBE", body, "", image_key=key)

    async def swap_face(self, request: Request, body: dict[str, Any]) -> Response:
        self._image(body.get("sourceBase64"), "sourceBase64")
        key = self._store_upload(self._image(body.get("targetBase64"), "targetBase64"))
        return await self._create(request, "SWAP_FACE", body, "face swap", image_key=key)

    async def action(self, request: Request, body: dict[str, Any]) -> Response:
        state = self._count_submission(body)
        self._gate(body)
        parent = self.engine.tasks.get(str(body.get("taskId", "")))
        custom_id = body.get("customId")
        if parent is None:
            raise Answer(result(3, "关联任务不存在或已失效 (task not found)"))
        if not isinstance(custom_id, str) or not custom_id:
            raise self._validation("customId: must not be empty")
        view = self.engine.view(parent, self.base_url)
        if view["status"] != "SUCCESS" or custom_id not in {b["customId"] for b in view["buttons"]}:
            raise self._validation("customId: not a button of this task")
        remix = self.config.remix or bool((body.get("accountFilter") or {}).get("remix"))
        kind = action_for_custom_id(custom_id, remix)
        if kind is None:
            raise self._validation("customId: this button does not start a job")
        action, modal = kind
        existing = self.engine.existing_actions.get((parent.id, custom_id))
        if existing is not None and action == "UPSCALE":
            return result(21, "任务已存在 (task already exists)", existing,
                          {"status": self.engine.progress(self.engine.tasks[existing], time.time())[0]})
        mode = parent.mode
        if modal is None and not self.engine.has_room(mode):
            raise self._queue_full()
        self._charge(parent.prompt)
        task = self.engine.new_task(action, mode, parent.prompt, state, body.get("notifyHook") or None)
        task.parent_id, task.custom_id = parent.id, custom_id
        task.description = f"/{action.lower()} {custom_id.split('::')[2] if custom_id.count('::') > 1 else ''}"
        self.engine.existing_actions[(parent.id, custom_id)] = task.id
        if modal is not None:
            task.status, task.modal_needs = "MODAL", modal
            self.engine.changed.add(task.id)
            waiting = {"status": "MODAL", "finalPrompt": parent.prompt, "remix": modal == "any"}
            return await self._answer(result(21, "窗口等待 (waiting for modal)", task.id, waiting))
        return await self._answer(self._admit(task))

    async def modal(self, request: Request, body: dict[str, Any]) -> Response:
        self._gate(body)
        task = self.engine.tasks.get(str(body.get("taskId", "")))
        if task is None:
            raise Answer(result(3, "任务不存在 (task not found)"))
        if task.status != "MODAL":
            raise self._validation("taskId: task is not waiting for a modal")
        prompt, mask = body.get("prompt"), body.get("maskBase64")
        if task.modal_needs == "mask":
            self._image(mask, "maskBase64")
        if task.modal_needs == "prompt" and not (isinstance(prompt, str) and prompt.strip()):
            raise self._validation("prompt: this action needs a prompt")
        if not self.engine.has_room(task.mode):
            raise self._queue_full()
        if isinstance(prompt, str) and prompt.strip():
            task.prompt = prompt.strip()
        task.status, task.modal_needs = "NOT_START", None
        return await self._answer(self._admit(task))

    async def upload(self, request: Request, body: dict[str, Any]) -> Response:
        self._gate(body)
        images = body.get("base64Array")
        if not isinstance(images, list) or not images:
            raise self._validation("base64Array: at least one image")
        keys = [self._store_upload(self._image(image, f"base64Array[{i}]")) for i, image in enumerate(images)]
        return result(1, "上传成功", [f"{self.base_url}/uploads/{key}.png" for key in keys])

    # -- reads -------------------------------------------------------------------------------------------

    async def fetch(self, request: Request) -> Response:
        task = self.engine.tasks.get(request.path_params["task_id"])
        if task is None:
            if self.config.dialect == "vendor":
                return Response(b"", media_type="application/json")
            return JSONResponse({"code": 3, "description": "task not found", "result": None}, 404)
        self.engine.advance()
        return JSONResponse(self.engine.view(task, self.base_url))

    async def list_by_condition(self, request: Request, body: dict[str, Any]) -> Response:
        ids = body.get("ids") or []
        if not isinstance(ids, list):
            raise self._validation("ids: must be a list")
        self.engine.advance()
        now = time.time()
        tasks = [self.engine.tasks.get(str(i)) for i in ids]
        return JSONResponse([self.engine.view(t, self.base_url, now) for t in tasks if t is not None])

    async def image_seed(self, request: Request) -> Response:
        task = self.engine.tasks.get(request.path_params["task_id"])
        if task is None:
            return JSONResponse({"code": 3, "description": "task not found", "result": None}, 404)
        self.engine.advance()
        if task.status != "SUCCESS" or task.action not in GRID_ACTIONS | {"UPSCALE"}:
            return result(4, "seed only for finished image tasks")
        return result(1, "成功", str(int(hashlib.sha256(task.id.encode()).hexdigest()[:8], 16)))

    async def image(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        task = self.engine.tasks.get(task_id)
        if task is None:
            return Response(status_code=404)
        if task.image_key and task.image_key in self.engine.uploads:
            return Response(self.engine.uploads[task.image_key], media_type="image/png")
        png = render_png(task.id, task.prompt, task.action in GRID_ACTIONS)
        return Response(png, media_type="image/png")

    async def uploaded(self, request: Request) -> Response:
        data = self.engine.uploads.get(request.path_params["key"])
        return Response(data, media_type="image/png") if data else Response(status_code=404)

    # -- admin -------------------------------------------------------------------------------------------

    async def admin_stats(self, request: Request) -> Response:
        return JSONResponse(self.engine.stats())

    async def admin_faults(self, request: Request) -> Response:
        body = await self._body(request)
        try:
            patched = self.config.model_validate({**self.config.model_dump(), **body})
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        for name in body:
            setattr(self.config, name, getattr(patched, name))
        if "seed" in body:
            self.engine.reseed()
        self.engine.advance()
        return JSONResponse(self.config.public())

    async def admin_reset(self, request: Request) -> Response:
        body = await self._body(request)
        if body.get("config", False):
            for name, value in self.initial.model_dump().items():
                setattr(self.config, name, value)
        self.engine.reset()
        self.dispatcher.reset()
        return JSONResponse(self.config.public())

    async def admin_tasks(self, request: Request) -> Response:
        self.engine.advance()
        now = time.time()
        return JSONResponse([self.engine.view(t, self.base_url, now) for t in self.engine.tasks.values()])

    async def admin_finish(self, request: Request) -> Response:
        done = self.engine.force_finish(request.path_params["task_id"])
        return JSONResponse({"finished": done}, 200 if done else 404)

    # -- wiring ------------------------------------------------------------------------------------------

    def api(self, name: str, handler: Callable[[Request, dict[str, Any]], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            self._learn_base(request)
            self.engine.requests[name] += 1
            try:
                self._check_auth(request)
                return await handler(request, await self._body(request))
            except Answer as answer:
                return answer.response

        return endpoint

    def read(self, name: str, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            self._learn_base(request)
            self.engine.requests[name] += 1
            try:
                self._check_auth(request)
                return await handler(request)
            except Answer as answer:
                return answer.response

        return endpoint

    def routes(self) -> list[Route]:
        submit = [
            ("/mj/submit/imagine", self.imagine), ("/mj/submit/blend", self.blend),
            ("/mj/submit/describe", self.describe), ("/mj/submit/modal", self.modal),
            ("/mj/submit/action", self.action), ("/mj/submit/upload-discord-images", self.upload),
            ("/mj/insight-face/swap", self.swap_face), ("/mj/task/list-by-condition", self.list_by_condition),
        ]
        reads = [("/mj/task/{task_id}/fetch", self.fetch), ("/mj/task/{task_id}/image-seed", self.image_seed)]
        routes = [Route(p, self.api(f"POST {p}", h), methods=["POST"]) for p, h in submit]
        routes += [Route(p, self.read(f"GET {p}", h), methods=["GET"]) for p, h in reads]
        routes += [
            Route("/images/{task_id}.png", self.image), Route("/uploads/{key}.png", self.uploaded),
            Route("/admin/stats", self.admin_stats), Route("/admin/faults", self.admin_faults, methods=["POST"]),
            Route("/admin/reset", self.admin_reset, methods=["POST"]), Route("/admin/tasks", self.admin_tasks),
            Route("/admin/tasks/{task_id}/finish", self.admin_finish, methods=["POST"]),
        ]
        return routes


class SpeedPrefix:
    """ASGI middleware: ``/mj-fast/mj/...`` selects the speed and is served as ``/mj/...``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for prefix, mode in SPEED_PREFIXES.items():
                if scope["path"].startswith(prefix + "/"):
                    scope = {**scope, "path": scope["path"][len(prefix):], "mj_speed": mode}
                    break
        await self.app(scope, receive, send)


def create_app(config: SimConfig, base_url: str = "") -> Starlette:
    """The simulator as an ASGI app; ``app.state.sim`` is the :class:`SimulatorApp` behind it."""
    sim = SimulatorApp(config, base_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sim.dispatcher.start()
        yield
        await sim.dispatcher.stop()

    app = Starlette(routes=sim.routes(), lifespan=lifespan)
    app.state.sim = sim
    app.add_middleware(SpeedPrefix)
    return app
