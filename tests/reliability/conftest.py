"""Fixtures of the reliability suite: worker configurations made for crashes, a batch producer, kill/restart.

The suite reuses the session's :class:`StackManager` (one real worker at a time) and registers its own
configurations in ``tests.support.stack``: a short broker visibility timeout (so a ``kill -9`` is followed by
redelivery within seconds, not an hour), short slot leases and expected durations (so an ambiguous job's slot
hold ends within the test). ``--full`` runs every scenario with at least 200 jobs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.reliability.audit import RESULTS, results_path
from tests.support import stack as stack_support
from tests.support.stack import Stack, StackManager, WorkerProcess, reset_state

# A unique key for the secrets scenario: it must not occur anywhere by accident.
SECRET_API_KEY = "sk-rel-7Q2vK9xW4mB8nL1pZ6tR3yH5"

REL_BASE = {
    "MJQ_VISIBILITY_TIMEOUT_S": "4",
    "MJQ_SLOT_LEASE_S": "10",
    "MJQ_FINISH_STALE_S": "5",
    "MJQ_EXPECTED_FAST_S": "1.0",
    "MJQ_EXPECTED_RELAX_S": "1.5",
    "MJQ_EXPECTED_TURBO_S": "1.0",
}
REL_HOOK = {**REL_BASE, "MJQ_WEBHOOK_POLL_S": "0.5"}
stack_support.CONFIGS.update(
    {
        "rel-poll": dict(REL_BASE),
        "rel-hook": dict(REL_HOOK),
        "rel-debug": {**REL_HOOK, "MJQ_API_KEY": SECRET_API_KEY},
    }
)
stack_support.HOOKED.update({"rel-hook", "rel-debug"})
stack_support.LOGLEVELS["rel-debug"] = "DEBUG"

MODES = ("fast", "relax", "turbo")
PLAN = "U1"  # every FOLLOW_UP_EVERY-th root job upscales its first image when it succeeds
FOLLOW_UP_EVERY = 6
# Simulated job durations (FAST 60 s, RELAX 180 s, TURBO 25 s) times this: 0.12 s / 0.36 s / 0.05 s.
TIME_FACTOR = 0.002


@dataclass
class Rel:
    """One scenario's handles: the worker stack, its manager (kill / restart), the simulator admin."""

    stack: Stack
    manager: StackManager
    sim: Any
    size: int
    full: bool
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    restarts: int = 0

    def enqueue(
        self,
        batch_id: str,
        n: int | None = None,
        *,
        modes: tuple[str, ...] = MODES,
        prompt: Any = None,
        follow_ups: bool = True,
    ) -> list[str]:
        """Enqueue ``n`` imagine jobs (every 6th with the follow-up plan ``U1``); returns their job ids."""
        import tasks

        ids = []
        for i in range(self.size if n is None else n):
            text = prompt(i) if prompt is not None else f"reliability {batch_id} #{i} a lighthouse"
            options: dict[str, Any] = {"mode": modes[i % len(modes)], "batch_id": batch_id}
            if follow_ups and i % FOLLOW_UP_EVERY == 0:
                options["then"] = PLAN
            ids.append(tasks.imagine.delay(text, **options).id)
        return ids

    def wait_finished(self, batch_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Until the batch says finished (every job, including planned follow-ups, terminal)."""

        def finished() -> bool:
            try:
                return self.stack.ledger.batch(batch_id).get("status") == "finished"
            except Exception:  # Redis restarting: look again
                return False

        self.stack.wait(finished, timeout, f"batch {batch_id} to finish")
        return dict(self.stack.ledger.batch(batch_id))

    # ------------------------------------------------------------------ the worker process
    @property
    def worker(self) -> WorkerProcess:
        assert self.manager.worker is not None
        return self.manager.worker

    def kill_worker(self) -> int:
        """``kill -9`` of the worker's main process (``-P threads``: the pool lives in it). Returns the pid."""
        process = self.worker.process
        assert process is not None
        pid = process.pid
        process.kill()
        process.wait()
        self.worker.process = None
        return pid

    def restart_worker(self) -> None:
        """A new worker process with the same configuration (its own log file, so readiness is its own)."""
        self.restarts += 1
        old = self.worker
        base = old.log_path.stem.split("-restart")[0]
        log_path = old.log_path.with_name(f"{base}-restart{self.restarts}.log")
        fresh = WorkerProcess(old.env, log_path, loglevel=old.loglevel)
        self.manager.worker = fresh.start(self.stack.redis_url)
        self.stack.log_path = log_path


def _rel(stack_manager: StackManager, sim: Any, name: str, full_size: bool) -> Iterator[Rel]:
    stack = stack_manager.use(name)
    reset_state(stack.redis_url)
    sim.faults(time_factor=TIME_FACTOR)
    rel = Rel(stack, stack_manager, sim, 200 if full_size else 48, full_size)
    yield rel
    # a scenario that killed or stopped things leaves a healthy worker for the next one
    worker = stack_manager.worker
    if worker is None or worker.process is None or worker.process.poll() is not None:
        rel.restart_worker()
    stack.redis.delete("mjq:breaker")


@pytest.fixture
def rel_poll(stack_manager: StackManager, sim: Any, full_size: bool) -> Iterator[Rel]:
    """Polling-only worker with the crash-friendly settings."""
    yield from _rel(stack_manager, sim, "rel-poll", full_size)


@pytest.fixture
def rel_hook(stack_manager: StackManager, sim: Any, full_size: bool) -> Iterator[Rel]:
    """Webhooks on (safety-net polls after the expected duration), crash-friendly settings."""
    yield from _rel(stack_manager, sim, "rel-hook", full_size)


@pytest.fixture
def rel_debug(stack_manager: StackManager, sim: Any, full_size: bool) -> Iterator[Rel]:
    """Webhooks on, worker log level DEBUG, a unique API key (the simulator is switched to it)."""
    sim.faults(api_key=SECRET_API_KEY)
    yield from _rel(stack_manager, sim, "rel-debug", full_size)


@pytest.fixture
def started() -> float:
    return time.monotonic()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures of every scenario that ran, as a table (also appended to the results file)."""
    if not RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write(f"reliability results (also in {results_path()}):")
    write(f"{'scenario':<34} {'jobs':>5} {'lost':>5} {'dup':>4} {'retried':>7} {'review':>6} {'secs':>6}  outcome")
    for fig in RESULTS:
        write(
            f"{fig.scenario:<34} {fig.jobs:>5} {fig.lost:>5} {fig.duplicate_submits:>4} {fig.resubmits:>7} "
            f"{fig.needs_review:>6} {fig.seconds:>6.1f}  {fig.outcome}"
        )
