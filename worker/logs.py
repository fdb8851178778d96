"""Log lines of the long-running processes (worker, beat, webhook, ``mjq serve``): text or JSON, one setup.

``MJQ_LOG_FORMAT=json`` writes one JSON object a line (python-json-logger), with the fields a log shipper
indexes: a job transition carries ``job_id``, ``batch_id``, ``upstream``, ``from_state``, ``to_state`` and
``reason``. The upstream HTTP client's request lines (httpx: one per poll) are DEBUG detail, not INFO.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from worker.settings import Settings

TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Loggers whose INFO lines are per-request noise (one per poll, one per callback received; the job's transition
# line says what happened): shown only when the process logs at DEBUG.
CHATTY = ("httpx", "httpcore", "uvicorn.access")


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    return logging.Formatter(TEXT_FORMAT)


def configure(settings: Settings, level: int | str = logging.INFO) -> None:
    """The root logger writes to stderr in ``settings.log_format``; httpx request lines only at DEBUG."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(level)
    debug = root.getEffectiveLevel() <= logging.DEBUG
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own handlers would print text
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def celery_setup_logging(settings: Settings, loglevel: Any = logging.INFO, **_: Any) -> None:
    """Celery's ``setup_logging`` signal: with a receiver Celery leaves logging to it (worker and beat)."""
    configure(settings, loglevel or logging.INFO)
