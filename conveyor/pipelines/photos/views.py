"""How photos look in API responses and pages (one builder for both)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.db.models import AuditEvent
from conveyor.pipelines.photos.models import Photo
from conveyor.storage.signing import signed_path

IMAGE_URL_TTL_S = 3600


def _signed(settings: Settings, key: str | None) -> str | None:
    return signed_path(settings.signing_key(), key, ttl_s=IMAGE_URL_TTL_S) if key else None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def audit_trail(session: Session, item_id: str) -> list[dict[str, Any]]:
    """The photo's audit rows, oldest first: step, model, confidence, cost, duration."""
    rows = session.scalars(select(AuditEvent).where(AuditEvent.item_id == item_id)
                           .order_by(AuditEvent.id))
    return [{"step": r.step, "state": r.state, "model_used": r.model_used,
             "confidence": r.confidence, "cost_estimate": r.cost_estimate,
             "duration_ms": r.duration_ms, "outcome": r.outcome, "detail": r.detail,
             "timestamp": r.timestamp.isoformat()} for r in rows]


def photo_view(settings: Settings, photo: Photo, *, session: Session | None = None,
               with_audit: bool = False) -> dict[str, Any]:
    """``GET /photos/{id}``: the photo, its status and results, and signed image links.

    ``image_url`` is the canonical JPEG once the photo was decoded (every browser shows
    it), else the original upload; ``thumbnail_url`` a small copy for grids."""
    view: dict[str, Any] = {
        "id": photo.id,
        "original_filename": photo.original_filename,
        "content_type": photo.content_type,
        "size_bytes": photo.size_bytes,
        "content_sha256": photo.content_sha256,
        "width": photo.width,
        "height": photo.height,
        "created_at": _iso(photo.created_at),
        "updated_at": _iso(photo.updated_at),
        "ai_processing_status": photo.ai_processing_status,
        "ai_results": photo.ai_results,
        "ai_error_code": photo.ai_error_code,
        "ai_error_message": photo.ai_error_message,
        "ai_provider_used": photo.ai_provider_used,
        "ai_provider_version": photo.ai_provider_version,
        "processed_at": _iso(photo.processed_at),
        "image_url": _signed(settings, photo.canonical_key or photo.storage_key),
        "original_url": _signed(settings, photo.storage_key),
        "thumbnail_url": _signed(settings, photo.thumbnail_key),
    }
    if with_audit and session is not None:
        view["audit"] = audit_trail(session, photo.id)
    return view


def list_photos(session: Session, settings: Settings, owner_id: str | None, *,
                status: str | None = None, limit: int = 50,
                offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """Photos newest first (``owner_id=None``: everyone's) and how many match in all."""
    stmt = select(Photo)
    if owner_id is not None:
        stmt = stmt.where(Photo.owner_id == owner_id)
    if status:
        stmt = stmt.where(Photo.ai_processing_status == status)
    total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = session.scalars(stmt.order_by(Photo.created_at.desc(), Photo.id.desc())
                           .limit(limit).offset(offset)).all()
    return total, [photo_view(settings, p) for p in rows]


def status_counts(session: Session, owner_id: str | None) -> dict[str, int]:
    stmt = select(Photo.ai_processing_status, func.count()).group_by(
        Photo.ai_processing_status)
    if owner_id is not None:
        stmt = stmt.where(Photo.owner_id == owner_id)
    return {status: int(n) for status, n in session.execute(stmt)}


def near_duplicate_views(session: Session, settings: Settings, photo: Photo,
                         scope: str | None) -> list[dict[str, Any]]:
    """The photo's near-duplicates that still exist, with their names and thumbnails."""
    entries = [d for d in ((photo.ai_results or {}).get("near_duplicates") or [])
               if isinstance(d, dict) and d.get("photo_id")]
    ids = [str(d["photo_id"]) for d in entries]
    if not ids:
        return []
    stmt = select(Photo).where(Photo.id.in_(ids))
    if scope is not None:
        stmt = stmt.where(Photo.owner_id == scope)
    found = {p.id: p for p in session.scalars(stmt)}
    out = []
    for entry in entries:
        other = found.get(str(entry["photo_id"]))
        if other is None:
            continue
        out.append({"photo_id": other.id, "distance": entry.get("distance"),
                    "original_filename": other.original_filename,
                    "thumbnail_url": _signed(settings, other.thumbnail_key)})
    return out
