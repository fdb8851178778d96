"""The sync client against the real simulator over HTTP: every endpoint, every error class, both dialects,
the transport split (NotSent / AnswerLost) and secret redaction."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import patience
from tests.support.images import png_data_uri
from worker.mjapi import (
    AccountUnavailable,
    AnswerLost,
    BannedPrompt,
    BotType,
    Busy,
    Forbidden,
    MidjourneyClient,
    MJError,
    NotFound,
    NotSent,
    OutOfCredit,
    QueueFull,
    RateLimited,
    ServerError,
    StopSubmitting,
    Task,
    Unauthorized,
    UpstreamSystemError,
    ValidationRejected,
)
from worker.mjapi.models import ImagineRequest

SECRET = "test-key"


@pytest.fixture
def client(sim: Any) -> Iterator[MidjourneyClient]:
    with MidjourneyClient(sim.url, sim.api_key, timeout=5.0, retry_backoff_s=0.01) as c:
        yield c


def wait_done(client: MidjourneyClient, task_id: str, timeout: float = 10.0) -> Task:
    """Poll until the task is finished (the simulator runs 100x faster than real time)."""
    deadline = patience.deadline(timeout)
    while time.monotonic() < deadline:
        task = client.fetch(task_id)
        assert task is not None
        if task.finished:
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} not finished after {timeout}s")


def button(task: Task, fragment: str) -> str:
    return next(b.custom_id for b in task.buttons if fragment in b.custom_id)


def requests_to(sim: Any, path_fragment: str) -> int:
    return sum(n for key, n in sim.stats()["requests"].items() if path_fragment in key)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------------
# Every endpoint


def test_imagine_lifecycle_fetch_list_and_seed(sim: Any, client: MidjourneyClient) -> None:
    answer = client.imagine(
        "a lighthouse at dusk", account_filter={"modes": ["FAST"], "remark": ""}, state="job-42"
    )
    assert answer.outcome in ("submitted", "queued") and answer.task_id and answer.task_id.isdigit()
    task = wait_done(client, answer.task_id)
    assert task.status == "SUCCESS" and task.progress == "100%" and task.action == "IMAGINE"
    assert task.state == "job-42" and task.image_url and task.image_url.startswith("http")
    labels = {b.label for b in task.buttons}
    assert {"U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4"} <= labels
    assert any("reroll" in b.custom_id for b in task.buttons)
    assert task.submit_time and task.finish_time and task.finish_time >= task.submit_time

    listed = client.list_by_condition([answer.task_id, "999999999"])
    assert [t.id for t in listed] == [answer.task_id]
    assert client.list_by_condition([]) == []
    seed = client.image_seed(answer.task_id)
    assert seed.isdigit()
    assert client.fetch("424242424242") is None
    with pytest.raises(NotFound):
        client.image_seed("424242424242")


def test_submit_with_a_request_model_and_image_prompt(sim: Any, client: MidjourneyClient) -> None:
    request = ImagineRequest(
        prompt="portrait --niji", bot_type=BotType.NIJI_JOURNEY, base64_array=[png_data_uri()]
    )
    answer = client.submit(request)
    assert answer.task_id
    assert sim.stats()["submissions"] >= 1


def test_blend_describe_swap_and_upload(sim: Any, client: MidjourneyClient) -> None:
    blend = client.blend([png_data_uri("red"), png_data_uri("blue")], dimensions="PORTRAIT")
    described = client.describe(png_data_uri("green"))
    swapped = client.swap_face(png_data_uri("white"), png_data_uri("black"))
    for answer, action in ((blend, "BLEND"), (described, "DESCRIBE"), (swapped, "SWAP_FACE")):
        assert answer.task_id
        task = wait_done(client, answer.task_id)
        assert task.status == "SUCCESS" and task.action == action
    described_task = client.fetch(described.task_id or "")
    assert described_task is not None
    text = described_task.prompt or ""
    assert all(marker in text for marker in ("1️⃣", "2️⃣", "3️⃣", "4️⃣"))
    urls = client.upload_discord_images([png_data_uri("red"), png_data_uri("blue")], filter={"remark": "x"})
    assert len(urls) == 2 and all(u.startswith("http") for u in urls)


def test_action_exists_modal_and_modal_submit(sim: Any, client: MidjourneyClient) -> None:
    grid = wait_done(client, client.imagine("a red fox").task_id or "")
    upscale = client.action(grid.id, button(grid, "upsample::2"), state="up-2")
    assert upscale.outcome in ("submitted", "queued") and upscale.task_id
    again = client.action(grid.id, button(grid, "upsample::2"))
    assert (again.outcome, again.task_id, again.code) == ("exists", upscale.task_id, 21)

    single = wait_done(client, upscale.task_id)
    assert single.action == "UPSCALE" and single.state == "up-2"
    zoom = client.action(single.id, button(single, "CustomZoom"))
    assert (zoom.outcome, zoom.code) == ("modal", 21) and zoom.task_id
    pending = client.fetch(zoom.task_id)
    assert pending is not None and pending.status == "MODAL"
    done = client.modal(zoom.task_id, prompt="a red fox --zoom 1.8")
    assert done.outcome in ("submitted", "queued") and done.task_id
    assert wait_done(client, done.task_id).status == "SUCCESS"


def test_path_prefix_and_mj_api_secret_header(sim: Any) -> None:
    with MidjourneyClient(sim.url, sim.api_key, auth_header="mj-api-secret", path_prefix="/mj-turbo") as c:
        answer = c.imagine("turbo cat")
        assert answer.task_id
    assert requests_to(sim, "/mj-turbo/mj/submit/imagine") == 1


# ---------------------------------------------------------------------------------------------------------
# Every error class, through fault injection


def test_unauthorized(sim: Any) -> None:
    with MidjourneyClient(sim.url, "wrong-key") as c, pytest.raises(Unauthorized) as info:
        c.imagine("a cat")
    assert info.value.status == 401 and isinstance(info.value, StopSubmitting) and not info.value.retryable
    with MidjourneyClient(sim.url, "") as c, pytest.raises(Unauthorized):
        c.fetch("1")


def test_server_error_is_never_retried_for_submits_but_reads_are(sim: Any, client: MidjourneyClient) -> None:
    sim.faults(http_500_rate=1.0)
    with pytest.raises(ServerError) as info:
        client.imagine("a cat")
    assert info.value.status == 500 and info.value.retryable
    assert requests_to(sim, "/mj/submit/imagine") == 1, "a submit is sent exactly once"
    with pytest.raises(ServerError):
        client.fetch("1")
    assert requests_to(sim, "/fetch") == 1 + client.get_retries
    sim.faults(http_500_rate=0.0)
    assert sim.stats()["submissions"] == 0


def test_rate_limited_with_retry_after(sim: Any, client: MidjourneyClient) -> None:
    sim.faults(http_429_rate=1.0, retry_after_s=7)
    with pytest.raises(RateLimited) as info:
        client.imagine("a cat")
    assert info.value.status == 429 and info.value.retry_after == 7.0 and info.value.retryable
    with pytest.raises(RateLimited):
        client.fetch("1")  # Retry-After beyond the short read-retry budget: given up at once
    assert requests_to(sim, "/fetch") == 1


def test_read_delay_is_answer_lost_and_the_task_exists(sim: Any) -> None:
    sim.faults(read_delay_rate=1.0, read_delay_s=1.5)
    with MidjourneyClient(sim.url, sim.api_key, timeout=0.4) as c, pytest.raises(AnswerLost) as info:
        c.imagine("a slow cat", state="lost-1")
    error = info.value
    assert error.ambiguous and not error.retryable and error.status is None
    sim.faults(read_delay_rate=0.0)
    assert [t for t in sim.tasks() if t.get("state") == "lost-1"], "the upstream kept the task"


def test_connect_refused_is_not_sent() -> None:
    with MidjourneyClient(f"http://127.0.0.1:{closed_port()}", SECRET, retry_backoff_s=0.01) as c:
        with pytest.raises(NotSent) as info:
            c.imagine("a cat")
        assert info.value.retryable and not info.value.ambiguous
        with pytest.raises(NotSent):
            c.fetch("1")


def test_banned_word(sim: Any, client: MidjourneyClient) -> None:
    sim.faults(banned_words=["gore"])
    with pytest.raises(BannedPrompt) as info:
        client.imagine("a scene full of gore")
    assert not info.value.retryable
    assert info.value.banned_word == "gore"
    assert client.imagine("a kitten").task_id


def test_out_of_credit(sim: Any, client: MidjourneyClient) -> None:
    sim.faults(balance=1)
    assert client.imagine("first").task_id
    with pytest.raises(OutOfCredit) as info:
        client.imagine("second")
    assert isinstance(info.value, StopSubmitting) and not info.value.retryable


def test_account_unavailable(sim: Any, client: MidjourneyClient) -> None:
    sim.faults(account_unavailable=True)
    with pytest.raises(AccountUnavailable) as info:
        client.imagine("a cat")
    assert isinstance(info.value, StopSubmitting)


def test_forbidden(sim: Any, client: MidjourneyClient) -> None:
    sim.faults(forbidden=True)
    with pytest.raises(Forbidden) as info:
        client.imagine("a cat")
    assert info.value.status == 403 and isinstance(info.value, StopSubmitting) and not info.value.retryable
    with pytest.raises(Forbidden):
        client.fetch("1")
    assert sim.stats()["faults"]["forbidden"] == 2 and sim.stats()["submissions"] == 0


@pytest.mark.parametrize(("dialect", "code"), [("proxy", 4), ("vendor", 21)])
def test_upstream_validation_rejection(sim: Any, dialect: str, code: int) -> None:
    """Input our checks let through (a button shaped right, but not one of this task's) refused upstream."""
    sim.faults(dialect=dialect)
    with MidjourneyClient(sim.url, sim.api_key, dialect=dialect) as c:
        grid = wait_done(c, c.imagine("a red fox").task_id or "")
        with pytest.raises(ValidationRejected) as info:
            c.action(grid.id, "MJ::JOB::upsample::1::00000000-0000-0000-0000-000000000000")
    assert type(info.value) is ValidationRejected and info.value.code == code and not info.value.retryable
    assert "not a button" in str(info.value)


def test_queue_full(sim: Any, client: MidjourneyClient) -> None:
    sim.faults(concurrency={"FAST": 1, "RELAX": 1, "TURBO": 1}, queue_size=1, time_factor=1.0)
    client.imagine("one")
    client.imagine("two")
    with pytest.raises(QueueFull) as info:
        client.imagine("three")
    assert info.value.retryable and info.value.code == 23
    assert sim.stats()["queue_full"] >= 1


# ---------------------------------------------------------------------------------------------------------
# The vendor dialect


def test_vendor_dialect(sim: Any) -> None:
    sim.faults(dialect="vendor")
    with MidjourneyClient(sim.url, sim.api_key, dialect="vendor") as c:
        answer = c.imagine("vendor cat")
        assert answer.task_id
        sim.faults(account_unavailable=True)
        with pytest.raises(AccountUnavailable) as unavailable:
            c.imagine("a cat")
        assert unavailable.value.code == 24
        sim.faults(account_unavailable=False, balance=0)
        with pytest.raises(OutOfCredit) as credit:
            c.imagine("a cat")
        assert credit.value.code == 25
        sim.faults(balance=None, banned_words=["gore"])
        with pytest.raises(BannedPrompt):
            c.imagine("gore")
        sim.reset(config=False)  # "vendor cat" still holds a slot; start the capacity check from empty
        sim.faults(
            banned_words=[], concurrency={"FAST": 1, "RELAX": 1, "TURBO": 1}, queue_size=0, time_factor=1.0
        )
        c.imagine("one")
        with pytest.raises(Busy) as busy:
            c.imagine("two")
        assert busy.value.code == 23  # vendor 23 "系统繁忙": busy, retried without using up submit attempts
        assert busy.value.retryable


# ---------------------------------------------------------------------------------------------------------
# Secrets


def test_api_key_never_in_repr_exceptions_or_logs(sim: Any, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-very-secret-0123456789"
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "mjqueue"):
        caplog.set_level(logging.DEBUG, logger=name)
    errors: list[BaseException] = []
    for header in ("bearer", "mj-api-secret"):
        with MidjourneyClient(sim.url, key, auth_header=header, retry_backoff_s=0.01) as c:
            assert key not in repr(c) and key not in str(c)
            for call in (
                lambda: c.imagine("a cat"),
                lambda: c.fetch("1"),
                lambda: c.list_by_condition(["1"]),
            ):
                with pytest.raises(MJError) as info:
                    call()
                errors.append(info.value)
    with MidjourneyClient(f"http://127.0.0.1:{closed_port()}", key, retry_backoff_s=0.01) as c:
        with pytest.raises(NotSent) as info:
            c.imagine("a cat")
        errors.append(info.value)
    for header in ("bearer", "mj-api-secret"):  # the real key, accepted: the success path logs too
        with MidjourneyClient(sim.url, sim.api_key, auth_header=header) as c:
            assert c.imagine("a cat").task_id
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            assert key not in str(chain) and key not in repr(chain)
            chain = chain.__cause__ or chain.__context__
    assert any(r.name.startswith("httpx") for r in caplog.records), "httpx DEBUG logging was on"
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    for record in caplog.records:
        assert key not in record.getMessage()
        assert key not in repr(record.args)
    assert key not in caplog.text and sim.api_key not in caplog.text


# ---------------------------------------------------------------------------------------------------------
# Image seed answers that are not a seed


@pytest.mark.parametrize(
    ("status", "content", "seed"),
    [
        (200, b"1234567890", "1234567890"),  # a bare seed
        (200, b'{"code": 1, "description": "ok", "result": "987654"}', "987654"),
        (200, b'{"code": 1, "description": "ok", "result": 42}', "42"),
        (200, b"<html><body>502 Bad Gateway</body></html>", None),  # a proxy's page is not a seed
        (200, b"OK", None),
        (200, b'{"code": 1, "description": "ok", "result": "n/a"}', None),
        (200, b'{"code": 1, "description": "ok", "result": true}', None),
    ],
)
def test_image_seed_is_only_digits(status: int, content: bytes, seed: str | None) -> None:
    import httpx

    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=content))
    with MidjourneyClient("http://upstream.test", SECRET, transport=transport) as c:
        if seed is not None:
            assert c.image_seed("1") == seed
        else:
            with pytest.raises(UpstreamSystemError, match="image-seed"):
                c.image_seed("1")
