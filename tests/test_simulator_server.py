"""Serving the simulator: the background-thread server, and ``python -m simulator`` with its flags."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx

from simulator.__main__ import build_parser, config_from_args
from simulator.config import SimConfig
from simulator.server import SimulatorServer
from tests.support import patience


def test_background_server_picks_a_free_port_and_stops() -> None:
    with SimulatorServer(SimConfig(dialect="vendor", time_factor=0.001)) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        answer = httpx.post(f"{server.url}/mj/submit/imagine", json={"prompt": "open, no key"}).json()
        assert answer["code"] == 1 and isinstance(answer["result"], int)
        with server.admin() as admin:
            assert admin.stats()["accepted"] == 1
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0, "the port is closed after stop()"


def test_cli_flags_map_onto_the_config() -> None:
    args = build_parser().parse_args([
        "--port", "9999", "--time-factor", "0.05", "--dialect", "vendor", "--api-key", "k", "--fast-slots", "12",
        "--relax-duration", "30", "--queue-size", "4", "--http-500-rate", "0.1", "--remix", "--balance", "5",
        "--banned-word", "gore", "--banned-word", "blood", "--unknown-task", "404",
        "--faults", '{"stuck_rate": 0.2}',
    ])
    config = config_from_args(args)
    assert (config.time_factor, config.dialect, config.api_key, config.queue_size) == (0.05, "vendor", "k", 4)
    assert config.concurrency == {"FAST": 12, "RELAX": 3, "TURBO": 3} and config.duration_s["RELAX"] == 30
    assert (config.http_500_rate, config.remix, config.balance, config.stuck_rate) == (0.1, True, 5, 0.2)
    assert config.banned_words == ["gore", "blood"] and config.unknown_task == "404"
    assert config_from_args(build_parser().parse_args([])) == SimConfig(time_factor=1.0)


def test_python_m_simulator_serves_until_stopped() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", str(port), "--api-key", "cli-key", "--time-factor", "0.001"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = patience.deadline(15)
        while True:
            try:
                httpx.get(f"{url}/admin/stats")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, process.stderr
                time.sleep(0.05)
        bearer = httpx.post(f"{url}/mj/submit/imagine", json={"prompt": "x"},
                            headers={"Authorization": "Bearer cli-key"})
        assert (bearer.status_code, bearer.content) == (401, b""), "the default profile, plus: mj-api-secret only"
        headers = {"mj-api-secret": "cli-key"}
        task_id = httpx.post(f"{url}/mj/submit/imagine", json={"prompt": "from the CLI"}, headers=headers).json()
        assert task_id["code"] == 1
        time.sleep(0.2)
        task = httpx.get(f"{url}/mj/task/{task_id['result']}/fetch", headers=headers).json()
        assert task["status"] == "SUCCESS" and task["imageUrl"].startswith(url)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0, "Ctrl-C is a clean stop"
    assert "simulator listening on" in (process.stdout.read() if process.stdout else "")


def test_cli_refuses_a_bad_configuration() -> None:
    from simulator.__main__ import main

    assert main(["--faults", '{"http_500_rate": 3}']) == 2


def test_image_urls_use_the_host_api_callers_see() -> None:
    with SimulatorServer(SimConfig(time_factor=0.001), public_url="") as server:
        httpx.get(f"{server.url}/admin/stats", headers={"host": "127.0.0.1:1"})  # a health check: not the audience
        answer = httpx.post(f"{server.url}/mj/submit/imagine", json={"prompt": "x"}, headers={"host": "simulator:8787"})
        time.sleep(0.15)
        task = httpx.get(f"{server.url}/mj/task/{answer.json()['result']}/fetch").json()
    assert task["imageUrl"] == f"http://simulator:8787/images/{task['id']}.png"
