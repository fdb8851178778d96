"""What differs between the real servers of the Midjourney Proxy family (``MJQ_API_PROFILE``).

One small table: each ``Profile`` says how its server reads the API key, what it answers for an id it does not
know, how bare result codes 23/24 read, whether callbacks are to be expected, where the speed mode travels,
and which requests it has at all.  The classifier (``classify.py``) reads codes by the profile's ``codes``
column, but recognisable answers (description text, HTTP status) win in every profile, so ``auto`` works on
every server without the user knowing which one it is (see ``/work/shared/upstreams.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["PROFILES", "PROFILE_NAMES", "Profile", "profile_for"]

Codes = Literal["proxy", "vendor"]
ALL_KINDS = frozenset({"imagine", "blend", "describe", "modal", "swap_face", "action", "upload"})


@dataclass(frozen=True)
class Profile:
    """One server family."""

    name: str
    title: str
    codes: Codes  # a bare 23/24 (no recognisable text): proxy = queue full/banned, vendor = system error/account
    auth: str  # the auth header mjqueue sends by default, and what the server accepts
    unknown_fetch: str  # what the server answers for an id it does not know (all read as "no such task")
    callbacks: bool | None  # True: notifyHook callbacks arrive; False: none (polling only); None: learn it
    mode_in: Literal["filter", "path", "both"]  # where the speed mode travels (accountFilter.modes or /mj-fast)
    kinds: frozenset[str]  # the requests the server has
    remix_flag: bool = False  # remix actions (``accountFilter.remix``) carry ``enableRemix: true`` (trueai needs it)
    note: str = ""

    def supports(self, kind: str) -> bool:
        return kind in self.kinds


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "auto", "any server (detected by answers)", "proxy", "mj-api-secret",
            "404, 200 empty, 204, 400 task_no_found: all read as unknown", None, "both", ALL_KINDS, remix_flag=True,
            note="classifies by code, description text and HTTP status; switches to polling when no callback"
            " arrives; remix actions carry enableRemix (ignored by the servers that do not read it)",
        ),
        Profile(
            "plus", "midjourney-proxy-plus (closed)", "proxy", "mj-api-secret", "404 or 200 empty", True,
            "filter", ALL_KINDS,
        ),
        Profile(
            "trueai", "trueai-org/midjourney-proxy (C#)", "proxy", "mj-api-secret", "204 no content", True,
            "both", ALL_KINDS, remix_flag=True,
            note="403 with an empty body after 429s is a temporary IP block; remix actions carry enableRemix",
        ),
        Profile(
            "java", "novicezk/midjourney-proxy 2.x (Java)", "proxy", "mj-api-secret", "200 with an empty body",
            True, "filter", frozenset({"imagine", "blend", "describe"}),
            note="no /mj/submit/action, modal, swap or upload: follow-ups fail before sending, saying so",
        ),
        Profile(
            "newapi", "new-api relay (Go)", "proxy", "mj-api-secret", "400 code 4 task_no_found", False,
            "path", ALL_KINDS,
            note="no callbacks (polling only), accountFilter stripped: set MJQ_API_PATH_FAST/_RELAX/_TURBO",
        ),
        Profile(
            "vendor", "the aggregator's document (new-api behind)", "vendor", "mj-api-secret",
            "200 empty, 400 task_no_found", None, "both", ALL_KINDS,
            note="bare 23 = system error, bare 24 = account unavailable, 25 = out of credit",
        ),
    )
}  # fmt: skip
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def profile_for(name: object, dialect: object = None) -> Profile:
    """The profile named ``name`` (a str or an enum); the old ``dialect`` (``proxy``/``vendor``) is an alias:
    ``vendor`` selects the vendor profile when the profile is ``auto``."""
    chosen = str(getattr(name, "value", name) or "auto").lower()
    old = str(getattr(dialect, "value", dialect) or "").lower()
    if chosen == "proxy":
        chosen = "auto"
    if chosen == "auto" and old == "vendor":
        chosen = "vendor"
    if chosen not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILE_NAMES)}, not {chosen!r}")
    return PROFILES[chosen]
