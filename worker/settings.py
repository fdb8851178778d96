"""One typed configuration object for every mjqueue process.

Everything comes from the environment (prefix ``MJQ_``) or a ``.env`` file, is checked once at start-up, and
fails with a message that names the variable.  Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import fsspec
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.pricing import PriceError, parse_prices
from worker.upstreams.config import PoolFileError, load_pool_file

PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]


# How the API key is sent: aggregators want a bearer token, self-hosted proxies ``mj-api-secret``.
AuthHeader = Literal["bearer", "mj-api-secret"]
# Which real server the upstream is (``worker/mjapi/profiles.py``); ``auto`` works on every one.
ApiProfile = Literal["auto", "plus", "trueai", "java", "newapi", "vendor"]
# The old name of the profile choice: ``proxy`` = ``MJQ_API_PROFILE=auto``, ``vendor`` = ``vendor``.
Dialect = Literal["vendor", "proxy"]


class Settings(BaseSettings):
    """All settings of mjqueue; each field is the variable ``MJQ_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="MJQ_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # The upstream pool (README "Several accounts"): without it the MJQ_API_* upstream is the one named default
    upstreams_file: Path | None = Field(
        None,
        description="TOML file of the upstream pool, one [[upstream]] table per account, key or relay (README"
        " \"Several accounts\"); unset: the MJQ_API_* settings are one upstream named default.",
    )
    unreachable_after_s: PositiveSeconds = Field(
        60.0,
        description="An upstream that refuses connections or times out this long is marked unreachable: its submits"
        " pause (no attempt is used up) and housekeeping probes it, resuming it by itself.",
    )
    unreachable_probe_max_s: PositiveSeconds = Field(
        60.0, description="Longest gap between two probes of an unreachable upstream (the backoff's cap)."
    )

    # Upstream API
    api_base_url: str = Field(
        "http://127.0.0.1:8787", description="Base URL of the Midjourney Proxy API (without /mj)."
    )
    api_key: SecretStr = Field(SecretStr(""), description="API key sent to the upstream; never logged.")
    api_auth_header: AuthHeader = Field(
        "mj-api-secret",
        description="mj-api-secret (accepted by every server) | bearer (`Authorization: Bearer`, aggregators only).",
    )
    api_profile: ApiProfile = Field(
        "auto",
        description="auto | plus | trueai | java | newapi | vendor: which server the upstream is (README"
        " \"Real servers\"); auto reads every server's answers.",
    )
    api_dialect: Dialect | None = Field(
        None, description="Old name kept as an alias: proxy = MJQ_API_PROFILE=auto, vendor = vendor."
    )
    api_path_prefix: str = Field("", description="Optional speed prefix some aggregators use, e.g. /mj-fast.")
    api_path_fast: str = Field(
        "", description="Path prefix of fast-mode submits (e.g. /mj-fast: new-api and trueai read the mode there)."
    )
    api_path_relax: str = Field("", description="Path prefix of relax-mode submits (e.g. /mj-relax).")
    api_path_turbo: str = Field("", description="Path prefix of turbo-mode submits (e.g. /mj-turbo).")
    http_timeout_s: PositiveSeconds = Field(30.0, description="Read timeout of one upstream request.")
    http_submit_timeout_s: PositiveSeconds = Field(
        90.0, description="Read timeout of a submit that carries images (servers upload them inside the call)."
    )
    block_cooldown_s: PositiveSeconds = Field(
        300.0,
        description="After a temporary block (HTTP 403 with an empty body) submitting pauses this long, then"
        " resumes by itself.",
    )
    callbacks_missing_after: int = Field(
        5,
        ge=0,
        description="Webhooks on: after this many jobs finished by polling with no callback from the upstream,"
        " switch to the polling schedule (a relay that sends none); 0 = never.",
    )
    http_connect_timeout_s: PositiveSeconds = Field(10.0, description="Connect timeout of one request.")

    # Redis (broker, result backend and ledger)
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://, rediss://, unix://, or Sentinel: sentinel://h1:26379;sentinel://h2:26379/0);"
        " unset means `mjq up` starts the embedded Valkey server.",
    )
    redis_sentinel_master: str = Field(
        "", description="With a sentinel:// URL: the name the Sentinels monitor (required then)."
    )
    redis_sentinel_password: SecretStr = Field(
        SecretStr(""), description="With a sentinel:// URL: the Sentinels' own password, if they have one."
    )

    # Webhooks
    webhook_base_url: str | None = Field(
        None, description="Public base URL of our webhook server; unset means polling only."
    )
    webhook_secret: SecretStr = Field(
        SecretStr(""),
        description="Secret for per-job webhook tokens (HMAC); required (16+ random characters) with"
        " MJQ_WEBHOOK_BASE_URL.",
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
    queue_ahead: int = Field(
        0,
        ge=0,
        le=50,
        description="Jobs per mode submitted beyond its slots, to wait in the upstream's own queue so the account"
        " starts the next job the moment one ends (self-hosted servers queue 10; 0 = submit only into a free slot).",
    )
    submit_interval_s: NonNegativeSeconds = Field(
        0.0, description="Minimum gap between two submits across the cluster (0 = no pacing)."
    )
    submit_interval_max_s: NonNegativeSeconds = Field(
        0.0,
        description="With MJQ_SUBMIT_INTERVAL_S: each gap is random in [MJQ_SUBMIT_INTERVAL_S, this] (jittered"
        " pacing, as users of real accounts advise); 0 = a fixed gap.",
    )
    daily_cap: int = Field(0, ge=0, description="Most submits per UTC day (0 = no cap).")

    # Money: prices of the default upstream and budgets (worker.pricing; amounts in MJQ_CURRENCY)
    prices: str = Field(
        "", description='Prices per request kind, e.g. "imagine=0.1,upscale=0.05" (kinds: imagine, upscale,'
        " variation, reroll, zoom, pan, blend, describe, swap_face, modal, upload); a kind not listed is unknown.",
    )
    prices_relax: str = Field("", description="Prices in relax mode, overriding MJQ_PRICES per kind.")
    prices_turbo: str = Field("", description="Prices in turbo mode, overriding MJQ_PRICES per kind.")
    currency: str = Field("USD", min_length=1, description='Unit of the prices and budgets ("USD", "credits").')
    charges_failures: bool = Field(
        False, description="The upstream keeps the price of a job that fails after acceptance (else it is refunded)."
    )
    budget_daily: float = Field(
        0.0, ge=0, description="Most money spent per UTC day over all batches (0 = no daily budget)."
    )

    # Tracking: backoff polling and deadlines
    poll_initial_s: PositiveSeconds = Field(5.0, description="First delay of the poll backoff.")
    poll_from_expected: bool = Field(
        True,
        description="Polling only: the first poll waits for the mode's expected duration (a job is rarely done"
        " sooner; every early poll is a request), then the backoff starts. False: the backoff starts at submit.",
    )
    poll_factor: float = Field(1.5, ge=1.0, description="Each poll delay is the previous times this.")
    poll_max_s: PositiveSeconds = Field(30.0, description="Cap of the poll delay.")
    poll_jitter: float = Field(0.2, ge=0.0, le=1.0, description="Relative jitter on each poll delay.")
    webhook_poll_s: PositiveSeconds = Field(
        60.0,
        description="Webhooks on: safety-net poll period; the first poll comes this long after the expected duration.",
    )
    expected_fast_s: PositiveSeconds = Field(60.0, description="Typical duration of a fast job.")
    expected_relax_s: PositiveSeconds = Field(300.0, description="Typical duration of a relax job.")
    expected_turbo_s: PositiveSeconds = Field(30.0, description="Typical duration of a turbo job.")
    job_deadline_s: PositiveSeconds = Field(
        900.0, description="A fast job not finished this long after submit is timed out."
    )
    job_deadline_relax_s: PositiveSeconds = Field(3600.0, description="Deadline of a relax job.")
    job_deadline_turbo_s: PositiveSeconds = Field(900.0, description="Deadline of a turbo job.")
    submit_retry_max_s: PositiveSeconds = Field(60.0, description="Cap of the retry delay after queue full/429/5xx.")

    # Storage
    media_dir: Path = Field(Path("media"), description="Where downloaded images are written.")
    download_images: bool = Field(True, description="Download each final image (CDN links expire).")
    state_dir: Path = Field(Path(".mjq"), description="State of `mjq up`: embedded Redis data, logs.")
    retention_days: float = Field(
        30.0,
        ge=0,
        description="Finished batches older than this are archived and removed from Redis by housekeeping;"
        " job task results expire after it too (0 = keep everything).",
    )
    archive_url: str = Field(
        "",
        description="Where archived batches' manifests go (a folder or an fsspec URL);"
        " empty = <MJQ_STATE_DIR>/archive.",
    )
    image_ttl_s: PositiveSeconds = Field(86_400.0, description="TTL of input images kept in Redis by hash.")
    # Object storage for output images (worker/media/storage.py): the local copy is always written first
    media_url: str = Field(
        "",
        description="Where every image, thumbnail and sidecar is stored: an fsspec URL (s3://bucket/prefix with"
        " the [s3] extra, gs:// with [gcs], az:// with [azure], file:///...); empty = file:// + MJQ_MEDIA_DIR"
        " (local only).",
    )
    media_public_url: str = Field(
        "",
        description="Template of the URL services get for a stored file, with {key} its path under MJQ_MEDIA_URL"
        " (https://cdn.example.com/{key}); empty = no public URL.",
    )
    media_s3_endpoint_url: str = Field(
        "", description="S3 endpoint of a non-AWS server (MinIO, R2, Ceph...); empty = AWS."
    )
    media_s3_region: str = Field("", description="S3 region; empty = the AWS default chain.")
    media_s3_access_key_id: SecretStr = Field(
        SecretStr(""), description="S3 access key id; empty = the AWS default chain (env, ~/.aws, role). Never logged."
    )
    media_s3_secret_access_key: SecretStr = Field(
        SecretStr(""), description="S3 secret access key; never logged, never in results or errors."
    )
    media_storage_options: SecretStr = Field(
        SecretStr(""),
        description="JSON object of extra fsspec storage options for MJQ_MEDIA_URL (e.g. gs:// token, az://"
        " account_key); overrides the MJQ_MEDIA_S3_* ones. Never logged.",
    )
    upload_attempts: int = Field(
        8, ge=1, description="Tries to store a job's files at MJQ_MEDIA_URL before its upload is marked failed."
    )
    upload_retry_max_s: PositiveSeconds = Field(
        10.0, description="Cap of the delay between upload tries (0.5 s, doubling); keep the sum under"
        " MJQ_FINISH_STALE_S."
    )
    sidecars: bool = Field(False, description="Write a JSON sidecar (<image>.json) of its metadata beside each image.")
    gallery_page_size: int = Field(200, ge=1, description="Cards per page of the static gallery (`mjq gallery`).")

    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines of worker, beat, webhook and `mjq serve`: text, or json (one object a line, with"
        " job_id, batch_id, upstream, from_state, to_state, reason on job transitions) for log shippers.",
    )

    # Worker internals
    submit_max_attempts: int = Field(
        8,
        ge=1,
        description="Failed submit attempts (5xx / not sent / system error) before a job fails; busy answers"
        " (queue full, concurrency limit, saturated group, 429) do not count (MJQ_SUBMIT_BUSY_MAX_S bounds them).",
    )
    submit_busy_max_s: NonNegativeSeconds = Field(
        21_600.0,
        description="How long a job keeps retrying while the upstream answers busy before it fails (0 = no limit);"
        " nothing is spent meanwhile, and a busy night should not fail a batch.",
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

    # Our HTTP API (`mjq serve`): the service's own settings (MJQ_API_* are the upstream's)
    serve_host: str = Field("127.0.0.1", description="Address the HTTP API (`mjq serve`) binds to.")
    serve_port: int = Field(8790, ge=1, le=65535, description="Port of the HTTP API (`mjq serve`).")
    serve_keys_file: Path = Field(
        Path(".mjq/serve-keys.toml"),
        description="TOML file of the API's bearer keys (sha256 of each key, name, admin, max_priority,"
        " daily_jobs, an optional callback_secret); `mjq serve-key add NAME` writes it. Workers read it too, to"
        " sign the callbacks of a key that has its own secret.",
    )
    serve_max_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest request body the HTTP API accepts (413 above it)."
    )
    serve_page_size: int = Field(100, ge=1, le=1000, description="Jobs per page of `GET /v1/jobs`.")
    dashboard_auth: SecretStr = Field(
        SecretStr(""),
        description="user:password of HTTP basic auth for the dashboard (`mjq serve` at /), seeing every batch;"
        " empty: sign in with a service key only.",
    )
    dashboard_page_size: int = Field(
        100, ge=1, le=1000, description="Images per page of a batch's gallery on the dashboard."
    )
    # Outgoing callbacks to the producer (job option callback_url), signed as Standard Webhooks specify
    callback_secret: SecretStr = Field(
        SecretStr(""),
        description="Signing secret of outgoing callbacks, in the Standard Webhooks format (its prefix, then"
        " base64); empty: callbacks are refused.",
    )
    callback_allow_hosts: str = Field(
        "",
        description="Comma-separated hosts a callback may reach over plain http or at a private, loopback or"
        " link-local address (e.g. 127.0.0.1 for a local receiver); every other target must be public https.",
    )
    callback_retry_s: PositiveSeconds = Field(
        86_400.0, description="How long a failing callback is retried (exponential backoff) before it gives up."
    )
    callback_retry_initial_s: PositiveSeconds = Field(5.0, description="First delay before a callback is retried.")
    callback_retry_max_delay_s: PositiveSeconds = Field(300.0, description="Cap of the callback retry delay.")
    callback_timeout_s: PositiveSeconds = Field(10.0, description="Timeout of one callback delivery.")
    callback_progress_interval_s: PositiveSeconds = Field(
        30.0, description="Least time between two progress callbacks of a job (callback_events progress)."
    )
    # Alerts to the operator through Apprise
    alert_urls: SecretStr = Field(
        SecretStr(""),
        description="Apprise URLs alerts go to, separated by commas or spaces (slack://, tgram://, mailto://,"
        " ntfys://, json:// for any webhook); empty: no alerts. Never logged (they hold tokens).",
    )
    alert_failure_rate: float = Field(
        0.5, gt=0, le=1, description="Alert when more than this share of the jobs ended in the last hour failed."
    )
    alert_failure_min_jobs: int = Field(
        10, ge=1, description="Jobs ended in the last hour before the failure rate is judged at all."
    )

    @field_validator("api_base_url", "webhook_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None if value == "" else value
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("prices", "prices_relax", "prices_turbo")
    @classmethod
    def _check_prices(cls, value: str, info: ValidationInfo) -> str:
        try:
            parse_prices(value, f"MJQ_{str(info.field_name).upper()}")
        except PriceError as exc:
            raise ValueError(str(exc)) from exc
        return value

    def price_tables(self) -> dict[str, dict[str, int]]:
        """The price tables in micros: ``""`` the base table, then per mode (``worker.pricing.price_of``)."""
        return {"": parse_prices(self.prices), "relax": parse_prices(self.prices_relax),
                "turbo": parse_prices(self.prices_turbo)}

    @field_validator("media_url")
    @classmethod
    def _media_url(cls, value: str) -> str:
        """An unknown scheme or a missing backend (s3fs, gcsfs, adlfs) is a start-up error, not a failed upload."""
        if not value:
            return value
        protocol = value.split("://", 1)[0] if "://" in value else "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError:
            raise ValueError(missing_backend(protocol)) from None
        except ValueError:
            raise ValueError(f"unknown storage scheme {protocol}://") from None
        return value.rstrip("/")

    @field_validator("media_public_url")
    @classmethod
    def _media_public_url(cls, value: str) -> str:
        if value and "{key}" not in value:
            raise ValueError("must contain {key} (the file's path under MJQ_MEDIA_URL)")
        return value

    @field_validator("media_storage_options")
    @classmethod
    def _media_storage_options(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if text:
            try:
                parsed = json.loads(text)
            except ValueError:
                raise ValueError("must be a JSON object") from None  # the text may hold keys: never echoed
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
            raise ValueError("must start with redis://, rediss://, unix:// or sentinel://")
        return value

    @field_validator("api_path_prefix", "api_path_fast", "api_path_relax", "api_path_turbo")
    @classmethod
    def _path_prefix(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value.rstrip("/")

    @field_validator("dashboard_auth")
    @classmethod
    def _dashboard_auth(cls, value: SecretStr) -> SecretStr:
        user, sep, password = value.get_secret_value().partition(":")
        if value.get_secret_value() and not (sep and user and password):
            raise ValueError("must be user:password (both non-empty), or empty for no basic auth")
        return value

    @model_validator(mode="after")
    def _sentinel_master(self) -> Settings:
        if self.effective_redis_url.startswith("sentinel://") and not self.redis_sentinel_master:
            raise ValueError("MJQ_REDIS_SENTINEL_MASTER is required with a sentinel:// MJQ_REDIS_URL")
        return self

    @field_validator("upstreams_file")
    @classmethod
    def _pool_file(cls, value: Path | None) -> Path | None:
        """A bad pool file is refused at start, with its line and field."""
        if value is None or str(value) in ("", "."):
            return None
        try:
            load_pool_file(value)
        except PoolFileError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _poll_bounds(self) -> Settings:
        if self.poll_max_s < self.poll_initial_s:
            raise ValueError("MJQ_POLL_MAX_S must be >= MJQ_POLL_INITIAL_S")
        return self

    @model_validator(mode="after")
    def _webhook_secret_when_public(self) -> Settings:
        """A public webhook URL with a known or short secret lets anyone forge callbacks (finish jobs, fake images)."""
        if self.webhook_base_url:
            problem = webhook_secret_problem(self.webhook_secret.get_secret_value())
            if problem:
                raise ValueError(f"MJQ_WEBHOOK_SECRET {problem} (required because MJQ_WEBHOOK_BASE_URL is set)")
        return self

    @model_validator(mode="after")
    def _visibility_above_countdowns(self) -> Settings:
        """A message held past the visibility timeout is delivered again, and again (see the design notes)."""
        if self.visibility_timeout_s:
            what, longest = max(self.countdowns().items(), key=lambda item: item[1])
            if self.visibility_timeout_s <= longest:
                raise ValueError(
                    f"MJQ_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s:g} s) must be above every countdown in "
                    f"use; the longest is the {what} ({longest:g} s)"
                )
        return self

    @property
    def api_profile_name(self) -> str:
        """The profile in use: ``MJQ_API_PROFILE``, or ``vendor`` when only the old ``MJQ_API_DIALECT=vendor``
        says so."""
        if self.api_profile == "auto" and self.api_dialect == "vendor":
            return "vendor"
        return self.api_profile

    @property
    def api_mode_paths(self) -> dict[str, str]:
        """Per-mode path prefixes that are set (``MJQ_API_PATH_FAST``...)."""
        paths = {"fast": self.api_path_fast, "relax": self.api_path_relax, "turbo": self.api_path_turbo}
        return {mode: path for mode, path in paths.items() if path}

    @property
    def submit_answer_window_s(self) -> float:
        """How long a sent submit may still be waiting for its answer (the longest read timeout + connect
        timeout, one second more)."""
        return max(self.http_timeout_s, self.http_submit_timeout_s) + self.http_connect_timeout_s + 1.0

    def upload_retry_delay(self, tries: int) -> float:
        """Countdown before upload try ``tries + 1`` (after ``tries`` failed ones)."""
        return min(self.upload_retry_max_s, 0.5 * 2.0 ** max(0, tries - 1))

    @staticmethod
    def download_retry_delay(retries: int) -> float:
        """Countdown before download attempt ``retries + 2`` (after a transient error of attempt ``retries + 1``)."""
        return min(5.0, 0.2 * 2.0 ** max(0, retries))

    def countdowns(self) -> dict[str, float]:
        """The longest countdown of each kind mjqueue schedules; the visibility timeout must exceed them all."""
        slowest = 1.0 + self.poll_jitter  # polls are jittered both ways
        first_poll = max(self.expected_fast_s, self.expected_relax_s, self.expected_turbo_s)
        if self.webhook_base_url:
            first_poll += self.webhook_poll_s
        return {
            "poll delay (MJQ_POLL_MAX_S)": self.poll_max_s * slowest,
            "safety-net poll (MJQ_WEBHOOK_POLL_S)": self.webhook_poll_s * slowest,
            "first poll (MJQ_EXPECTED_*_S)": first_poll * slowest,
            "submit retry (MJQ_SUBMIT_RETRY_MAX_S)": self.submit_retry_max_s,
            "submit pacing (MJQ_SUBMIT_INTERVAL_S)": self.submit_interval_s,
            "second look at a sent submit (MJQ_HTTP_SUBMIT_TIMEOUT_S + MJQ_HTTP_CONNECT_TIMEOUT_S + 1)": (
                self.submit_answer_window_s + 0.2
            ),
            "download retry (MJQ_DOWNLOAD_ATTEMPTS)": self.download_retry_delay(self.download_attempts - 2),
            # only when images go to object storage (a local folder needs no upload)
            **({"upload retry (MJQ_UPLOAD_RETRY_MAX_S)": self.upload_retry_delay(self.upload_attempts - 1)}
               if self.media_url else {}),
            # only when callbacks can be asked for at all (without a secret they are refused)
            **({"callback retry (MJQ_CALLBACK_RETRY_MAX_DELAY_S)": self.callback_retry_max_delay_s}
               if self.callback_secret.get_secret_value() else {}),
        }

    def slots_for(self, mode: str) -> int:
        """Upstream slots for a speed mode (fast | relax | turbo)."""
        return int(getattr(self, f"slots_{mode.lower()}"))

    def admission_limit(self, mode: str) -> int:
        """Jobs of a mode submitted and not finished at once: its slots, plus those queued ahead upstream."""
        slots = self.slots_for(mode)
        return slots + self.queue_ahead if slots > 0 else 0

    def expected_duration_s(self, mode: str) -> float:
        return float(getattr(self, f"expected_{mode.lower()}_s"))

    def deadline_s(self, mode: str) -> float:
        """The deadline of a job of this speed mode (MJQ_JOB_DEADLINE_S is the fast one)."""
        mode = mode.lower()
        if mode == "relax":
            return self.job_deadline_relax_s
        return self.job_deadline_turbo_s if mode == "turbo" else self.job_deadline_s

    @property
    def retention_s(self) -> float | None:
        """``MJQ_RETENTION_DAYS`` in seconds; None when nothing is ever removed."""
        return self.retention_days * 86_400 if self.retention_days > 0 else None

    @property
    def effective_archive_url(self) -> str:
        return self.archive_url or str((self.state_dir / "archive").resolve())

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL in use: the configured one, or the default local port of the embedded server."""
        return self.redis_url or "redis://127.0.0.1:6390/0"

    def fingerprint(self) -> dict[str, str]:
        """A short hash per setting that decides what workers do (``mjq resume`` compares its own with the
        workers'); where a process listens or keeps files is its own (``PER_PROCESS``). Secrets are hashed."""
        out: dict[str, str] = {}
        for name in sorted(type(self).model_fields):
            if name in PER_PROCESS:
                continue
            value = getattr(self, name)
            shown = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            out[name] = hashlib.sha256(f"{name}\0{shown}".encode()).hexdigest()[:12]
        return out


# Settings each process may have its own of (addresses, folders, log format): not part of ``fingerprint``.
PER_PROCESS = frozenset({
    "redis_url", "redis_sentinel_master", "redis_sentinel_password", "webhook_host", "webhook_port", "serve_host",
    "serve_port", "serve_keys_file", "flower_port", "state_dir", "media_dir", "archive_url", "log_format",
})

WEBHOOK_SECRET_MIN_LENGTH = 16
_PLACEHOLDER_SECRETS = ("change-me",)  # the old default and the .env.example text start with it


def webhook_secret_problem(secret: str) -> str | None:
    """What is wrong with a webhook secret (unset, short, a placeholder), or None when it is usable."""
    if not secret:
        return "is not set"
    if len(secret) < WEBHOOK_SECRET_MIN_LENGTH:
        return f"must be at least {WEBHOOK_SECRET_MIN_LENGTH} characters"
    if secret.lower().startswith(_PLACEHOLDER_SECRETS):
        return "is still the placeholder: set a long random string"
    return None


def dev_webhook_secret(state_dir: Path) -> str:
    """A random webhook secret kept in ``state_dir`` (made once), for a local stack where none is configured."""
    path = state_dir / "webhook-secret"
    if not path.is_file() or webhook_secret_problem(path.read_text().strip()):
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


# fsspec backends of the object stores MJQ_MEDIA_URL names, and the project extra that installs each
STORAGE_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                    "abfss": "adlfs", "adl": "adlfs"}
STORAGE_EXTRAS = {"s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure"}


def missing_backend(protocol: str) -> str:
    """What to install for a storage scheme whose fsspec backend is missing (said at start, not at upload)."""
    package = STORAGE_BACKENDS.get(protocol)
    if package is None:
        return f"{protocol}:// needs an fsspec backend that is not installed"
    return (f"{protocol}:// needs the fsspec backend {package}, which is not installed: "
            f"pip install 'mjqueue[{STORAGE_EXTRAS[package]}]' (or pip install {package})")


class SettingsError(RuntimeError):
    """Invalid configuration, with one line per bad variable."""


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part != "__root__"]
        message = str(err.get("msg", "invalid"))
        if loc:
            message = message.removeprefix("Value error, ")
            lines.append(f"MJQ_{loc[0].upper()}: {message}")
        else:  # a check across fields: its message starts with the variable it is about
            lines.append(message.removeprefix("Value error, "))
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


def _shown_default(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    text = value.value if isinstance(value, StrEnum) else str(value)
    return text or "(empty)"


def settings_table() -> str:
    """The README's configuration table, made from the fields themselves (``mjq config --markdown``)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        meaning = (info.description or "").replace("|", "\\|")
        rows.append(f"| `MJQ_{name.upper()}` | `{_shown_default(info.default)}` | {meaning} |")
    return "\n".join(rows)
