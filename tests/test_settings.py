from __future__ import annotations

from pathlib import Path

import pytest

from worker.settings import Settings, SettingsError, dev_webhook_secret, load_settings, webhook_secret_problem


def test_defaults_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MJQ_API_KEY", raising=False)
    settings = Settings(_env_file=None)
    assert settings.api_auth_header == "mj-api-secret"  # accepted by every real server
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


def test_a_public_webhook_url_needs_a_real_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MJQ_WEBHOOK_BASE_URL", "https://hooks.example.com")
    for secret in ("", "short-secret", "change-me-webhook-secret", "change-me-to-a-long-random-string"):
        monkeypatch.setenv("MJQ_WEBHOOK_SECRET", secret)
        with pytest.raises(SettingsError, match="MJQ_WEBHOOK_SECRET"):
            load_settings()
    monkeypatch.setenv("MJQ_WEBHOOK_SECRET", "Zr8pX2vK7qL0wN4s")  # 16 random characters
    assert load_settings().webhook_base_url == "https://hooks.example.com"
    monkeypatch.delenv("MJQ_WEBHOOK_BASE_URL")
    monkeypatch.delenv("MJQ_WEBHOOK_SECRET")
    assert load_settings().webhook_secret.get_secret_value() == ""  # polling only: no secret needed


def test_the_dev_stack_makes_one_secret_per_state_dir(tmp_path: Path) -> None:
    secret = dev_webhook_secret(tmp_path)
    assert webhook_secret_problem(secret) is None
    assert dev_webhook_secret(tmp_path) == secret
    assert dev_webhook_secret(tmp_path / "other") != secret
    assert (tmp_path / "webhook-secret").stat().st_mode & 0o077 == 0  # readable by its owner only


def test_visibility_timeout_must_exceed_every_countdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MJQ_VISIBILITY_TIMEOUT_S", "30")
    with pytest.raises(SettingsError, match=r"MJQ_VISIBILITY_TIMEOUT_S .*first poll \(MJQ_EXPECTED_\*_S\)"):
        load_settings()  # a relax job's first poll comes after 300 s (+ jitter)
    monkeypatch.setenv("MJQ_VISIBILITY_TIMEOUT_S", "400")
    monkeypatch.setenv("MJQ_SUBMIT_RETRY_MAX_S", "500")
    with pytest.raises(SettingsError, match=r"MJQ_VISIBILITY_TIMEOUT_S .*submit retry"):
        load_settings()
    monkeypatch.setenv("MJQ_SUBMIT_RETRY_MAX_S", "60")
    settings = load_settings()
    assert settings.visibility_timeout_s > max(settings.countdowns().values())
    monkeypatch.setenv("MJQ_VISIBILITY_TIMEOUT_S", "0")  # automatic: always above them
    assert load_settings().visibility_timeout_s == 0


def test_each_speed_mode_has_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MJQ_JOB_DEADLINE_S", "100")
    monkeypatch.setenv("MJQ_JOB_DEADLINE_RELAX_S", "200")
    monkeypatch.setenv("MJQ_JOB_DEADLINE_TURBO_S", "50")
    settings = load_settings()
    assert [settings.deadline_s(m) for m in ("fast", "RELAX", "turbo")] == [100.0, 200.0, 50.0]
