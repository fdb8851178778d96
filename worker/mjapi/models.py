"""Wire models of the Midjourney Proxy API (pydantic v2), shared by the sync and async clients.

Python names are snake_case, the wire is camelCase (alias generator).  Request models validate everything
the upstream would refuse (and some it would accept but should not: a PNG labelled ``image/jpeg``) when
they are built; response models tolerate unknown fields and turn numeric task ids into strings.
``validate_request(kind, payload)`` is the one entry point that maps pydantic's report to ``InvalidInput``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from worker.mjapi.errors import InvalidInput
from worker.mjapi.images import parse_data_uri

MAX_PROMPT_CHARS = 8192
MAX_STATE_CHARS = 4096
MAX_URL_CHARS = 2048
TASK_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
CUSTOM_ID_RE = re.compile(r"^MJ::[A-Za-z0-9_:.\-]+$")
SAFE_TEXT_RE = re.compile(r"^[^\x00-\x1f]{0,256}$")


class BotType(StrEnum):
    MID_JOURNEY = "MID_JOURNEY"
    NIJI_JOURNEY = "NIJI_JOURNEY"


class Mode(StrEnum):
    RELAX = "RELAX"
    FAST = "FAST"
    TURBO = "TURBO"


MODES = ("fast", "relax", "turbo")  # the speed modes as jobs name them (``Mode`` lower-cased), the default first


class Dimensions(StrEnum):
    PORTRAIT = "PORTRAIT"
    SQUARE = "SQUARE"
    LANDSCAPE = "LANDSCAPE"


class TaskStatus(StrEnum):
    NOT_START = "NOT_START"
    SUBMITTED = "SUBMITTED"
    MODAL = "MODAL"
    IN_PROGRESS = "IN_PROGRESS"
    FAILURE = "FAILURE"
    SUCCESS = "SUCCESS"
    CANCEL = "CANCEL"


FINISHED_STATUSES = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILURE, TaskStatus.CANCEL})


# ---------------------------------------------------------------------------------------------------------
# Field types with their rules (errors are PydanticCustomError so the message is our rule, verbatim).


def _rule(text: str) -> PydanticCustomError:
    return PydanticCustomError("mj_rule", text)


def _upper(value: Any) -> Any:
    """Enums are case-insensitive on input (``fast`` == ``FAST``)."""
    return value.strip().upper() if isinstance(value, str) else value


def _id_text(value: Any) -> Any:
    """Upstream ids are sometimes JSON numbers: they are strings everywhere in mjqueue."""
    if isinstance(value, bool):
        return value
    return str(value) if isinstance(value, int) else value


def _check_task_id(value: str) -> str:
    if not TASK_ID_RE.match(value):
        raise _rule("must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
    return value


def _check_custom_id(value: str) -> str:
    if len(value) > 256 or not CUSTOM_ID_RE.match(value):
        raise _rule("must look like 'MJ::JOB::upsample::1::<hash>' (MJ:: then letters, digits, _ : . -)")
    if value.startswith("MJ::BOOKMARK::"):
        raise _rule("is the ❤️ bookmark button (MJ::BOOKMARK::), which makes no task: nothing to submit")
    return value


_ACTION_KINDS = (
    (re.compile(r"^MJ::JOB::upsample"), "UPSCALE"),
    (re.compile(r"^MJ::JOB::(low_|high_)?variation|^MJ::Inpaint"), "VARIATION"),
    (re.compile(r"^MJ::JOB::reroll"), "REROLL"),
    (re.compile(r"^MJ::(Outpaint|CustomZoom)"), "ZOOM"),
    (re.compile(r"^MJ::JOB::pan_"), "PAN"),
)


def action_kind(custom_id: str) -> str:
    """What pressing a button makes (UPSCALE, VARIATION, REROLL, ZOOM, PAN), as the upstream task reports it;
    ``ACTION`` for a button we do not know.  The upstream task's own ``action`` wins once it is seen."""
    for pattern, kind in _ACTION_KINDS:
        if pattern.search(custom_id):
            return kind
    return "ACTION"


