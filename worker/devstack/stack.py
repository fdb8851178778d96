"""`mjq up`: the whole system as one process tree on a laptop, and the same from Python (tests, demo, bench).

What runs: an embedded Valkey server (data and AOF under the state dir) unless ``MJQ_REDIS_URL`` is set,
the simulator unless ``MJQ_API_BASE_URL`` is set, one Celery worker (with beat embedded), the webhook server
and Flower.  Children get the resolved settings through ``MJQ_*`` variables, their output is prefixed with
the service name (and kept in ``<state>/logs``), and stopping terminates them in reverse order, waits, and
kills stragglers.  Children run in their own session so that Ctrl-C reaches only this process, which then
stops them in order (the worker drains before Redis goes away); on Linux they also die with their parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from worker.app import QUEUES
from worker.devstack.redisserver import RedisServer, free_port
from worker.settings import Settings, dev_webhook_secret, get_settings, load_settings, webhook_secret_problem
from worker.store.connection import celery_transport_options, redis_client

SIM_DURATIONS_S = {"fast": 60.0, "relax": 180.0, "turbo": 25.0}
LogSink = Callable[[str, str], None]


class StackError(RuntimeError):
    """A service of the dev stack did not start (the message says which, and where its log is)."""


def flower_conf_path() -> Path:
    """flower.conf of the checkout (next to pyproject.toml), else the working directory's."""
    bundled = Path(__file__).resolve().parents[2] / "flower.conf"
    return bundled if bundled.exists() else Path("flower.conf").resolve()


def worker_argv(
    *,
    concurrency: int = 8,
    pool: str = "threads",
    beat: bool = False,
    hostname: str | None = None,
    loglevel: str = "INFO",
    queues: tuple[str, ...] = QUEUES,
    schedule: Path | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The Celery worker command line every launcher uses (``mjq worker``, ``mjq up``, compose).

    Threads: the work is waiting on HTTP, and task bodies never sleep.  ``-E`` sends task events for Flower.
    """
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "-E",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--queues",
        ",".join(queues),
        "--loglevel",
        loglevel,
    ]
    if hostname:
        argv += ["--hostname", hostname]
    if beat:
        argv += ["--beat"]
        if schedule is not None:
            argv += ["--schedule", str(schedule)]
    return argv + list(extra)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: ask the kernel to SIGTERM this child when mjq dies, even by kill -9."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    """One child process with a reader thread that prefixes its output."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    log_path: Path
    sink: LogSink | None
    process: subprocess.Popen[bytes] | None = None
    _reader: threading.Thread | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.argv,
            env=dict(self.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._pump, name=f"log-{self.name}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.log_path.open("ab") as log:
            for raw in self.process.stdout:
                log.write(raw)
                log.flush()
                if self.sink is not None:
                    self.sink(self.name, raw.decode("utf-8", errors="replace").rstrip())

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(timeout_s, 0.01))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)


