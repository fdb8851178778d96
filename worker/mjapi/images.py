"""Images going upstream: data URIs, type sniffing and size limits (no Redis, no Celery).

Images travel to the upstream as data URIs.  We check them before anything is queued or sent:
the type is sniffed from the bytes (the ``data:image/...`` label is not trusted), only JPEG, PNG, static GIF
and WEBP pass, each at most 4 MB decoded, and the base64 must be valid.  Every refusal is an
``InvalidInput`` naming the field, e.g. ``field 'base64_array[1]': image is 5.2 MB decoded, the limit is
4 MB``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worker.mjapi.errors import InvalidInput

# ---------------------------------------------------------------------------------------------------------
# Input images

MAX_IMAGE_BYTES = 4 * 1024 * 1024
"""Largest decoded image the upstream accepts."""

SUPPORTED_MIMES: dict[str, str] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}
_MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
_DATA_URI = re.compile(
    r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*?)(?P<b64>;base64)?,(?P<payload>.*)$", re.S
)
_WHITESPACE = re.compile(r"\s+")
# Base64 text longer than this decodes to more than the limit: refuse before decoding megabytes.
_MAX_B64_CHARS = (MAX_IMAGE_BYTES + 2) // 3 * 4


@dataclass(frozen=True)
class DecodedImage:
    """A validated input image: its sniffed MIME type, bytes and decoded size."""

    mime: str
    data: bytes
    size: int


def _gif_frames(data: bytes) -> int:
    """Number of image frames of a GIF (walks the block structure; stops at the trailer or truncation)."""
    if len(data) < 13:
        return 0
    pos = 13
    if data[10] & 0x80:  # global colour table
        pos += 3 * (2 << (data[10] & 0x07))
    frames = 0
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then data sub-blocks
            pos += 2
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW code size, sub-blocks
            frames += 1
            if frames > 1 or pos + 10 > len(data):
                return frames
            flags = data[pos + 9]
            pos += 10
            if flags & 0x80:
                pos += 3 * (2 << (flags & 0x07))
            pos += 1
        else:
            break
        while pos < len(data) and data[pos] != 0:  # skip sub-blocks
            pos += data[pos] + 1
        pos += 1
    return frames


def sniff_kind(data: bytes) -> str | None:
    """MIME type from the magic bytes (animated or not)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def sniff_mime(data: bytes) -> str | None:
    """The image type of ``data`` by its magic bytes: JPEG, PNG, static GIF or WEBP; ``None`` otherwise.

    An animated GIF gives ``None``: the upstream takes static images only.
    """
    mime = sniff_kind(data)
    if mime == "image/gif" and _gif_frames(data) > 1:
        return None
    return mime


def _preview(value: str) -> str:
    return repr(value[:24] + "…") if len(value) > 24 else repr(value)


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def parse_data_uri(value: object, field: str) -> DecodedImage:
    """Decode and check one image data URI; ``InvalidInput`` naming ``field`` when it is not acceptable."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a data URI string, not {type(value).__name__}")
    match = _DATA_URI.match(value)
    if match is None:
        raise InvalidInput(
            field, f"must be a data URI like 'data:image/png;base64,...' (got {_preview(value)})"
        )
    if not match["b64"]:
        raise InvalidInput(field, "must be base64-encoded (';base64,' is missing)")
    declared = match["mime"].strip().lower()
    declared = _MIME_ALIASES.get(declared, declared)
    payload = _WHITESPACE.sub("", match["payload"])
    if not payload:
        raise InvalidInput(field, "image data is empty")
    if len(payload) > _MAX_B64_CHARS + 4:
        approx = len(payload) * 3 // 4
        raise InvalidInput(field, f"image is {_megabytes(approx)} decoded, the limit is 4 MB")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(field, "invalid base64 data") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(field, f"image is {_megabytes(len(data))} decoded, the limit is 4 MB")
    kind = sniff_kind(data)
    if kind is None:
        raise InvalidInput(field, "the bytes are not a JPEG, PNG, GIF or WEBP image")
    if kind == "image/gif" and _gif_frames(data) > 1:
        raise InvalidInput(field, "animated GIF is not accepted (static images only)")
    if declared != kind:
        label = f"{declared!r}" if declared else "no type"
        raise InvalidInput(field, f"declared {label} but the bytes are {SUPPORTED_MIMES[kind]} ({kind})")
    return DecodedImage(mime=kind, data=data, size=len(data))


def to_data_uri(data: bytes) -> str:
    """A data URI for ``data`` labelled with its sniffed type (``application/octet-stream`` if unknown,
    which ``parse_data_uri`` then refuses with a clear message)."""
    mime = sniff_kind(data) or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size}B"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f}KB"
    return f"{size / (1024 * 1024):.1f}MB"


def _peek(value: str) -> tuple[str, int]:
    """(type label, approximate decoded size) of a data URI without decoding all of it."""
    _, _, payload = value.partition(",")
    payload = _WHITESPACE.sub("", payload)
    size = len(payload) * 3 // 4 - payload[-2:].count("=")
    return _label(payload), max(size, 0)


def _label(payload: str) -> str:
    """The type label of base64 image data from its first characters."""
    try:
        start = base64.b64decode(payload[:32] + "=" * (-len(payload[:32]) % 4))
    except (binascii.Error, ValueError):
        start = b""
    kind = sniff_kind(start)
    return SUPPORTED_MIMES[kind] if kind else "?"


def peek_head(head: str, length: int) -> tuple[str, int]:
    """(type label, approximate decoded size) of a data URI known by its first characters and its length."""
    prefix, _, payload = head.partition(",")
    return _label(payload), max(0, (length - len(prefix) - 1) * 3 // 4)


def describe_images(values: Sequence[str], resolve: Callable[[str], tuple[str, int] | None] | None = None) -> str:
    """Short human summary for task reprs (Flower), never the data: ``2×PNG 1.2MB``, ``1×PNG+1×JPEG 80KB``.

    ``resolve`` gives (label, size) of a value that is not a data URI (an ``img:`` reference), None if unknown.
    """
    if not values:
        return "none"
    kinds: Counter[str] = Counter()
    total = 0
    for value in values:
        found = None
        if isinstance(value, str) and value.startswith("data:"):
            found = _peek(value)
        elif isinstance(value, str) and resolve is not None:
            found = resolve(value)
        label, size = found or ("?", 0)
        kinds[label] += 1
        total += size
    return "+".join(f"{n}×{label}" for label, n in kinds.items()) + f" {_human_size(total)}"


# --------------------------------------------------------------------------------------------------------
