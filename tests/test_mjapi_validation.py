"""Request models: every field on the wire in camelCase, and bad input refused before any request with a
message that names the field and the rule."""

from __future__ import annotations

import base64
import io
import json
import pickle
import socket
from typing import Any

import pytest
from PIL import Image

from worker.mjapi import (
    AccountFilter,
    ActionRequest,
    BotType,
    ImagineRequest,
    InvalidInput,
    MidjourneyClient,
    Mode,
    validate_request,
)
from worker.mjapi.models import REQUEST_MODELS, Task


def png(color: str = "red") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def jpeg_labelled_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, "JPEG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def too_big() -> str:
    raw = b"\x89PNG\r\n\x1a\n" + b"\0" * int(5.2 * 1024 * 1024)
    return "data:image/png;base64," + base64.b64encode(raw).decode()


IMG = png()
HASH = "3f1a2b3c-0000-4000-8000-123456789abc"
CUSTOM = f"MJ::JOB::upsample::1::{HASH}"

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("imagine", {}, "prompt", "is required"),
    ("imagine", {"prompt": ""}, "prompt", "must not be empty"),
    ("imagine", {"prompt": "   \n"}, "prompt", "must not be empty"),
    ("imagine", {"prompt": "x" * 8193}, "prompt", "is 8193 characters, the limit is 8192"),
    ("imagine", {"prompt": 42}, "prompt", "must be a string"),
    ("imagine", {"prompt": "a\x00b"}, "prompt", "NUL"),
    (
        "imagine",
        {"prompt": "cat", "bot_type": "DALL_E"},
        "bot_type",
        "must be one of MID_JOURNEY or NIJI_JOURNEY",
    ),
    ("imagine", {"prompt": "cat", "base64_array": "data:x"}, "base64_array", "must be a list"),
    ("imagine", {"prompt": "cat", "base64_array": [IMG, "http://x/y.png"]}, "base64_array[1]", "data URI"),
    (
        "imagine",
        {"prompt": "cat", "base64_array": [IMG, too_big()]},
        "base64_array[1]",
        "image is 5.2 MB decoded, the limit is 4 MB",
    ),
    (
        "imagine",
        {"prompt": "cat", "base64_array": [jpeg_labelled_png()]},
        "base64_array[0]",
        "declared 'image/png' but the bytes are JPEG",
    ),
    ("imagine", {"prompt": "cat", "notify_hook": "ftp://host/x"}, "notify_hook", "http:// or https://"),
    ("imagine", {"prompt": "cat", "notify_hook": "not a url"}, "notify_hook", "http:// or https://"),
    ("imagine", {"prompt": "cat", "notify_hook": "https://" + "a" * 2100}, "notify_hook", "longer than 2048"),
    ("imagine", {"prompt": "cat", "state": "s" * 5000}, "state", "the limit is 4096"),
    (
        "imagine",
        {"prompt": "cat", "account_filter": {"modes": ["SLOW"]}},
        "account_filter.modes[0]",
        "must be one of RELAX, FAST or TURBO",
    ),
    (
        "imagine",
        {"prompt": "cat", "account_filter": {"remix": "perhaps"}},
        "account_filter.remix",
        "must be true or false",
    ),
    (
        "imagine",
        {"prompt": "cat", "account_filter": {"channelId": "a\nb"}},
        "account_filter.channel_id",
        "control characters",
    ),
    (
        "imagine",
        {"prompt": "cat", "account_filter": {"colour": "red"}},
        "account_filter.colour",
        "is not a field of this request",
    ),
    ("imagine", {"prompt": "cat", "account_filter": "FAST"}, "account_filter", "must be an object"),
    ("imagine", {"prompt": "cat", "promt": "typo"}, "promt", "is not a field of this request"),
    ("blend", {"base64_array": [IMG]}, "base64_array", "needs at least 2 items (got 1)"),
    ("blend", {"base64_array": [IMG] * 6}, "base64_array", "allows at most 5 items (got 6)"),
    ("blend", {"base64_array": [IMG, "data:image/png;base64,!!!!"]}, "base64_array[1]", "invalid base64"),
    (
        "blend",
        {"base64_array": [IMG, IMG], "dimensions": "WIDE"},
        "dimensions",
        "must be one of PORTRAIT, SQUARE or LANDSCAPE",
    ),
    ("describe", {}, "base64", "is required"),
    ("describe", {"base64": "data:image/png;base64,"}, "base64", "image data is empty"),
    ("modal", {"prompt": "zoom"}, "task_id", "is required"),
    ("modal", {"task_id": "../../admin"}, "task_id", "letters, digits"),
    ("modal", {"task_id": "1", "mask_base64": "data:image/png;base64,AAAA"}, "mask_base64", "not a JPEG"),
    ("modal", {"task_id": "1", "prompt": "x" * 9000}, "prompt", "the limit is 8192"),
    ("swap_face", {"source_base64": IMG}, "target_base64", "is required"),
    ("swap_face", {"source_base64": "face.png", "target_base64": IMG}, "source_base64", "data URI"),
    ("action", {"task_id": "1"}, "custom_id", "is required"),
    ("action", {"task_id": "1", "custom_id": "U1"}, "custom_id", "MJ::"),
    ("action", {"task_id": "1", "custom_id": "MJ::JOB::upsample::1::<script>"}, "custom_id", "MJ::"),
    ("action", {"task_id": "", "custom_id": CUSTOM}, "task_id", "letters, digits"),
    (
        "action",
        {"task_id": "1", "custom_id": CUSTOM, "choose_same_channel": "often"},
        "choose_same_channel",
        "must be true or false",
    ),
    ("upload", {"base64_array": []}, "base64_array", "needs at least 1 items (got 0)"),
    (
        "upload",
        {"base64_array": [IMG], "filter": {"channel_id": "c" * 300}},
        "filter.channel_id",
        "at most 256",
    ),
    ("upload", {"base64_array": [IMG], "state": "x"}, "state", "is not a field of this request"),
]