def _wait_until(check: Callable[[], bool], service: Service | None, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if service is not None and not service.alive:
            raise StackError(f"{what} exited during start-up; see {service.log_path}")
        if time.monotonic() > deadline:
            where = f"; see {service.log_path}" if service is not None else ""
            raise StackError(f"{what} did not become ready within {timeout_s:.0f} s{where}")
        time.sleep(0.1)


def _port_open(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=0.5):
        return True


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code < 500


def _worker_answers(settings: Settings) -> bool:
    from celery import Celery

    probe = Celery("mjq-probe", broker=settings.effective_redis_url, set_as_current=False)
    probe.conf.broker_transport_options = celery_transport_options(settings)
    try:
        return bool(probe.control.ping(timeout=0.5))
    finally:
        probe.close()


def _port_of(url: str, default: int) -> int:
    return urlsplit(url).port or default


@dataclass
class DevStack:
    """The dev stack as a context manager: ``with DevStack(...) as stack: ...`` then ``stack.env``.

    Ports default to the settings' (so another terminal's ``mjq status`` finds them without configuration);
    tests pass ``ephemeral=True`` for free ports.  ``time_factor`` speeds the simulator up and scales the
    poll intervals to match, unless those were set explicitly.
    """

    settings: Settings = field(default_factory=load_settings)
    time_factor: float = 0.05
    ephemeral: bool = False
    worker_concurrency: int = 8
    with_flower: bool = True
    with_webhook: bool = True
    with_api: bool = True  # `mjq serve`, the HTTP API for other services
    sink: LogSink | None = None
    simulate: bool | None = None  # None: run the simulator only when MJQ_API_BASE_URL is unset
    embedded_redis: bool | None = None  # None: embedded Valkey only when MJQ_REDIS_URL is unset
    state_dir: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    simulator_args: tuple[str, ...] = ()  # more `python -m simulator` flags (capacity, key, faults)
    ready_timeout_s: float = 60.0

    redis_server: RedisServer | None = None
    services: list[Service] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    redis_url: str = ""
    api_base_url: str = ""
    webhook_url: str | None = None
    flower_url: str | None = None
    serve_url: str | None = None
    simulated: bool = False

    @classmethod
    def isolated(cls, state_dir: Path, **options: Any) -> DevStack:
        """A stack of its own on free ports, with the embedded Valkey and the simulator whatever is configured:
        the demo and the benchmarks never touch a real upstream, nor another stack's Redis."""
        return cls(ephemeral=True, simulate=True, embedded_redis=True, state_dir=state_dir, **options)

    @property
    def state(self) -> Path:
        return (self.state_dir or self.settings.state_dir).resolve()

    @property
    def log_dir(self) -> Path:
        return self.state / "logs"

    def _port(self, configured: int) -> int:
        return free_port() if self.ephemeral else configured

    def _scaled_env(self) -> dict[str, str]:
        """Poll delays and expected durations fitting the simulator's time factor (unless set explicitly)."""
        expected = {mode: max(0.2, base * self.time_factor) for mode, base in SIM_DURATIONS_S.items()}
        values = {
            "expected_fast_s": expected["fast"],
            "expected_relax_s": expected["relax"],
            "expected_turbo_s": expected["turbo"],
            "poll_initial_s": max(0.2, expected["turbo"] / 2),
            "poll_max_s": max(0.5, expected["fast"] / 2),
            "webhook_poll_s": max(0.5, expected["fast"]),
            "submit_retry_max_s": max(0.5, expected["fast"] / 2),
        }
        explicit = self.settings.model_fields_set
        return {f"MJQ_{name.upper()}": f"{value:g}" for name, value in values.items() if name not in explicit}

    def start(self) -> DevStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        settings = self.settings
        timeout = self.ready_timeout_s
        self.state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "MJQ_STATE_DIR": str(self.state),
                "MJQ_MEDIA_DIR": str(settings.media_dir.resolve()),
            }
        )

        embedded = settings.redis_url is None if self.embedded_redis is None else self.embedded_redis
        if not embedded:
            self.redis_url = settings.effective_redis_url
        else:
            port = self._port(_port_of(settings.effective_redis_url, 6390))
            with contextlib.suppress(OSError):
                if _port_open("127.0.0.1", port):
                    raise StackError(
                        f"port {port} is taken: is another `mjq up` running? "
                        "(or set MJQ_REDIS_URL to use that Redis)"
                    )
            self.redis_server = RedisServer(self.state / "redis", port=port, new_session=True).start()
            self.redis_url = self.redis_server.url
        env["MJQ_REDIS_URL"] = self.redis_url

        webhook_port = self._port(settings.webhook_port)
        explicit_api = "api_base_url" in settings.model_fields_set
        self.simulated = not explicit_api if self.simulate is None else self.simulate
        if self.simulated:
            sim_port = self._port(8787 if explicit_api else _port_of(settings.api_base_url, 8787))
            self.api_base_url = f"http://127.0.0.1:{sim_port}"
            env["MJQ_API_BASE_URL"] = self.api_base_url
            env.update(self._scaled_env())
            if self.with_webhook and settings.webhook_base_url is None:
                env["MJQ_WEBHOOK_BASE_URL"] = f"http://127.0.0.1:{webhook_port}"
                if webhook_secret_problem(settings.webhook_secret.get_secret_value()):  # none configured
                    env["MJQ_WEBHOOK_SECRET"] = dev_webhook_secret(self.state)
            sim_argv = [
                sys.executable,
                "-m",
                "simulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(sim_port),
                "--time-factor",
                f"{self.time_factor:g}",
                *self.simulator_args,
            ]
            sim = self._service("simulator", sim_argv, env)
            _wait_until(
                lambda: _http_ok(f"{self.api_base_url}/admin/stats"),
                sim,
                "the simulator",
                self.ready_timeout_s,
            )
        else:
            self.api_base_url = settings.api_base_url
        env.update(self.extra_env)

        if self.with_webhook:
            env["MJQ_WEBHOOK_PORT"] = str(webhook_port)
            hook = self._service("webhook", [sys.executable, "-m", "worker.cli", "webhook"], env)
            host = settings.webhook_host if settings.webhook_host not in ("0.0.0.0", "::") else "127.0.0.1"
            self.webhook_url = f"http://{host}:{webhook_port}"
            _wait_until(lambda: _port_open(host, webhook_port), hook, "the webhook server", timeout)

        if self.with_api:
            serve_port = self._port(settings.serve_port)
            api_env = {**env, "MJQ_SERVE_PORT": str(serve_port)}
            api = self._service("api", [sys.executable, "-m", "worker.cli", "serve"], api_env)
            host = settings.serve_host if settings.serve_host not in ("0.0.0.0", "::") else "127.0.0.1"
            self.serve_url = f"http://{host}:{serve_port}"
            _wait_until(lambda: _http_ok(f"{self.serve_url}/healthz"), api, "the HTTP API", timeout)

        worker = self._service(
            "worker",
            worker_argv(
                concurrency=self.worker_concurrency,
                beat=True,
                hostname=f"mjq-up-{os.getpid()}@%h",
                schedule=self.state / "celerybeat-schedule",
            ),
            env,
        )

        if self.with_flower:
            flower_port = self._port(settings.flower_port)
            flower_env = dict(env)
            if not env.get("FLOWER_BASIC_AUTH"):  # local-only Flower: let the REST API answer without auth
                flower_env.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
            flower = self._service(
                "flower",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker.app",
                    "flower",
                    f"--conf={flower_conf_path()}",
                    f"--port={flower_port}",
                    "--address=127.0.0.1",
                    f"--db={self.state / 'flower.db'}",
                ],
                flower_env,
            )
            self.flower_url = f"http://127.0.0.1:{flower_port}"
            _wait_until(lambda: _http_ok(f"{self.flower_url}/healthcheck"), flower, "Flower", timeout)

        _wait_until(lambda: _worker_answers(self._redis_settings()), worker, "the Celery worker", timeout)
        self.env = {k: v for k, v in env.items() if k.startswith(("MJQ_", "FLOWER_")) and k != "MJQ_API_KEY"}

    def _service(self, name: str, argv: list[str], env: Mapping[str, str]) -> Service:
        service = Service(name, argv, dict(env), self.log_dir / f"{name}.log", self.sink)
        service.start()
        self.services.append(service)
        return service

    def dead_services(self) -> list[str]:
        return [s.name for s in self.services if not s.alive]

    def stop(self, timeout_s: float = 15.0) -> None:
        """Terminate children in reverse start order, wait, kill stragglers, then stop Redis."""
        services, self.services = self.services, []
        for service in reversed(services):
            service.terminate()
        deadline = time.monotonic() + timeout_s
        for service in reversed(services):
            service.wait(deadline - time.monotonic())
        if self.redis_server is not None:
            self.redis_server.stop()
            self.redis_server = None

    def _redis_settings(self) -> Settings:
        """The settings with the Redis the stack uses (the embedded server, or the configured URL/Sentinels)."""
        return self.settings.model_copy(update={"redis_url": self.redis_url})

    def client(self) -> redis.Redis:
        return redis_client(self._redis_settings())

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Point this process at the stack (env, settings, Celery app, runtime) for the duration of the block."""
        saved = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        reload_settings()
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            reload_settings()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def reload_settings() -> None:
    """Re-read the settings and point an already-imported Celery app and runtime at them (not importing
    either when this process has not: a CLI that never used them stays light)."""
    get_settings.cache_clear()
    if "worker.app" in sys.modules:
        from worker.app import reconfigure

        reconfigure(get_settings())
    if "worker.store.runtime" in sys.modules:
        from worker.store.runtime import reset_runtime

        reset_runtime()


def run_forever(stack: DevStack, on_ready: Callable[[DevStack], None]) -> int:
    """Run the stack in the foreground until Ctrl-C / SIGTERM, or until a service dies (exit 1)."""
    stopping = threading.Event()
    started = False

    def _handler(signum: int, _frame: object) -> None:
        stopping.set()
        if not started:
            raise KeyboardInterrupt  # abort a start-up in progress; start() cleans up what it began

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            stack.start()
        except KeyboardInterrupt:
            return 130
        started = True
        on_ready(stack)
        while not stopping.wait(0.5):
            dead = stack.dead_services()
            if dead:
                raise StackError(f"{', '.join(dead)} stopped unexpectedly; see {stack.log_dir}")
        return 0
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
