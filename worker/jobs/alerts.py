"""Alerts to the operator through Apprise (``MJQ_ALERT_URLS``): submitting stopped (an upstream's breaker tripped,
and why; every upstream of a mode stopped), a batch finished (with its counts and spend), a failure rate over
``MJQ_ALERT_FAILURE_RATE`` in the last hour, a budget reached (a batch's budget or ``MJQ_BUDGET_DAILY`` held a job).

Each alert is sent once per cause (a Redis ``SET NX`` on ``alert:<cause>``), not once per job: one breaker trip,
one batch, one clock hour of failures, one budget value of a batch (raised and reached again: told again), one
UTC day of the daily budget. The Lua gates that hold a job for its budget note the batch in ``budget_hits``;
whoever admits jobs next takes the notes (``budget_reached``). Sending is its own task (``tasks.track.alert``,
sent by name), so a slow notification service never delays a job; the task carries only the title and text,
the URLs (which hold tokens) are read from the settings by the worker that sends.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any, cast

import apprise

from worker.app import ALERT_TASK, TRACK, app
from worker.pricing import fmt_money
from worker.reports.money import batch_summary, summary_line
from worker.settings import Settings
from worker.store import keys
from worker.store.runtime import Runtime

log = logging.getLogger("mjqueue.alerts")

ONCE_S = 7 * 86_400
BUCKET_S = 300  # the last hour is read as twelve 5-minute buckets plus the current one
FAILED = ("failed", "timed_out", "needs_review")


def alert_urls(settings: Settings) -> list[str]:
    return [u for u in re.split(r"[\s,]+", settings.alert_urls.get_secret_value()) if u]


def raise_alert(cause: str, title: str, body: str, rt: Runtime) -> bool:
    """Send an alert unless one was sent for ``cause``; True when this call sent it."""
    if not alert_urls(rt.settings):
        return False
    if not rt.redis.set(keys.alert(cause), repr(time.time()), nx=True, ex=ONCE_S):
        return False
    app.send_task(ALERT_TASK, args=(title, body), queue=TRACK)
    return True


def notify(title: str, body: str, settings: Settings) -> bool:
    """The body of ``tasks.track.alert``: one Apprise notification to every configured URL."""
    sender = apprise.Apprise()
    for url in alert_urls(settings):
        if not sender.add(url):
            log.warning("an MJQ_ALERT_URLS entry is not a URL Apprise knows (scheme %r)", url.split(":", 1)[0])
    sent = bool(sender.notify(title=title, body=body))
    if not sent:
        log.warning("alert %r could not be delivered to every URL", title)
    return sent


def breaker_tripped(reason: str, rt: Runtime, upstream: str = keys.DEFAULT_UPSTREAM) -> None:
    """From the submit step, when this call tripped an upstream's breaker: that upstream stopped, and why; and
    once every upstream serving a mode is stopped, that the mode's jobs wait for a person (or the clock)."""
    at = (rt.ledger.breaker(upstream) or {}).get("at") or time.time()
    if len(rt.pool.upstreams) == 1:
        raise_alert(f"breaker:{at}", "mjqueue: submitting stopped", f"The upstream stopped us: {reason}", rt)
        return
    raise_alert(f"breaker:{upstream}:{at}", f"mjqueue: upstream {upstream} stopped",
                f"Submitting to {upstream} stopped: {reason}. The other upstreams go on.", rt)
    for mode in rt.pool.by_name[upstream].modes if upstream in rt.pool.by_name else ():
        serving = rt.pool.serving(mode)
        stops = {u.name: rt.ledger.breaker(u.name) for u in serving}
        if all(stop.get("tripped") for stop in stops.values()):
            why = "; ".join(f"{name}: {stop.get('reason')}" for name, stop in stops.items())
            latest = max(float(stop.get("at") or 0) for stop in stops.values())
            raise_alert(f"mode:{mode}:{latest}", f"mjqueue: every {mode} upstream stopped",
                        f"No upstream can take {mode} jobs: they wait. {why}", rt)


