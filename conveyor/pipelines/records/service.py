"""Records use cases shared by the API, the CLI and the steps: upload, review, archive."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.db.base import new_id, utcnow
from conveyor.db.models import Item
from conveyor.db.session import read_session, transaction
from conveyor.engine.audit import AuditRecord, append_pipeline_log, write_audit
from conveyor.engine.events import emit
from conveyor.engine.jobs import JobSpec, enqueue
from conveyor.errors import ConveyorError
from conveyor.pipelines.records.models import METADATA_FIELDS, ArchiveRecord, PreviewRecord
from conveyor.pipelines.records.states import (
    ARCHIVABLE,
    ARCHIVED,
    PIPELINE,
    REVIEWABLE,
    UPLOADED,
    USER_REVIEWED,
)
from conveyor.storage.base import Storage, safe_filename


class RecordsError(ConveyorError):
    """A broken rule of the records API; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status


def temp_key(user_id: str, preview_id: str, filename: str) -> str:
    return f"temp/{user_id}/{preview_id}_{filename}"


def canonical_key(user_id: str, preview_id: str) -> str:
    return f"archive/{user_id}/{preview_id}.jpg"


def original_archive_key(user_id: str, preview_id: str, filename: str) -> str:
    return f"archive/{user_id}/originals/{preview_id}_{filename}"


def set_state(session: Session, preview: PreviewRecord, state: str, **extra: Any) -> None:
    """Move a preview and its item to ``state`` and tell SSE listeners."""
    preview.state = state
    item = session.get(Item, preview.preview_id)
    if item is not None:
        item.state = state
        item.confidence = preview.confidence
        item.error_code = extra.pop("error_code", None)
        item.error_message = extra.pop("error_message", None)
    emit(session, "item.state", owner_id=preview.user_id, item_id=preview.preview_id,
         pipeline=PIPELINE, state=state, confidence=preview.confidence,
         artist=preview.artist, album=preview.album, **extra)


def enrich_job(preview: PreviewRecord) -> JobSpec:
    """Enrichment of this revision of the preview (a later review makes it stale)."""
    rev = preview.revision or 0
    return JobSpec(pipeline=PIPELINE, step="enrich", item_id=preview.preview_id,
                   payload={"preview_id": preview.preview_id, "revision": rev},
                   idempotency_key=f"records:enrich:{preview.preview_id}:{rev}")


def _existing_for_key(session: Session, owner_id: str, key: str) -> str | None:
    return session.scalars(
        select(Item.id).where(Item.owner_id == owner_id, Item.idempotency_key == key)
    ).first()


@dataclass(frozen=True)
class Upload:
    preview_id: str
    created: bool


def create_preview(
    settings: Settings, storage: Storage, *, owner_id: str, filename: str | None,
    stream: BinaryIO, idempotency_key: str | None = None, run_id: str | None = None,
) -> Upload:
    """Store the upload, create the preview (UPLOADED), enqueue the pipeline. No decoding:
    the worker canonicalises, so the request returns at once."""
    db = settings.resolved_database_url
    idempotency_key = (idempotency_key or "").strip() or None
    if idempotency_key:
        with read_session(db) as session:
            found = _existing_for_key(session, owner_id, idempotency_key)
        if found:
            return Upload(found, False)
    preview_id = new_id()
    name = safe_filename(filename)
    key = temp_key(owner_id, preview_id, name)
    stored = storage.put_stream(key, stream, max_bytes=settings.max_upload_bytes)
    if stored.size == 0:
        storage.delete(key)
        raise RecordsError("the uploaded file is empty", code="empty_upload", status=400)
    audit = AuditRecord(step="UPLOAD", model_used=None, state=UPLOADED, cost_estimate=0.0,
                        detail={"filename": name, "bytes": stored.size, "sha256": stored.sha256})
    try:
        with transaction(db) as session:
            if idempotency_key and (found := _existing_for_key(session, owner_id, idempotency_key)):
                storage.delete(key)
                return Upload(found, False)
            session.add(Item(id=preview_id, pipeline=PIPELINE, owner_id=owner_id, state=UPLOADED,
                             idempotency_key=idempotency_key, run_id=run_id))
            session.flush()
            session.add(PreviewRecord(
                preview_id=preview_id, user_id=owner_id, state=UPLOADED, file_path=key,
                original_filename=name, content_hash=stored.sha256,
            ))
            # a brand-new preview: its first job needs no idempotency key
            enqueue(session, JobSpec(pipeline=PIPELINE, step="canonicalize", item_id=preview_id,
                                     payload={"preview_id": preview_id}, run_id=run_id))
            rows = write_audit(session, pipeline=PIPELINE, item_id=preview_id, job_id=None,
                               records=[audit])
            emit(session, "item.created", owner_id=owner_id, item_id=preview_id,
                 pipeline=PIPELINE, state=UPLOADED, filename=name)
    except IntegrityError:
        storage.delete(key)
        if idempotency_key:  # another request with the same key won the race
            with transaction(db) as session:
                found = _existing_for_key(session, owner_id, idempotency_key)
            if found:
                return Upload(found, False)
        raise
    except BaseException:
        storage.delete(key)  # nothing refers to the stored file: do not leave it behind
        raise
    append_pipeline_log(settings.logs_dir, rows)
    return Upload(preview_id, True)


