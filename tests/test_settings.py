from __future__ import annotations

import pytest

from worker.settings import Settings, SettingsError, load_settings


def test_defaults_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MJQ_API_KEY", raising=False)
    settings = Settings(_env_file=None)
    assert settings.api_auth_header == "bearer"
    assert settings.slots_for("FAST") == settings.slots_fast


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MJQ_SLOTS_FAST", "-1")
    monkeypatch.setenv("MJQ_API_DIALECT", "martian")
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert "MJQ_SLOTS_FAST" in text
    assert "MJQ_API_DIALECT" in text


def test_api_key_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MJQ_API_KEY", "sk-very-secret-123")
    settings = load_settings()
    assert "sk-very-secret-123" not in repr(settings)
    assert "sk-very-secret-123" not in str(settings.model_dump())
    assert settings.api_key.get_secret_value() == "sk-very-secret-123"


def test_poll_bounds_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MJQ_POLL_INITIAL_S", "10")
    monkeypatch.setenv("MJQ_POLL_MAX_S", "5")
    with pytest.raises(SettingsError, match="MJQ_POLL_MAX_S"):
        load_settings()


def test_redis_round_trip(redis_client) -> None:  # type: ignore[no-untyped-def]
    redis_client.set("k", "v")
    assert redis_client.get("k") == "v"
