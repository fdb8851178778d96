"""Real PNGs for simulated results: a 2x2 grid for grid jobs, a single picture for upscales."""

from __future__ import annotations

import hashlib
import io
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw

GRID_SIZE = 256
SINGLE_SIZE = 128


def _colour(seed: str, index: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return digest[0], digest[1], digest[2]


def _tile(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], seed: str, index: int, text: str) -> None:
    draw.rectangle(box, fill=_colour(seed, index))
    x0, y0, x1, _ = box
    width_chars = max(8, (x1 - x0) // 7)
    for row, line in enumerate(textwrap.wrap(text, width_chars)[:6]):
        draw.text((x0 + 4, y0 + 4 + row * 12), line, fill=(255, 255, 255))


@lru_cache(maxsize=512)
def render_png(task_id: str, prompt: str, grid: bool) -> bytes:
    """The PNG bytes of a task's result image (cached: the same task always gives the same bytes)."""
    size = GRID_SIZE if grid else SINGLE_SIZE
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    label = prompt or task_id
    if grid:
        half = size // 2
        for index in range(4):
            x, y = (index % 2) * half, (index // 2) * half
            _tile(draw, (x, y, x + half - 1, y + half - 1), task_id, index, f"{index + 1}. {label}")
    else:
        _tile(draw, (0, 0, size - 1, size - 1), task_id, 0, label)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
