"""HTTP clients of the Midjourney Proxy API: ``MidjourneyClient`` (sync) and ``AsyncMidjourneyClient``.

Both share everything but the I/O: ``_Core`` validates input, builds each ``Call`` (method, path, JSON body
and the parser of its answer, which goes through the one classifier), maps transport failures and decides
retries.  The two classes only run calls on ``httpx.Client`` / ``httpx.AsyncClient``.

Retries: only idempotent reads (fetch, list-by-condition, image-seed) are retried here, a few times with a
short backoff, on ``NotSent``, 5xx and short 429s.  Submits are sent exactly once: the caller owns the
decision (``NotSent`` is safe to resend, ``AnswerLost`` is not).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

import httpx
from pydantic import SecretStr, ValidationError

from worker.mjapi.classify import check_code, classify, raise_for_status
from worker.mjapi.errors import (
    AnswerLost,
    MJError,
    NotFound,
    NotSent,
    RateLimited,
    ServerError,
    Unsupported,
    UpstreamSystemError,
)
from worker.mjapi.models import (
    REQUEST_MODELS,
    AccountFilter,
    BotType,
    Dimensions,
    RequestModel,
    SubmitResult,
    Task,
    UploadFilter,
    UploadRequest,
    check_task_id,
    validate_request,
)
from worker.mjapi.profiles import Profile, profile_for


class Settings(Protocol):
    """What ``from_settings`` reads (``worker.settings.Settings`` satisfies it)."""

    @property
    def api_base_url(self) -> str: ...
    @property
    def api_key(self) -> SecretStr: ...
    @property
    def api_auth_header(self) -> str: ...
    @property
    def api_profile_name(self) -> str: ...
    @property
    def api_path_prefix(self) -> str: ...
    @property
    def api_mode_paths(self) -> dict[str, str]: ...
    @property
    def http_timeout_s(self) -> float: ...
    @property
    def http_submit_timeout_s(self) -> float: ...
    @property
    def http_connect_timeout_s(self) -> float: ...
    @property
    def block_cooldown_s(self) -> float: ...


class RateLimitMemory(Protocol):
    """Where the client notes 429 answers and asks whether one came lately (an empty 403 right after 429s is
    trueai's temporary block). The worker passes one in Redis (``worker.store.observed``), shared by the
    cluster; alone, the client remembers in its own memory."""

    def note_429(self) -> None: ...
    def had_429_within(self, seconds: float) -> bool: ...


class LocalRateLimits:
    """The client's own memory of its last 429 (one process)."""

    def __init__(self) -> None:
        self._last: float | None = None

    def note_429(self) -> None:
        self._last = time.monotonic()

    def had_429_within(self, seconds: float) -> bool:
        return self._last is not None and time.monotonic() - self._last <= seconds


__all__ = ["AsyncMidjourneyClient", "Call", "LocalRateLimits", "MidjourneyClient", "Probe", "RateLimitMemory"]

log = logging.getLogger("mjqueue.mjapi")

T = TypeVar("T")
AuthHeaderName = Literal["bearer", "mj-api-secret"]
AccountFilterIn = AccountFilter | Mapping[str, Any] | None
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol,
             httpx.ProxyError, httpx.LocalProtocolError)  # fmt: skip
_READ_RETRY_MAX_WAIT_S = 2.0


