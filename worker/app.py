"""The Celery app ``mjqueue``: broker and results on Redis, three queues, reliability options, beat schedule.

``celery -A worker.app worker -E -P threads -c 8 -Q interactive,track,batch`` runs it; ``celery -A worker.app
beat`` (or ``worker -B``) runs the housekeeping entry. Queues are read in the order given to ``-Q`` (the
Redis transport's ``priority`` strategy), so a single interactive request starts before queued batch work.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, signals
from celery.app.amqp import AMQP
from kombu.entity import Exchange, Queue

from worker.logs import celery_setup_logging
from worker.settings import Settings, get_settings
from worker.store import workers
from worker.store.connection import celery_transport_options, redis_client

QUEUES = ("interactive", "track", "batch")  # read in this order (-Q): the order is the priority
INTERACTIVE, TRACK, BATCH = QUEUES
# The plumbing between a job's tasks: sent by name (tasks/ sits above worker/), and silent in Flower, whose task
# list is for jobs (a per-second housekeeping task and one poll per check buried them).
POLL_TASK, FINISH_TASK, HOUSEKEEPING_TASK = "tasks.track.poll", "tasks.track.finish", "tasks.track.housekeeping"
CALLBACK_TASK = "tasks.track.callback"  # outgoing callbacks to the producer (worker.jobs.callbacks)
ALERT_TASK = "tasks.track.alert"  # alerts to the operator (worker.jobs.alerts)
FINISH_MANY_TASK = "tasks.track.finish_many"  # the finishing step of a chunk of cancelled jobs: one message each
PLUMBING_TASKS = frozenset({POLL_TASK, FINISH_TASK, FINISH_MANY_TASK, HOUSEKEEPING_TASK, CALLBACK_TASK, ALERT_TASK})
TASK_MODULES = ("tasks.submit", "tasks.track", "tasks.followups")  # by name: tasks/ sits above this module


def visibility_timeout_s(settings: Settings) -> int:
    """Longer than any countdown we schedule (``Settings.countdowns``) and than any task runs.

    ``MJQ_VISIBILITY_TIMEOUT_S`` overrides it (crash tests want redelivery within seconds); settings refuse a
    value that is not above every countdown.
    """
    if settings.visibility_timeout_s:
        return max(1, math.ceil(settings.visibility_timeout_s))  # never below what the settings checked
    return int(max(3600.0, 4 * max(settings.countdowns().values())))


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.effective_redis_url
    sentinel = celery_transport_options(settings)  # empty unless MJQ_REDIS_URL is sentinel://
    transport: dict[str, Any] = {
        "visibility_timeout": visibility_timeout_s(settings),
        "queue_order_strategy": "priority",
        **sentinel,
    }
    if settings.visibility_timeout_s:
        # a short timeout is only useful if the sweep that redelivers expired messages runs as often
        transport["unacked_restore_interval"] = max(1, int(settings.visibility_timeout_s / 4))
        transport["unacked_restore_throttle"] = 1
        # the sweep's lock: a worker killed while holding it (likelier the more often it sweeps) would stop every
        # redelivery for kombu's default 300 s, far beyond a short timeout; a sweep takes milliseconds
        transport["unacked_mutex_expire"] = min(300, max(10, math.ceil(2 * settings.visibility_timeout_s)))
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": visibility_timeout_s(settings), **sentinel},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_extended": False,
        # a job result is ~2.8 KB of JSON (nine buttons, paths, times); zlib keeps ~1 KB in Redis. Readers need
        # no setting: Celery >= 5.7 spots compressed payloads by their marker (a bare client reads them too)
        "result_compression": "zlib",
        "result_expires": settings.retention_s,  # job results live as long as their ledger records
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_default_queue": INTERACTIVE,
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
            for name in QUEUES
        ],
        "task_routes": {"tasks.track.*": {"queue": TRACK}},
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "mjq-housekeeping": {
                "task": HOUSEKEEPING_TASK,
                "schedule": settings.housekeeping_interval_s,
                "options": {"queue": TRACK, "expires": max(5.0, 5 * settings.housekeeping_interval_s)},
            }
        },
        "timezone": "UTC",
    }


class QuietPlumbingAMQP(AMQP):  # type: ignore[misc]
    """Messages of ``PLUMBING_TASKS`` publish no ``task-sent`` event (their tasks send none either:
    ``send_events=False``), so Flower lists job tasks and their follow-ups, not the polls between them."""

    @property
    def create_task_message(self) -> Callable[..., Any]:
        make: Callable[..., Any] = self.task_protocols[self.app.conf.task_protocol]

        def create(task_id: str, name: str, *args: Any, **kwargs: Any) -> Any:
            message = make(task_id, name, *args, **kwargs)
            return message._replace(sent_event=None) if name in PLUMBING_TASKS else message

        return create


def _survive_broker_loss() -> None:
    """Keep the worker alive when Redis goes away with messages unacknowledged (kombu 5.7 bug).

    On a lost broker connection Celery closes the old connection; kombu first detaches the transport
    (``transport.client = None``) and then closes the channels, whose ``restore_unacked`` builds a new client
    from ``transport.client`` -> ``AttributeError`` -> "Unrecoverable error" and the worker EXITS (found by the
    Redis-restart scenario of ``tests/reliability``). A connection error instead is what Celery's reconnect
    path ignores; the unrestored messages come back after the visibility timeout.
    """
    import redis
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "_mjq_patched", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("broker connection already closed")
        return original(self, asynchronous)  # type: ignore[no-untyped-call]

    _connparams._mjq_patched = True  # type: ignore[attr-defined]
    setattr(kombu_redis.Channel, "_connparams", _connparams)  # noqa: B010


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery_app = Celery("mjqueue", amqp=QuietPlumbingAMQP)
    celery_app.conf.update(celery_config(settings))
    celery_app.conf.include = list(TASK_MODULES)
    return celery_app


class _SettingsReport:
    """Each worker writes ``Settings.fingerprint()`` to Redis at start and with its heartbeat (``-E``), so
    ``mjq resume`` can tell when running workers hold other settings (an old key) than the command."""

    def __init__(self) -> None:
        self.last = 0.0
        self.client: Any = None

    def send(self, hostname: str | None, *, force: bool = False) -> None:
        if not hostname or (not force and time.monotonic() - self.last < workers.REPORT_EVERY_S):
            return
        self.last = time.monotonic()
        settings = get_settings()
        try:
            self.client = self.client or redis_client(settings)
            workers.report(self.client, hostname, settings.fingerprint())
        except redis.RedisError:  # the broker is gone too: the worker reconnects, and so do we next time
            self.client = None

    def on_ready(self, sender: Any = None, **_: Any) -> None:
        self.send(getattr(sender, "hostname", None), force=True)

    def on_heartbeat(self, sender: Any = None, **_: Any) -> None:
        self.send(getattr(getattr(sender, "eventer", None), "hostname", None))

    def on_shutdown(self, sender: Any = None, **_: Any) -> None:
        with contextlib.suppress(redis.RedisError, AttributeError):
            workers.forget(self.client or redis_client(get_settings()), str(getattr(sender, "hostname", "")))


def _setup_logging(**kwargs: Any) -> None:
    """Worker and beat log in ``MJQ_LOG_FORMAT`` (a receiver of this signal replaces Celery's own setup)."""
    celery_setup_logging(get_settings(), **kwargs)


_survive_broker_loss()
signals.setup_logging.connect(_setup_logging, weak=False)
_report = _SettingsReport()
signals.worker_ready.connect(_report.on_ready, weak=False)
signals.heartbeat_sent.connect(_report.on_heartbeat, weak=False)
signals.worker_shutdown.connect(_report.on_shutdown, weak=False)
app = create_app()


def task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` with a typed signature (Celery ships no type hints): ``@task(name="tasks.x", ...)``."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(**options)
    return decorator


def reconfigure(settings: Settings) -> None:
    """Point the already-imported app at new settings (tests and embedders that change MJQ_ env late).

    Drops the cached connection pool, producer pool and result backend so the next use connects anew.
    """
    app.conf.update(celery_config(settings))
    app._pool = None  # not closed: kombu's global producer pools may still hand out its connections
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    app._backend_cache = None
    if hasattr(app._local, "backend"):
        del app._local.backend
