"""The worker stack for integration tests: a REAL Celery worker subprocess (with beat), the simulator over
HTTP, a real webhook server (uvicorn in a thread, or in its own process for the configurations listed in
``OWN_WEBHOOK_PROCESS``) and the test process as producer — all on the session Redis.

One worker runs at a time; it is restarted only when a test asks for another configuration (``poll`` or
``hook``), so group tests by configuration. Between tests only mjqueue's keys and stored results are cleared
(the broker's queue bindings stay), and the simulator is reset by its ``sim`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import patience
from worker.devstack.processes import stop_process
from worker.devstack.redisserver import RedisServer, free_port
from worker.devstack.stack import worker_argv

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "test-webhook-secret"

BASE_ENV = {
    "MJQ_API_KEY": "test-key",
    "MJQ_SLOTS_FAST": "3",
    "MJQ_SLOTS_RELAX": "3",
    "MJQ_SLOTS_TURBO": "3",
    "MJQ_SLOT_LEASE_S": "30",
    "MJQ_POLL_INITIAL_S": "0.1",
    "MJQ_POLL_FACTOR": "1.5",
    "MJQ_POLL_MAX_S": "0.3",
    "MJQ_POLL_JITTER": "0.1",
    # the session simulator's durations (time factor 0.01): polling only, the first poll comes after them
    "MJQ_EXPECTED_FAST_S": "0.6",
    "MJQ_EXPECTED_RELAX_S": "1.8",
    "MJQ_EXPECTED_TURBO_S": "0.25",
    "MJQ_JOB_DEADLINE_S": "3",
    "MJQ_JOB_DEADLINE_RELAX_S": "6",
    "MJQ_JOB_DEADLINE_TURBO_S": "3",
    "MJQ_SUBMIT_RETRY_MAX_S": "0.3",
    "MJQ_SUBMIT_BUSY_MAX_S": "3",
    "MJQ_HTTP_TIMEOUT_S": "1.5",
    "MJQ_HTTP_SUBMIT_TIMEOUT_S": "1.5",
    "MJQ_HTTP_CONNECT_TIMEOUT_S": "1.0",
    "MJQ_HOUSEKEEPING_INTERVAL_S": "0.5",
    "MJQ_WEBHOOK_SECRET": WEBHOOK_SECRET,
}

CONFIGS: dict[str, dict[str, str]] = {
    # polling only: backoff 0.1s -> 0.3s
    "poll": {},
    # webhooks on: the safety-net poll comes after the expected duration (far later than the callbacks)
    "hook": {
        "MJQ_EXPECTED_FAST_S": "2.0",
        "MJQ_EXPECTED_RELAX_S": "3.0",
        "MJQ_EXPECTED_TURBO_S": "2.0",
        "MJQ_WEBHOOK_POLL_S": "0.5",
    },
}
# Configurations that get the webhook URL, and worker log levels other than INFO (other suites register theirs).
HOOKED: set[str] = {"hook"}
LOGLEVELS: dict[str, str] = {}
# Hooked configurations whose webhook server runs in its own process (as `mjq webhook` does in production), with
# the configuration's settings and log level; the others share the in-process thread.
OWN_WEBHOOK_PROCESS: set[str] = set()


@dataclass
class WorkerProcess:
    """``celery -A worker.app worker -B -P threads`` as a subprocess with a log file."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    loglevel: str = "INFO"
    beat: bool = True  # one beat per cluster: a second "host" runs without

    def start(self, redis_url: str, timeout_s: float = 30.0) -> WorkerProcess:
        schedule = self.log_path.with_suffix(".schedule")
        argv = worker_argv(
            beat=self.beat,
            loglevel=self.loglevel,
            hostname=f"stack-{os.getpid()}-{time.monotonic_ns()}@%h",
            schedule=schedule,
            extra=("--without-gossip", "--without-mingle"),
        )
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(redis_url)
        deadline = patience.deadline(timeout_s)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"worker exited early; see {self.log_path}")
                if b"ready." in self.log_path.read_bytes() and client.exists("_kombu.binding.batch"):
                    return self
                time.sleep(0.1)
        finally:
            client.close()
        raise RuntimeError(f"worker not ready after {timeout_s}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 15.0)
        self.process = None


def wait_healthy(
    url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None, log_path: Path | None = None
) -> None:
    """Until the webhook server at ``url`` answers its health check (or its process died)."""
    import httpx

    where = f"; see {log_path}" if log_path else ""
    deadline = patience.deadline(timeout_s)
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"webhook server exited early{where}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"webhook server not ready after {timeout_s}s{where}")


class WebhookThread:
    """uvicorn serving ``worker.service.webhook.create_app`` in a daemon thread (real sockets)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> WebhookThread:
        import uvicorn

        from worker.service.webhook import create_app
        from worker.settings import get_settings

        config = uvicorn.Config(
            create_app(get_settings()), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_healthy(self.url, 10.0)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=5)


class WebhookProcess:
    """uvicorn serving ``worker.service.webhook:create_app`` in its own process, logging to a file at ``loglevel``
    (root logger included, so mjqueue's own loggers show), like ``mjq webhook`` in production."""

    def __init__(self, port: int, env: dict[str, str], log_path: Path, loglevel: str = "INFO") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = env
        self.log_path = log_path
        self.loglevel = loglevel.upper()
        self.process: subprocess.Popen[bytes] | None = None

    def _log_config(self) -> Path:
        import json

        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "[%(asctime)s: %(levelname)s/%(name)s] %(message)s"}},
            "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"}},
            "root": {"level": self.loglevel, "handlers": ["out"]},
        }
        path = self.log_path.with_suffix(".logging.json")
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    def start(self, timeout_s: float = 60.0) -> WebhookProcess:

        argv = [
            sys.executable, "-m", "uvicorn", "--factory", "worker.service.webhook:create_app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--log-config", str(self._log_config()), "--log-level", self.loglevel.lower(),
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_healthy(self.url, timeout_s, self.process, self.log_path)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10.0)
        self.process = None


