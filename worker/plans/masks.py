"""Region masks (Vary (Region)): read where the plan is given, stored once in Redis, referred to as ``img:``."""

from __future__ import annotations

from pathlib import Path

from worker.mjapi.errors import InvalidInput
from worker.mjapi.images import MAX_IMAGE_BYTES, parse_data_uri, to_data_uri
from worker.store.images import IMAGE_REF, store_image
from worker.store.runtime import Runtime


def mask_path(mask: str, base_dir: Path | None = None) -> Path | None:
    """The file a mask names (relative to ``base_dir``, default the current directory), or None for a data URI
    or an ``img:`` reference."""
    if mask.startswith((IMAGE_REF, "data:")):
        return None
    path = Path(mask).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def load_mask(mask: str, field: str = "mask", base_dir: Path | None = None) -> str:
    """A mask as a checked data URI (an image file is read); ``img:`` references pass unchanged.

    ``InvalidInput`` naming ``field`` for a file that cannot be read or is not an image, or a bad data URI.
    """
    path = mask_path(mask, base_dir)
    if path is None:
        if not mask.startswith(IMAGE_REF):
            parse_data_uri(mask, field)
        return mask
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise InvalidInput(field, f"{mask!r}: {size} bytes, more than {MAX_IMAGE_BYTES}")
        uri = to_data_uri(path.read_bytes())
    except OSError as exc:
        raise InvalidInput(field, f"{mask!r}: cannot read {path} ({exc.strerror or exc})") from None
    try:
        parse_data_uri(uri, field)
    except InvalidInput as exc:
        raise InvalidInput(field, f"{mask!r}: {exc.rule}") from None
    return uri


def mask_reference(mask: str, rt: Runtime, field: str = "mask", base_dir: Path | None = None) -> str:
    """Store a mask (data URI, ``img:`` reference or image file path) once in Redis; return its reference."""
    return store_image(load_mask(mask, field, base_dir), rt)
