"""Typed client of the Midjourney Proxy API (no Celery, no Redis here).

``MidjourneyClient`` / ``AsyncMidjourneyClient`` send requests built from the pydantic models in
``models``; ``classify`` reads every answer; ``errors`` is the hierarchy callers act on;
``validate_request`` is the producer-side check that runs before anything is queued.
"""

from __future__ import annotations

from worker.mjapi import errors
from worker.mjapi.classify import classify
from worker.mjapi.client import AsyncMidjourneyClient, MidjourneyClient
from worker.mjapi.errors import *  # noqa: F403  (the error tree is part of this surface)
from worker.mjapi.models import (
    REQUEST_MODELS,
    AccountFilter,
    ActionRequest,
    BlendRequest,
    BotType,
    Button,
    DescribeRequest,
    Dimensions,
    ImagineRequest,
    ModalRequest,
    Mode,
    RequestModel,
    SubmitResult,
    SwapFaceRequest,
    Task,
    TaskStatus,
    UploadFilter,
    UploadRequest,
    validate_request,
)

__all__ = [
    "REQUEST_MODELS",
    "AccountFilter",
    "ActionRequest",
    "AsyncMidjourneyClient",
    "BlendRequest",
    "BotType",
    "Button",
    "DescribeRequest",
    "Dimensions",
    "ImagineRequest",
    "MidjourneyClient",
    "ModalRequest",
    "Mode",
    "RequestModel",
    "SubmitResult",
    "SwapFaceRequest",
    "Task",
    "TaskStatus",
    "UploadFilter",
    "UploadRequest",
    "classify",
    "validate_request",
]
__all__ += errors.__all__
