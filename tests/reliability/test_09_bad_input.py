"""Scenario 9: bad producer input. Each case is refused in the producer with a message naming the field;
nothing is queued (broker queues unchanged), nothing recorded (no new mjq keys), nothing sent upstream.
Prompt files with huge or undecodable rows are refused row by row by ``worker.batchfile``. A producer
without our code (``send_task``) gets a clear FAILURE, not a retry loop."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.reliability.audit import Figures, record
from tests.reliability.conftest import Rel
from tests.support.images import png_data_uri

PNG = png_data_uri("red", (16, 16))
PNG_B64 = PNG.split(",", 1)[1]
AS_JPEG = "data:image/jpeg;base64," + PNG_B64
TEN_MB = "data:image/png;base64," + base64.b64encode(base64.b64decode(PNG_B64) + b"\0" * (10 * 1024 * 1024)).decode()


def _animated_gif() -> str:
    import io

    from PIL import Image

    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buffer.getvalue()).decode()


UP = "1320098173412546"
U1 = "MJ::JOB::upsample::1::4f2b9c1e-7d7a-4a9e-9a53-0c7e1f3b2d11"


def _cases() -> list[tuple[str, str, Callable[[], Any]]]:
    import tasks

    return [
        ("empty prompt", "prompt", lambda: tasks.imagine.delay("")),
        ("blank prompt", "prompt", lambda: tasks.imagine.delay("   ")),
        ("no prompt", "prompt", lambda: tasks.imagine.delay()),
        ("prompt over 8192 chars", "prompt", lambda: tasks.imagine.delay("x" * 9000)),
        ("prompt not text", "prompt", lambda: tasks.imagine.delay(["a", "list"])),
        ("10 MB image", "base64_array[0]", lambda: tasks.imagine.delay("ok", base64_array=[TEN_MB])),
        ("PNG labelled JPEG", "base64_array[0]", lambda: tasks.imagine.delay("ok", base64_array=[AS_JPEG])),
        ("bad base64", "base64", lambda: tasks.describe.delay("data:image/png;base64,!!!notbase64!!!")),
        ("not a data URI", "base64", lambda: tasks.describe.delay("http://example.com/cat.png")),
        ("not an image", "base64", lambda: tasks.describe.delay("data:text/plain;base64,aGVsbG8=")),
        ("empty image", "base64", lambda: tasks.describe.delay("data:image/png;base64,")),
        ("animated GIF", "base64", lambda: tasks.describe.delay(_animated_gif())),
        ("blend of 1 image", "base64_array", lambda: tasks.blend.delay([PNG])),
        ("blend of 6 images", "base64_array", lambda: tasks.blend.delay([PNG] * 6)),
        ("blend bad dimensions", "dimensions", lambda: tasks.blend.delay([PNG, PNG], dimensions="WIDE")),
        ("image list not a list", "base64_array", lambda: tasks.imagine.delay("ok", base64_array=PNG)),
        ("swap face without target", "target_base64", lambda: tasks.swap_face.delay(PNG)),
        ("upload of no image", "base64_array", lambda: tasks.upload_images.delay([])),
        ("unknown mode", "mode", lambda: tasks.imagine.delay("ok", mode="warp")),
        ("unknown bot type", "bot_type", lambda: tasks.imagine.delay("ok", bot_type="DALL_E")),
        ("unknown account mode", "account_filter",
         lambda: tasks.imagine.delay("ok", account_filter={"modes": ["WARP"]})),
        ("unknown plan token", "then", lambda: tasks.imagine.delay("ok", then="U9")),
        ("plan gibberish", "then", lambda: tasks.imagine.delay("ok", then="upscale everything please")),
        ("plan not text", "then", lambda: tasks.imagine.delay("ok", then=["U1"])),
        ("bad customId", "custom_id", lambda: tasks.action.delay(UP, "U1")),
        ("customId with spaces", "custom_id", lambda: tasks.action.delay(UP, "MJ::JOB::upsample::1 ; rm")),
        ("action without task id", "task_id", lambda: tasks.action.delay("", U1)),
        ("task id with a path", "task_id", lambda: tasks.action.delay("../../admin", U1)),
        ("modal without task id", "task_id", lambda: tasks.modal.delay(prompt="zoom")),
        ("bad job_id", "job_id", lambda: tasks.imagine.delay("ok", job_id="a b/../c")),
        ("bad batch_id", "batch_id", lambda: tasks.imagine.delay("ok", batch_id="x" * 300)),
        ("priority out of range", "priority", lambda: tasks.imagine.delay("ok", priority=42)),
        ("priority not a number", "priority", lambda: tasks.imagine.delay("ok", priority="high")),
        ("notify_hook by the caller", "notify_hook", lambda: tasks.imagine.delay("ok", notify_hook="http://evil")),
        ("state by the caller", "state", lambda: tasks.imagine.delay("ok", state="someone-else")),
        ("unknown keyword", "colour", lambda: tasks.imagine.delay("ok", colour="red")),
    ]


def _queues(client: redis.Redis) -> dict[str, int]:
    """Lengths of the job queues (with their priority lists); ``track`` is excluded: the beat feeds it."""
    names = [k for k in client.scan_iter("*", count=1000, _type="list")]
    return {n: int(client.llen(n)) for n in names if n.split("\x06")[0] in ("interactive", "batch")}


def test_bad_producer_input_is_refused_before_anything_happens(rel_poll: Rel, started: float, tmp_path: Path) -> None:
    from worker.mjapi.errors import InvalidInput

    rel = rel_poll
    client = rel.stack.redis
    queues, keys, sim_before = _queues(client), set(client.scan_iter("mjq:*")), rel.sim.stats()
    refused: dict[str, str] = {}
    for name, field, call in _cases():
        with pytest.raises(InvalidInput) as info:
            call()
        message = str(info.value)
        assert f"'{field}" in message or info.value.field.startswith(field), (name, message)
        refused[name] = message[:120]
    assert len(refused) >= 30
    assert _queues(client) == queues, "a refused request reached the broker"
    assert set(client.scan_iter("mjq:*")) - keys == set(), "a refused request left a record"
    sim_after = rel.sim.stats()
    assert sim_after["requests"] == sim_before["requests"] and sim_after["submissions"] == 0

    # prompt files: huge rows and undecodable bytes are refused per row, naming the column
    from worker.batchfile import read_batch_file

    path = tmp_path / "prompts.csv"
    path.write_bytes(
        b"prompt,mode,then\n"
        b"a fine fox,fast,U1\n"
        + b'"' + b"y" * 70_000 + b'",fast,\n'
        + b"caf\xe9 latte in latin-1,fast,\n"
        + b"a heron,warp,\n"
        + b"a crane,fast,U7\n"
    )
    plan = read_batch_file(path)
    fields = sorted(r.field for r in plan.rejected)
    assert [j.prompt for j in plan.jobs] == ["a fine fox"], plan.jobs
    assert len(plan.rejected) == 4 and {"mode", "then"} <= set(fields), plan.rejected
    refused.update({f"file row {r.row}": f"{r.field}: {r.reason[:80]}" for r in plan.rejected})

    # send_task from a producer without our code: a clear FAILURE (no retry loop), nothing recorded
    from worker.app import app

    bad_kwargs: list[tuple[str, dict[str, Any]]] = [
        ("prompt", {"prompt": ""}),
        ("mode", {"prompt": "ok", "mode": "warp"}),
        ("then", {"prompt": "ok", "then": "U9"}),
        ("notify_hook", {"prompt": "ok", "notify_hook": "http://evil"}),
        ("priority", {"prompt": "ok", "priority": "high"}),
        ("base64_array[0]", {"prompt": "ok", "base64_array": [AS_JPEG]}),
    ]
    sent = [(field, app.send_task("tasks.imagine", kwargs=kw, queue="interactive")) for field, kw in bad_kwargs]
    for field, result in sent:
        with pytest.raises(Exception) as failure:
            result.get(timeout=15)
        assert result.state == "FAILURE" and field in str(failure.value), (field, str(failure.value))
    time.sleep(1.0)  # a retry loop would show as RETRY/PENDING states or new records by now
    assert all(r.state == "FAILURE" for _, r in sent)
    assert not list(client.scan_iter("mjq:job:*"))
    assert rel.sim.stats()["submissions"] == 0
    record(Figures("9 bad producer input", "full" if rel.full else "reduced", jobs=0,
                   seconds=time.monotonic() - started,
                   extra={"refused": len(refused), "send_task_failures": len(sent), "cases": refused}))
