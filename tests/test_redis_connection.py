"""``MJQ_REDIS_URL`` forms: a plain URL, or Celery's Sentinel form with the monitored name (pure parsing; the
failover itself runs for real in tests/test_sentinel_failover.py)."""

from __future__ import annotations

import pytest

from worker.app import celery_config
from worker.settings import Settings, SettingsError, load_settings
from worker.store.connection import celery_transport_options, parse_sentinel_url, redis_client

URL = "sentinel://:pw@10.0.0.1:26379;sentinel://10.0.0.2:26380/2"


def test_sentinel_url_parses_hosts_db_and_the_primary_password() -> None:
    target = parse_sentinel_url(URL)
    assert target.hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert target.db == 2 and target.password == "pw" and target.username is None
    with pytest.raises(ValueError, match="not a sentinel://host:port URL"):
        parse_sentinel_url("sentinel://10.0.0.1:26379;redis://10.0.0.2:6379")


def test_sentinel_url_needs_the_monitored_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MJQ_REDIS_URL", URL)
    with pytest.raises(SettingsError, match="MJQ_REDIS_SENTINEL_MASTER is required"):
        load_settings()
    monkeypatch.setenv("MJQ_REDIS_URL", "memcached://x")
    with pytest.raises(SettingsError, match=r"MJQ_REDIS_URL.*sentinel://"):
        load_settings()


def test_celery_and_our_clients_follow_the_sentinels() -> None:
    settings = Settings(_env_file=None, redis_url=URL, redis_sentinel_master="mymaster",
                        redis_sentinel_password="spw")
    options = celery_transport_options(settings)
    assert options == {"master_name": "mymaster", "sentinel_kwargs": {"password": "spw"}}
    conf = celery_config(settings)
    assert conf["broker_url"] == URL and conf["result_backend"] == URL
    assert conf["broker_transport_options"]["master_name"] == "mymaster"
    assert conf["result_backend_transport_options"]["master_name"] == "mymaster"
    client = redis_client(settings)  # no connection yet: the pool asks the Sentinels when first used
    assert type(client.connection_pool).__name__ == "SentinelConnectionPool"
    plain = Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0")
    assert celery_transport_options(plain) == {}
    assert "master_name" not in celery_config(plain)["broker_transport_options"]
