"""Real PNGs for simulated results: a 2x2 grid for grid jobs, a single picture for upscales and swaps.

Colours come from the prompt's hash (the same prompt looks the same), the text is the prompt itself;
rendering is deterministic and cached, so repeated downloads give identical bytes.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

GRID_SIZE = 256
SINGLE_SIZE = 128
MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def _colour(prompt: str, index: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{prompt}\x00{index}".encode()).digest()
    return digest[0] // 2 + 32, digest[1] // 2 + 32, digest[2] // 2 + 32  # dark enough for white text


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Loaded once: loading the default font costs more than drawing a whole image."""
    return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, origin: tuple[int, int], width: int, text: str) -> None:
    x, y = origin
    for row, line in enumerate(textwrap.wrap(text, max(8, width // 7))[:6]):
        draw.text((x, y + row * 12), line, fill=(255, 255, 255), font=_font())


@lru_cache(maxsize=1024)
def render_png(prompt: str, grid: bool, label: str = "") -> bytes:
    """The PNG bytes of a result image: ``grid`` gives four numbered tiles, else one picture."""
    size = GRID_SIZE if grid else SINGLE_SIZE
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    if grid:
        half = size // 2
        for index in range(4):
            x, y = (index % 2) * half, (index // 2) * half
            draw.rectangle((x, y, x + half - 1, y + half - 1), fill=_colour(prompt, index))
            draw.text((x + half - 14, y + half - 16), str(index + 1), fill=(255, 255, 255), font=_font())
    else:
        draw.rectangle((0, 0, size - 1, size - 1), fill=_colour(prompt, 0))
    _text(draw, (4, 4), size - 8, f"{label} {prompt}".strip() or "?")  # once: text is the costly part
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: flat colours compress well anyway
    return buffer.getvalue()


@lru_cache(maxsize=1024)
def render_tile(prompt: str, label: str, index: int, thumbnail: bool = False) -> bytes:
    """One of a grid's four images (1-4, left to right, top to bottom) as its own PNG, a quadrant in size;
    ``thumbnail`` gives it at half that size."""
    grid = Image.open(io.BytesIO(render_png(prompt, True, label)))
    half = GRID_SIZE // 2
    x, y = ((index - 1) % 2) * half, ((index - 1) // 2) * half
    tile = grid.crop((x, y, x + half, y + half))
    if thumbnail:
        tile = tile.resize((half // 2, half // 2))
    buffer = io.BytesIO()
    tile.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def sniff_mime(data: bytes) -> str:
    """The content type of stored upload bytes, by magic number (WEBP by its RIFF header)."""
    for magic, mime in MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
