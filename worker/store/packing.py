"""A job hash written compactly, so a finished job's record stays small in Redis (about 3 KB a job with its result).

Two tricks, both undone by ``worker.store.ledger.decode_job`` (the one reader of whole records):

- a value another field of the record implies (``IMPLIED``: the task id that is the job id, the ``file://``
  URI of a local image) is stored as ``SAME`` and rebuilt from that field;
- a long JSON value (``PACKED_FIELDS``) is stored deflated.

A finished job's ``buttons`` (nine custom ids carrying the same upstream message hash) are the largest field of
its record, about 1 KB of JSON; deflated and written in base85 they take about 250 bytes. Packed values start
with ``z:``, which no JSON text starts with, so a record written before packing reads the same. Only fields that
Python alone reads and writes are packed (never one a Lua script or a raw ``HGET`` decodes).
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping

# field -> (the field that implies it, the prefix put before that field's value)
IMPLIED = {"task_id": ("job_id", ""), "image_uri": ("image_path", "file://"), "thumb_uri": ("thumb_path", "file://")}
SAME = "="
PACKED_FIELDS = frozenset({"buttons"})
PACK_OVER = 160  # shorter JSON is kept as it is: packing would not win much, and it stays readable in redis-cli
MARK = "z:"


def pack(text: str) -> str:
    """``text`` deflated (raw, no zlib header) and written in base85, when that is shorter."""
    if len(text) <= PACK_OVER:
        return text
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = MARK + base64.b85encode(squeeze.compress(text.encode()) + squeeze.flush()).decode("ascii")
    return packed if len(packed) < len(text.encode()) else text


def unpack(value: str) -> str:
    """The JSON text of a value written by :func:`pack` (any other value as it is)."""
    if not value.startswith(MARK):
        return value
    try:
        return zlib.decompress(base64.b85decode(value[len(MARK):]), -15).decode()
    except zlib.error as exc:
        raise ValueError(f"packed value does not inflate: {exc}") from None


def imply(out: dict[str, str], given: Mapping[str, str]) -> None:
    """Replace in ``out`` the values that ``given`` (the same write, the job id included) implies by ``SAME``."""
    for name, (source, prefix) in IMPLIED.items():
        if name in out and given.get(source) and out[name] == prefix + given[source]:
            out[name] = SAME


def implied(name: str, value: str, raw: Mapping[str, str]) -> str:
    """The value of ``name`` as written before :func:`imply` (``raw``: the whole record as stored)."""
    if value != SAME or name not in IMPLIED:
        return value
    source, prefix = IMPLIED[name]
    return prefix + raw.get(source, "")
