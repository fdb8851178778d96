"""Object storage of output images: every image, thumbnail and sidecar also goes to ``MJQ_MEDIA_URL`` (fsspec).

A worker's local disk is read by nobody else: other hosts, and the services that asked for the images, need a
shared place and a URL. The local copy is always written first and kept; the upload is a second step of the
finishing task, retried like a download (``worker.jobs.finishing``). A file's key is its path under
``MJQ_MEDIA_DIR`` (``<batch>/<job>.png``, ``<batch>/thumbs/<job>.webp``), the same under ``MJQ_MEDIA_URL``, and
``MJQ_MEDIA_PUBLIC_URL`` maps it to the URL services get. URLs are opened as the retention archive opens them
(``fsspec.core.url_to_fs``); S3 settings for non-AWS servers come from ``MJQ_MEDIA_S3_*`` and any backend's from
``MJQ_MEDIA_STORAGE_OPTIONS``. Credentials never reach a log, a result or an exception text: errors are reworded
here with every secret value blanked out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fsspec

from worker.settings import Settings

# Errors that say the request itself is wrong: retrying cannot help (everything else, e.g. a refused
# connection, a timeout or a 5xx, is worth another try).
PERMANENT: tuple[type[BaseException], ...] = (PermissionError, FileNotFoundError, NotADirectoryError, ValueError,
                                              TypeError, ImportError)


class UploadError(Exception):
    """A file could not be stored at ``MJQ_MEDIA_URL``; ``transient`` errors are worth another try."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class MediaStore:
    """Where output files are stored besides the local media folder, and the URL each one gets."""

    local_root: Path
    url: str  # MJQ_MEDIA_URL, or file:// + the media folder
    public_template: str
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def remote(self) -> bool:
        """True when files must be copied somewhere else than the local media folder."""
        protocol, _ = fsspec.core.split_protocol(self.url)
        if protocol not in (None, "file", "local"):
            return True
        _, root = fsspec.core.url_to_fs(self.url)
        return Path(root).resolve() != self.local_root.resolve()

    def key(self, path: Path) -> str:
        """The file's key: its path under the local media folder, with forward slashes."""
        return path.resolve().relative_to(self.local_root.resolve()).as_posix()

    def uri(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    def public_url(self, key: str) -> str | None:
        return self.public_template.replace("{key}", quote(key, safe="/")) if self.public_template else None

    def put(self, path: Path) -> str:
        """Copy the local file to its key under ``url``; its URI. Safe to repeat (same key, same bytes)."""
        key = self.key(path)
        target = self.uri(key)
        try:
            fs, remote_path = fsspec.core.url_to_fs(target, **self.options)
            parent = remote_path.rsplit("/", 1)[0]
            if _is_local(fs):
                fs.makedirs(parent, exist_ok=True)
            fs.put_file(str(path), remote_path)
        except Exception as exc:  # every backend has its own error tree; classify by what they map to
            transient = not isinstance(exc, PERMANENT) or isinstance(exc, TimeoutError | ConnectionError)
            message = f"upload of {key} to {self.url} failed: {type(exc).__name__}: {str(exc)[:300]}"
            raise UploadError(self._clean(message), transient) from None  # no chained traceback: it may carry
        return target  # the backend's request

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def media_store(settings: Settings) -> MediaStore:
    """The store of these settings (``MJQ_MEDIA_URL``, ``MJQ_MEDIA_PUBLIC_URL``, the S3 and storage options)."""
    local = settings.media_dir
    url = settings.media_url or local.resolve().as_uri()
    options: dict[str, Any] = {}
    key_id = settings.media_s3_access_key_id.get_secret_value()
    secret = settings.media_s3_secret_access_key.get_secret_value()
    if url.split("://", 1)[0] in ("s3", "s3a"):
        if settings.media_s3_endpoint_url:
            options["endpoint_url"] = settings.media_s3_endpoint_url
        if settings.media_s3_region:
            options["client_kwargs"] = {"region_name": settings.media_s3_region}
        if key_id or secret:
            options.update(key=key_id or None, secret=secret or None)
        # one try per upload: our own retries (MJQ_UPLOAD_ATTEMPTS) pace them, without holding the worker
        options["config_kwargs"] = {
            "retries": {"max_attempts": 1},
            "connect_timeout": settings.http_connect_timeout_s,
            "read_timeout": settings.http_timeout_s,
        }
    extra_text = settings.media_storage_options.get_secret_value()
    extra = json.loads(extra_text) if extra_text else {}
    options.update(extra)
    secrets = [value for value in (key_id, secret) if value]
    secrets += [str(value) for value in _leaves(extra) if isinstance(value, str) and len(value) >= 4]
    return MediaStore(local, url, settings.media_public_url, options, tuple(secrets))


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return bool({"file", "local"} & set(protocol))
