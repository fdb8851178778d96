"""Does the upstream send callbacks? Learnt from the jobs themselves, for relays that drop ``notifyHook``.

With webhooks on, a job's first poll waits for its expected duration plus ``MJQ_WEBHOOK_POLL_S``: callbacks
should have settled it by then. A relay such as new-api deletes the hook, so every job waits for that late
poll. After ``MJQ_CALLBACKS_MISSING_AFTER`` jobs were finished by a poll while no callback ever came, the
upstream goes on the polling schedule (``worker.jobs.tracking``: first poll at the expected duration, then the
backoff), said once in the log; ``mjq config`` and ``mjq doctor`` show it. One callback puts it back.
The state is in Redis (``worker.store.observed``), shared by every worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from worker.jobs.kinds import KINDS
from worker.mjapi.profiles import PROFILES
from worker.store.runtime import Runtime

log = logging.getLogger("mjqueue.tracking")


def learning(rt: Runtime, upstream: str | None = None) -> bool:
    """Webhooks are on and the upstream's profile does not already say "no callbacks" (new-api polls from the
    start)."""
    up = rt.upstream(upstream)
    return bool(rt.settings.webhook_base_url) and up.webhooks and PROFILES[up.profile].callbacks is not False


def callbacks_missing(rt: Runtime, upstream: str | None = None) -> bool:
    """The upstream sends no callbacks: ``webhooks = false`` in the pool file, or found so (asked only when
    webhooks are on: one Redis read)."""
    up = rt.upstream(upstream)
    if rt.settings.webhook_base_url and (not up.webhooks or PROFILES[up.profile].callbacks is False):
        return True
    return learning(rt, upstream) and rt.observed_for(upstream).callbacks_missing()


def finished_by_poll(job: Mapping[str, Any], rt: Runtime) -> None:
    """A poll won the terminal step of a job that gave the upstream its notifyHook."""
    kind = KINDS.get(str(job.get("kind") or ""), KINDS["imagine"])
    upstream = str(job.get("upstream") or "") or None
    if not kind.hooked or not learning(rt, upstream):
        return
    if rt.observed_for(upstream).finished_by_poll():
        log.warning(
            "no callback from the upstream %s after %d jobs finished by polling while webhooks are on: it drops"
            " notifyHook (a relay such as new-api?); switching to the polling schedule (first poll at the"
            " expected duration). A callback switches back; MJQ_API_PROFILE=newapi says so from the start.",
            rt.upstream(upstream).base_url,
            rt.settings.callbacks_missing_after,
        )


def callback_arrived(rt: Runtime, job_id: str) -> None:
    """A callback with a valid token came for this job: its upstream sends callbacks."""
    upstream = str((rt.ledger.get_job(job_id) or {}).get("upstream") or "") or None
    if rt.observed_for(upstream).callback_seen():
        log.warning(
            "callbacks arrive again from the upstream %s: back to the webhook schedule", rt.upstream(upstream).base_url
        )
