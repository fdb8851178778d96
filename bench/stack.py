"""The benchmark's stack: embedded Valkey, the simulator and real worker/webhook processes, per scenario.

Every scenario gets a fresh :class:`~worker.devstack.stack.DevStack` (nothing carries over between figures). The
simulated account runs ``CAPACITY`` fast jobs at once plus ``QUEUE`` waiting; its clock runs ``1 /
time_factor`` times faster than real time, and so do the product's *default* timings (poll backoff, expected
durations, deadlines): a benchmark at time factor 0.005 is the real configuration with a 60 s job taking
0.3 s, not a configuration tuned for the benchmark.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.bounds import Deadline, Reached
from simulator.server import SimulatorAdmin
from worker.devstack.stack import DevStack
from worker.settings import Settings

API_KEY = "bench-key"  # the simulator's key: the bench never talks to a real upstream
CAPACITY = 3  # FAST jobs the simulated account runs at once ("3 fast + 10 queue", the servers' default)
QUEUE = 10
# The timing settings scaled with the simulator's clock (their defaults x time factor).
SCALED_SETTINGS = (
    "poll_initial_s",
    "poll_max_s",
    "webhook_poll_s",
    "expected_fast_s",
    "expected_relax_s",
    "expected_turbo_s",
    "job_deadline_s",
    "job_deadline_relax_s",
    "submit_retry_max_s",
)


def scaled_env(time_factor: float) -> dict[str, str]:
    """``MJQ_*`` values of the default timings, on the simulator's faster clock."""
    fields = Settings.model_fields
    return {f"MJQ_{name.upper()}": f"{float(fields[name].default) * time_factor:g}" for name in SCALED_SETTINGS}


def hermetic_environment(workdir: Path) -> None:
    """Forget the caller's ``MJQ_*`` variables and ``.env`` (a benchmark must never reach a real upstream)."""
    for key in [k for k in os.environ if k.startswith(("MJQ_", "FLOWER_"))]:
        del os.environ[key]
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # children inherit it: no .env of the checkout is read


@dataclass
class Bench:
    """A running scenario: the stack, the simulator's admin API and a Redis client."""

    stack: DevStack
    admin: SimulatorAdmin
    redis: redis.Redis
    time_factor: float

    @property
    def job_duration_s(self) -> float:
        """The simulated fast job's nominal duration on the real clock."""
        return 60.0 * self.time_factor

    def pid(self, service: str) -> int:
        for item in self.stack.services:
            if item.name == service and item.process is not None:
                return int(item.process.pid)
        raise KeyError(service)


@contextlib.contextmanager
def running(
    root: Path,
    name: str,
    *,
    time_factor: float,
    webhooks: bool = True,
    slots: int = CAPACITY,
    env: Mapping[str, str] | None = None,
    sim_args: Sequence[str] = (),
) -> Iterator[Bench]:
    """A fresh stack for one scenario; the block runs with this process pointed at it (the producer)."""
    extra = {
        **scaled_env(time_factor),
        "MJQ_API_KEY": API_KEY,
        "MJQ_SLOTS_FAST": str(slots),
        "MJQ_MEDIA_DIR": str(root / name / "media"),
        **(env or {}),
    }
    stack = DevStack.isolated(
        root / name,
        settings=Settings(_env_file=None),
        time_factor=time_factor,
        with_flower=False,
        with_webhook=webhooks,
        extra_env=extra,
        simulator_args=("--api-key", API_KEY, "--fast-slots", str(CAPACITY), "--queue-size", str(QUEUE),
                        *sim_args),
    )
    with stack, stack.environment():
        admin = SimulatorAdmin(stack.api_base_url, API_KEY)
        client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        try:
            yield Bench(stack, admin, client, time_factor)
        finally:
            admin.close()
            client.close()


