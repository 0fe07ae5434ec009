"""How previews, records and their audit trails look in API responses and pages."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.db.models import AuditEvent, Item
from conveyor.pipelines.records.models import METADATA_FIELDS, ArchiveRecord, PreviewRecord
from conveyor.pipelines.records.states import ARCHIVED
from conveyor.storage import direct_url_for
from conveyor.storage.signing import signed_path


def audit_trail(session: Session, item_id: str) -> list[dict[str, Any]]:
    rows = session.scalars(select(AuditEvent).where(AuditEvent.item_id == item_id)
                           .order_by(AuditEvent.id))
    return [{"step": r.step, "state": r.state, "model_used": r.model_used,
             "confidence": r.confidence, "cost_estimate": r.cost_estimate,
             "duration_ms": r.duration_ms, "outcome": r.outcome, "detail": r.detail,
             "timestamp": r.timestamp.isoformat()} for r in rows]


def _metadata(row: PreviewRecord | ArchiveRecord) -> dict[str, Any]:
    return {f: getattr(row, f) for f in METADATA_FIELDS}


def field_confidence(row: PreviewRecord | ArchiveRecord) -> dict[str, float]:
    """Each field's confidence from the analysis tiers, while its value is still theirs
    (a field a person or a catalogue set afterwards has no model confidence)."""
    fields = (row.ai_metadata or {}).get("fields", {})
    sources = row.field_sources or {}
    return {k: float(v["confidence"]) for k, v in fields.items()
            if isinstance(v, dict) and v.get("source") == sources.get(k)}


def _image_url(settings: Settings, key: str | None) -> str | None:
    """The storage's own presigned URL (S3), else the app's HMAC-signed ``/files`` link."""
    if not key:
        return None
    return (direct_url_for(settings.resolved_storage_url, key, 3600)
            or signed_path(settings.signing_key(), key, ttl_s=3600))


def _row_view(session: Session, settings: Settings, row: PreviewRecord | ArchiveRecord,
              item_id: str) -> dict[str, Any]:
    """What a preview and its archived record show alike."""
    item = session.get(Item, item_id)
    return {
        "preview_id": item_id,
        "confidence": row.confidence,
        "metadata": _metadata(row),
        "field_sources": row.field_sources or {},
        "field_confidence": field_confidence(row),
        "enrichment_source": row.enrichment_source,
        "model_used": row.model_used,
        "cost_estimate": round(item.cost_total, 6) if item else row.cost_estimate,
        "original_filename": row.original_filename,
        "image_url": _image_url(settings, row.canonical_image_path),
        "error_code": item.error_code if item else None,
        "error_message": item.error_message if item else None,
    }


def preview_view(session: Session, settings: Settings, preview: PreviewRecord,
                 *, with_audit: bool = True) -> dict[str, Any]:
    view = _row_view(session, settings, preview, preview.preview_id)
    view.update(record_id=preview.record_id, state=preview.state, ocr_text=preview.ocr_text,
                created_at=preview.created_at.isoformat(),
                updated_at=preview.updated_at.isoformat())
    if with_audit:
        view["audit"] = audit_trail(session, preview.preview_id)
    return view


def record_view(session: Session, settings: Settings, record: ArchiveRecord,
                *, with_audit: bool = True) -> dict[str, Any]:
    view = _row_view(session, settings, record, record.preview_id)
    view.update(record_id=record.record_id, state=ARCHIVED,
                archived_at=record.archived_at.isoformat())
    if with_audit:
        view["audit"] = audit_trail(session, record.preview_id)
    return view


def list_previews(session: Session, settings: Settings, owner_id: str | None, *,
                  state: str | None = None, review_queue: bool = False, limit: int = 100,
                  offset: int = 0) -> list[dict[str, Any]]:
    """Previews, newest first; ``review_queue``: those awaiting a person (AI_ANALYZED and
    not about to archive themselves), least confident first. ``owner_id=None``: everyone's."""
    stmt = select(PreviewRecord)
    if owner_id is not None:
        stmt = stmt.where(PreviewRecord.user_id == owner_id)
    if review_queue:
        stmt = stmt.where(PreviewRecord.state == "AI_ANALYZED",
                          PreviewRecord.archive_after_enrich.is_(False))
        stmt = stmt.order_by(func.coalesce(PreviewRecord.confidence, 0.0),
                             PreviewRecord.created_at)
    else:
        stmt = stmt.order_by(PreviewRecord.created_at.desc())
    if state:
        stmt = stmt.where(PreviewRecord.state == state)
    rows = session.scalars(stmt.limit(limit).offset(offset)).all()
    return [preview_view(session, settings, p, with_audit=False) for p in rows]


def list_records(session: Session, settings: Settings, owner_id: str | None, *,
                 q: str | None = None, limit: int = 100,
                 offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """Archived records, newest first, optionally matching ``q`` in artist or album."""
    stmt = select(ArchiveRecord).order_by(ArchiveRecord.archived_at.desc())
    if owner_id is not None:
        stmt = stmt.where(ArchiveRecord.user_id == owner_id)
    if q:
        like = f"%{q}%"
        stmt = stmt.where(ArchiveRecord.artist.ilike(like) | ArchiveRecord.album.ilike(like))
    total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = session.scalars(stmt.limit(limit).offset(offset)).all()
    return total, [record_view(session, settings, r, with_audit=False) for r in rows]
