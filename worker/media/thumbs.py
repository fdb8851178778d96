"""Thumbnails made at download: WebP, 256 px on the longest side, in ``<batch folder>/thumbs/<name>.webp``.

Galleries and the dashboard show thousands of pictures at once; full-size upscales (several MB each) would make
a page of them slow. A thumbnail is a few KB and made once, next to its image (its own folder, so an upstream's
own ``.webp`` image never collides with it).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from PIL import Image

from worker.media.download import write_atomic

log = logging.getLogger("mjqueue.media")

THUMB_PX = 256
THUMB_DIR = "thumbs"


def thumb_path_for(image: Path) -> Path:
    return image.parent / THUMB_DIR / f"{image.stem}.webp"


def make_thumbnail(image: Path, size: int = THUMB_PX) -> Path | None:
    """Write the thumbnail of ``image``; None (and a warning) when Pillow cannot read it or the folder cannot be
    written: a picture without a thumbnail is still a picture."""
    try:
        with Image.open(image) as img:
            img.thumbnail((size, size))
            mode = "RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB"
            out = io.BytesIO()
            img.convert(mode).save(out, format="WEBP", quality=80, method=4)
        return write_atomic(thumb_path_for(image), out.getvalue())
    except (OSError, ValueError) as exc:  # unreadable image, or a folder we may not write to
        log.warning("no thumbnail for %s: %s", image.name, exc)
        return None
