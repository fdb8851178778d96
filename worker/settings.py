"""One typed configuration object for every mjqueue process.

Everything comes from the environment (prefix ``MJQ_``) or a ``.env`` file, is checked once at start-up, and
fails with a message that names the variable.  Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]


class AuthHeader(StrEnum):
    """How the API key is sent: aggregators want a bearer token, self-hosted proxies ``mj-api-secret``."""

    BEARER = "bearer"
    MJ_API_SECRET = "mj-api-secret"


class Dialect(StrEnum):
    """Which reading of result codes 23/24/25 applies (see ``mj-proxy-api.md``)."""

    VENDOR = "vendor"
    PROXY = "proxy"


class Settings(BaseSettings):
    """All settings of mjqueue; each field is the variable ``MJQ_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="MJQ_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # Upstream API
    api_base_url: str = Field(
        "http://127.0.0.1:8787", description="Base URL of the Midjourney Proxy API (without /mj)."
    )
    api_key: SecretStr = Field(SecretStr(""), description="API key sent to the upstream; never logged.")
    api_auth_header: AuthHeader = Field(AuthHeader.BEARER, description="bearer | mj-api-secret")
    api_dialect: Dialect = Field(Dialect.PROXY, description="vendor | proxy: how codes 23/24/25 are read.")
    api_path_prefix: str = Field("", description="Optional speed prefix some aggregators use, e.g. /mj-fast.")
    http_timeout_s: PositiveSeconds = Field(30.0, description="Read timeout of one upstream request.")
    http_connect_timeout_s: PositiveSeconds = Field(10.0, description="Connect timeout of one request.")

    # Redis (broker, result backend and ledger)
    redis_url: str | None = Field(
        None, description="Redis URL; unset means `mjq up` starts the embedded Valkey server."
    )

    # Webhooks
    webhook_base_url: str | None = Field(
        None, description="Public base URL of our webhook server; unset means polling only."
    )
    webhook_secret: SecretStr = Field(
        SecretStr("change-me-webhook-secret"), description="Secret for per-job webhook tokens (HMAC)."
    )
    webhook_host: str = Field("127.0.0.1", description="Address the webhook server binds to.")
    webhook_port: int = Field(8788, ge=1, le=65535, description="Port the webhook server binds to.")
    webhook_max_body_bytes: int = Field(1_048_576, gt=0, description="Largest callback body accepted.")

    # Admission: upstream slots per speed mode, pacing
    slots_fast: int = Field(3, ge=0, description="Jobs the upstream account runs at once in fast mode.")
    slots_relax: int = Field(3, ge=0, description="Jobs at once in relax mode.")
    slots_turbo: int = Field(3, ge=0, description="Jobs at once in turbo mode.")
    slot_lease_s: PositiveSeconds = Field(
        300.0, description="A slot lease not renewed for this long is reclaimed (crashed worker)."
    )
    submit_interval_s: NonNegativeSeconds = Field(
        0.0, description="Minimum gap between two submits across the cluster (0 = no pacing)."
    )
    daily_cap: int = Field(0, ge=0, description="Most submits per UTC day (0 = no cap).")

    # Tracking: backoff polling and deadlines
    poll_initial_s: PositiveSeconds = Field(5.0, description="First poll delay after submit.")
    poll_factor: float = Field(1.5, ge=1.0, description="Each poll delay is the previous times this.")
    poll_max_s: PositiveSeconds = Field(30.0, description="Cap of the poll delay.")
    poll_jitter: float = Field(0.2, ge=0.0, le=1.0, description="Relative jitter on each poll delay.")
    webhook_poll_s: PositiveSeconds = Field(
        60.0, description="Safety-net poll delay when webhooks are on (first poll after expected duration)."
    )
    expected_fast_s: PositiveSeconds = Field(60.0, description="Typical duration of a fast job.")
    expected_relax_s: PositiveSeconds = Field(300.0, description="Typical duration of a relax job.")
    expected_turbo_s: PositiveSeconds = Field(30.0, description="Typical duration of a turbo job.")
    job_deadline_s: PositiveSeconds = Field(
        900.0, description="A fast/turbo job not finished this long after submit is timed out."
    )
    job_deadline_relax_s: PositiveSeconds = Field(3600.0, description="Deadline of a relax job.")
    submit_retry_max_s: PositiveSeconds = Field(60.0, description="Cap of the retry delay after queue full/429/5xx.")

    # Storage
    media_dir: Path = Field(Path("media"), description="Where downloaded images are written.")
    download_images: bool = Field(True, description="Download each final image (CDN links expire).")
    state_dir: Path = Field(Path(".mjq"), description="State of `mjq up`: embedded Redis data, logs.")
    image_ttl_s: PositiveSeconds = Field(86_400.0, description="TTL of input images kept in Redis by hash.")

    # Worker internals
    submit_max_attempts: int = Field(
        8,
        ge=1,
        description="Failed submit attempts (429 / 5xx / not sent) before a job fails; busy answers (queue full,"
        " system error) do not count, they give up after the job deadline.",
    )
    housekeeping_interval_s: PositiveSeconds = Field(
        1.0, description="Beat period of housekeeping: admit parked jobs, reclaim leases, find overdue polls."
    )
    poll_batch_size: int = Field(
        100, ge=1, le=500, description="Most due jobs one poll fetches together with list-by-condition."
    )
    download_attempts: int = Field(3, ge=1, description="Tries to download a final image before giving up.")
    finish_stale_s: PositiveSeconds = Field(
        60.0,
        description=(
            "A terminal job whose finishing step (download, result, continuation) has not completed after "
            "this long gets it sent again by housekeeping (its message was lost in a crash)."
        ),
    )
    visibility_timeout_s: NonNegativeSeconds = Field(
        0.0,
        description=(
            "Seconds before an unacknowledged broker message (its worker was killed) is delivered again; "
            "0 = automatic (max(3600, 4 x the longest countdown)). Must exceed every countdown in use."
        ),
    )

    # Flower
    flower_port: int = Field(5555, ge=1, le=65535, description="Port of Flower in `mjq up`.")

    @field_validator("api_base_url", "webhook_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None if value == "" else value
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("api_path_prefix")
    @classmethod
    def _path_prefix(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _poll_bounds(self) -> Settings:
        if self.poll_max_s < self.poll_initial_s:
            raise ValueError("MJQ_POLL_MAX_S must be >= MJQ_POLL_INITIAL_S")
        return self

    def slots_for(self, mode: str) -> int:
        """Upstream slots for a speed mode (fast | relax | turbo)."""
        return int(getattr(self, f"slots_{mode.lower()}"))

    def expected_duration_s(self, mode: str) -> float:
        return float(getattr(self, f"expected_{mode.lower()}_s"))

    def deadline_s(self, mode: str) -> float:
        return self.job_deadline_relax_s if mode.lower() == "relax" else self.job_deadline_s

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL in use: the configured one, or the default local port of the embedded server."""
        return self.redis_url or "redis://127.0.0.1:6390/0"


class SettingsError(RuntimeError):
    """Invalid configuration, with one line per bad variable."""


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part != "__root__"]
        name = "MJQ_" + loc[0].upper() if loc else "settings"
        lines.append(f"{name}: {err.get('msg', 'invalid')}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings() -> Settings:
    """Build settings from the environment, turning pydantic's report into one readable error."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call ``get_settings.cache_clear()`` after changing env)."""
    return load_settings()
