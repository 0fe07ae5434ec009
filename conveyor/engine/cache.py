"""Provider response cache: the shared ``cache_entries`` table with an in-process LRU."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.db.base import utcnow
from conveyor.db.models import CacheEntry

_LRU_SIZE = 1024
_lru: OrderedDict[str, tuple[dict[str, Any], float | None]] = OrderedDict()


def cache_key(provider: str, request: dict[str, Any]) -> str:
    """A stable key for a normalised request: case, spacing and key order do not matter."""
    norm = {k: " ".join(str(v).casefold().split())
            for k, v in request.items() if v not in (None, "")}
    blob = json.dumps([provider, norm], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_get(session: Session, key: str) -> dict[str, Any] | None:
    now = utcnow()
    hit = _lru.get(key)
    if hit is not None:
        value, expires = hit
        if expires is None or expires > now.timestamp():
            _lru.move_to_end(key)
            return value
        _lru.pop(key, None)
    row = session.scalars(select(CacheEntry).where(CacheEntry.key == key)).first()
    if row is None or (row.expires_at is not None and row.expires_at <= now):
        return None
    _remember(key, row.value, row.expires_at.timestamp() if row.expires_at else None)
    return row.value


def cache_put(
    session: Session, key: str, provider: str, value: dict[str, Any], ttl_s: float | None
) -> None:
    expires = utcnow() + timedelta(seconds=ttl_s) if ttl_s else None
    try:
        with session.begin_nested():  # another process may write the same key right now
            session.execute(delete(CacheEntry).where(CacheEntry.key == key))
            session.add(CacheEntry(key=key, provider=provider, value=value,
                                   expires_at=expires))
    except IntegrityError:
        pass  # it did: its value is as good as ours
    _remember(key, value, expires.timestamp() if expires else None)


def _remember(key: str, value: dict[str, Any], expires: float | None) -> None:
    _lru[key] = (value, expires)
    _lru.move_to_end(key)
    while len(_lru) > _LRU_SIZE:
        _lru.popitem(last=False)


def clear_local_cache() -> None:
    _lru.clear()
