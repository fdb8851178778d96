"""notifyHook callbacks, received by a small HTTP server in the test: content, timing and faults."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from simulator.server import SimulatorAdmin
from tests.support import patience
from tests.support.sim import SimApi


class Receiver:
    """Records every JSON body POSTed to it; ``hold()`` keeps every answer (and its recording) back until
    ``release()``: a hook that is as slow as we like, without a clock."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.held = 0  # requests waiting for release() right now
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not receiver._open.is_set():
                    with receiver._lock:
                        receiver.held += 1
                    receiver._open.wait(60)
                    with receiver._lock:
                        receiver.held -= 1
                receiver.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0) -> None:
        deadline = patience.deadline(timeout)
        while not predicate(self.bodies):
            seen = [(b["status"], b["progress"]) for b in self.bodies]
            assert time.monotonic() < deadline, f"callbacks so far: {seen}"
            time.sleep(0.01)

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def of(self, task_id: str) -> list[tuple[str, str]]:
        return [(b["status"], b["progress"]) for b in self.bodies if b["id"] == task_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.release()
    receiver.server.shutdown()
    receiver.server.server_close()


def _final(task_id: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda bodies: any(b["id"] == task_id and b["status"] == "SUCCESS" for b in bodies)


def test_callbacks_follow_every_status_and_progress_step(sim: SimulatorAdmin, sim_api: SimApi,
                                                         receiver: Receiver) -> None:
    sim.faults(concurrency={"FAST": 1})
    first = sim_api.imagine("hooked one", notifyHook=receiver.url, state="job-1")
    second = sim_api.imagine("hooked two", notifyHook=receiver.url, state="job-2")  # waits in the queue
    receiver.wait(_final(second), timeout=5)
    events = receiver.of(second)
    assert events[0] == ("NOT_START", "0%") and events[1] == ("SUBMITTED", "0%")
    assert [e for e in events if e[0] == "IN_PROGRESS"] == [("IN_PROGRESS", f"{p}%") for p in (0, 25, 50, 75)]
    assert events[-1] == ("SUCCESS", "100%") and len(events) == len(set(events)), "one callback per change"
    final = [b for b in receiver.bodies if b["id"] == second][-1]
    assert final["state"] == "job-2" and final["imageUrl"] == f"{sim.url}/images/{second}.png"
    assert len(final["buttons"]) == 9 and final["properties"]["notifyHook"] == receiver.url
    assert final == sim_api.fetch(second), "the full task object, as fetch shows it"
    assert receiver.of(first)[-1] == ("SUCCESS", "100%")
    deadline = patience.deadline(30)  # the simulator counts a callback once its POST has returned
    while sim.stats()["callbacks_sent"] != len(receiver.bodies):
        assert time.monotonic() < deadline, (sim.stats()["callbacks_sent"], len(receiver.bodies))
        time.sleep(0.05)
    sent_at = sim.callbacks()
    assert set(sent_at) == {first, second}, "only terminal callbacks are timed"
    assert sent_at[second] >= final["finishTime"] / 1000 - 0.001, "sent after the task finished"


def test_a_slow_hook_never_slows_submits(sim: SimulatorAdmin, sim_api: SimApi, receiver: Receiver) -> None:
    receiver.hold()  # the hook answers nothing until released: a submit that waited for it would never return
    sim.faults(time_factor=0.002, concurrency={"FAST": 20}, queue_size=20)
    ids = [sim_api.imagine(f"fast answer {i}", notifyHook=receiver.url) for i in range(10)]
    assert all(sim_api.wait(i, timeout=60)["status"] == "SUCCESS" for i in ids), "fetch answers while hooks hang"
    receiver.wait(lambda _: receiver.held > 0, timeout=60)  # callbacks were sent, and are hanging right now
    assert not receiver.bodies, "every callback is still held: submits and fetches were answered before any"
    receiver.release()


def test_dropped_callbacks(sim: SimulatorAdmin, sim_api: SimApi, receiver: Receiver) -> None:
    sim.faults(drop_callback_rate=1.0, time_factor=0.002)
    task_id = sim_api.imagine("unheard", notifyHook=receiver.url)
    sim_api.wait(task_id)
    time.sleep(0.1)
    assert receiver.bodies == [] and sim.stats()["callbacks_dropped"] >= 3


def test_duplicated_and_reordered_callbacks(sim: SimulatorAdmin, sim_api: SimApi, receiver: Receiver) -> None:
    sim.faults(duplicate_callbacks=True, reorder_callbacks=True, time_factor=0.005)
    task_id = sim_api.imagine("noisy", notifyHook=receiver.url)
    done = ("SUCCESS", "100%")

    def stale_of(events: list[tuple[str, str]]) -> tuple[str, str]:
        """The event before the final one: a busy simulator may skip a progress step (75% is not always sent)."""
        return [e for e in events[: events.index(done)] if e != done][-1]

    def all_delivered(_: list[dict[str, Any]]) -> bool:
        events = receiver.of(task_id)
        return (done in events and len(set(events)) >= 4 and all(events.count(e) >= 2 for e in events)
                and events.count(stale_of(events)) == 3)

    receiver.wait(all_delivered)  # every event twice, and the one before the final event once more
    events = receiver.of(task_id)
    final = events.index(done)
    assert stale_of(events) in events[final + 1:], f"no stale event came after the final one: {events}"


def test_global_hook_and_unreachable_hooks(sim: SimulatorAdmin, sim_api: SimApi, receiver: Receiver) -> None:
    sim.faults(notify_hook=receiver.url, time_factor=0.002)
    task_id = sim_api.imagine("server-wide hook")
    receiver.wait(_final(task_id))
    sim.faults(notify_hook=None)
    quiet = sim_api.imagine("no hook at all")
    sim_api.wait(quiet)
    time.sleep(0.05)
    assert receiver.of(quiet) == []
    lost = sim_api.imagine("hook nobody hears", notifyHook="http://127.0.0.1:9/hook")
    sim_api.wait(lost)
    deadline = patience.deadline(3)
    while sim.stats()["callbacks_dropped"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
