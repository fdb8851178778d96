"""Shared fixtures: a real Redis-compatible server for the whole session (never skipped)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from worker.devstack.redisserver import RedisServer

pytest_plugins = ["tests.support.plugins"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true", help="run slow scenarios at full size")


RELIABILITY = "tests/reliability/"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``pytest -n 2 --dist loadfile`` (``make test``): every test module is one unit of work for one xdist worker
    (a module's tests share that worker's stack, so its configuration switches happen once), and the reliability
    scenarios are ONE unit (they run in order on one stack). Every xdist worker has its own session Redis,
    simulator, worker stack, free ports and temp dirs.

    Not ``--dist loadgroup`` with ``xdist_group`` marks: pytest-xdist 3.8 groups by rewriting ``item._nodeid``,
    which pytest 9.2 no longer reads (the node id lives in ``item._id``), so the marks are silently ignored and
    grouped tests are spread like ``--dist load``. This hook is xdist's public way to choose the units."""
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own scheduler for any other --dist
    from xdist.scheduler import LoadFileScheduling

    class ModuleScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return RELIABILITY if nodeid.startswith(RELIABILITY) else str(super()._split_scope(nodeid))

    return ModuleScheduling(config, log)


_FROM_WORKERS: dict[str, Any] = {"seed": None, "figures": []}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist controller: collect the reliability figures a worker handed over (its ``workeroutput``)."""
    handed = getattr(node, "workeroutput", {}).get("reliability")
    if handed:
        _FROM_WORKERS["seed"] = handed["seed"]
        _FROM_WORKERS["figures"] += handed["figures"]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Under pytest-xdist the reliability scenarios ran in a worker: their summary is printed here."""
    if _FROM_WORKERS["figures"]:
        from tests.reliability.report import from_dict, summary

        figures = [from_dict(f) for f in _FROM_WORKERS["figures"]]
        for line in summary(figures, int(_FROM_WORKERS["seed"])):
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True, scope="module")
def _module_environment() -> Iterator[None]:
    """Each test module gets back the ``MJQ_*`` environment it started with: a module's stack fixtures point
    the process at their stack, and the next module (on the same xdist worker) must not inherit that."""
    saved = _our_environment()
    yield
    _restore(saved)


@pytest.fixture(autouse=True)
def _own_environment() -> Iterator[None]:
    """Each test gets back the ``MJQ_*`` environment it started with (stack fixtures point the producer at
    their worker by setting it), so a unit test never reads the settings of an earlier test's stack."""
    saved = _our_environment()
    yield
    _restore(saved)


def _our_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("MJQ_", "FLOWER_"))}


def _restore(saved: dict[str, str]) -> None:
    """Put the saved ``MJQ_*``/``FLOWER_*`` variables back and forget settings and runtime built from others."""
    for key in [k for k in os.environ if k.startswith(("MJQ_", "FLOWER_"))]:
        del os.environ[key]
    os.environ.update(saved)
    from worker.settings import get_settings

    get_settings.cache_clear()
    if "worker.store.runtime" in sys.modules:
        from worker.store.runtime import reset_runtime

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
