"""Fixtures of the reliability suite: worker configurations made for crashes, a batch producer, kill/restart.

The suite reuses the session's :class:`StackManager` (one real worker at a time) and registers its own
configurations in ``tests.support.stack``: a short broker visibility timeout (so a ``kill -9`` is followed by
redelivery within seconds, not an hour) and short expected durations. Slot leases: the crash scenarios
(``rel_crash``: worker kill, Redis restart) need them short, a killed worker's slots come back by expiry; every
other scenario runs with ``LONG_LEASE_S``, longer than any scenario may run (pytest's timeout), so a lease that
is never released is still there for the audit to count instead of expiring unseen. Hooked configurations run
the webhook server in its own process (``uvicorn worker.service.webhook:create_app``, as ``mjq webhook``).

The default run uses reduced batches (``REDUCED`` root jobs); ``--full`` (``make reliability``) runs every
scenario with ``FULL`` root jobs plus their follow-ups and writes the README's results table.

Randomness (kill moments, simulator fault seeds, the fault relay) comes from one seed per run, printed with
the figures: ``RELIABILITY_SEED=<n>`` replays a run. A fixed seed would test the same few moments forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from tests.reliability.audit import TERMINAL, audit
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.report import RESULTS, Figures, summary, write_readme
from tests.support import stack as stack_support
from tests.support.stack import Stack, StackManager, WorkerProcess, reset_state

# Unique secrets for the secrets scenario: they must not occur anywhere by accident.
SECRET_API_KEY = "sk-rel-7Q2vK9xW4mB8nL1pZ6tR3yH5"
SECRET_WEBHOOK = "whsec-rel-4Jd8Kq2Lx7Vb9Nz3Tp6Ry1Wc"

REDUCED, FULL = 48, 200
CRASH_LEASE_S = 5.0  # a killed worker's slots (and its lost messages, see worker.jobs.admission) come back this soon
LONG_LEASE_S = 900.0  # beyond pytest's per-test timeout (pyproject: 300 s): no lease can expire in a scenario
WEBHOOK_MAX_BODY = 65_536  # callbacks are ~2 KB; a small limit keeps oversized bodies cheap under load

REL_BASE = {
    "MJQ_VISIBILITY_TIMEOUT_S": "4",
    "MJQ_SLOT_LEASE_S": str(LONG_LEASE_S),
    "MJQ_FINISH_STALE_S": "5",
    # about the simulated durations below (0.12 s / 0.36 s / 0.05 s): the first poll waits for them
    "MJQ_EXPECTED_FAST_S": "0.15",
    "MJQ_EXPECTED_RELAX_S": "0.4",
    "MJQ_EXPECTED_TURBO_S": "0.1",
    "MJQ_WEBHOOK_POLL_S": "0.5",  # also bounds the settings' countdown check against the visibility timeout
    "MJQ_SUBMIT_BUSY_MAX_S": "0",  # busy answers (queue full, 429) are retried for as long as they last
}
# Webhooks on: the safety-net poll comes 2 s after the expected duration (still below the visibility timeout),
# 10x and more the jobs' 0.05-0.36 s, so on a busy machine the callbacks still settle jobs before any poll
# (scenarios 4b and 8 check that they do); with every callback lost, the polls finish the jobs (4a).
REL_HOOK = {**REL_BASE, "MJQ_WEBHOOK_POLL_S": "2.0", "MJQ_WEBHOOK_MAX_BODY_BYTES": str(WEBHOOK_MAX_BODY)}
HOOKED = {"rel-hook", "rel-debug", "rel-faults"}
stack_support.CONFIGS.update(
    {
        "rel-poll": dict(REL_BASE),
        "rel-crash": {**REL_BASE, "MJQ_SLOT_LEASE_S": str(CRASH_LEASE_S)},
        "rel-hook": dict(REL_HOOK),
        "rel-debug": {**REL_HOOK, "MJQ_API_KEY": SECRET_API_KEY, "MJQ_WEBHOOK_SECRET": SECRET_WEBHOOK},
    }
)
stack_support.HOOKED.update(HOOKED)
stack_support.OWN_WEBHOOK_PROCESS.update(HOOKED)
stack_support.LOGLEVELS["rel-debug"] = "DEBUG"

MODES = ("fast", "relax", "turbo")
PLAN = "U1"  # every FOLLOW_UP_EVERY-th root job upscales its first image when it succeeds
FOLLOW_UP_EVERY = 6
# Simulated job durations (FAST 60 s, RELAX 180 s, TURBO 25 s) times this: 0.12 s / 0.36 s / 0.05 s.
TIME_FACTOR = 0.002


def _session_seed() -> int:
    env = os.environ.get("RELIABILITY_SEED")
    return int(env) if env else random.SystemRandom().randrange(1, 2**31)


SEED = _session_seed()
_SESSION: dict[str, Any] = {"started": time.monotonic(), "files": set()}


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (the embedded beat of ``worker -B`` is one)."""
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(x) for x in path.read_text().split()]
    return found


