"""Outgoing callbacks: POST a job's result (or a batch's summary) to the producer's ``callback_url``, signed as
Standard Webhooks specify (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``; the ``standardwebhooks``
package), retried with exponential backoff until ``MJQ_CALLBACK_RETRY_S`` has passed.

Events (``type`` of the body): ``job.finished`` when a job ends (the default of the job option
``callback_events``), ``job.started`` when the upstream accepted it, ``job.progress`` when its progress changes
(at most one per ``MJQ_CALLBACK_PROGRESS_INTERVAL_S``, one attempt each: the next progress or the end supersedes
it), and ``batch.finished`` once when a batch with a ``callback_url`` finishes (its summary: counts, spend).

Delivery is its own task (``tasks.track.callback``, sent by name), so a slow or dead receiver never delays or
fails the job. The ``webhook-id`` is the same on every attempt of one event (``msg_<job id>`` for the end), so
a receiver drops duplicates; at least once, not exactly once, is what HTTP allows. The secret is the one of the
API key that created the job (``callback_signer``, read from ``MJQ_SERVE_KEYS_FILE`` by the worker that signs)
or ``MJQ_CALLBACK_SECRET``; neither travels in a message or a record. Targets are checked before every use:
https to a public address, unless the host is in ``MJQ_CALLBACK_ALLOW_HOSTS`` (a service must not make us scan
the internal network). The delivery state (``delivered``, ``retrying``, ``gave up``, attempts) is kept on the
job or batch record: results, ``mjq status``/``mjq job``, ``GET /v1/...`` and the manifest show it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from worker.app import CALLBACK_TASK, TRACK, app
from worker.keyfile import KeyFileError, KeyRing
from worker.mjapi.errors import InvalidInput
from worker.reports.money import batch_summary
from worker.settings import Settings
from worker.store import keys
from worker.store.deliveries import BATCH_EVENT, JOB_EVENTS
from worker.store.deliveries import fields as _fields
from worker.store.records import TERMINAL
from worker.store.runtime import Runtime

log = logging.getLogger("mjqueue.callbacks")

EVENT = "job.finished"
EVENTS = JOB_EVENTS
DEFAULT_EVENTS = ("finished",)
STATES = ("retrying", "delivered", "gave up")
FINAL = ("delivered", "gave up")


# ---------------------------------------------------------------------------------------------------- checks


def allowed_hosts(settings: Settings) -> set[str]:
    return {h.strip().lower() for h in settings.callback_allow_hosts.split(",") if h.strip()}


def check_callback_url(url: object, settings: Settings, *, resolve: bool = True, signed: bool = False) -> str:
    """The URL if it is a usable callback target, else ``InvalidInput`` naming ``callback_url`` and the rule.
    ``signed``: a secret of its own signs it (an API key's), so ``MJQ_CALLBACK_SECRET`` is not needed."""
    if not isinstance(url, str) or len(url) > 2048:
        raise InvalidInput("callback_url", "must be a URL of at most 2048 characters")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidInput("callback_url", "must be an https URL")
    if not signed and not settings.callback_secret.get_secret_value():
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


def check_callback_events(value: object) -> list[str]:
    """The job option ``callback_events``: a non-empty list of finished | started | progress."""
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidInput("callback_events", f"must be a non-empty list of {', '.join(EVENTS)}")
    unknown = [v for v in value if v not in EVENTS]
    if unknown:
        raise InvalidInput("callback_events", f"unknown event {unknown[0]!r}: use {', '.join(EVENTS)}")
    return list(dict.fromkeys(value))


def check_callback(options: Mapping[str, Any], settings: Settings) -> None:
    """The callback options of a job (or batch): ``callback_url``, ``callback_events``, ``callback_signer``."""
    url, events = options.get("callback_url"), options.get("callback_events")
    signer = options.get("callback_signer")
    if events is not None:
        check_callback_events(events)
    if (events is not None or signer is not None) and not url:
        raise InvalidInput("callback_events" if events is not None else "callback_signer", "needs a callback_url")
    if signer is not None and not isinstance(signer, str):
        raise InvalidInput("callback_signer", "must be the name of an API key")
    if url:
        check_callback_url(url, settings, signed=bool(signer))


# ---------------------------------------------------------------------------------------------------- signing

_rings: dict[Path, KeyRing] = {}


def signing_secret(signer: str | None, settings: Settings) -> str:
    """The secret of the API key ``signer`` (from the keys file), else ``MJQ_CALLBACK_SECRET``; ``InvalidInput``
    (never showing a secret) when there is none."""
    if signer:
        ring = _rings.setdefault(settings.serve_keys_file, KeyRing(settings.serve_keys_file))
        try:
            secret = ring.callback_secret(signer)
        except KeyFileError as exc:
            raise InvalidInput("callback_signer", f"the keys file is unusable: {exc}") from None
        if not secret:
            raise InvalidInput("callback_signer", f"API key {signer!r} has no callback secret in MJQ_SERVE_KEYS_FILE")
        return secret
    secret = settings.callback_secret.get_secret_value()
    if not secret:
        raise InvalidInput("callback_url", "MJQ_CALLBACK_SECRET is not set")
    return secret


def signed_post(url: str, msg_id: str, body: str, secret: str, settings: Settings) -> httpx.Response:
    """One signed POST (Standard Webhooks headers)."""
    now = datetime.now(tz=UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
    }
    return httpx.post(url, content=body, headers=headers, timeout=settings.callback_timeout_s)


# ---------------------------------------------------------------------------------------------------- starting


def send_callback(ident: str, countdown: float = 0.0, event: str = "finished", attempt: int | None = None) -> None:
    """Deliver an event's callback (``tasks.track.callback``) after ``countdown`` seconds; ``attempt`` numbers
    the message, so a copy of it (a broker redelivery) cannot make a second attempt and a second retry."""
    app.send_task(CALLBACK_TASK, args=(ident, event, attempt), countdown=countdown, queue=TRACK)


def job_events(job: Mapping[str, Any]) -> Sequence[str]:
    """The events a job calls back (none without a callback_url)."""
    meta = job.get("meta") or {}
    if not meta.get("callback_url"):
        return ()
    return tuple(meta.get("callback_events") or DEFAULT_EVENTS)


def start_callback(job: Mapping[str, Any], rt: Runtime) -> None:
    """From the finishing step: send the first delivery once per job (a finishing step that runs again, or a
    reconciled review, does not deliver twice)."""
    job_id = str(job["job_id"])
    if "finished" not in job_events(job) or not rt.ledger.set_once(job_id, "callback_started", repr(time.time())):
        return
    rt.ledger.update(job_id, {"callback": "retrying", "callback_attempts": 0})
    if job.get("batch_id"):
        rt.ledger.batch_count(str(job["batch_id"]), "callbacks:asked")
    send_callback(job_id, attempt=1)


def job_started(job_id: str, meta: Mapping[str, Any] | None, rt: Runtime) -> None:
    """The upstream accepted the job: ``job.started``, once, if the job asked for it (never fails the job)."""
    if "started" not in job_events({"meta": meta}):
        return
    f = _fields("started")
    try:
        if rt.ledger.set_once(job_id, f.since, repr(time.time())):
            rt.ledger.update(job_id, {f.state: "retrying", f.attempts: 0})
            send_callback(job_id, event="started", attempt=1)
    except Exception:  # the job was accepted; a callback that cannot start must not undo that
        log.exception("job %s: its started callback could not be sent", job_id)


def job_progress(job: Mapping[str, Any], progress: object, rt: Runtime) -> None:
    """The job's progress changed (a poll or webhook): ``job.progress`` if it asked, at most one per interval
    (``cbpace:<job>``; never fails the job)."""
    if not progress or "progress" not in job_events(job) or str(progress) == "100%":
        return  # 100%: the end is its own event
    job_id = str(job["job_id"])
    if str(progress) == str(job.get("cb_progress_sent") or ""):
        return
    pace_ms = max(1, int(rt.settings.callback_progress_interval_s * 1000))
    try:
        if rt.redis.set(keys.callback_pace(job_id), "1", nx=True, px=pace_ms):
            rt.ledger.update(job_id, {"cb_progress_sent": str(progress)})
            send_callback(job_id, event="progress")
    except Exception:  # progress is a courtesy; tracking the job goes on
        log.exception("job %s: its progress callback could not be sent", job_id)


def start_batch_callback(batch_id: str, info: Mapping[str, Any], rt: Runtime) -> None:
    """The batch finished: ``batch.finished`` with its summary, exactly once per batch."""
    if not (info.get("meta") or {}).get("callback_url"):
        return
    f = _fields(BATCH_EVENT)
    if rt.ledger.batch_set_once(batch_id, f.since, repr(time.time())):
        rt.ledger.update_batch(batch_id, {f.state: "retrying", f.attempts: 0})
        send_callback(batch_id, event=BATCH_EVENT, attempt=1)


# ---------------------------------------------------------------------------------------------------- delivery


def retry_delay(attempts: int, settings: Settings) -> float:
    """Exponential: the initial delay doubled after each failed attempt, capped."""
    grown = settings.callback_retry_initial_s * 2 ** max(0, attempts - 1)
    return float(min(settings.callback_retry_max_delay_s, grown))


def _record(ident: str, event: str, rt: Runtime) -> dict[str, Any] | None:
    if event == BATCH_EVENT:
        return rt.ledger.batch(ident) or None
    return rt.ledger.get_job(ident)


def _body(ident: str, event: str, record: Mapping[str, Any], rt: Runtime) -> tuple[str, str]:
    """(webhook-id, JSON body) of an event; the id is stable across the attempts of one event."""
    if event == BATCH_EVENT:
        msg_id, kind, data = f"msg_batch_{ident}", BATCH_EVENT, batch_summary(ident, record, rt)
    else:
        msg_id = f"msg_{ident}" if event == "finished" else f"msg_{ident}_{event}"
        if event == "progress":
            msg_id += f"_{str(record.get('cb_progress_sent') or '').rstrip('%')}"
        kind, data = f"job.{event}", rt.ledger.job_result(ident)
    stamp = datetime.now(tz=UTC).isoformat()
    return msg_id, json.dumps({"type": kind, "timestamp": stamp, "data": data}, default=str)


def _save(ident: str, event: str, fields: Mapping[str, Any], rt: Runtime) -> None:
    if event == BATCH_EVENT:
        rt.ledger.update_batch(ident, fields)
    else:
        rt.ledger.update(ident, fields)


def deliver(ident: str, rt: Runtime, event: str = "finished", attempt: int | None = None) -> str:
    """One delivery attempt of a job's (or batch's) event; schedules the next on failure. Returns the state.

    ``attempt`` (the message's number) is claimed once (``cbtry:<ident>:<event>:<n>``): a countdown longer than
    the visibility timeout makes the broker deliver the message twice, and two copies that both failed would
    each schedule a retry, doubling at every step. A progress event (one attempt, no retry) carries none."""
    if attempt is not None:
        ttl = int(rt.settings.callback_retry_max_delay_s * 4 + 3600)
        if not rt.redis.set(keys.callback_try(f"{ident}:{event}:{attempt}"), "1", nx=True, ex=ttl):
            return "retrying"  # a copy of an attempt already made
    record = _record(ident, event, rt)
    if record is None:
        return "gave up"
    f = _fields(event)
    if event != "progress" and record.get(f.state) in FINAL:
        return str(record[f.state])
    if event == "progress" and record.get("status") in TERMINAL:
        return "gave up"  # superseded by the end
    settings = rt.settings
    meta = record.get("meta") or {}
    url = str(meta.get("callback_url") or "")
    attempts = int(record.get(f.attempts) or 0) + 1
    error = ""
    try:
        signer = meta.get("callback_signer")
        check_callback_url(url, settings, signed=bool(signer))
        msg_id, body = _body(ident, event, record, rt)
        answer = signed_post(url, msg_id, body, signing_secret(signer, settings), settings)
        if 200 <= answer.status_code < 300:
            _save(ident, event, {f.state: "delivered", f.attempts: attempts, f.at: repr(time.time())}, rt)
            _count_end(record, event, "delivered", rt)
            return "delivered"
        error = f"HTTP {answer.status_code}"
    except InvalidInput as exc:
        error = str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    started = float(record.get(f.since) or time.time())
    delay = retry_delay(attempts, settings)
    retry = event != "progress" and time.time() + delay - started <= settings.callback_retry_s
    state = "retrying" if retry else "gave up"
    _save(ident, event, {f.state: state, f.attempts: attempts, f.error: error[:300]}, rt)
    log.info("%s callback of %s attempt %d failed (%s): %s", event, ident, attempts, error, state)
    if retry:
        send_callback(ident, delay, event, attempts + 1)
    else:
        _count_end(record, event, state, rt)
    return state


def _count_end(record: Mapping[str, Any], event: str, state: str, rt: Runtime) -> None:
    """A batch counts its jobs' end callbacks by final state (``mjq status`` reads counts, not 10,000 jobs)."""
    if event == "finished" and record.get("batch_id"):
        rt.ledger.batch_count(str(record["batch_id"]), f"callbacks:{state}")
