"""The simulator's knobs: capacity, timing, dialect and fault injection (settable at start or at run time)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MODES = ("FAST", "RELAX", "TURBO")


class SimConfig(BaseModel):
    """Everything that shapes how the fake upstream behaves; ``POST /admin/faults`` patches it live."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    api_key: str | None = Field(None, description="Required key (Bearer or mj-api-secret); None = no auth.")
    dialect: Literal["proxy", "vendor"] = "proxy"
    time_factor: float = Field(1.0, gt=0, description="Multiplies every duration (0.01 = 100x faster).")
    duration_s: dict[str, float] = Field(default_factory=lambda: {"FAST": 60.0, "RELAX": 180.0, "TURBO": 25.0})
    duration_spread: float = Field(0.1, ge=0, le=0.9, description="Relative random spread of durations.")
    concurrency: dict[str, int] = Field(default_factory=lambda: {"FAST": 3, "RELAX": 3, "TURBO": 3})
    queue_size: int = Field(10, ge=0, description="Tasks waiting beyond the running ones, all modes together.")
    progress_step: int = Field(25, ge=1, le=100, description="Progress callbacks every this many percent.")

    # Faults
    http_500_rate: float = Field(0.0, ge=0, le=1)
    http_429_rate: float = Field(0.0, ge=0, le=1)
    retry_after_s: float = Field(1.0, ge=0)
    read_delay_rate: float = Field(0.0, ge=0, le=1, description="Create the task, then answer late.")
    read_delay_s: float = Field(0.0, ge=0)
    drop_callback_rate: float = Field(0.0, ge=0, le=1)
    duplicate_callbacks: bool = False
    reorder_callbacks: bool = False
    stuck_rate: float = Field(0.0, ge=0, le=1, description="Tasks that never finish.")
    failure_rate: float = Field(0.0, ge=0, le=1, description="Tasks that end in FAILURE.")
    banned_words: list[str] = Field(default_factory=list)
    balance: int | None = Field(None, description="Credits left; each accepted submit costs one; None = unlimited.")
    account_unavailable: bool = False
    remix: bool = Field(False, description="Variation, reroll and pan also stop at the modal step.")
    seed: int = 1

    def public(self) -> dict[str, object]:
        """The configuration without the key, for the admin API."""
        return self.model_dump(exclude={"api_key"})
