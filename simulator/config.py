"""The simulator's knobs: capacity, timing, dialect and fault injection (settable at start or at run time)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MODES = ("FAST", "RELAX", "TURBO")
Dialect = Literal["proxy", "vendor"]
# Which real server the process plays (shared/upstreams.md): the closed Plus server, the C# trueai fork, the
# Java open-source 2.x original, the new-api Go gateway relaying a Plus server, or the vendor document.
Profile = Literal["plus", "trueai", "java", "newapi", "vendor"]
PROFILES: tuple[Profile, ...] = ("plus", "trueai", "java", "newapi", "vendor")
UserLimit = Literal["", "concurrent", "queue", "daily"]


def profile_dialect(profile: str) -> Dialect:
    """The result-code dialect a profile speaks unless told otherwise: vendor for vendor, proxy for the rest."""
    return "vendor" if profile == "vendor" else "proxy"


class SimConfig(BaseModel):
    """Everything that shapes how the fake upstream behaves; ``POST /admin/faults`` patches it live."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    profile: Profile = Field("plus", description="The real server played: plus, trueai, java, newapi or vendor.")
    api_key: str | None = Field(None, description="Required key, sent as the profile expects; None = no auth.")
    lenient_auth: bool = Field(
        False, description="Accept Bearer or mj-api-secret whatever the profile (the vendor rule, as before profiles)."
    )
    dialect: Dialect = Field("proxy", description="Result-code dialect (default: the profile's): proxy or vendor.")
    time_factor: float = Field(1.0, gt=0, description="Multiplies every duration (0.01 = 100x faster).")
    duration_s: dict[str, float] = Field(
        default_factory=lambda: {"FAST": 60.0, "RELAX": 180.0, "TURBO": 25.0},
        description="Base job duration per speed mode, before the time factor.",
    )
    duration_spread: float = Field(0.1, ge=0, le=0.9, description="Relative random spread of durations.")
    concurrency: dict[str, int] = Field(
        default_factory=lambda: {"FAST": 3, "RELAX": 3, "TURBO": 3}, description="Jobs running at once per mode."
    )
    queue_size: int = Field(10, ge=0, description="Tasks waiting beyond the running ones, all modes together.")
    progress_step: int = Field(25, ge=1, le=100, description="Progress moves (and calls back) in these steps.")
    notify_hook: str | None = Field(None, description="The server's global hook, used when a task has none.")
    unknown_task: Literal["dialect", "404", "empty", "204", "400"] = Field(
        "dialect", description="Fetch of an unknown id: the profile's answer (java empty 200, trueai 204, newapi 400; "
        "plus/vendor by dialect: proxy 404, vendor empty 200), or forced."
    )

    # Faults
    fault_scope: Literal["all", "submit"] = Field(
        "all", description="Which /mj calls the 500/429 rates hit: every call, or submits only."
    )
    http_500_rate: float = Field(0.0, ge=0, le=1, description="Share of /mj calls answered HTTP 500.")
    http_429_rate: float = Field(0.0, ge=0, le=1, description="Share of /mj calls answered HTTP 429.")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of the 429 answers.")
    read_delay_rate: float = Field(0.0, ge=0, le=1, description="Share of submits answered late (task created).")
    read_delay_s: float = Field(0.0, ge=0, description="How late: set it beyond the client's read timeout.")
    image_delay_rate: float = Field(0.0, ge=0, le=1, description="Share of /images/ downloads answered late.")
    image_delay_s: float = Field(0.0, ge=0, description="How late (a download stays in flight this long).")
    poll_delay_rate: float = Field(0.0, ge=0, le=1, description="Share of fetch / list-by-condition answers late.")
    poll_delay_s: float = Field(0.0, ge=0, description="How late (a poll stays in flight this long).")
    image_error_rate: float = Field(0.0, ge=0, le=1, description="Share of /images/ downloads answered HTTP 500.")
    image_errors: int = Field(0, ge=0, description="The next this many /images/ downloads answer HTTP 500.")
    forbidden: bool = Field(False, description="Every /mj call is answered HTTP 403 (a key without permission).")
    drop_callback_rate: float = Field(0.0, ge=0, le=1, description="Share of callbacks never sent.")
    duplicate_callbacks: bool = Field(False, description="Send every callback twice.")
    reorder_callbacks: bool = Field(False, description="Send the previous event again after the final one.")
    stuck_rate: float = Field(0.0, ge=0, le=1, description="Tasks that never finish (stay at 10%).")
    task_timeout_s: float | None = Field(
        None, gt=0, description="Like real servers (300 s), fail stuck tasks after this long (x time factor)."
    )
    failure_rate: float = Field(0.0, ge=0, le=1, description="Tasks that end in FAILURE with a failReason.")
    banned_words: list[str] = Field(default_factory=list, description="Prompts containing these are refused.")
    balance: int | None = Field(None, description="Credits left; each accepted submit costs one; None = unlimited.")
    account_unavailable: bool = Field(False, description="Every submit is refused: no usable account (code 3).")
    user_limit: UserLimit = Field(
        "", description="trueai per-user limit hit on every submit (code 4): concurrent, queue or daily; '' = off."
    )
    system_error: bool = Field(False, description="Every submit answers code 9 \"提交失败，系统异常\".")
    group_saturated: bool = Field(False, description="newapi: every submit answers HTTP 429 code 30 (group full).")
    do_request_failed_rate: float = Field(
        0.0, ge=0, le=1, description="newapi: share of submits answered HTTP 400 code 5 although the task was created."
    )
    token_exhausted: bool = Field(
        False, description="newapi: every /mj call answers 401, the token's quota is used up."
    )
    ban_after_429s: int = Field(
        0, ge=0, description="trueai: after this many 429 answers every /mj call is 403 for ban_s; 0 = never."
    )
    ban_s: float = Field(300.0, gt=0, description="How long the 403 ban lasts (x time factor).")
    newapi_poll_s: float = Field(
        15.0, gt=0, description="newapi: its own poll interval of the upstream (x time factor)."
    )
    newapi_timeout_s: float = Field(
        3600.0, gt=0, description="newapi: fail a task not at 100% this long after submit (x time factor)."
    )
    remix: bool = Field(False, description="Variation, reroll and pan also stop at the modal step.")
    seed: int = Field(1, description="Seed of the random faults and durations.")

    @model_validator(mode="before")
    @classmethod
    def _dialect_of_profile(cls, values: Any) -> Any:
        """Without an explicit dialect the profile's applies (``vendor`` speaks the vendor's code table)."""
        if isinstance(values, dict) and values.get("dialect") is None:
            values = {k: v for k, v in values.items() if k != "dialect"}
            values["dialect"] = profile_dialect(str(values.get("profile", "plus")))
        return values

    def public(self) -> dict[str, object]:
        """The configuration without the key, for the admin API."""
        return self.model_dump(exclude={"api_key"})