class _KeyAuth(httpx.Auth):
    """Adds the API key to each request; holds it as a SecretStr so no repr can show it."""

    def __init__(self, key: SecretStr, header: AuthHeaderName) -> None:
        self._key = key
        self._header = header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        value = self._key.get_secret_value()
        if value:
            if self._header == "bearer":
                request.headers["Authorization"] = f"Bearer {value}"
            else:
                request.headers["mj-api-secret"] = value
        yield request

    def __repr__(self) -> str:
        return f"_KeyAuth(header={self._header!r}, key=**********)"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One upstream request and how to read its answer."""

    what: str
    method: Literal["GET", "POST"]
    path: str
    body: Any
    parse: Callable[[int, Any, Mapping[str, str]], T]
    idempotent: bool = False
    timeout: float | None = None  # read timeout of this call when not the client's (submits carrying images)


def _decode(response: httpx.Response) -> Any:
    """JSON body, ``None`` when empty, the text (truncated) when it is not JSON."""
    if not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        return response.text[:300]


class _Core:
    """Configuration, request building, answer parsing and retry policy shared by both clients."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr = "",
        *,
        auth_header: AuthHeaderName | str = "mj-api-secret",
        dialect: str | None = None,
        profile: Profile | str = "auto",
        path_prefix: str = "",
        mode_paths: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        submit_timeout: float = 90.0,
        connect_timeout: float = 10.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        get_retries: int = 2,
        max_connections: int = 100,
        retry_backoff_s: float = 0.2,
        rate_limits: RateLimitMemory | None = None,
        block_window_s: float = 300.0,
    ) -> None:
        auth = str(getattr(auth_header, "value", auth_header))
        if auth not in ("bearer", "mj-api-secret"):
            raise ValueError(f"auth_header must be 'bearer' or 'mj-api-secret', not {auth!r}")
        try:
            self.profile: Profile = profile if isinstance(profile, Profile) else profile_for(profile, dialect)
        except ValueError as exc:
            raise ValueError(f"dialect/profile: {exc}") from None
        if path_prefix and not path_prefix.startswith("/"):
            raise ValueError("path_prefix must start with '/'")
        self.mode_paths = {k.lower(): v.rstrip("/") for k, v in (mode_paths or {}).items() if v}
        if any(not v.startswith("/") for v in self.mode_paths.values()):
            raise ValueError("mode_paths must start with '/'")
        self.base_url = base_url.rstrip("/")
        self.path_prefix = path_prefix.rstrip("/")
        self.auth_header: AuthHeaderName = "bearer" if auth == "bearer" else "mj-api-secret"
        self.dialect: Profile = self.profile  # what the classifier reads codes by
        self.submit_timeout = max(timeout, submit_timeout)
        self.get_retries = max(0, get_retries)
        self.retry_backoff_s = max(0.0, retry_backoff_s)
        self._key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self.rate_limits: RateLimitMemory = rate_limits or LocalRateLimits()
        self.block_window_s = block_window_s
        self._httpx_options: dict[str, Any] = {
            "base_url": self.base_url + self.path_prefix,
            "auth": _KeyAuth(self._key, self.auth_header),
            "timeout": httpx.Timeout(timeout, connect=connect_timeout),
            "limits": httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            "headers": {"Accept": "application/json", "User-Agent": "mjqueue"},
            "follow_redirects": False,
        }
        self._open(transport)

    def _open(self, transport: Any) -> None:
        """Create the pooled httpx client (sync or async) with ``self._httpx_options``."""
        raise NotImplementedError

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Self:
        """A client configured from ``MJQ_API_*`` / ``MJQ_HTTP_*`` settings."""
        return cls(**{**cls._settings_options(settings), **overrides})

    @classmethod
    def _settings_options(cls, settings: Settings) -> dict[str, Any]:
        return {
            "base_url": settings.api_base_url,
            "api_key": settings.api_key,
            "auth_header": settings.api_auth_header,
            "profile": settings.api_profile_name,
            "path_prefix": settings.api_path_prefix,
            "mode_paths": settings.api_mode_paths,
            "timeout": settings.http_timeout_s,
            "submit_timeout": settings.http_submit_timeout_s,
            "connect_timeout": settings.http_connect_timeout_s,
            "block_window_s": settings.block_cooldown_s,
        }

    def with_auth_header(self, header: AuthHeaderName | str) -> Self:
        """The same client sending the key in another header (``mjq doctor`` tries the other one on a 401)."""
        timeout: httpx.Timeout = self._httpx_options["timeout"]
        return type(self)(
            self.base_url, self._key, auth_header=header, profile=self.profile, path_prefix=self.path_prefix,
            mode_paths=self.mode_paths, timeout=timeout.read or 30.0, submit_timeout=self.submit_timeout,
            connect_timeout=timeout.connect or 10.0, get_retries=0,
        )  # fmt: skip

    def __repr__(self) -> str:
        key = "set" if self._key.get_secret_value() else "unset"
        return (
            f"{type(self).__name__}(base_url={self.base_url + self.path_prefix!r}, "
            f"auth_header={self.auth_header!r}, profile={self.profile.name!r}, api_key={key})"
        )

    # -- request building ---------------------------------------------------------------------------------

    @staticmethod
    def _request(kind: str, **fields: Any) -> RequestModel:
        """Validated request model from keyword fields (``None`` = not given)."""
        return validate_request(kind, {k: v for k, v in fields.items() if v is not None})

    def _submit_call(self, request: RequestModel) -> Call[SubmitResult]:
        if isinstance(request, UploadRequest):
            raise TypeError("upload answers URLs, not a task: use upload_discord_images()")
        if not isinstance(request, RequestModel):
            raise TypeError(f"submit() takes a request model, not {type(request).__name__}")
        self._check_supported(request.KIND)
        dialect = self.dialect

        def parse(status: int, body: Any, headers: Mapping[str, str]) -> SubmitResult:
            return classify(status, body, dialect, headers, after_429=self._after_429(status))

        wire = request.to_wire()
        if self.profile.remix_flag and _asks_remix(wire):
            wire["enableRemix"] = True  # trueai stops an action at the remix modal only when asked to
        path = self._mode_path(wire) + request.ENDPOINT
        timeout = self.submit_timeout if _carries_images(wire) else None
        return Call(request.KIND, "POST", path, wire, parse, timeout=timeout)

    def _check_supported(self, kind: str) -> None:
        if not self.profile.supports(kind):
            endpoint = REQUEST_MODELS[kind].ENDPOINT if kind in REQUEST_MODELS else kind
            plus = " (follow-ups need a Plus-compatible server: plus, trueai or newapi)"
            hint = plus if kind in ("action", "modal") else ""
            raise Unsupported(
                f"{kind}: the {self.profile.name} server ({self.profile.title}) has no {endpoint}; nothing was sent"
                + hint
            )

    def _mode_path(self, wire: Mapping[str, Any]) -> str:
        """The per-mode path prefix (``MJQ_API_PATH_FAST``...) of the request's speed mode, if one is set."""
        if not self.mode_paths:
            return ""
        af = wire.get("accountFilter")
        modes = af.get("modes") if isinstance(af, Mapping) else None
        if not modes:
            return ""
        return self.mode_paths.get(str(modes[0]).lower(), "")

    def _upload_call(self, request: UploadRequest) -> Call[list[str]]:
        dialect = self.dialect

        def parse(status: int, body: Any, headers: Mapping[str, str]) -> list[str]:
            raise_for_status(status, body, dialect, headers, after_429=self._after_429(status))
            result = check_code(body, status, dialect).get("result")
            urls = [result] if isinstance(result, str) else result
            if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
                raise UpstreamSystemError("upload: the answer carries no image URLs", status=status)
            return [str(u) for u in urls]

        self._check_supported("upload")
        return Call("upload", "POST", UploadRequest.ENDPOINT, request.to_wire(), parse, timeout=self.submit_timeout)

    def _fetch_call(self, task_id: object) -> Call[Task | None]:
        tid = check_task_id(task_id)
        dialect = self.dialect

        def parse(status: int, body: Any, headers: Mapping[str, str]) -> Task | None:
            # unknown id: 404, 200 with an empty body (java), 204 (trueai), 400 code 4 task_no_found (new-api)
            if status in (404, 204):
                return None
            try:
                raise_for_status(status, body, dialect, headers, after_429=self._after_429(status))
                body = _unwrap(body, dialect, status)
            except NotFound:
                return None
            if not body:
                return None
            return _task(body, status)

        return Call("fetch", "GET", f"/mj/task/{tid}/fetch", None, parse, idempotent=True)

    def _list_call(self, ids: Sequence[object]) -> Call[list[Task]]:
        clean = [check_task_id(value, f"ids[{i}]") for i, value in enumerate(ids)]
        dialect = self.dialect

        def parse(status: int, body: Any, headers: Mapping[str, str]) -> list[Task]:
            raise_for_status(status, body, dialect, headers, after_429=self._after_429(status))
            body = _unwrap(body, dialect, status)
            if body is None:
                return []
            if not isinstance(body, list):
                raise UpstreamSystemError("list-by-condition: the answer is not a list", status=status)
            tasks = []
            for item in body:
                if not isinstance(item, Mapping) or not item:
                    continue
                try:
                    tasks.append(Task.read(item))
                except ValueError as exc:  # one bad task must not lose the batch: it is polled again alone
                    log.warning("list-by-condition: skipped an unreadable task (%s): %.200r", exc, item)
            return tasks

        return Call("list-by-condition", "POST", "/mj/task/list-by-condition", {"ids": clean}, parse, True)

    def _seed_call(self, task_id: object) -> Call[str]:
        tid = check_task_id(task_id)
        dialect = self.dialect

        def parse(status: int, body: Any, headers: Mapping[str, str]) -> str:
            raise_for_status(status, body, dialect, headers, after_429=self._after_429(status))
            if not isinstance(body, Mapping):  # a bare seed (some servers), or an HTML page / proxy text
                seed = _seed(body)
                if seed is None:
                    shown = str(body)[:80]
                    raise UpstreamSystemError(f"image-seed: the answer is not a seed: {shown!r}", status=status)
                return seed
            seed = _seed(check_code(body, status, dialect).get("result"))
            if seed is None:
                raise UpstreamSystemError("image-seed: the answer carries no seed", status=status)
            return seed

        return Call("image-seed", "GET", f"/mj/task/{tid}/image-seed", None, parse, idempotent=True)

    # -- answers, failures, retries -----------------------------------------------------------------------

    def _read(self, call: Call[T], response: httpx.Response, started: float) -> T:
        log.debug(
            "%s %s -> HTTP %s in %.0f ms",
            call.method, call.path, response.status_code, (time.monotonic() - started) * 1000,
        )  # fmt: skip
        try:
            return call.parse(response.status_code, _decode(response), response.headers)
        except MJError as exc:
            if response.status_code == 429:
                self._remember(self.rate_limits.note_429)
            raise self._scrub(exc) from None

    def _after_429(self, status: int) -> bool:
        """An empty 403 is a temporary block when a 429 came within ``block_window_s`` (MJQ_BLOCK_COOLDOWN_S)."""
        if status != 403:
            return False
        known = self._remember(lambda: self.rate_limits.had_429_within(self.block_window_s))
        return True if known is None else bool(known)  # not knowing: the stop that resumes by itself

    @staticmethod
    def _remember(call: Callable[[], Any]) -> Any:
        """The rate-limit memory is a hint (Redis may be away): its failure never hides the answer."""
        try:
            return call()
        except Exception as exc:  # any store error: the answer itself is what matters
            log.debug("rate-limit memory unavailable: %s", exc)
            return None

    def _timeout(self, call: Call[Any]) -> dict[str, Any]:
        if call.timeout is None:
            return {}
        default: httpx.Timeout = self._httpx_options["timeout"]
        return {"timeout": httpx.Timeout(call.timeout, connect=default.connect)}

    def _transport_error(self, call: Call[Any], exc: Exception) -> MJError:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, (*_NOT_SENT, httpx.InvalidURL)):
            error: MJError = NotSent(
                f"{call.what}: could not reach the upstream ({detail}); nothing was sent"
            )
        else:
            error = AnswerLost(
                f"{call.what}: the request was sent but no answer came back ({detail}); "
                "it may have been accepted upstream"
            )
        return self._scrub(error)

    def _scrub(self, exc: MJError) -> MJError:
        """Defence in depth: an upstream echoing our key in an error text must not put it in our logs."""
        key = self._key.get_secret_value()
        if key and any(key in str(arg) for arg in (*exc.args, exc.description or "")):
            exc.args = tuple(str(arg).replace(key, "**********") for arg in exc.args)
            if exc.description:
                exc.description = exc.description.replace(key, "**********")
        return exc

    def _retry_delay(self, call: Call[Any], attempt: int, exc: MJError) -> float | None:
        """Seconds to wait before retrying an idempotent read, or ``None`` to give up."""
        if not call.idempotent or attempt >= self.get_retries:
            return None
        if not isinstance(exc, NotSent | ServerError | RateLimited):
            return None
        delay = self.retry_backoff_s * float(2**attempt)
        retry_after: float | None = getattr(exc, "retry_after", None)
        if retry_after is not None:
            if retry_after > _READ_RETRY_MAX_WAIT_S:
                return None
            delay = max(delay, retry_after)
        log.debug("%s: %s; retry %d in %.2fs", call.what, type(exc).__name__, attempt + 1, delay)
        return delay


