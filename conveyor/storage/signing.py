"""HMAC-signed, expiring URLs for stored files shown in the UI or handed to an LLM."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode


def sign(key: bytes, storage_key: str, expires_at: int) -> str:
    msg = f"{storage_key}\n{expires_at}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def signed_path(key: bytes, storage_key: str, ttl_s: int = 3600, now: float | None = None) -> str:
    """``/files/<key>?exp=…&sig=…``; valid for ``ttl_s`` seconds."""
    expires = int((now or time.time()) + ttl_s)
    query = urlencode({"exp": expires, "sig": sign(key, storage_key, expires)})
    return f"/files/{quote(storage_key)}?{query}"


def verify(key: bytes, storage_key: str, expires_at: int, signature: str,
           now: float | None = None) -> bool:
    if expires_at < (now or time.time()):
        return False
    return hmac.compare_digest(sign(key, storage_key, expires_at), signature)
