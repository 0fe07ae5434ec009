"""Local-disk storage under one root folder (``CONVEYOR_HOME/storage`` by default)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from conveyor.errors import PermanentError
from conveyor.storage.base import StoredFile, UploadTooLarge, check_key

CHUNK = 1024 * 1024


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredFile:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise UploadTooLarge(f"the file is larger than {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return StoredFile(key=key, sha256=digest.hexdigest(), size=size)

    def put_file(self, key: str, path: Path) -> StoredFile:
        with open(path, "rb") as fh:
            return self.put_stream(key, fh)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def move(self, src: str, dst: str) -> None:
        s, d = self._path(src), self._path(dst)
        if not s.exists():
            if d.exists():
                return  # already moved: a repeated job
            raise PermanentError(f"the stored file {src} is missing", code="file_missing")
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(s, d)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def direct_url(self, key: str, expires_s: int) -> str | None:
        return None  # files are served by the app behind HMAC-signed /files links