@pytest.mark.parametrize(
    ("kind", "payload", "field", "rule"), BAD, ids=[f"{b[0]}-{b[2]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_input_names_field_and_rule(kind: str, payload: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_request(kind, payload)
    error = info.value
    assert error.field == field
    assert rule in error.rule
    assert str(error) == f"field '{field}': {error.rule}"
    assert len(str(error)) < 300, "the input value must never be echoed"
    assert isinstance(error, ValueError) and error.retryable is False


def test_unknown_kind_and_non_mapping_payload() -> None:
    with pytest.raises(InvalidInput, match="field 'kind': unknown request kind 'paint'"):
        validate_request("paint", {})
    with pytest.raises(InvalidInput, match="field 'request': must be a mapping"):
        validate_request("imagine", ["prompt"])  # type: ignore[arg-type]


def test_every_kind_has_an_endpoint() -> None:
    assert set(REQUEST_MODELS) == {"imagine", "blend", "describe", "modal", "swap_face", "action", "upload"}
    assert {m.ENDPOINT for m in REQUEST_MODELS.values()} == {
        "/mj/submit/imagine", "/mj/submit/blend", "/mj/submit/describe", "/mj/submit/modal",
        "/mj/insight-face/swap", "/mj/submit/action", "/mj/submit/upload-discord-images",
    }  # fmt: skip


def test_wire_format_is_camel_case_with_every_field() -> None:
    request = validate_request(
        "imagine",
        {
            "prompt": "a red fox --ar 3:2",
            "bot_type": "niji_journey",
            "base64_array": [IMG],
            "account_filter": {
                "channel_id": "123", "instance_id": "inst-1", "modes": ["relax", "FAST"], "remark": "team",
                "remix": True, "remix_auto_considered": False,
            },
            "notify_hook": "https://hooks.example/mj",
            "state": "job-1",
        },
    )  # fmt: skip
    assert isinstance(request, ImagineRequest)
    assert request.bot_type is BotType.NIJI_JOURNEY
    assert request.to_wire() == {
        "prompt": "a red fox --ar 3:2",
        "botType": "NIJI_JOURNEY",
        "base64Array": [IMG],
        "accountFilter": {
            "channelId": "123", "instanceId": "inst-1", "modes": ["RELAX", "FAST"], "remark": "team",
            "remix": True, "remixAutoConsidered": False,
        },
        "notifyHook": "https://hooks.example/mj",
        "state": "job-1",
    }  # fmt: skip


def test_camel_case_input_numeric_ids_and_defaults() -> None:
    action = validate_request(
        "action", {"taskId": 1320098173412546, "customId": CUSTOM, "chooseSameChannel": True}
    )
    assert isinstance(action, ActionRequest)
    assert action.task_id == "1320098173412546"
    assert action.to_wire() == {"taskId": "1320098173412546", "customId": CUSTOM, "chooseSameChannel": True}
    blend = validate_request("blend", {"base64_array": [IMG, png("blue")]})
    assert blend.to_wire()["dimensions"] == "SQUARE" and blend.to_wire()["botType"] == "MID_JOURNEY"
    hooked = validate_request("imagine", {"prompt": "x", "notify_hook": ""})
    assert "notifyHook" not in hooked.to_wire()
    modal = validate_request("modal", {"task_id": "9", "prompt": "", "mask_base64": IMG})
    assert modal.to_wire() == {"taskId": "9", "maskBase64": IMG}
    assert validate_request("imagine", hooked) is hooked
    assert AccountFilter(modes=[Mode.TURBO]).to_wire() == {"modes": ["TURBO"]}


def test_upload_filter_on_the_wire() -> None:
    upload = validate_request(
        "upload", {"base64_array": [IMG], "filter": {"channel_id": "c1", "remark": "r"}}
    )
    assert upload.to_wire() == {"base64Array": [IMG], "filter": {"channelId": "c1", "remark": "r"}}


def test_invalid_input_survives_pickle_and_json_round_trip() -> None:
    error = InvalidInput("base64_array[1]", "image is 5.2 MB decoded, the limit is 4 MB")
    again = pickle.loads(pickle.dumps(error))
    rebuilt = InvalidInput(*json.loads(json.dumps(error.args)))  # what Celery's JSON backend does
    for copy in (again, rebuilt):
        assert (copy.field, copy.rule, str(copy)) == (error.field, error.rule, str(error))
    plain = InvalidInput("no field here")
    assert (plain.field, plain.rule) == ("", "no field here")


def test_task_model_tolerates_numbers_nulls_and_unknown_fields() -> None:
    task = Task.model_validate(
        {
            "id": 1320098173412546, "action": "IMAGINE", "status": "SUCCESS", "progress": 100,
            "promptEn": "cat", "submitTime": 1700000000000, "startTime": None, "finishTime": "",
            "imageUrl": "http://x/1.png", "buttons": None, "properties": None, "newField": 1,
        }
    )  # fmt: skip
    assert task.id == "1320098173412546" and task.progress == "100" and task.prompt_en == "cat"
    assert task.start_time is None and task.finish_time is None and task.submit_time == 1700000000000
    assert task.buttons == [] and task.properties == {} and task.finished


def free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_client_validates_before_sending() -> None:
    # A closed port: if validation ran after sending, the error would be NotSent, not InvalidInput.
    with MidjourneyClient(f"http://127.0.0.1:{free_closed_port()}", "k") as client:
        with pytest.raises(InvalidInput, match="field 'prompt'"):
            client.imagine("")
        with pytest.raises(InvalidInput, match="field 'base64_array'"):
            client.blend([IMG])
        with pytest.raises(InvalidInput, match="field 'custom_id'"):
            client.action("1", "U1")
        with pytest.raises(InvalidInput, match="field 'task_id'"):
            client.fetch("a/b")
        with pytest.raises(InvalidInput, match=r"field 'ids\[1\]'"):
            client.list_by_condition(["1", "x y"])
        with pytest.raises(InvalidInput, match="field 'base64_array'"):
            client.upload_discord_images([])
