"""Images coming back: downloading final images into ``<media>/<batch>/<job>.<ext>`` (CDN links expire in a day).

What made the image is written into the file on its way to disk (``worker.media.metadata``), so the sha256
recorded is that of the stored file: ``sha256sum`` of the file (local or in object storage) matches the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from PIL import Image

from worker.media.metadata import embed
from worker.mjapi.images import sniff_kind


class DownloadError(Exception):
    """A final image could not be downloaded; ``transient`` errors are worth another try."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class SavedImage:
    path: Path
    sha256: str
    size: int
    width: int | None
    height: int | None
    mime: str | None


_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def loopback_problem(image_url: str, upstream_base_url: str | None) -> str | None:
    """An ``imageUrl`` on localhost from an upstream that is not local: a relay (new-api rewrites image URLs
    to ``<its address>/mj/image/<id>``) whose server address is misconfigured. Retrying cannot help."""
    if upstream_base_url and _is_loopback(image_url) and not _is_loopback(upstream_base_url):
        return (
            f"image host is loopback: the relay's server address is misconfigured (imageUrl {image_url[:120]}, "
            f"upstream {upstream_base_url}); set the relay's server address to a URL reachable from here"
        )
    return None


def download_image(
    url: str,
    directory: Path,
    name: str,
    *,
    timeout: float = 30.0,
    client: httpx.Client | None = None,
    upstream_base_url: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> SavedImage:
    """GET ``url`` and write it atomically (temp file + rename) as ``directory/name.<ext>``, with ``metadata``
    written into the file (``worker.media.metadata.embed``).

    The extension comes from the bytes (magic numbers), not the URL. Connect errors, timeouts, 5xx and 429
    are transient; other HTTP errors and non-images are not; a loopback image URL from a remote upstream is
    refused at once (``loopback_problem``).
    """
    problem = loopback_problem(url, upstream_base_url)
    if problem:
        raise DownloadError(problem, transient=False)
    own = client is None
    http = client or httpx.Client(timeout=timeout, follow_redirects=True)
    try:
        response = http.get(url)
    except httpx.TransportError as exc:
        raise DownloadError(f"download failed: {type(exc).__name__}", transient=True) from None
    finally:
        if own:
            http.close()
    if response.status_code >= 500 or response.status_code == 429:
        raise DownloadError(f"download failed: HTTP {response.status_code}", transient=True)
    if response.status_code != 200:
        raise DownloadError(f"download failed: HTTP {response.status_code}", transient=False)
    data = response.content
    mime = sniff_kind(data)
    if mime is None:
        raise DownloadError("download is not an image", transient=False)
    width = height = None
    # dimensions are a nicety; the bytes are what matter
    with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as img:
        width, height = img.size
    if metadata:
        data = embed(data, mime, metadata, (width, height))
    return _write(data, directory, name, mime, (width, height))


def _write(data: bytes, directory: Path, name: str, mime: str, size: tuple[int | None, int | None]) -> SavedImage:
    """Write image bytes as ``directory/name.<ext>``; the sha256 is of exactly these bytes."""
    final = write_atomic(directory / f"{name}.{_EXT.get(mime, 'bin')}", data)
    return SavedImage(final, hashlib.sha256(data).hexdigest(), len(data), size[0], size[1], mime)


def write_atomic(final: Path, data: bytes) -> Path:
    """Write a file atomically (temp file + fsync + rename): a reader never sees half of it."""
    directory = final.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{final.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return final


GRID_ACTIONS = frozenset({"IMAGINE", "VARIATION", "REROLL", "ZOOM", "PAN", "BLEND"})


def split_grid(
    grid: Path, directory: Path, name: str, metadata: Mapping[str, str] | None = None
) -> list[SavedImage]:
    """The four images of a 2x2 grid as ``directory/name_<1-4>.png`` (top-left, top-right, bottom-left,
    bottom-right, Midjourney's U1-U4 order): the same pixels U1-U4 would fetch at grid size, at no cost.
    Each tile carries ``metadata`` and its ``tile`` number."""
    out: list[SavedImage] = []
    with Image.open(grid) as img:
        width, height = img.size
        half_w, half_h = width // 2, height // 2
        boxes = [(0, 0), (half_w, 0), (0, half_h), (half_w, half_h)]
        for index, (left, top) in enumerate(boxes, start=1):
            tile = img.crop((left, top, left + half_w, top + half_h))
            buffer = io.BytesIO()
            tile.save(buffer, format="PNG")
            data = buffer.getvalue()
            if metadata:
                data = embed(data, "image/png", {**metadata, "tile": str(index)}, tile.size)
            out.append(_write(data, directory, f"{name}_{index}", "image/png", tile.size))
    return out