def enqueue(
    prompts: Iterable[str], batch_id: str, *, then: str | None = None, mode: str = "fast"
) -> list[str]:
    """Enqueue imagines through the Python producer API; returns the job ids."""
    import tasks

    ids = []
    for n, prompt in enumerate(prompts):
        job_id = f"{batch_id}-{n:05d}"
        kwargs: dict[str, Any] = {"prompt": prompt, "batch_id": batch_id, "job_id": job_id, "mode": mode}
        if then:
            kwargs["then"] = then
        tasks.imagine.apply_async(kwargs=kwargs)
        ids.append(job_id)
    return ids


def prompts(n: int, tag: str) -> list[str]:
    return [f"{tag} prompt {i}, a lighthouse at dawn --ar 3:2" for i in range(n)]


def wait_batch(batch_id: str, jobs: int, bound_s: float, *, job_s: float = 0.0) -> Reached:
    """Wait until ``jobs`` jobs of the batch exist and all are terminal, with their images downloaded.

    Past ``bound_s`` the batch is stopped where it is: its jobs not yet submitted are cancelled and the ones
    running upstream get a few job durations (``job_s``) to end, so what the simulator saw is a finished
    part of the batch (and nothing of ours runs on into the next measurement); the answer says how far it got.
    """
    from worker.store.records import TERMINAL
    from worker.store.runtime import runtime

    ledger = runtime().ledger
    deadline = Deadline(bound_s)
    done = 0
    while True:
        batch = ledger.batch(batch_id)
        done = sum(batch.get("counts", {}).get(s, 0) for s in TERMINAL) if batch else 0
        over = bool(batch) and done >= batch["total"] >= jobs and batch["planned"] <= 0
        if over and not ledger.unfinished(ledger.batch_job_ids(batch_id)):
            return deadline.reached(done, jobs)
        if deadline.passed:
            break
        time.sleep(0.2)
    reached = deadline.reached(int(ledger.batch(batch_id).get("counts", {}).get("succeeded", 0)), jobs, False)
    stop_batch(batch_id, grace_s=5 + 10 * job_s)
    return reached


def stop_batch(batch_id: str, grace_s: float) -> None:
    """Cancel what the batch has not submitted, and give what runs upstream ``grace_s`` to end."""
    from worker.control import cancel_batch
    from worker.store.records import TERMINAL
    from worker.store.runtime import runtime

    cancel_batch(batch_id, runtime())
    ledger = runtime().ledger
    deadline = Deadline(grace_s)
    while not deadline.passed:
        counts = ledger.batch(batch_id).get("counts", {})
        if sum(n for status, n in counts.items() if status not in TERMINAL) <= 0:
            return
        time.sleep(0.2)


@dataclass(frozen=True)
class UpstreamRun:
    """What the simulator saw: tasks, their times (epoch seconds) and the API requests made."""

    tasks: list[dict[str, Any]]
    requests: int
    queue_full: int

    @classmethod
    def read(cls, admin: SimulatorAdmin) -> UpstreamRun:
        stats = admin.stats()
        api = sum(n for route, n in stats["requests"].items() if " /mj" in route)
        return cls(admin.tasks(), api, int(stats["queue_full"]))

    @property
    def succeeded(self) -> list[dict[str, Any]]:
        return [t for t in self.tasks if t["status"] == "SUCCESS"]

    @property
    def mean_duration_s(self) -> float:
        """Mean run time of the succeeded tasks (start to finish, upstream queue wait excluded); NaN if none."""
        done = self.succeeded
        return statistics.fmean((t["finishTime"] - t["startTime"]) / 1000 for t in done) if done else math.nan

    @property
    def makespan_s(self) -> float:
        """First submit to last finish; NaN if nothing succeeded."""
        done = self.succeeded
        if not done:
            return math.nan
        return float(max(t["finishTime"] for t in done) - min(t["submitTime"] for t in done)) / 1000

    def utilisation(self, capacity: int) -> float:
        """Achieved jobs/s divided by the ideal C/D (D: the measured mean duration); NaN if nothing succeeded."""
        if not self.succeeded or not self.makespan_s:
            return math.nan
        rate = len(self.succeeded) / self.makespan_s
        return rate / (capacity / self.mean_duration_s)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo))
