"""Real PNGs for simulated results: a 2x2 grid for grid jobs, a single picture for upscales and swaps.

Colours come from the prompt's hash (the same prompt looks the same), the text is the prompt itself;
rendering is deterministic and cached, so repeated downloads give identical bytes.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw

GRID_SIZE = 256
SINGLE_SIZE = 128
MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def _colour(prompt: str, index: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{prompt}\x00{index}".encode()).digest()
    return digest[0] // 2 + 32, digest[1] // 2 + 32, digest[2] // 2 + 32  # dark enough for white text


def _tile(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], colour: tuple[int, int, int],
          text: str) -> None:
    draw.rectangle(box, fill=colour)
    x0, y0, x1, _ = box
    width_chars = max(8, (x1 - x0) // 7)
    for row, line in enumerate(textwrap.wrap(text, width_chars)[:6]):
        draw.text((x0 + 4, y0 + 4 + row * 12), line, fill=(255, 255, 255))


@lru_cache(maxsize=1024)
def render_png(prompt: str, grid: bool, label: str = "") -> bytes:
    """The PNG bytes of a result image: ``grid`` gives four numbered tiles, else one picture."""
    size = GRID_SIZE if grid else SINGLE_SIZE
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    text = f"{label} {prompt}".strip() or "?"
    if grid:
        half = size // 2
        for index in range(4):
            x, y = (index % 2) * half, (index // 2) * half
            _tile(draw, (x, y, x + half - 1, y + half - 1), _colour(prompt, index), f"{index + 1}. {text}")
    else:
        _tile(draw, (0, 0, size - 1, size - 1), _colour(prompt, 0), text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sniff_mime(data: bytes) -> str:
    """The content type of stored upload bytes, by magic number (WEBP by its RIFF header)."""
    for magic, mime in MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
