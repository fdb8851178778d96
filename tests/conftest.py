"""Shared fixtures: a real Redis-compatible server for the whole session (never skipped)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from worker.redisserver import RedisServer

pytest_plugins = ["tests.support.plugins"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true", help="run slow scenarios at full size")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks (it appends the group to the node id)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``) tests that use the session's worker stack stay together per
    module, so a module's configuration switches (worker restarts) happen once, on one xdist worker; the
    reliability scenarios are one group (they run in order on one stack). Every xdist worker has its own
    session Redis, simulator, worker stack, free ports and temp dirs; the other tests are spread freely."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if "reliability" in item.path.parts:
            item.add_marker(pytest.mark.xdist_group("reliability"))
        elif "stack_manager" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture(autouse=True)
def _own_environment() -> Iterator[None]:
    """Each test gets back the ``MJQ_*`` environment it started with (stack fixtures point the producer at
    their worker by setting it), so a unit test never reads the settings of an earlier test's stack."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(("MJQ_", "FLOWER_"))}
    yield
    for key in [k for k in os.environ if k.startswith(("MJQ_", "FLOWER_"))]:
        del os.environ[key]
    os.environ.update(saved)
    from worker.settings import get_settings

    get_settings.cache_clear()
    if "worker.runtime" in sys.modules:
        from worker.runtime import reset_runtime

        reset_runtime()


@pytest.fixture(scope="session")
def full_size(request: pytest.FixtureRequest) -> bool:
    """True when the run asked for full-size slow scenarios (``pytest --full``)."""
    return bool(request.config.getoption("--full"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real valkey-server (AOF on) for the session."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, with its database emptied before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()
