"""Simulator fixtures: one real server for the session, reset before each test that uses it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from simulator.config import SimConfig
from simulator.server import SimulatorAdmin, SimulatorServer

SIM_KEY = "test-key"


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimulatorServer]:
    server = SimulatorServer(SimConfig(api_key=SIM_KEY, time_factor=0.01)).start()
    yield server
    server.stop()


@pytest.fixture
def sim(sim_server: SimulatorServer) -> Iterator[SimulatorAdmin]:
    """The session simulator with tasks, counters and configuration reset: ``.faults() .stats() .tasks()``."""
    admin = SimulatorAdmin(sim_server.url, SIM_KEY)
    admin.reset(config=True)
    yield admin
    admin.close()


@pytest.fixture
def sim_client(sim: SimulatorAdmin) -> Iterator[Any]:
    from worker.mjapi import MidjourneyClient

    client = MidjourneyClient(sim.url, sim.api_key or "", timeout=5.0)
    yield client
    client.close()
