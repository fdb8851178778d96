"""What settings each live worker runs with (``keys.WORKERS``), so ``mjq resume`` can say when they differ.

A worker reports at start and with its event heartbeat (at most every ``REPORT_EVERY_S``); a report older
than ``STALE_S`` is a worker gone. Values are ``Settings.fingerprint()``: short hashes, never a secret.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

import redis

from worker.store import keys

REPORT_EVERY_S = 10.0
STALE_S = 60.0


def report(client: redis.Redis, hostname: str, fingerprint: Mapping[str, str], now: float | None = None) -> None:
    client.hset(keys.WORKERS, hostname, json.dumps({"at": now or time.time(), "settings": dict(fingerprint)}))


def forget(client: redis.Redis, hostname: str) -> None:
    client.hdel(keys.WORKERS, hostname)


def live(client: redis.Redis, now: float | None = None) -> dict[str, dict[str, str]]:
    """Hostname -> fingerprint of the workers that reported within ``STALE_S`` (stale reports are dropped)."""
    now = now or time.time()
    out: dict[str, dict[str, str]] = {}
    stale: list[str] = []
    for host, raw in cast(dict[str, str], client.hgetall(keys.WORKERS)).items():
        entry: dict[str, Any] = json.loads(raw)
        if now - float(entry.get("at") or 0) > STALE_S:
            stale.append(host)
        else:
            out[host] = dict(entry.get("settings") or {})
    if stale:
        client.hdel(keys.WORKERS, *stale)
    return out


def differing(mine: Mapping[str, str], theirs: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """Hostname -> names of the settings whose hash differs from ``mine`` (only the workers that differ)."""
    out: dict[str, list[str]] = {}
    for host, values in theirs.items():
        names = sorted(n for n in set(mine) | set(values) if mine.get(n) != values.get(n))
        if names:
            out[host] = names
    return out
