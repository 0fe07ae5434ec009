"""The storage port: keys like ``temp/{user}/{preview}_{name}`` map to bytes somewhere."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from conveyor.errors import PermanentError


@dataclass(frozen=True)
class StoredFile:
    key: str
    sha256: str
    size: int


class Storage(Protocol):
    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredFile:
        """Store a stream under ``key``; refuse (and keep nothing) past ``max_bytes``."""

    def put_file(self, key: str, path: Path) -> StoredFile: ...

    def read_bytes(self, key: str) -> bytes: ...

    def local_path(self, key: str) -> Path:
        """A local file with the content (the file itself, or a cached download)."""

    def move(self, src: str, dst: str) -> None:
        """Move a file; harmless to repeat once the move happened (``src`` gone, ``dst`` there)."""

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def direct_url(self, key: str, expires_s: int) -> str | None:
        """A URL the client can fetch the file from directly (an S3 presigned GET), valid for
        ``expires_s`` seconds; None when the backend has none (local disk: callers hand out
        the HMAC-signed ``/files`` link instead)."""


class UploadTooLarge(PermanentError):
    code = "upload_too_large"


class StoredFileMissing(PermanentError, FileNotFoundError):
    """No file under the key: a PermanentError for the engine, a FileNotFoundError for
    code that expects one (what :class:`LocalStorage` raises for a missing key)."""

    code = "file_missing"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A file name with no directory parts, no control or shell characters, at most 100 chars.

    ``../../etc/passwd`` → ``passwd``; ``C:\\x\\évil name.png`` → ``evil_name.png``.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    base = _UNSAFE.sub("_", base).strip("._")
    if not base:
        return default
    stem, dot, ext = base.rpartition(".")
    if dot and len(ext) <= 10:
        return f"{stem[: 100 - len(ext) - 1]}.{ext}"
    return base[:100]


def check_key(key: str) -> str:
    """Refuse keys that could escape the storage root."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise PermanentError(f"invalid storage key {key!r}", code="invalid_key")
    return key
