"""Output images: download (``download``), what made them written into the files (``metadata``), thumbnails
(``thumbs``) and object storage (``storage``). The local copy under ``MJQ_MEDIA_DIR`` is always written first.
"""

from worker.media.download import (
    GRID_ACTIONS,
    DownloadError,
    SavedImage,
    download_image,
    loopback_problem,
    split_grid,
    write_atomic,
)

__all__ = [
    "GRID_ACTIONS",
    "DownloadError",
    "SavedImage",
    "download_image",
    "loopback_problem",
    "split_grid",
    "write_atomic",
]
