"""Bearer keys of the HTTP API, in a TOML file (``MJQ_SERVE_KEYS_FILE``) that holds only their sha256.

A key is printed once by ``mjq serve-key add`` and never stored: a leaked keys file lets nobody in. The file is
read again when it changes, so a key added while ``mjq serve`` runs works at once.

A key may carry its own callback secret (``mjq serve-key add NAME --callback-secret``): the callbacks of the
jobs and batches it creates are signed with it instead of ``MJQ_CALLBACK_SECRET``, so each service verifies
with a secret no other service knows. A signer must know the secret itself, so it is kept here in the clear
(the file is written 0600); it never travels elsewhere: jobs carry only the key's name (``callback_signer``),
and the worker that signs reads the secret from this file (the ``state`` volume in docker-compose). This
module sits beside ``worker/batchfile.py`` because both the API (keys) and the worker (secrets) read it.

```toml
[[keys]]
name = "shop"            # owner of the jobs and batches made with this key
sha256 = "9f86d0..."     # hex sha256 of the key
admin = false            # an admin key sees (and steers) every job and batch
max_priority = 0         # the most urgent priority this key may ask for (0 = any, 9 = only the least urgent)
daily_jobs = 0           # jobs per UTC day (0 = no quota)
callback_secret = "whsec_..."  # optional: signs this key's callbacks (else MJQ_CALLBACK_SECRET)
```
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 letters, digits and . _ - (starting with a letter or digit)"
KEY_PREFIX = "mjq_"
SECRET_PREFIX = "whsec_"
SECRET_RULE = "whsec_ then the base64 of 24 or more random bytes (Standard Webhooks)"


class KeyFileError(ValueError):
    """The keys file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class ServiceKey:
    name: str
    sha256: str
    admin: bool = False
    max_priority: int = 0
    daily_jobs: int = 0
    callback_secret: str = field(default="", repr=False)  # never in a repr, a log line or an exception


def new_callback_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _secret_ok(value: str) -> bool:
    if not value.startswith(SECRET_PREFIX):
        return False
    try:
        return len(base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)) >= 24
    except (binascii.Error, ValueError):
        return False


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _entry(raw: Any, index: int, path: Path) -> ServiceKey:
    where = f"{path}: keys[{index}]"
    if not isinstance(raw, dict):
        raise KeyFileError(f"{where}: must be a table")
    name, sha = raw.get("name"), raw.get("sha256")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise KeyFileError(f"{where}: 'name' must be {NAME_RULE}")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise KeyFileError(f"{where}: 'sha256' must be 64 lowercase hex digits")
    admin = raw.get("admin", False)
    if not isinstance(admin, bool):
        raise KeyFileError(f"{where}: 'admin' must be true or false")
    max_priority, daily_jobs = raw.get("max_priority", 0), raw.get("daily_jobs", 0)
    if isinstance(max_priority, bool) or not isinstance(max_priority, int) or not 0 <= max_priority <= 9:
        raise KeyFileError(f"{where}: 'max_priority' must be a whole number 0-9")
    if isinstance(daily_jobs, bool) or not isinstance(daily_jobs, int) or daily_jobs < 0:
        raise KeyFileError(f"{where}: 'daily_jobs' must be a whole number, 0 or more")
    secret = raw.get("callback_secret", "")
    if not isinstance(secret, str) or (secret and not _secret_ok(secret)):
        raise KeyFileError(f"{where}: 'callback_secret' must be {SECRET_RULE}")  # the value is never shown
    return ServiceKey(name, sha, admin, max_priority, daily_jobs, secret)


def read_keys(path: Path) -> list[ServiceKey]:
    """Every key of the file (none when it does not exist); a bad file raises ``KeyFileError``."""
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read it ({exc})") from None
    raw = data.get("keys", [])
    if not isinstance(raw, list):
        raise KeyFileError(f"{path}: 'keys' must be an array of tables ([[keys]])")
    found = [_entry(item, i, path) for i, item in enumerate(raw)]
    names = [k.name for k in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise KeyFileError(f"{path}: key name(s) used twice: {', '.join(twice)}")
    return found


def add_key(
    path: Path, name: str, *, admin: bool = False, max_priority: int = 0, daily_jobs: int = 0,
    callback_secret: str = "",
) -> str:
    """Create a key named ``name``, store its hash in ``path`` and return the key (shown once, never stored).
    ``callback_secret`` (``new_callback_secret()``) is stored with it: the key's callbacks are signed with it."""
    if not NAME_RE.match(name):
        raise KeyFileError(f"name {name!r}: must be {NAME_RULE}")
    existing = read_keys(path)
    if any(k.name == name for k in existing):
        raise KeyFileError(f"{path}: a key named {name!r} exists already")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = ServiceKey(name, digest(key), admin, max_priority, daily_jobs, callback_secret)
    _entry(asdict(entry), len(existing), path)  # the same checks as reading
    path.parent.mkdir(parents=True, exist_ok=True)
    body = tomli_w.dumps({"keys": [_stored(k) for k in [*existing, entry]]})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


def _stored(key: ServiceKey) -> dict[str, Any]:
    out = asdict(key)
    if not out["callback_secret"]:
        del out["callback_secret"]
    return out


class KeyRing:
    """The keys of a file, read again when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._keys: list[ServiceKey] = []
        self._lock = threading.Lock()

    def _current(self) -> list[ServiceKey]:
        try:
            info = self.path.stat()
            stamp = (info.st_mtime, info.st_size)
        except FileNotFoundError:
            stamp = (0.0, -1)
        with self._lock:
            if stamp != self._stamp:
                self._keys = read_keys(self.path)
                self._stamp = stamp
            return self._keys

    def find(self, key: str) -> ServiceKey | None:
        """The entry of a presented key (compared in constant time), None when unknown."""
        wanted = digest(key)
        match = None
        for entry in self._current():
            if hmac.compare_digest(entry.sha256, wanted):
                match = entry
        return match

    def count(self) -> int:
        return len(self._current())

    def callback_secret(self, name: str) -> str:
        """The callback secret of the key named ``name`` ("" when it has none or is gone)."""
        return next((k.callback_secret for k in self._current() if k.name == name), "")