@dataclass
class Stack:
    """What a test gets: the config name, Redis, the ledger and helpers to wait on jobs."""

    name: str
    redis_url: str
    env: dict[str, str]
    webhook_url: str
    log_path: Path
    webhook_process: WebhookProcess | None = None
    redis: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        from worker.settings import get_settings
        from worker.store.connection import redis_client

        self.redis = redis_client(get_settings().model_copy(update={"redis_url": self.redis_url}))

    @property
    def ledger(self) -> Any:
        from worker.store.runtime import runtime

        return runtime().ledger

    def job(self, job_id: str) -> dict[str, Any]:
        return self.ledger.get_job(job_id) or {}

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        deadline = patience.deadline(timeout)
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"timed out waiting for {what}\n--- worker log tail ---\n{tail}")

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 20.0) -> dict[str, Any]:
        self.wait(lambda: self.job(job_id).get("status") in statuses, timeout, f"{job_id} in {statuses}")
        return self.job(job_id)

    def wait_batch(self, batch_id: str, expected: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until ``expected`` jobs of the batch exist, all are terminal and finished (images downloaded)
        and none is still planned."""
        from worker.store.records import TERMINAL

        def done() -> bool:  # planned follow-ups are created, or skipped, before a batch is through
            b = self.ledger.batch(batch_id)
            ended = bool(b) and b["planned"] <= 0 and b["pending"] == 0
            ended = ended and sum(b["counts"][s] for s in TERMINAL) >= b["total"] >= expected
            return ended and self.ledger.unfinished(self.ledger.batch_job_ids(batch_id)) == 0  # images are in

        try:
            self.wait(done, timeout, f"batch {batch_id} to finish")
        except AssertionError as exc:
            from worker.store import keys

            ids = self.ledger.batch_job_ids(batch_id)
            jobs = {j: (self.job(j).get("status"), self.redis.zscore(keys.FINISHING, j)) for j in ids}
            raise AssertionError(f"{exc}\n--- batch ---\n{self.ledger.batch(batch_id)}\n--- jobs (status, "
                                 f"finishing since) ---\n{jobs}") from None
        return dict(self.ledger.batch(batch_id))


class StackManager:
    """Keeps one worker alive for the session, restarting it when the configuration changes."""

    def __init__(self, redis_server: RedisServer, sim_url: str, tmp: Path) -> None:
        self.redis_url = redis_server.url
        self.sim_url = sim_url
        self.tmp = tmp
        self.webhook = WebhookThread(free_port())
        self.webhook_process: WebhookProcess | None = None
        self.webhook_process_port = free_port()
        self.worker: WorkerProcess | None = None
        self.current: str | None = None
        self.stack: Stack | None = None

    def env_for(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
        env.update(BASE_ENV)
        env.update(CONFIGS[name])
        env["MJQ_REDIS_URL"] = self.redis_url
        env["MJQ_API_BASE_URL"] = CONFIGS[name].get("MJQ_API_BASE_URL", self.sim_url)  # e.g. a relay in front
        env["MJQ_MEDIA_DIR"] = str(self.tmp / "media")
        env["MJQ_STATE_DIR"] = str(self.tmp / "state")
        if name in HOOKED:
            own = name in OWN_WEBHOOK_PROCESS
            env["MJQ_WEBHOOK_BASE_URL"] = f"http://127.0.0.1:{self.webhook_process_port}" if own else self.webhook.url
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def use(self, name: str) -> Stack:
        env = self.env_for(name)
        apply_env_here(env)  # every test: tests/conftest.py gives each test back the environment it started with
        if self.current == name and self.stack is not None:
            return self.stack
        if self.worker is not None:
            self.worker.stop()
        reset_state(self.redis_url)
        if self.webhook.thread is None:
            self.webhook.start()
        log_path = self.tmp / f"worker-{name}.log"
        self.worker = WorkerProcess(env, log_path, loglevel=LOGLEVELS.get(name, "INFO")).start(self.redis_url)
        if self.webhook_process is not None:
            self.webhook_process.stop()
            self.webhook_process = None
        webhook_url = self.webhook.url
        if name in HOOKED and name in OWN_WEBHOOK_PROCESS:
            self.webhook_process = WebhookProcess(
                self.webhook_process_port, env, self.tmp / f"webhook-{name}.log", LOGLEVELS.get(name, "INFO")
            ).start()
            webhook_url = self.webhook_process.url
        self.current = name
        self.stack = Stack(name, self.redis_url, env, webhook_url, log_path, self.webhook_process)
        return self.stack

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.webhook_process is not None:
            self.webhook_process.stop()
        self.webhook.stop()


def apply_env_here(env: dict[str, str]) -> None:
    """Make the test process (producer, webhook server) use the same settings as the worker."""
    for key in [k for k in os.environ if k.startswith("MJQ_")]:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith("MJQ_")})
    from worker.app import reconfigure
    from worker.settings import get_settings
    from worker.store.runtime import reset_runtime

    get_settings.cache_clear()
    reconfigure(get_settings())
    reset_runtime()


def reset_state(redis_url: str) -> None:
    """Forget mjqueue's keys, stored results and queued messages; keep the broker's queue bindings."""
    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in ("mjq:*", "celery-task-meta-*", "chord-unlock-*", "*.counter"):
            keys = list(client.scan_iter(pattern, count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
        for queue in ("interactive", "track", "batch"):
            client.delete(queue, *[f"{queue}\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9)])
        client.delete("unacked", "unacked_index")
    finally:
        client.close()
    from worker.app import app

    with app.connection_for_write() as conn:  # re-declare bindings in case a test flushed Redis
        channel = conn.default_channel
        for queue in app.conf.task_queues:
            queue.bind(channel).declare()


@pytest.fixture(scope="session")
def stack_manager(
    redis_server: RedisServer, sim_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackManager]:
    manager = StackManager(redis_server, str(sim_server.url), Path(tmp_path_factory.mktemp("stack")))
    yield manager
    manager.close()


def use_config(manager: StackManager, name: str, sim: Any) -> Stack:
    """The manager's worker in configuration ``name`` (started if another runs), with clean state."""
    stack = manager.use(name)
    reset_state(stack.redis_url)
    return stack


@pytest.fixture
def stack(stack_manager: StackManager, sim: Any) -> Stack:
    """The polling-only stack (no webhook URL), clean."""
    return use_config(stack_manager, "poll", sim)


@pytest.fixture
def hook_stack(stack_manager: StackManager, sim: Any) -> Stack:
    """The stack with webhooks on (safety-net polls only after the expected duration), clean."""
    return use_config(stack_manager, "hook", sim)
