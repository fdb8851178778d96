"""How every process reaches Redis: a plain URL, or a set of Sentinels that name the current primary.

``MJQ_REDIS_URL`` takes Celery's Sentinel form (``sentinel://[:password@]host:port;sentinel://host:port/db``), so
the broker, the result backend, the ledger and the slots all follow the same primary through a failover: kombu
and Celery get ``master_name`` in their transport options, our own clients a redis-py ``Sentinel`` pool, which
asks the Sentinels again whenever a connection to the old primary fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from worker.settings import Settings

SOCKET_TIMEOUT_S = 5.0  # a dead primary must not hang a task: the pool then asks the Sentinels again


@dataclass(frozen=True)
class SentinelTarget:
    """The parsed ``sentinel://`` URL: where the Sentinels are, which database, the primary's credentials."""

    hosts: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``sentinel://:pw@h1:26379;sentinel://h2:26380/0`` -> hosts, db 0 and the password of the primary."""
    hosts: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ValueError(f"not a sentinel://host:port URL: {part.strip()!r}")
        hosts.append((parts.hostname, parts.port or 26379))
        username = unquote(parts.username) if parts.username else username
        password = unquote(parts.password) if parts.password else password
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
    return SentinelTarget(hosts, db, username, password)


def redis_client(settings: Settings, *, decode_responses: bool = True) -> redis.Redis:
    """A client of the configured Redis; with Sentinels, of whichever server is primary at each connection."""
    url = settings.effective_redis_url
    if not is_sentinel(url):
        return redis.Redis.from_url(url, decode_responses=decode_responses)
    target = parse_sentinel_url(url)
    sentinel_password = settings.redis_sentinel_password.get_secret_value() or None
    # Any: redis-py types Sentinel from 8.2 on, not before (a ``type: ignore`` is wrong for one or the other)
    sentinel_class: Any = Sentinel
    sentinels = sentinel_class(
        target.hosts,
        sentinel_kwargs={"password": sentinel_password, "socket_timeout": SOCKET_TIMEOUT_S},
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
    )
    client: redis.Redis = sentinels.master_for(
        settings.redis_sentinel_master,
        db=target.db,
        username=target.username,
        password=target.password,
        decode_responses=decode_responses,
    )
    return client


def celery_transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu's and Celery's Sentinel support needs beyond the URL (nothing for a plain Redis)."""
    if not is_sentinel(settings.effective_redis_url):
        return {}
    options: dict[str, Any] = {"master_name": settings.redis_sentinel_master}
    password = settings.redis_sentinel_password.get_secret_value()
    if password:
        options["sentinel_kwargs"] = {"password": password}
    return options
