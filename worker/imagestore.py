"""Input images stored once in Redis by content hash, so task messages carry ``img:<sha256>`` only.

Base64 images never travel through the broker or show in Flower: producers store them here and pass the
reference; the worker resolves references just before the request is sent upstream.
"""

from __future__ import annotations

import hashlib
from typing import cast

from worker.mjapi.errors import (
    InvalidInput,
)
from worker.runtime import Runtime, runtime

IMAGE_REF = "img:"


def store_image(value: str, rt: Runtime | None = None) -> str:
    """Keep a data URI in Redis (TTL ``image_ttl_s``) and return its reference; references pass through."""
    if value.startswith(IMAGE_REF):
        return value
    rt = rt or runtime()
    digest = hashlib.sha256(value.encode()).hexdigest()
    rt.redis.set(f"mjq:img:{digest}", value, ex=int(rt.settings.image_ttl_s), nx=True)
    rt.redis.expire(f"mjq:img:{digest}", int(rt.settings.image_ttl_s))
    return IMAGE_REF + digest


def load_image(value: str, field: str, rt: Runtime | None = None) -> str:
    """The data URI behind a reference (or the value itself); a lost reference is invalid input."""
    if not value.startswith(IMAGE_REF):
        return value
    rt = rt or runtime()
    data = cast(str | None, rt.redis.get(f"mjq:img:{value[len(IMAGE_REF) :]}"))
    if data is None:
        raise InvalidInput(f"field '{field}': image reference expired or unknown (kept image_ttl_s)")
    return data
