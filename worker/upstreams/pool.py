"""The pool: every upstream mjqueue drives, each with its own limits; without a pool file, one named ``default``.

An :class:`Upstream` is what the rest of the code reads (slots, pacing, caps, window, prices, how to reach it);
:class:`Pool` holds them in file order. Routing (which upstream a root job goes to) is ``route_order``:
the cluster-wide gates themselves are Lua (``worker/store/lua/gates.lua``), this only orders the candidates.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from worker.pricing import to_micros
from worker.settings import Settings
from worker.store.keys import DEFAULT_UPSTREAM
from worker.upstreams.config import UPSTREAM_MODES, UpstreamConfig, api_key_of, load_pool_file
from worker.upstreams.windows import WorkWindow


@dataclass(frozen=True)
class Upstream:
    """One account, key or relay, with everything its gates need (no secret is ever printed: ``SecretStr``)."""

    name: str
    base_url: str
    api_key: SecretStr
    auth_header: str = "mj-api-secret"
    profile: str = "auto"
    path_prefix: str = ""
    mode_paths: Mapping[str, str] = field(default_factory=dict)
    slots: Mapping[str, int] = field(default_factory=dict)
    queue_ahead: int = 0
    daily_cap: int = 0  # all modes together (0 = none)
    daily_cap_modes: Mapping[str, int] = field(default_factory=dict)
    interval_s: float = 0.0
    interval_max_s: float = 0.0
    window: WorkWindow = field(default_factory=lambda: WorkWindow.parse("", "UTC"))
    weight: float = 1.0
    webhooks: bool = True
    price_tables: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    currency: str = "USD"
    charges_failures: bool = False
    budget_daily_micros: int = 0

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m for m in UPSTREAM_MODES if self.slots.get(m, 0) > 0)

    def serves(self, mode: str) -> bool:
        return self.slots.get(mode, 0) > 0

    def admission_limit(self, mode: str) -> int:
        """Jobs of a mode submitted and not finished at once: its slots plus those queued ahead upstream."""
        n = self.slots.get(mode, 0)
        return n + self.queue_ahead if n > 0 else 0

    def draw_interval(self) -> float:
        """The gap before the next submit: fixed, or random in [submit_interval_s, submit_interval_max_s]."""
        if self.interval_max_s > self.interval_s:
            return random.uniform(self.interval_s, self.interval_max_s)
        return self.interval_s

    def open_at(self, epoch: float) -> bool:
        return self.window.open_at(epoch)

    def client_options(self, settings: Settings) -> dict[str, Any]:
        """Keyword arguments of ``MidjourneyClient`` for this upstream (timeouts are the process settings)."""
        return {
            "base_url": self.base_url,
            "api_key": self.api_key,
            "auth_header": self.auth_header,
            "profile": self.profile,
            "path_prefix": self.path_prefix,
            "mode_paths": dict(self.mode_paths),
            "timeout": settings.http_timeout_s,
            "submit_timeout": settings.http_submit_timeout_s,
            "connect_timeout": settings.http_connect_timeout_s,
            "block_window_s": settings.block_cooldown_s,
        }


def default_upstream(settings: Settings) -> Upstream:
    """Today's ``MJQ_API_*`` settings as the one upstream ``default``: nothing changes for one account."""
    return Upstream(
        name=DEFAULT_UPSTREAM,
        base_url=settings.api_base_url,
        api_key=settings.api_key,
        auth_header=settings.api_auth_header,
        profile=settings.api_profile_name,
        path_prefix=settings.api_path_prefix,
        mode_paths=settings.api_mode_paths,
        slots={m: settings.slots_for(m) for m in UPSTREAM_MODES},
        queue_ahead=settings.queue_ahead,
        daily_cap=settings.daily_cap,
        interval_s=settings.submit_interval_s,
        interval_max_s=max(settings.submit_interval_s, settings.submit_interval_max_s),
        webhooks=True,
        price_tables=settings.price_tables(),
        currency=settings.currency,
        charges_failures=settings.charges_failures,
    )