def unexpected_ends(fig: Figures, allowed: tuple[str, ...] = ("succeeded",)) -> dict[str, Any]:
    """Jobs that ended in a state the scenario does not explain (e.g. failed or timed out without a cause), with a
    few of their fail reasons."""
    return {k: (v, fig.reasons.get(k, [])) for k, v in fig.by_status.items() if k not in allowed}


@dataclass
class Rel:
    """One scenario's handles: the worker stack, its manager (kill / restart), the simulator admin."""

    stack: Stack
    manager: StackManager
    sim: Any
    size: int
    full: bool
    name: str = ""
    crash: bool = False
    rng: random.Random = field(default_factory=random.Random)
    restarts: int = 0
    enqueued: dict[str, list[str]] = field(default_factory=dict)  # job ids sent, by batch

    def __post_init__(self) -> None:
        self.rng.seed(f"{SEED}:{self.name}")  # per scenario, so one scenario's draws do not shift another's

    def fault_seed(self) -> int:
        """A seed for the simulator's random faults, drawn from the run's seed."""
        return self.rng.randrange(1, 2**31)

    def audit(
        self,
        scenario: str,
        batch_ids: list[str],
        enqueued: list[str],
        *,
        started: float,
        extra: dict[str, Any] | None = None,
        notes: str = "",
    ) -> Figures:
        """The audit with this scenario's size, crash flag and the run's seed in the figures."""
        return audit(self.stack, self.sim, scenario, batch_ids, enqueued, started=started, full=self.full,
                     crash=self.crash, extra={"seed": SEED, **(extra or {})}, notes=notes)

    def enqueue(
        self,
        batch_id: str,
        n: int | None = None,
        *,
        modes: tuple[str, ...] = MODES,
        prompt: Callable[[int], str] | None = None,
        follow_ups: bool = True,
        first: int = 0,
    ) -> list[str]:
        """Enqueue ``n`` imagine jobs numbered from ``first`` (every 6th with the follow-up plan ``U1``); returns
        their job ids."""
        import tasks

        ids = []
        for i in range(first, first + (self.size if n is None else n)):
            text = prompt(i) if prompt is not None else f"reliability {batch_id} #{i} a lighthouse"
            options: dict[str, Any] = {"mode": modes[i % len(modes)], "batch_id": batch_id}
            if follow_ups and i % FOLLOW_UP_EVERY == 0:
                options["then"] = PLAN
            ids.append(tasks.imagine.delay(text, **options).id)
        self.enqueued.setdefault(batch_id, []).extend(ids)
        return ids

    def timeout(self, reduced: float) -> float:
        """A wait bound that grows with the batch (the full run has ~4x the jobs on the same slots)."""
        return reduced * (3.5 if self.full else 1.0)

    def _batch_hash(self, batch_id: str) -> dict[str, str]:
        return cast(dict[str, str], self.stack.redis.hgetall(f"mjq:batch:{batch_id}"))

    def counts(self, batch_id: str) -> dict[str, int]:
        """The batch's counters by state (one HGETALL; safe to call every few milliseconds)."""
        return {k[2:]: int(v) for k, v in self._batch_hash(batch_id).items() if k.startswith("n:")}

    def finished_share(self, batch_id: str) -> float:
        raw = self._batch_hash(batch_id)
        total = int(raw.get("total") or 0) + int(raw.get("planned") or 0)
        done = sum(int(v) for k, v in raw.items() if k.startswith("n:") and k[2:] in TERMINAL)
        return done / total if total else 0.0

    def wait_share(self, batch_id: str, share: float, timeout: float = 60.0) -> None:
        """Until this share of the batch (planned follow-ups included) is terminal."""
        self.stack.wait(lambda: self.finished_share(batch_id) >= share, timeout, f"{share:.0%} of {batch_id} done")

    def wait_finished(self, batch_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Until the batch says finished (every job, including planned follow-ups, terminal) and every job is
        through its finishing step (result written, images in)."""

        def finished() -> bool:
            try:
                ledger = self.stack.ledger
                if ledger.batch(batch_id).get("status") != "finished":
                    return False
                if not self._all_recorded(self.enqueued.get(batch_id, [])):  # a message a killed worker held
                    return False  # is delivered again later: the batch cannot count it before its record exists
                return bool(ledger.unfinished(ledger.batch_job_ids(batch_id)) == 0)  # results and images are in
            except Exception:  # Redis restarting: look again
                return False

        try:
            self.stack.wait(finished, timeout, f"batch {batch_id} to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- batch ---\n{self.describe(batch_id)}") from None
        return dict(self.stack.ledger.batch(batch_id))

    def _all_recorded(self, job_ids: list[str]) -> bool:
        from worker.store import keys

        pipe = self.stack.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(keys.job(job_id))
        return all(pipe.execute())

    def describe(self, batch_id: str) -> str:
        """The batch record and its jobs that are not through (for a failure message)."""
        ledger = self.stack.ledger
        batch = ledger.batch(batch_id)
        client = self.stack.redis
        queues = {q: int(client.llen(q)) for q in client.scan_iter("*", _type="list") if not q.startswith("_kombu")}
        lines = [
            f"{ {k: v for k, v in batch.items() if k != 'meta'} }",
            f"broker: queues {queues}, unacked {client.hlen('unacked')}, "
            f"expected {client.zrange('mjq:expected', 0, -1)}",
        ]
        keys = ("status", "kind", "parent_job", "then", "upstream_id", "attempts", "submit_outcome", "settled_by",
                "continued", "then_started", "download", "fail_reason", "where", "children")
        for job_id in ledger.batch_job_ids(batch_id):
            job = ledger.get_job(job_id) or {}
            in_finishing = self.stack.redis.zscore("mjq:finishing", job_id) is not None
            children = int(client.zcard(f"mjq:children:{job_id}"))
            plan_short = bool(job.get("then")) and job.get("status") == "succeeded" and not children
            if job.get("status") not in TERMINAL or in_finishing or plan_short:
                waiting = [k for k in ("waiting:fast", "waiting:relax", "waiting:turbo", f"held:{batch_id}")
                           if client.zscore(f"mjq:{k}", job_id) is not None]
                job = {**job, "where": waiting, "children": children}
                lines.append(f"{job_id}: finishing={in_finishing} " + str({k: job.get(k) for k in keys if job.get(k)}))
        return "\n".join(lines[:40])

    # ------------------------------------------------------------------ the worker process
    @property
    def worker(self) -> WorkerProcess:
        assert self.manager.worker is not None
        return self.manager.worker

    def worker_alive(self) -> bool:
        process = self.worker.process
        return process is not None and process.poll() is None

    def kill_worker(self) -> int:
        """``kill -9`` of the worker: its main process (``-P threads``: the pool lives in it), then its embedded
        beat (a child process that would otherwise live on as an orphan and keep scheduling housekeeping).
        Returns the pid."""
        process = self.worker.process
        assert process is not None
        pid = process.pid
        children = _children(pid)
        process.kill()
        process.wait()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self.worker.process = None
        return pid

    def restart_worker(self) -> None:
        """A new worker process with the same configuration (its own log file, so readiness is its own)."""
        self.restarts += 1
        old = self.worker
        base = old.log_path.stem.split("-restart")[0]
        log_path = old.log_path.with_name(f"{base}-restart{self.restarts}-{time.monotonic_ns()}.log")
        fresh = WorkerProcess(old.env, log_path, loglevel=old.loglevel)
        self.manager.worker = fresh.start(self.stack.redis_url)
        self.stack.log_path = log_path

    def worker_log(self) -> str:
        return self.stack.log_path.read_text(errors="replace")


IDLE_TASKS = frozenset({"tasks.track.housekeeping"})  # the beat's own round: runs every half second, always


def worker_holds(timeout_s: float = 2.0) -> list[str]:
    """The tasks the worker process holds right now (running but housekeeping, prefetched, or scheduled with
    a countdown), as ``name id`` lines; [] when it holds none."""
    from worker.app import app

    inspect = app.control.inspect(timeout=timeout_s, limit=1)  # one worker: answer at its reply
    held: list[str] = []
    for kind in ("active", "reserved", "scheduled"):
        for tasks in (getattr(inspect, kind)() or {}).values():
            for task in tasks:
                request = task.get("request", task)  # scheduled entries wrap the request
                if request.get("name") not in IDLE_TASKS:
                    held.append(f"{kind} {request.get('name')} {request.get('id')}")
    return held


def drained(timeout_s: float) -> list[str]:
    """Wait (bounded) until the worker holds no task; what it still holds then ([] when drained)."""
    from kombu.exceptions import OperationalError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            held = worker_holds()
        except (redis.ConnectionError, OperationalError) as exc:  # a pooled connection to a restarted Redis
            held = [f"(no answer: {exc})"]
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


def quiesce(manager: StackManager, timeout_s: float = 15.0) -> None:
    """Make sure nothing of the previous test can run after the next ``reset_state``.

    ``reset_state`` forgets the ledger and the broker's queues, not what the worker process (kept between
    scenarios of one configuration) already holds: a scheduled retry or resend, a redelivered copy of a job's
    task, a poll or a finish still downloading would run after the reset, against a ledger that no longer knows
    its job, and write a record of it there — a whole new one (a job task's start records the job it does not
    find) or a partial one (the download's update) — a ``mjq:job:`` key that is no job of the next scenario.
    So: wait until the worker holds nothing; a task still held after ``timeout_s`` (seen: a follow-up task of the
    Redis-restart scenario still running a minute after its job had finished) ends with its worker process,
    which is replaced by a fresh one."""
    held = drained(timeout_s)
    old = manager.worker
    if not held or old is None:
        return
    print(f"\nworker replaced: it still held {held[:5]} after {timeout_s:.0f} s")
    old.stop()
    base = old.log_path.stem.split("-fresh")[0]
    log_path = old.log_path.with_name(f"{base}-fresh-{time.monotonic_ns()}.log")
    manager.worker = WorkerProcess(old.env, log_path, loglevel=old.loglevel).start(manager.redis_url)
    if manager.stack is not None:
        manager.stack.log_path = log_path


def _rel(stack_manager: StackManager, sim: Any, name: str, full_size: bool, request: pytest.FixtureRequest, *,
         crash: bool = False) -> Iterator[Rel]:
    stack = stack_manager.use(name)
    # nothing of an earlier test may run after the last reset: the first stops any delivery of its messages,
    # then what the worker already holds runs out (writing into the wiped ledger), the second wipes that too
    reset_state(stack.redis_url)
    quiesce(stack_manager)
    reset_state(stack.redis_url)
    sim.faults(time_factor=TIME_FACTOR)
    rel = Rel(stack, stack_manager, sim, FULL if full_size else REDUCED, full_size, request.node.name, crash)
    yield rel
    # a scenario that killed or stopped things leaves a healthy worker for the next one
    worker = stack_manager.worker
    if worker is None or worker.process is None or worker.process.poll() is not None:
        rel.restart_worker()
    stack.redis.delete("mjq:breaker")
    quiesce(stack_manager)  # ... nor reach the simulator the next test resets first


@pytest.fixture
def rel_poll(stack_manager: StackManager, sim: Any, full_size: bool, request: pytest.FixtureRequest) -> Iterator[Rel]:
    """Polling-only worker, long slot leases (nothing may expire unseen)."""
    yield from _rel(stack_manager, sim, "rel-poll", full_size, request)


@pytest.fixture
def rel_crash(stack_manager: StackManager, sim: Any, full_size: bool, request: pytest.FixtureRequest) -> Iterator[Rel]:
    """Polling-only worker with short slot leases: the crash scenarios (kill -9, Redis restart)."""
    yield from _rel(stack_manager, sim, "rel-crash", full_size, request, crash=True)


@pytest.fixture
def rel_hook(stack_manager: StackManager, sim: Any, full_size: bool, request: pytest.FixtureRequest) -> Iterator[Rel]:
    """Webhooks on (own server process; safety-net polls after the expected duration), long leases."""
    yield from _rel(stack_manager, sim, "rel-hook", full_size, request)


@pytest.fixture
def rel_debug(stack_manager: StackManager, sim: Any, full_size: bool, request: pytest.FixtureRequest) -> Iterator[Rel]:
    """Webhooks on, worker and webhook server at DEBUG, unique API key and webhook secret (the simulator is
    switched to that key)."""
    sim.faults(api_key=SECRET_API_KEY)
    yield from _rel(stack_manager, sim, "rel-debug", full_size, request)


@pytest.fixture(scope="session")
def fault_proxy(sim_server: Any) -> Iterator[FaultProxy]:
    """A relay in front of the simulator that refuses connections part of the time (see ``faultproxy``)."""
    proxy = FaultProxy(("127.0.0.1", int(sim_server.port)), seed=SEED).start()
    stack_support.CONFIGS["rel-faults"] = {
        **REL_HOOK,
        "MJQ_API_BASE_URL": proxy.url,
        "MJQ_API_DIALECT": "vendor",  # code 23 is a system error (proxy dialect: queue full), ids are numbers
    }
    yield proxy
    proxy.stop()


@pytest.fixture
def rel_faults(
    stack_manager: StackManager, sim: Any, full_size: bool, fault_proxy: FaultProxy, request: pytest.FixtureRequest
) -> Iterator[Rel]:
    """Webhooks on; the worker talks to the simulator (vendor dialect) through the fault relay."""
    sim.faults(dialect="vendor")
    fault_proxy.faulty(True)
    try:
        yield from _rel(stack_manager, sim, "rel-faults", full_size, request)
    finally:
        fault_proxy.faulty(False)


@pytest.fixture
def started() -> float:
    return time.monotonic()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Remember which scenario files this run holds (the README is rewritten only by a run of all of them)."""
    here = Path(__file__).parent
    _SESSION["files"] = {item.path.name for item in items if item.path.parent == here}


def _ran_everything(terminalreporter: Any) -> bool:
    stats = terminalreporter.stats
    if any(stats.get(k) for k in ("failed", "error", "deselected", "skipped")):
        return False
    every = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    return bool(_SESSION["files"] == every)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker: hand the figures and the seed to the controller (``tests/conftest.py`` prints
    them there, as the summary below does in a run without xdist)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and RESULTS:
        figures = json.loads(json.dumps([asdict(f) for f in RESULTS], default=str))  # plain data for execnet
        workeroutput["reliability"] = {"seed": SEED, "figures": figures}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The figures of every scenario that ran, as a table (also written next to the results file); a full-size
    run of the whole suite that passed writes them into the README."""
    if not RESULTS:
        return
    for line in summary(RESULTS, SEED):
        terminalreporter.write_line(line)
    write = terminalreporter.write_line
    if config.getoption("--full") and _ran_everything(terminalreporter):
        readme = Path(__file__).resolve().parents[2] / "README.md"
        run_s = time.monotonic() - float(_SESSION["started"])
        if write_readme(readme, RESULTS, seed=SEED, run_s=run_s):
            write(f"README.md results table rewritten from these figures ({readme})")
        else:
            write("README.md has no reliability markers: table not written")
