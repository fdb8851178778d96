"""The pool file (``MJQ_UPSTREAMS_FILE``): one ``[[upstream]]`` TOML table per account, key or relay.

Read with the standard ``tomllib``; every table is checked by a pydantic model, and a bad file is refused with
its line and the field (``upstreams.toml:12: upstream "acct-a": slots.fast: ...``). Keys never live in the
file: ``api_key_env`` names the variable that holds each one, read from the environment when the pool is built.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from worker.pricing import PRICE_KINDS, PriceError, to_micros
from worker.upstreams.windows import WorkWindow

UPSTREAM_MODES = ("fast", "relax", "turbo")
NAME_RULE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
Mode = Literal["fast", "relax", "turbo"]
Count = Annotated[int, Field(ge=0)]


class PoolFileError(ValueError):
    """A pool file that cannot be used; the message names the file, the line and the field."""


class UpstreamConfig(BaseModel):
    """One ``[[upstream]]`` table as written in the file (no secret in it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    base_url: str
    api_key_env: str = ""
    auth_header: Literal["mj-api-secret", "bearer"] = "mj-api-secret"
    profile: Literal["auto", "plus", "trueai", "java", "newapi", "vendor"] = "auto"
    modes: tuple[Mode, ...] = ("fast", "relax", "turbo")
    slots: dict[Mode, Count] = Field(default_factory=dict)
    paths: dict[Mode, str] = Field(default_factory=dict)
    path_prefix: str = ""
    queue_ahead: int = Field(0, ge=0, le=50)
    daily_cap: int | dict[Mode, Count] = 0
    submit_interval_s: float = Field(0.0, ge=0)
    submit_interval_max_s: float | None = Field(None, ge=0)
    hours: str = ""
    timezone: str = "UTC"
    weight: float = Field(1.0, gt=0)
    webhooks: bool = True
    prices: dict[str, float | str] = Field(default_factory=dict)
    prices_relax: dict[str, float | str] = Field(default_factory=dict)
    prices_turbo: dict[str, float | str] = Field(default_factory=dict)
    currency: str = Field("", description="default: MJQ_CURRENCY")
    charges_failures: bool | None = None
    budget_daily: float = Field(0.0, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RULE.match(value):
            raise ValueError("letters, digits, - and _ only (1-40 characters)")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for mode, path in value.items():
            if path and not path.startswith("/"):
                raise ValueError(f"{mode}: must start with '/'")
        return {m: p.rstrip("/") for m, p in value.items() if p}

    @field_validator("prices", "prices_relax", "prices_turbo")
    @classmethod
    def _prices(cls, value: dict[str, float | str]) -> dict[str, float | str]:
        for kind, amount in value.items():
            if kind not in PRICE_KINDS:
                raise ValueError(f"unknown request kind {kind!r}; kinds are {', '.join(PRICE_KINDS)}")
            try:
                to_micros(amount, kind)
            except PriceError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        if value:
            WorkWindow.parse(value, "UTC")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        WorkWindow.parse("", value)
        return value

    @model_validator(mode="after")
    def _interval_bounds(self) -> UpstreamConfig:
        if self.submit_interval_max_s is not None and self.submit_interval_max_s < self.submit_interval_s:
            raise ValueError("submit_interval_max_s must be >= submit_interval_s")
        return self


def _line_of(text: str, index: int, field: str | None) -> int:
    """The line of the ``index``-th ``[[upstream]]`` table (or of ``field`` inside it), 1-based."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("[[upstream]]")]
    if index >= len(starts):
        return 1
    start = starts[index]
    end = starts[index + 1] if index + 1 < len(starts) else len(lines)
    if field:
        pattern = re.compile(rf"^\s*{re.escape(field)}\s*=")
        for i in range(start, end):
            if pattern.match(lines[i]):
                return i + 1
    return start + 1


def parse_pool(text: str, where: str = "upstreams file") -> list[UpstreamConfig]:
    """The upstream tables of a pool file's text; ``PoolFileError`` naming the line and field otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PoolFileError(f"{where}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"upstream"})
    if extra:
        raise PoolFileError(f"{where}: unknown top-level key {extra[0]!r}; write one [[upstream]] table each")
    tables = data.get("upstream")
    if not isinstance(tables, list) or not tables:
        raise PoolFileError(f"{where}: no [[upstream]] table")
    out: list[UpstreamConfig] = []
    for i, table in enumerate(tables):
        label = f"upstream {table.get('name')!r}" if isinstance(table.get("name"), str) else f"upstream #{i + 1}"
        try:
            item = UpstreamConfig.model_validate(table)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [str(p) for p in err.get("loc", ())]
            line = _line_of(text, i, loc[0] if loc else None)
            field = ".".join(loc) or "table"
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            raise PoolFileError(f"{where}:{line}: {label}: {field}: {message}") from None
        if any(o.name == item.name for o in out):
            raise PoolFileError(f"{where}:{_line_of(text, i, 'name')}: {label}: name: used twice")
        if item.api_key_env and not os.environ.get(item.api_key_env):
            raise PoolFileError(
                f"{where}:{_line_of(text, i, 'api_key_env')}: {label}: api_key_env: "
                f"the variable {item.api_key_env} is not set (it must hold the upstream's key)"
            )
        out.append(item)
    return out


def load_pool_file(path: Path) -> list[UpstreamConfig]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PoolFileError(f"MJQ_UPSTREAMS_FILE: cannot read {path}: {exc}") from None
    return parse_pool(text, str(path))


def api_key_of(config: UpstreamConfig) -> SecretStr:
    """The upstream's key, from the variable its table names (never from the file)."""
    return SecretStr(os.environ.get(config.api_key_env, "") if config.api_key_env else "")


def masked(config: UpstreamConfig) -> dict[str, Any]:
    """The table as ``mjq config`` shows it: the key variable and whether it is set, never the key."""
    data = config.model_dump(mode="json")
    parts = urlsplit(config.base_url)
    if parts.password is not None:  # a password in the URL is a secret too
        data["base_url"] = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    data["api_key"] = "set" if api_key_of(config).get_secret_value() else "unset"
    return data