@dataclass(frozen=True)
class Probe:
    """A raw answer: HTTP status, decoded body (``None`` when empty), headers (lower-case names)."""

    status: int
    body: Any
    headers: Mapping[str, str]


def _seed(value: Any) -> str | None:
    """A seed is a whole number (a JSON number or digits); anything else is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value >= 0 else None
    text = str(value).strip() if isinstance(value, str) else ""
    return text if text.isascii() and text.isdigit() else None


def _unwrap(body: Any, dialect: Profile, status: int) -> Any:
    """Some servers wrap reads as ``{"code": 1, "result": ...}``; an unknown id may be ``{"code": 3}``."""
    if isinstance(body, Mapping) and "id" not in body and isinstance(body.get("code"), int):
        if body["code"] == 3:
            return None
        return check_code(body, status, dialect).get("result")
    return body


def _task(body: Any, status: int) -> Task:
    if not isinstance(body, Mapping):
        raise UpstreamSystemError(f"unreadable task in the answer: {str(body)[:80]!r}", status=status)
    try:
        return Task.read(body)  # the tolerant reader: a field of an unexpected type reads as absent
    except (ValueError, ValidationError) as exc:
        raise UpstreamSystemError(f"unreadable task in the answer ({exc})", status=status) from None


_IMAGE_FIELDS = ("base64Array", "base64", "sourceBase64", "targetBase64", "maskBase64")


def _carries_images(wire: Mapping[str, Any]) -> bool:
    """A submit that uploads images (trueai sends them to Discord inside the call: it can exceed 30 s)."""
    return any(wire.get(name) for name in _IMAGE_FIELDS)


def _asks_remix(wire: Mapping[str, Any]) -> bool:
    """An action sent for a remix (``accountFilter.remix``: the remix follow-up asks the account for one)."""
    af = wire.get("accountFilter")
    return "customId" in wire and isinstance(af, Mapping) and af.get("remix") is True


def _filter(value: AccountFilterIn) -> Any:
    return value.model_dump(exclude_none=True) if isinstance(value, AccountFilter) else value


class MidjourneyClient(_Core):
    """Synchronous client (``httpx.Client``, pooled connections); thread-safe, a context manager."""

    _http: httpx.Client

    def _open(self, transport: Any) -> None:
        self._http = httpx.Client(transport=transport, **self._httpx_options)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _execute(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                try:
                    response = self._http.request(call.method, call.path, json=call.body, **self._timeout(call))
                except (httpx.TransportError, httpx.InvalidURL) as exc:
                    raise self._transport_error(call, exc) from None
                return self._read(call, response, started)
            except MJError as exc:
                delay = self._retry_delay(call, attempt, exc)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    # -- the API ------------------------------------------------------------------------------------------

    def submit(self, request: RequestModel) -> SubmitResult:
        """Send a validated request once (never retried) and classify the answer."""
        return self._execute(self._submit_call(request))

    def imagine(
        self,
        prompt: str,
        *,
        bot_type: BotType | str = BotType.MID_JOURNEY,
        base64_array: Sequence[str] | None = None,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return self.submit(self._request(
            "imagine", prompt=prompt, bot_type=bot_type, base64_array=base64_array,
            account_filter=_filter(account_filter), notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    def blend(
        self,
        base64_array: Sequence[str],
        *,
        dimensions: Dimensions | str = Dimensions.SQUARE,
        bot_type: BotType | str = BotType.MID_JOURNEY,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return self.submit(self._request(
            "blend", base64_array=base64_array, dimensions=dimensions, bot_type=bot_type,
            account_filter=_filter(account_filter), notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    def describe(
        self,
        base64: str,
        *,
        bot_type: BotType | str = BotType.MID_JOURNEY,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return self.submit(self._request(
            "describe", base64=base64, bot_type=bot_type, account_filter=_filter(account_filter),
            notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    def modal(
        self, task_id: str | int, *, prompt: str | None = None, mask_base64: str | None = None
    ) -> SubmitResult:
        return self.submit(self._request("modal", task_id=task_id, prompt=prompt, mask_base64=mask_base64))

    def swap_face(
        self,
        source_base64: str,
        target_base64: str,
        *,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return self.submit(self._request(
            "swap_face", source_base64=source_base64, target_base64=target_base64,
            account_filter=_filter(account_filter), notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    def action(
        self,
        task_id: str | int,
        custom_id: str,
        *,
        choose_same_channel: bool = False,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return self.submit(self._request(
            "action", task_id=task_id, custom_id=custom_id, choose_same_channel=choose_same_channel,
            account_filter=_filter(account_filter), notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    def upload_discord_images(
        self, base64_array: Sequence[str], *, filter: UploadFilter | Mapping[str, Any] | None = None
    ) -> list[str]:
        """Upload images to the account's Discord channel; the image URLs come back (sent once)."""
        request = self._request("upload", base64_array=base64_array, filter=_upload_filter(filter))
        assert isinstance(request, UploadRequest)
        return self._execute(self._upload_call(request))

    def fetch(self, task_id: str | int) -> Task | None:
        """The task, or ``None`` when the upstream does not know the id (404 or an empty answer)."""
        return self._execute(self._fetch_call(task_id))

    def list_by_condition(self, ids: Sequence[str | int]) -> list[Task]:
        """The known tasks among ``ids`` (unknown ids are simply missing)."""
        if not ids:
            return []
        return self._execute(self._list_call(ids))

    def image_seed(self, task_id: str | int) -> str:
        """The seed of a finished image task, as digits."""
        return self._execute(self._seed_call(task_id))

    def probe(self, method: Literal["GET", "POST"], path: str, body: Any = None) -> Probe:
        """One request as this client sends it (base URL, auth, timeouts), its answer unclassified: for
        ``mjq doctor``, which reads the status codes themselves. Transport failures raise ``NotSent`` /
        ``AnswerLost``; never retried."""
        call: Call[Probe] = Call(f"probe {path}", method, path, body, Probe)
        try:
            response = self._http.request(method, path, json=body)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise self._transport_error(call, exc) from None
        return Probe(response.status_code, _decode(response), {k.lower(): v for k, v in response.headers.items()})


