"""What the upstream's own behaviour taught us, kept in Redis for the whole cluster (``keys.observed``).

Two things no setting can know in advance:

- **Callbacks.** A relay such as new-api deletes ``notifyHook``: with webhooks on, every job then waits for
  the late safety-net poll. After ``MJQ_CALLBACKS_MISSING_AFTER`` jobs finished by polling while no callback
  ever came, the upstream is put on the polling schedule (``missing_at``); one callback puts it back.
- **Recent 429s.** trueai answers 403 with an empty body for some minutes after too many 429s: that 403 is
  a temporary block only when a 429 came shortly before it (the client asks ``had_429_within``).

The state is per upstream (a short hash of its base URL), so pointing mjqueue elsewhere starts afresh.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, cast

import redis

from worker.store import keys


def upstream_key(base_url: str) -> str:
    """The Redis key of one upstream's observations."""
    return keys.observed(hashlib.sha256(base_url.rstrip("/").encode()).hexdigest()[:12])


class Observed:
    """One upstream's observations; every method is one or two Redis commands, safe from any thread."""

    def __init__(self, client: redis.Redis, base_url: str, missing_after: int) -> None:
        self.redis = client
        self.key = upstream_key(base_url)
        self.missing_after = missing_after

    # -- callbacks ------------------------------------------------------------------------------------

    def callback_seen(self) -> bool:
        """A callback came (its token checked): True when this ends the polling schedule set before."""
        pipe = self.redis.pipeline()
        pipe.hset(self.key, "seen_at", repr(time.time()))
        pipe.hdel(self.key, "missing_at")
        pipe.hdel(self.key, "polled")
        _, was_missing, _ = pipe.execute()
        return bool(was_missing)

    def finished_by_poll(self) -> bool:
        """A job with webhooks on was finished by a poll: True when this call switched the upstream to the
        polling schedule (the N-th such job while no callback was ever seen)."""
        if self.missing_after <= 0 or self.redis.hexists(self.key, "seen_at"):
            return False
        polled = int(self.redis.hincrby(self.key, "polled", 1))
        if polled < self.missing_after:
            return False
        return bool(self.redis.hsetnx(self.key, "missing_at", repr(time.time())))

    def callbacks_missing(self) -> bool:
        """The upstream is on the polling schedule (no callbacks from it)."""
        return bool(self.redis.hexists(self.key, "missing_at"))

    # -- rate limits ----------------------------------------------------------------------------------

    def note_429(self) -> None:
        self.redis.hset(self.key, "last_429_at", repr(time.time()))

    def had_429_within(self, seconds: float) -> bool:
        raw = self.redis.hget(self.key, "last_429_at")
        return raw is not None and time.time() - float(cast(str, raw)) <= seconds

    def state(self) -> dict[str, Any]:
        """Everything known, for ``mjq config`` / ``mjq doctor`` (times as epoch seconds or None)."""
        raw = cast(dict[str, str], self.redis.hgetall(self.key))

        def when(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) else None

        return {
            "callbacks_seen_at": when("seen_at"),
            "finished_by_poll": int(raw.get("polled") or 0),
            "callbacks_missing_since": when("missing_at"),
            "last_429_at": when("last_429_at"),
        }
