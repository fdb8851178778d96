"""The async client against the same real simulator: same models, classifier and error split."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from tests.support.images import png_data_uri
from tests.support.sim import wait_for_task
from worker.mjapi import (
    AnswerLost,
    AsyncMidjourneyClient,
    BannedPrompt,
    NotSent,
    OutOfCredit,
    QueueFull,
    ServerError,
    Task,
    Unauthorized,
)


async def wait_done(client: AsyncMidjourneyClient, task_id: str, timeout: float = 10.0) -> Task:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        task = await client.fetch(task_id)
        assert task is not None
        if task.finished:
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} not finished")


def test_async_endpoints(sim: Any) -> None:
    async def scenario() -> None:
        async with AsyncMidjourneyClient(sim.url, sim.api_key, timeout=5.0) as client:
            # Submits run concurrently over the pooled async client.
            grid_answer, blend, described = await asyncio.gather(
                client.imagine("an async owl", state="a-1"),
                client.blend([png_data_uri("red"), png_data_uri("blue")], dimensions="LANDSCAPE"),
                client.describe(png_data_uri("green")),
            )
            swapped = await client.swap_face(png_data_uri("white"), png_data_uri("black"))
            ids = [a.task_id or "" for a in (grid_answer, blend, described, swapped)]
            tasks = await asyncio.gather(*(wait_done(client, i) for i in ids))
            assert [t.status for t in tasks] == ["SUCCESS"] * 4
            grid = tasks[0]
            assert grid.state == "a-1"
            listed = await client.list_by_condition([*ids, "31337"])
            assert sorted(t.id for t in listed) == sorted(ids)
            assert (await client.image_seed(grid.id)).isdigit()
            assert await client.fetch("31337") is None

            upsample = next(b.custom_id for b in grid.buttons if "upsample::1" in b.custom_id)
            first = await client.action(grid.id, upsample)
            second = await client.action(grid.id, upsample)
            assert (second.outcome, second.task_id) == ("exists", first.task_id)
            single = await wait_done(client, first.task_id or "")
            zoom = next(b.custom_id for b in single.buttons if "CustomZoom" in b.custom_id)
            modal = await client.action(single.id, zoom)
            assert modal.outcome == "modal"
            finished = await client.modal(modal.task_id or "", prompt="owl --zoom 2")
            assert (await wait_done(client, finished.task_id or "")).status == "SUCCESS"
            urls = await client.upload_discord_images([png_data_uri()])
            assert len(urls) == 1

    asyncio.run(scenario())


def test_async_errors(sim: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]

    async def scenario() -> None:
        async with AsyncMidjourneyClient(sim.url, "nope") as bad:
            with pytest.raises(Unauthorized):
                await bad.imagine("cat")
        async with AsyncMidjourneyClient(f"http://127.0.0.1:{closed}", "k", retry_backoff_s=0.01) as gone:
            with pytest.raises(NotSent):
                await gone.imagine("cat")
        async with AsyncMidjourneyClient(sim.url, sim.api_key, timeout=0.4, retry_backoff_s=0.01) as client:
            sim.faults(banned_words=["gore"])
            with pytest.raises(BannedPrompt):
                await client.imagine("gore")
            sim.faults(http_500_rate=1.0)
            with pytest.raises(ServerError):
                await client.imagine("cat")
            sim.faults(http_500_rate=0.0, read_delay_rate=1.0, read_delay_s=1.5)
            with pytest.raises(AnswerLost):
                await client.imagine("slow cat")
            sim.faults(read_delay_rate=0.0, balance=0)
            with pytest.raises(OutOfCredit):
                await client.imagine("cat")
            # The lost answer's task was still accepted upstream: let it land, then free every slot.
            await asyncio.to_thread(wait_for_task, sim, "slow cat")
            sim.reset(config=False)
            sim.faults(
                balance=None, concurrency={"FAST": 1, "RELAX": 1, "TURBO": 1}, queue_size=0, time_factor=1.0
            )
            await client.imagine("one")
            with pytest.raises(QueueFull):
                await client.imagine("two")

    asyncio.run(scenario())
