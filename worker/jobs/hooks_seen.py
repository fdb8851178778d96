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


def learning(rt: Runtime) -> bool:
    """Webhooks are on and the profile does not already say "no callbacks" (new-api polls from the start)."""
    settings = rt.settings
    return bool(settings.webhook_base_url) and PROFILES[settings.api_profile_name].callbacks is not False


def callbacks_missing(rt: Runtime) -> bool:
    """The upstream was found sending no callbacks (asked only when webhooks are on: one Redis read)."""
    return learning(rt) and rt.observed.callbacks_missing()


def finished_by_poll(job: Mapping[str, Any], rt: Runtime) -> None:
    """A poll won the terminal step of a job that gave the upstream its notifyHook."""
    kind = KINDS.get(str(job.get("kind") or ""), KINDS["imagine"])
    if not kind.hooked or not learning(rt):
        return
    if rt.observed.finished_by_poll():
        log.warning(
            "no callback from the upstream %s after %d jobs finished by polling while webhooks are on: it drops"
            " notifyHook (a relay such as new-api?); switching to the polling schedule (first poll at the"
            " expected duration). A callback switches back; MJQ_API_PROFILE=newapi says so from the start.",
            rt.settings.api_base_url,
            rt.settings.callbacks_missing_after,
        )


def callback_arrived(rt: Runtime) -> None:
    """A callback with a valid token came from the upstream."""
    if rt.observed.callback_seen():
        log.warning(
            "callbacks arrive again from the upstream %s: back to the webhook schedule", rt.settings.api_base_url
        )
