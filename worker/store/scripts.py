"""The Lua scripts of the store, kept as real files in ``lua/`` and joined with the key prefix they share."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import redis
from redis.commands.core import Script

from worker.store.keys import PREFIX

_DIR = Path(__file__).with_name("lua")


@cache
def source(*parts: str) -> str:
    """The script made of ``lua/<part>.lua`` files in order, after ``local P = '<prefix>'``."""
    return f"local P = '{PREFIX}'\n" + "".join((_DIR / f"{part}.lua").read_text() for part in parts)


def register(client: redis.Redis, *parts: str) -> Script:
    return client.register_script(source(*parts))