def _upload_filter(value: UploadFilter | Mapping[str, Any] | None) -> Any:
    return value.model_dump(exclude_none=True) if isinstance(value, UploadFilter) else value


class AsyncMidjourneyClient(_Core):
    """Asynchronous client (``httpx.AsyncClient``); same models, classifier and rules as the sync one."""

    _http: httpx.AsyncClient

    def _open(self, transport: Any) -> None:
        self._http = httpx.AsyncClient(transport=transport, **self._httpx_options)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close

    async def _execute(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                try:
                    response = await self._http.request(
                        call.method, call.path, json=call.body, **self._timeout(call)
                    )
                except (httpx.TransportError, httpx.InvalidURL) as exc:
                    raise self._transport_error(call, exc) from None
                return self._read(call, response, started)
            except MJError as exc:
                delay = self._retry_delay(call, attempt, exc)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def submit(self, request: RequestModel) -> SubmitResult:
        return await self._execute(self._submit_call(request))

    async def imagine(
        self,
        prompt: str,
        *,
        bot_type: BotType | str = BotType.MID_JOURNEY,
        base64_array: Sequence[str] | None = None,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return await self.submit(self._request(
            "imagine", prompt=prompt, bot_type=bot_type, base64_array=base64_array,
            account_filter=_filter(account_filter), notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    async def blend(
        self,
        base64_array: Sequence[str],
        *,
        dimensions: Dimensions | str = Dimensions.SQUARE,
        bot_type: BotType | str = BotType.MID_JOURNEY,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return await self.submit(self._request(
            "blend", base64_array=base64_array, dimensions=dimensions, bot_type=bot_type,
            account_filter=_filter(account_filter), notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    async def describe(
        self,
        base64: str,
        *,
        bot_type: BotType | str = BotType.MID_JOURNEY,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return await self.submit(self._request(
            "describe", base64=base64, bot_type=bot_type, account_filter=_filter(account_filter),
            notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    async def modal(
        self, task_id: str | int, *, prompt: str | None = None, mask_base64: str | None = None
    ) -> SubmitResult:
        return await self.submit(
            self._request("modal", task_id=task_id, prompt=prompt, mask_base64=mask_base64)
        )

    async def swap_face(
        self,
        source_base64: str,
        target_base64: str,
        *,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return await self.submit(self._request(
            "swap_face", source_base64=source_base64, target_base64=target_base64,
            account_filter=_filter(account_filter), notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    async def action(
        self,
        task_id: str | int,
        custom_id: str,
        *,
        choose_same_channel: bool = False,
        account_filter: AccountFilterIn = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> SubmitResult:
        return await self.submit(self._request(
            "action", task_id=task_id, custom_id=custom_id, choose_same_channel=choose_same_channel,
            account_filter=_filter(account_filter), notify_hook=notify_hook, state=state,
        ))  # fmt: skip

    async def upload_discord_images(
        self, base64_array: Sequence[str], *, filter: UploadFilter | Mapping[str, Any] | None = None
    ) -> list[str]:
        request = self._request("upload", base64_array=base64_array, filter=_upload_filter(filter))
        assert isinstance(request, UploadRequest)
        return await self._execute(self._upload_call(request))

    async def fetch(self, task_id: str | int) -> Task | None:
        return await self._execute(self._fetch_call(task_id))

    async def list_by_condition(self, ids: Sequence[str | int]) -> list[Task]:
        if not ids:
            return []
        return await self._execute(self._list_call(ids))

    async def image_seed(self, task_id: str | int) -> str:
        return await self._execute(self._seed_call(task_id))