def from_config(config: UpstreamConfig, settings: Settings) -> Upstream:
    """A pool-file table made usable: the key read from its variable, prices in micros, slots per mode."""
    slots = {m: (config.slots.get(m, settings.slots_for(m)) if m in config.modes else 0) for m in UPSTREAM_MODES}
    caps = config.daily_cap if isinstance(config.daily_cap, dict) else {}
    tables = {
        "": {k: to_micros(v, k) for k, v in config.prices.items()},
        "relax": {k: to_micros(v, k) for k, v in config.prices_relax.items()},
        "turbo": {k: to_micros(v, k) for k, v in config.prices_turbo.items()},
    }
    return Upstream(
        name=config.name,
        base_url=config.base_url,
        api_key=api_key_of(config),
        auth_header=config.auth_header,
        profile=config.profile,
        path_prefix=config.path_prefix,
        mode_paths={str(m): p for m, p in config.paths.items()},
        slots=slots,
        queue_ahead=config.queue_ahead,
        daily_cap=config.daily_cap if isinstance(config.daily_cap, int) else 0,
        daily_cap_modes={m: int(n) for m, n in caps.items() if n},
        interval_s=config.submit_interval_s,
        interval_max_s=max(config.submit_interval_s, config.submit_interval_max_s or 0.0),
        window=WorkWindow.parse(config.hours, config.timezone),
        weight=config.weight,
        webhooks=config.webhooks,
        price_tables=tables,
        currency=config.currency or settings.currency,
        charges_failures=settings.charges_failures if config.charges_failures is None else config.charges_failures,
        budget_daily_micros=to_micros(config.budget_daily, "budget_daily"),
    )


class Pool:
    """The upstreams in file order (``names``), looked up by name."""

    def __init__(self, upstreams: Iterable[Upstream], from_file: bool = False) -> None:
        self.upstreams = list(upstreams)
        self.by_name = {u.name: u for u in self.upstreams}
        self.from_file = from_file

    @classmethod
    def from_settings(cls, settings: Settings) -> Pool:
        if settings.upstreams_file is None:
            return cls([default_upstream(settings)])
        configs = load_pool_file(settings.upstreams_file)
        return cls([from_config(c, settings) for c in configs], from_file=True)

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.upstreams]

    @property
    def default(self) -> Upstream:
        """The first upstream: what a request that names none (``mjq doctor``, raw fetches) talks to."""
        return self.upstreams[0]

    def get(self, name: str | None) -> Upstream:
        """The upstream called ``name`` (None or empty: the first); ``KeyError`` naming the known ones."""
        if not name:
            return self.default
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"unknown upstream {name!r}; the pool has {', '.join(self.names)}") from None

    def serving(self, mode: str) -> list[Upstream]:
        return [u for u in self.upstreams if u.serves(mode)]

    def pin_problem(self, name: object, mode: str | None = None) -> str | None:
        """Why a job of ``mode`` cannot be pinned to ``name`` (None: it can): an unknown name, or an upstream that
        does not serve the mode (its jobs would wait for ever: no slot of that mode exists there)."""
        if not isinstance(name, str) or name not in self.by_name:
            return f"unknown upstream {name!r}; the pool has {', '.join(self.names)}"
        up = self.by_name[name]
        if mode is not None and not up.serves(mode):
            others = ", ".join(u.name for u in self.serving(mode)) or "none"
            return f"{name} does not serve {mode} jobs (it serves {', '.join(up.modes) or 'none'}; {mode}: {others})"
        return None

    def served_modes(self) -> dict[str, tuple[str, ...]]:
        """Each upstream's name and the modes it serves (what a prompt file's ``upstream`` column is checked
        against, without the rest of the pool)."""
        return {u.name: u.modes for u in self.upstreams}


def route_order(candidates: Iterable[Upstream], used_today: Mapping[str, int]) -> list[Upstream]:
    """Where a root job is tried, in order: by weight, then by least used today — the upstream with the fewest
    submits today per unit of weight first (ties: the heavier, then file order). The gates take the first one
    with a free slot, so a heavier account gets proportionally more of the day's work."""
    ordered = list(candidates)
    position = {u.name: i for i, u in enumerate(ordered)}
    return sorted(ordered, key=lambda u: (used_today.get(u.name, 0) / u.weight, -u.weight, position[u.name]))