def count_outcome(job: Mapping[str, Any], rt: Runtime, now: float) -> None:
    """Every ended job counts in its 5-minute bucket, per upstream too (``mjq upstreams``: the last hour)."""
    status = str(job.get("status"))
    bucket = keys.outcomes(str(int(now // BUCKET_S)))
    upstream = str(job.get("upstream") or job.get("upstream_pin") or keys.DEFAULT_UPSTREAM)
    pipe = rt.redis.pipeline()
    pipe.hincrby(bucket, "ended", 1)
    if status in FAILED:
        pipe.hincrby(bucket, "failed", 1)
        pipe.hincrby(bucket, f"failed:{upstream}", 1)
    elif status == "succeeded":
        pipe.hincrby(bucket, f"ok:{upstream}", 1)
    pipe.expire(bucket, 2 * 3600)
    pipe.execute()


def last_hour_outcomes(rt: Runtime, now: float | None = None) -> dict[str, dict[str, int]]:
    """Per upstream: jobs succeeded (``ok``) and failed in the last hour (twelve buckets and the current one)."""
    now = time.time() if now is None else now
    bucket = int(now // BUCKET_S)
    pipe = rt.redis.pipeline()
    for b in range(bucket - 12, bucket + 1):
        pipe.hgetall(keys.outcomes(str(b)))
    out: dict[str, dict[str, int]] = {}
    for raw in cast(list[dict[str, str]], pipe.execute()):
        for name, value in raw.items():
            what, sep, upstream = name.partition(":")
            if sep:
                counts = out.setdefault(upstream, {"ok": 0, "failed": 0})
                counts[what] = counts.get(what, 0) + int(value)
    return out


def job_finished(job: Mapping[str, Any], rt: Runtime) -> None:
    """From the finishing step: count the outcome (per upstream too); alert a failure rate over the threshold."""
    now = time.time()
    count_outcome(job, rt, now)
    if not alert_urls(rt.settings):
        return
    status = str(job.get("status"))
    bucket = int(now // BUCKET_S)
    if status in FAILED:
        _failure_rate(bucket, now, rt)


def batch_finished(batch_id: str, info: Mapping[str, Any], rt: Runtime) -> None:
    """From the finishing step of a batch's last job: the batch finished, with its counts and spend."""
    if alert_urls(rt.settings):
        text = summary_line(batch_summary(batch_id, info, rt))
        raise_alert(f"batch:{batch_id}", f"mjqueue: batch {batch_id} finished", text, rt)


def budget_reached(rt: Runtime) -> None:
    """Tell the budgets that held a job since the last look (noted by the Lua gates), once per cause."""
    hits = rt.ledger.budget_hits()
    if not hits or not alert_urls(rt.settings):
        return
    currency = rt.settings.currency
    for batch_id in hits:
        if batch_id == keys.DAILY_BUDGET_HIT:
            day = keys.utc_day(time.time())
            spent = fmt_money(rt.ledger.spent_today(upstreams=rt.pool.names), currency)
            raise_alert(
                f"budget_daily:{day}", "mjqueue: daily budget reached",
                f"MJQ_BUDGET_DAILY {rt.settings.budget_daily:g} {currency} is reached (spent today: {spent});"
                " jobs wait for the next UTC day or a higher MJQ_BUDGET_DAILY", rt,
            )
            continue
        info = rt.ledger.batch(batch_id)
        budget = info.get("budget_micros")
        why = info.get("hold_detail") or "budget reached"
        raise_alert(
            f"budget:{batch_id}:{budget}", f"mjqueue: batch {batch_id} reached its budget",
            f"{why}: spent {fmt_money(int(info.get('spent_micros') or 0), currency)} of"
            f" {fmt_money(int(budget) if budget is not None else None, currency)}; its next jobs are held"
            f" (`mjq budget {batch_id} AMOUNT` releases them)", rt,
        )


def _failure_rate(bucket: int, now: float, rt: Runtime) -> None:
    pipe = rt.redis.pipeline()
    for b in range(bucket - 12, bucket + 1):
        pipe.hmget(keys.outcomes(str(b)), "ended", "failed")
    ended = failed = 0
    for pair in cast(list[list[str | None]], pipe.execute()):
        ended += int(pair[0] or 0)
        failed += int(pair[1] or 0)
    settings = rt.settings
    if ended < settings.alert_failure_min_jobs or failed / ended <= settings.alert_failure_rate:
        return
    hour = time.strftime("%Y-%m-%dT%H", time.gmtime(now))
    raise_alert(
        f"failures:{hour}",
        "mjqueue: many jobs fail",
        f"{failed} of the {ended} jobs that ended in the last hour failed (over {settings.alert_failure_rate:.0%})",
        rt,
    )