def _check_prompt(value: str) -> str:
    if not value.strip():
        raise _rule("must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise _rule(f"is {len(value)} characters, the limit is {MAX_PROMPT_CHARS}")
    if "\x00" in value:
        raise _rule("must not contain NUL characters")
    return value


def _check_image(value: str) -> str:
    try:
        parse_data_uri(value, "")
    except InvalidInput as exc:
        raise _rule(exc.rule) from None
    return value


def _empty_to_none(value: Any) -> Any:
    return None if value == "" else value


def _check_hook(value: str) -> str:
    if len(value) > MAX_URL_CHARS:
        raise _rule(f"is longer than {MAX_URL_CHARS} characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise _rule("must be an http:// or https:// URL")
    return value


def _check_optional_hook(value: str | None) -> str | None:
    return None if value is None else _check_hook(value)


def _check_state(value: str) -> str:
    if len(value) > MAX_STATE_CHARS:
        raise _rule(f"is {len(value)} characters, the limit is {MAX_STATE_CHARS}")
    return value


def _check_safe_text(value: str) -> str:
    if not SAFE_TEXT_RE.match(value):
        raise _rule("must be at most 256 characters without control characters")
    return value


TaskId = Annotated[str, BeforeValidator(_id_text), AfterValidator(_check_task_id)]
CustomId = Annotated[str, AfterValidator(_check_custom_id)]
Prompt = Annotated[str, AfterValidator(_check_prompt)]
DataUri = Annotated[str, AfterValidator(_check_image)]
NotifyHook = Annotated[str | None, BeforeValidator(_empty_to_none), AfterValidator(_check_optional_hook)]
State = Annotated[str, AfterValidator(_check_state)]
SafeText = Annotated[str, BeforeValidator(_id_text), AfterValidator(_check_safe_text)]
BotTypeIn = Annotated[BotType, BeforeValidator(_upper)]
ModeIn = Annotated[Mode, BeforeValidator(_upper)]
DimensionsIn = Annotated[Dimensions, BeforeValidator(_upper)]


class WireModel(BaseModel):
    """snake_case in Python, camelCase on the wire; both spellings accepted on input."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        loc_by_alias=False,
        extra="forbid",
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON body: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class AccountFilter(WireModel):
    """Which upstream account may run the task (and in which speed mode)."""

    channel_id: SafeText | None = None
    instance_id: SafeText | None = None
    modes: list[ModeIn] | None = None
    remark: SafeText | None = None
    remix: bool | None = None
    remix_auto_considered: bool | None = None


class UploadFilter(WireModel):
    """Which Discord channel/instance receives uploaded images."""

    channel_id: SafeText | None = None
    instance_id: SafeText | None = None
    remark: SafeText | None = None


class RequestModel(WireModel):
    """A submit request: ``ENDPOINT`` is its path, ``KIND`` the name ``validate_request`` knows it by."""

    ENDPOINT: ClassVar[str]
    KIND: ClassVar[str]


class _Hooked(RequestModel):
    account_filter: AccountFilter | None = None
    notify_hook: NotifyHook = None
    state: State | None = None


class ImagineRequest(_Hooked):
    ENDPOINT: ClassVar[str] = "/mj/submit/imagine"
    KIND: ClassVar[str] = "imagine"

    prompt: Prompt
    bot_type: BotTypeIn = BotType.MID_JOURNEY
    base64_array: list[DataUri] | None = Field(None, max_length=10)


class BlendRequest(_Hooked):
    ENDPOINT: ClassVar[str] = "/mj/submit/blend"
    KIND: ClassVar[str] = "blend"

    base64_array: list[DataUri] = Field(min_length=2, max_length=5)
    dimensions: DimensionsIn = Dimensions.SQUARE
    bot_type: BotTypeIn = BotType.MID_JOURNEY


class DescribeRequest(_Hooked):
    ENDPOINT: ClassVar[str] = "/mj/submit/describe"
    KIND: ClassVar[str] = "describe"

    base64: DataUri
    bot_type: BotTypeIn = BotType.MID_JOURNEY


class ModalRequest(RequestModel):
    ENDPOINT: ClassVar[str] = "/mj/submit/modal"
    KIND: ClassVar[str] = "modal"

    task_id: TaskId
    prompt: Annotated[Prompt | None, BeforeValidator(_empty_to_none)] = None
    mask_base64: Annotated[DataUri | None, BeforeValidator(_empty_to_none)] = None


class SwapFaceRequest(_Hooked):
    ENDPOINT: ClassVar[str] = "/mj/insight-face/swap"
    KIND: ClassVar[str] = "swap_face"

    source_base64: DataUri
    target_base64: DataUri


class ActionRequest(_Hooked):
    ENDPOINT: ClassVar[str] = "/mj/submit/action"
    KIND: ClassVar[str] = "action"

    task_id: TaskId
    custom_id: CustomId
    choose_same_channel: bool = False


class UploadRequest(RequestModel):
    ENDPOINT: ClassVar[str] = "/mj/submit/upload-discord-images"
    KIND: ClassVar[str] = "upload"

    base64_array: list[DataUri] = Field(min_length=1, max_length=10)
    filter: UploadFilter | None = None


REQUEST_MODELS: dict[str, type[RequestModel]] = {
    model.KIND: model
    for model in (
        ImagineRequest,
        BlendRequest,
        DescribeRequest,
        ModalRequest,
        SwapFaceRequest,
        ActionRequest,
        UploadRequest,
    )
}


# ---------------------------------------------------------------------------------------------------------
# Responses: tolerant of unknown fields and of numbers where strings are documented.


class ResponseModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="allow"
    )


def _none_to_empty_list(value: Any) -> Any:
    return [] if value is None else value


def _none_to_empty_dict(value: Any) -> Any:
    return {} if value is None else value


def _text_or_none(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _millis(value: Any) -> Any:
    return None if value in (None, "", 0) else value  # null (java) and 0 (new-api) mean "not reached"


def _image_urls(value: Any) -> Any:
    """trueai's ``imageUrls`` ``[{url, thumbnail}]`` (the four grid images) as a list of URLs."""
    if not isinstance(value, list):
        return []
    urls = [item.get("url") if isinstance(item, Mapping) else item for item in value]
    return [u for u in urls if isinstance(u, str) and u]


class Button(ResponseModel):
    custom_id: str = ""
    emoji: str = ""
    label: str = ""
    style: int | None = None
    type: int | None = None

    @field_validator("emoji", "label", "custom_id", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return "" if value is None else value


Text = Annotated[str | None, BeforeValidator(_text_or_none)]
Millis = Annotated[int | None, BeforeValidator(_millis)]


class Task(ResponseModel):
    """An upstream task (fetch, list, callbacks)."""

    id: Annotated[str, BeforeValidator(_id_text)]
    action: Text = None
    status: Text = None
    progress: Text = None
    prompt: Text = None
    prompt_en: Text = None
    description: Text = None
    state: Text = None
    submit_time: Millis = None
    start_time: Millis = None
    finish_time: Millis = None
    image_url: Text = None
    image_urls: Annotated[list[str], BeforeValidator(_image_urls)] = Field(default_factory=list)
    fail_reason: Text = None
    buttons: Annotated[list[Button], BeforeValidator(_none_to_empty_list)] = Field(default_factory=list)
    properties: Annotated[dict[str, Any], BeforeValidator(_none_to_empty_dict)] = Field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """SUCCESS, FAILURE or CANCEL: nothing more will change."""
        return self.status in FINISHED_STATUSES

    @classmethod
    def read(cls, body: Mapping[str, Any]) -> Task:
        """A task object as sent by any server (callback body, list item): a field of an unexpected type reads
        as absent, a button that does not parse is left out, instead of losing the whole task.

        Raises ``ValueError`` only when the ``id`` itself is missing or unusable.
        """
        data = dict(body)
        for _ in range(len(data) + 1):
            try:
                return cls.model_validate(data)
            except ValidationError as exc:
                bad_buttons = {e["loc"][1] for e in exc.errors() if e["loc"][:1] == ("buttons",) and len(e["loc"]) > 2}
                bad_fields = {str(e["loc"][0]) for e in exc.errors() if e["loc"] and e["loc"][:1] != ("buttons",)}
                bad_fields |= {"buttons"} if any(e["loc"] == ("buttons",) for e in exc.errors()) else set()
                if "id" in bad_fields or not (bad_fields or bad_buttons):
                    raise ValueError(f"not a task object: {exc.errors()[0]['msg']}") from None
                if bad_buttons and isinstance(data.get("buttons"), list):
                    data["buttons"] = [b for i, b in enumerate(data["buttons"]) if i not in bad_buttons]
                for name in bad_fields:
                    data.pop(name, None)
        raise ValueError("not a task object")


Outcome = Literal["submitted", "queued", "exists", "modal"]


class SubmitResult(BaseModel):
    """An accepted submit: code 1 (submitted), 22 (queued) or 21 with a task id (exists / modal)."""

    model_config = ConfigDict(frozen=True)

    code: int
    description: str = ""
    task_id: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    outcome: Outcome
    queue_position: int | None = None


# ---------------------------------------------------------------------------------------------------------
# validate_request: the one entry point for clients and producers.

_TYPE_RULES = {
    "missing": "is required",
    "extra_forbidden": "is not a field of this request",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "request"


def _error_rule(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind == "mj_rule":
        return str(error.get("msg", "invalid"))
    if kind == "enum":
        return f"must be one of {ctx.get('expected', '?').replace(chr(39), '')}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} items (got {ctx.get('actual_length')})"
    if kind == "too_long":
        return f"allows at most {ctx.get('max_length')} items (got {ctx.get('actual_length')})"
    return _TYPE_RULES.get(kind, str(error.get("msg", "invalid")))


def invalid_input_from(exc: ValidationError) -> InvalidInput:
    """The first pydantic error as ``InvalidInput`` (field path like ``base64_array[1]``, our rule text).

    The input value is never echoed: it may be megabytes of base64.
    """
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "msg": "invalid"}
    return InvalidInput(_field_path(tuple(first.get("loc", ()))), _error_rule(first))


def check_task_id(value: object, field: str = "task_id") -> str:
    """An upstream task id as text (numbers accepted), safe in a URL path; else ``InvalidInput``."""
    text = _id_text(value)
    if not isinstance(text, str) or not TASK_ID_RE.match(text):
        raise InvalidInput(field, "must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
    return text


def validate_request(kind: str, payload: Mapping[str, Any] | RequestModel) -> RequestModel:
    """Build the request model of ``kind`` (imagine, blend, describe, modal, swap_face, action, upload).

    ``payload`` uses snake_case keys (camelCase works too).  Raises ``InvalidInput`` naming the field.
    """
    model = REQUEST_MODELS.get(kind)
    if model is None:
        raise InvalidInput("kind", f"unknown request kind {kind!r} (one of {', '.join(REQUEST_MODELS)})")
    if isinstance(payload, model):
        return payload
    if not isinstance(payload, Mapping):
        raise InvalidInput("request", f"must be a mapping of fields, not {type(payload).__name__}")
    try:
        return model.model_validate(dict(payload))
    except ValidationError as exc:
        raise invalid_input_from(exc) from None