def load_preview(session: Session, preview_id: str, user_id: str | None) -> PreviewRecord:
    """The caller's preview (``user_id=None``: an admin), locked for update. Another
    user's is 'not found'."""
    preview = session.get(PreviewRecord, preview_id, with_for_update=True,
                          populate_existing=True)
    if preview is None or (user_id is not None and preview.user_id != user_id):
        raise RecordsError("no such preview", code="preview_not_found", status=404)
    return preview


REVIEW_FIELDS = set(METADATA_FIELDS)


def review_preview(settings: Settings, preview_id: str, user_id: str | None,
                   edits: dict[str, Any], *, archive: bool = False) -> PreviewRecord:
    """Apply a person's edits (USER_REVIEWED) and enqueue enrichment."""
    unknown = set(edits) - REVIEW_FIELDS
    if unknown:
        raise RecordsError(f"unknown fields: {', '.join(sorted(unknown))}",
                           code="unknown_fields", status=422)
    db = settings.resolved_database_url
    with transaction(db) as session:
        preview = load_preview(session, preview_id, user_id)
        if preview.state not in REVIEWABLE:
            raise RecordsError(
                f"a preview in state {preview.state} cannot be reviewed "
                f"(allowed: {', '.join(REVIEWABLE)})", code="invalid_state", status=409)
        sources = dict(preview.field_sources or {})
        for key, value in edits.items():
            if isinstance(value, str):
                value = value.strip() or None
            setattr(preview, key, value)
            sources[key] = "user"
        preview.field_sources = sources
        preview.reviewed_at = utcnow()
        preview.archive_after_enrich = archive
        preview.revision = (preview.revision or 0) + 1
        set_state(session, preview, USER_REVIEWED)
        enqueue(session, enrich_job(preview))
        rows = write_audit(session, pipeline=PIPELINE, item_id=preview_id, job_id=None, records=[
            AuditRecord(step="REVIEW", model_used="user", state=USER_REVIEWED,
                        confidence=preview.confidence,
                        detail={"edited": sorted(edits), "archive": archive})])
    append_pipeline_log(settings.logs_dir, rows)
    return preview


def archive_in_session(session: Session, storage: Storage, preview: PreviewRecord,
                       actor: str) -> tuple[str, list[AuditRecord]]:
    """Archive inside the caller's transaction; returns the record id and the audit row."""
    if preview.state not in ARCHIVABLE:
        raise RecordsError(
            f"a preview in state {preview.state} cannot be archived "
            f"(allowed: {', '.join(ARCHIVABLE)})", code="invalid_state", status=409)
    if not (preview.artist or preview.album):
        raise RecordsError("an archived record needs an artist or an album",
                           code="missing_required_fields", status=422)
    record_id = str(uuid.uuid4())
    name = preview.original_filename or "upload"
    archived_original = original_archive_key(preview.user_id, preview.preview_id, name)
    storage.move(preview.file_path, archived_original)  # repeatable: keyed by preview id
    fields = {f: getattr(preview, f) for f in METADATA_FIELDS}
    session.add(ArchiveRecord(
        record_id=record_id, preview_id=preview.preview_id, user_id=preview.user_id,
        state=ARCHIVED, image_path=archived_original,
        canonical_image_path=preview.canonical_image_path,
        field_sources=preview.field_sources, ocr_text=preview.ocr_text,
        ocr_lines=preview.ocr_lines, ai_metadata=preview.ai_metadata,
        confidence=preview.confidence, model_used=preview.model_used,
        cost_estimate=preview.cost_estimate, enrichment_source=preview.enrichment_source,
        enrichment_data=preview.enrichment_data, original_filename=preview.original_filename,
        content_hash=preview.content_hash, uploaded_at=preview.created_at,
        reviewed_at=preview.reviewed_at, enriched_at=preview.enriched_at, **fields,
    ))
    preview.record_id = record_id
    set_state(session, preview, ARCHIVED, record_id=record_id)
    session.flush()
    session.delete(preview)
    return record_id, [AuditRecord(step="ARCHIVE", model_used=actor, state=ARCHIVED,
                                   confidence=preview.confidence,
                                   detail={"record_id": record_id})]


def archive_preview(settings: Settings, storage: Storage, preview_id: str,
                    user_id: str | None) -> str:
    """``POST /archive``: idempotent; the same preview archived twice gives the same id."""
    db = settings.resolved_database_url
    try:
        with transaction(db) as session:
            done = _archived(session, preview_id, user_id)
            if done is not None:
                return done
            preview = load_preview(session, preview_id, user_id)
            record_id, audits = archive_in_session(session, storage, preview, actor="user")
            rows = write_audit(session, pipeline=PIPELINE, item_id=preview_id, job_id=None,
                               records=audits)
    except (IntegrityError, RecordsError):
        # a concurrent archive (the auto-archive of an enrich step) won: same answer
        with read_session(db) as session:
            done = _archived(session, preview_id, user_id)
        if done is not None:
            return done
        raise
    append_pipeline_log(settings.logs_dir, rows)
    return record_id


def _archived(session: Session, preview_id: str, user_id: str | None) -> str | None:
    """The record id if this preview is archived already (404 for someone else's)."""
    done = session.scalars(
        select(ArchiveRecord).where(ArchiveRecord.preview_id == preview_id)).first()
    if done is None:
        return None
    if user_id is not None and done.user_id != user_id:
        raise RecordsError("no such preview", code="preview_not_found", status=404)
    return done.record_id
