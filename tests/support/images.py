"""Small real images as data URIs for tests."""

from __future__ import annotations

import base64
import io


def png_data_uri(color: str = "red", size: tuple[int, int] = (64, 64)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
