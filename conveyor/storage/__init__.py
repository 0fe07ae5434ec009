"""Storage backends behind the :class:`~conveyor.storage.base.Storage` port."""

from __future__ import annotations

from pathlib import Path

from conveyor.storage.base import Storage, StoredFile, safe_filename
from conveyor.storage.local import LocalStorage

__all__ = ["LocalStorage", "Storage", "StoredFile", "build_storage", "safe_filename"]


def build_storage(url: str) -> Storage:
    """``file:///path`` → local disk. (``s3://bucket/prefix`` comes with scale-out mode.)"""
    if url.startswith("file://"):
        return LocalStorage(Path(url.removeprefix("file://")))
    raise ValueError(f"unsupported CONVEYOR_STORAGE_URL scheme: {url.split(':', 1)[0]!r}")
