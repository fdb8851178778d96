"""Request kinds and the wire request of a job: mode, validation, notifyHook/state, Flower reprs.

One place decides what a request of each kind looks like upstream, so producers (before queueing) and the
worker (before sending) validate exactly the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.mjapi import validate_request
from worker.mjapi.errors import (
    InvalidInput,
)
from worker.mjapi.models import MODES
from worker.plans.grammar import parse as parse_plan
from worker.pricing import PriceError, to_micros
from worker.settings import Settings
from worker.store.images import load_image, store_image
from worker.store.runtime import Runtime


@dataclass(frozen=True)
class Kind:
    name: str  # our kind == the kind name given to ``validate_request``
    action: str  # upstream action recorded in the job (IMAGINE, BLEND, ...)
    image_fields: tuple[str, ...] = ()
    hooked: bool = True  # accepts accountFilter, notifyHook and state
    tracked: bool = True  # produces an upstream task followed to its end
    needs_slot: bool = True


KINDS: dict[str, Kind] = {
    "imagine": Kind("imagine", "IMAGINE", ("base64_array",)),
    "blend": Kind("blend", "BLEND", ("base64_array",)),
    "describe": Kind("describe", "DESCRIBE", ("base64",)),
    "swap_face": Kind("swap_face", "SWAP_FACE", ("source_base64", "target_base64")),
    "action": Kind("action", "ACTION"),
    "modal": Kind("modal", "MODAL", ("mask_base64",), hooked=False),
    "upload": Kind("upload", "UPLOAD", ("base64_array",), hooked=False, tracked=False, needs_slot=False),
}


OURS = ("notify_hook", "state")  # fields mjqueue sets itself; callers may not


def _map_images(kind: Kind, payload: Mapping[str, Any], fn: Callable[[str, str], str]) -> dict[str, Any]:
    out = dict(payload)
    for name in kind.image_fields:
        value = out.get(name)
        if isinstance(value, str) and value:
            out[name] = fn(value, name)
        elif isinstance(value, list | tuple):
            out[name] = [fn(v, f"{name}[{i}]") if isinstance(v, str) else v for i, v in enumerate(value)]
    return out


def resolve_images(kind: Kind, payload: Mapping[str, Any], rt: Runtime) -> dict[str, Any]:
    return _map_images(kind, payload, lambda v, f: load_image(v, f, rt))


def lighten_images(kind: Kind, payload: Mapping[str, Any], rt: Runtime) -> dict[str, Any]:
    return _map_images(kind, payload, lambda v, _f: store_image(v, rt))


def image_values(kind: Kind, payload: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name in kind.image_fields:
        value = payload.get(name)
        if isinstance(value, str) and value:
            out.append(value)
        elif isinstance(value, list | tuple):
            out.extend(v for v in value if isinstance(v, str))
    return out


def job_mode(kind: Kind, payload: Mapping[str, Any], mode: str | None) -> str:
    """fast | relax | turbo: the ``mode`` keyword, else accountFilter.modes[0], else a prompt flag."""
    if mode:
        value = str(getattr(mode, "value", mode)).lower()
        if value not in MODES:
            raise InvalidInput(f"field 'mode': must be one of {', '.join(MODES)}")
        return value
    af = payload.get("account_filter")
    modes = (af or {}).get("modes") if isinstance(af, Mapping) else getattr(af, "modes", None)
    if modes:
        first = modes[0]
        return str(getattr(first, "value", first)).lower()
    prompt = str(payload.get("prompt") or "")
    for candidate in MODES:
        if f"--{candidate}" in prompt:
            return candidate
    return "fast"


def check_caller_fields(payload: Mapping[str, Any]) -> None:
    for name in OURS:
        if payload.get(name) not in (None, ""):
            raise InvalidInput(f"field '{name}': set by mjqueue (our job id / webhook URL); do not pass it")


MAX_TAGS, MAX_TAG_LENGTH = 20, 64
MAX_ID_CHARS = 128
JOB_ID_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_ID_CHARS - 1}}}$")
ID_RULE = f"1-{MAX_ID_CHARS} characters of letters, digits and . _ : - (starting with a letter or digit)"


def check_id(value: object, name: str = "job_id") -> None:
    """Ids become Redis keys, media file names and webhook URL segments: 1-128 of letters, digits and ``._:-``.

    A job id may also come from a raw Celery task id (``send_task(..., task_id=...)``), so this runs on the
    worker before anything is recorded, not only on the ``job_id`` option.
    """
    if not isinstance(value, str) or not JOB_ID_RE.match(value):
        raise InvalidInput(f"field '{name}': must be {ID_RULE}, not {str(value)[:60]!r}")


def check_job_options(options: Mapping[str, Any]) -> None:
    """Job options (not request fields) checked like the request: ids, priority and the follow-up plan.

    Ids become Redis keys and URL path segments (webhook), so they are short and safe; priority is a Redis
    transport priority 0-9; the plan is parsed by the plan compiler itself.
    """
    for name in ("job_id", "batch_id"):
        value = options.get(name)
        if value not in (None, ""):
            check_id(value, name)
    priority = options.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9):
        raise InvalidInput(f"field 'priority': must be a whole number 0-9, not {str(priority)[:20]!r}")
    row = options.get("row")
    if row is not None and (isinstance(row, bool) or not isinstance(row, int) or row < 1):
        raise InvalidInput(f"field 'row': must be a prompt-file row number (1 or more), not {str(row)[:20]!r}")
    tags = options.get("tags")
    if tags is not None and (
        not isinstance(tags, list | tuple)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG_LENGTH for t in tags)
    ):
        raise InvalidInput(
            f"field 'tags': must be a list of at most {MAX_TAGS} texts of 1-{MAX_TAG_LENGTH} characters"
        )
    budget = options.get("budget")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int | float | str):
            raise InvalidInput(f"field 'budget': must be an amount >= 0, not {str(budget)[:20]!r}")
        try:
            to_micros(budget, "budget")
        except PriceError as exc:
            raise InvalidInput(f"field {exc}") from exc
    then = options.get("then")
    if then is not None:
        if not isinstance(then, str):
            raise InvalidInput(f"field 'then': must be a plan text like 'U1-4', not {type(then).__name__}")

        parse_plan(then)  # PlanError is an InvalidInput naming the field 'then'


def webhook_token(job_id: str, settings: Settings) -> str:
    """Unguessable per-job token: HMAC-SHA256 of the job id with the webhook secret, 32 hex chars."""
    secret = settings.webhook_secret.get_secret_value().encode()
    return hmac.new(secret, job_id.encode(), hashlib.sha256).hexdigest()[:32]


def webhook_url(job_id: str, settings: Settings) -> str | None:
    if not settings.webhook_base_url:
        return None
    return f"{settings.webhook_base_url}/hook/{job_id}/{webhook_token(job_id, settings)}"


def build_request(
    kind: Kind, payload: Mapping[str, Any], job_id: str | None, mode: str, rt: Runtime
) -> Any:
    """The validated request model (images resolved; our accountFilter mode, notifyHook and state added)."""
    data = resolve_images(kind, payload, rt)
    data = {k: v for k, v in data.items() if v is not None}
    if kind.hooked:
        af = dict(data.get("account_filter") or {})
        if not af.get("modes"):
            af["modes"] = [mode.upper()]
        data["account_filter"] = af
        if job_id is not None:
            settings = rt.settings
            hook = webhook_url(job_id, settings)
            if hook:
                data["notify_hook"] = hook
            data["state"] = job_id
    return validate_request(kind.name, data)
