"""Outgoing callbacks: when a job ends, POST its result to the producer's ``callback_url``, signed as Standard
Webhooks specify (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``; the ``standardwebhooks``
package), retried with exponential backoff until ``MJQ_CALLBACK_RETRY_S`` has passed.

Delivery is its own task (``tasks.track.callback``, sent by name from the finishing step), so a slow or dead
receiver never delays or fails the job. The ``webhook-id`` is the same on every attempt (the job id), so a
receiver drops duplicates; at least once, not exactly once, is what HTTP allows. Targets are checked before
every use: https to a public address, unless the host is in ``MJQ_CALLBACK_ALLOW_HOSTS`` (a service must not
make us scan the internal network).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from worker.app import CALLBACK_TASK, TRACK, app
from worker.mjapi.errors import InvalidInput
from worker.settings import Settings
from worker.store.runtime import Runtime

log = logging.getLogger("mjqueue.callbacks")

EVENT = "job.finished"
STATES = ("retrying", "delivered", "gave up")


def allowed_hosts(settings: Settings) -> set[str]:
    return {h.strip().lower() for h in settings.callback_allow_hosts.split(",") if h.strip()}


def check_callback_url(url: object, settings: Settings, *, resolve: bool = True) -> str:
    """The URL if it is a usable callback target, else ``InvalidInput`` naming ``callback_url`` and the rule."""
    if not isinstance(url, str) or len(url) > 2048:
        raise InvalidInput("callback_url", "must be a URL of at most 2048 characters")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidInput("callback_url", "must be an https URL")
    if not settings.callback_secret.get_secret_value():
        raise InvalidInput("callback_url", "callbacks are off on this server (MJQ_CALLBACK_SECRET is not set)")
    allowed = host in allowed_hosts(settings)
    if parts.scheme == "http" and not allowed:
        raise InvalidInput("callback_url", f"must be https (http only to MJQ_CALLBACK_ALLOW_HOSTS), not {host!r}")
    if allowed or not resolve:
        return url
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError:
        raise InvalidInput("callback_url", f"host {host!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if not address.is_global:
            raise InvalidInput(
                "callback_url",
                f"host {host!r} is a private, loopback or link-local address ({address}); allow it in"
                " MJQ_CALLBACK_ALLOW_HOSTS",
            )
    return url


def send_callback(job_id: str, countdown: float = 0.0) -> None:
    """Deliver the job's callback (``tasks.track.callback``) after ``countdown`` seconds."""
    app.send_task(CALLBACK_TASK, args=(job_id,), countdown=countdown, queue=TRACK)


def start_callback(job: dict[str, Any], rt: Runtime) -> None:
    """From the finishing step: send the first delivery once per job (a finishing step that runs again, or a
    reconciled review, does not deliver twice)."""
    url = (job.get("meta") or {}).get("callback_url")
    if not url or not rt.ledger.set_once(str(job["job_id"]), "callback_started", repr(time.time())):
        return
    rt.ledger.update(str(job["job_id"]), {"callback": "retrying", "callback_attempts": 0})
    send_callback(str(job["job_id"]))


def retry_delay(attempts: int, settings: Settings) -> float:
    """Exponential: the initial delay doubled after each failed attempt, capped."""
    grown = settings.callback_retry_initial_s * 2 ** max(0, attempts - 1)
    return float(min(settings.callback_retry_max_delay_s, grown))


def deliver(job_id: str, rt: Runtime) -> str:
    """One delivery attempt; schedules the next on failure. Returns the callback state after it."""
    job = rt.ledger.get_job(job_id)
    if job is None:
        return "gave up"
    if job.get("callback") in ("delivered", "gave up"):
        return str(job["callback"])
    settings = rt.settings
    url = str((job.get("meta") or {}).get("callback_url") or "")
    attempts = int(job.get("callback_attempts") or 0) + 1
    error = ""
    try:
        check_callback_url(url, settings)
        body = json.dumps({"type": EVENT, "data": rt.ledger.job_result(job_id)}, default=str)
        webhook = Webhook(settings.callback_secret.get_secret_value())
        now = datetime.now(tz=UTC)
        headers = {
            "webhook-id": f"msg_{job_id}",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": webhook.sign(f"msg_{job_id}", now, body),
            "content-type": "application/json",
        }
        answer = httpx.post(url, content=body, headers=headers, timeout=settings.callback_timeout_s)
        if 200 <= answer.status_code < 300:
            rt.ledger.update(job_id, {"callback": "delivered", "callback_attempts": attempts,
                                      "callback_at": repr(time.time())})
            return "delivered"
        error = f"HTTP {answer.status_code}"
    except InvalidInput as exc:
        error = str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    started = float(job.get("callback_started") or time.time())
    delay = retry_delay(attempts, settings)
    state = "retrying" if time.time() + delay - started <= settings.callback_retry_s else "gave up"
    rt.ledger.update(job_id, {"callback": state, "callback_attempts": attempts, "callback_error": error[:300]})
    log.info("callback of job %s attempt %d failed (%s): %s", job_id, attempts, error, state)
    if state == "retrying":
        send_callback(job_id, delay)
    return state
