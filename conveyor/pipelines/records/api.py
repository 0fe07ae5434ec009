"""Seed 000's HTTP API under ``/api/v1/upap``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, Header, HTTPException, Query, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from conveyor.accounts import Principal
from conveyor.api.deps import get_app_settings, get_storage, require_principal
from conveyor.config import Settings
from conveyor.db.session import read_session
from conveyor.errors import PermanentError
from conveyor.pipelines.records import service, views
from conveyor.pipelines.records.models import ArchiveRecord, PreviewRecord
from conveyor.pipelines.records.service import RecordsError
from conveyor.pipelines.records.views import preview_view, record_view
from conveyor.storage import Storage
from conveyor.storage.base import UploadTooLarge

router = APIRouter(prefix="/api/v1/upap", tags=["records"])


def _error(exc: RecordsError) -> HTTPException:
    return HTTPException(status_code=exc.status,
                         detail={"code": exc.code, "message": exc.message})


@router.post("/upload")
def upload(
    file: UploadFile = File(...),
    idempotency_key: str | None = Header(default=None, max_length=200),
    principal: Principal = Depends(require_principal),
    settings: Settings = Depends(get_app_settings),
    storage: Storage = Depends(get_storage),
) -> dict[str, str]:
    """Store the file, create the preview (UPLOADED), enqueue the pipeline: ``{preview_id}``."""
    try:
        result = service.create_preview(
            settings, storage, owner_id=principal.user_id, filename=file.filename,
            stream=file.file, idempotency_key=idempotency_key)
    except UploadTooLarge as exc:
        raise HTTPException(status_code=413, detail={"code": exc.code,
                                                     "message": exc.message}) from exc
    except RecordsError as exc:
        raise _error(exc) from exc
    return {"preview_id": result.preview_id}


@router.get("/preview/{preview_id}")
def get_preview(preview_id: str, principal: Principal = Depends(require_principal),
                settings: Settings = Depends(get_app_settings)) -> dict[str, Any]:
    with read_session(settings.resolved_database_url) as session:
        preview = session.get(PreviewRecord, preview_id)
        if preview is not None and principal.scope in (None, preview.user_id):
            return preview_view(session, settings, preview)
        record = session.scalars(select(ArchiveRecord)
                                 .where(ArchiveRecord.preview_id == preview_id)).first()
        if record is not None and principal.scope in (None, record.user_id):
            return record_view(session, settings, record)
    raise HTTPException(status_code=404, detail={"code": "preview_not_found",
                                                 "message": "no such preview"})


@router.get("/previews")
def list_previews(
    state: str | None = None, review_queue: bool = False,
    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
    principal: Principal = Depends(require_principal),
    settings: Settings = Depends(get_app_settings),
) -> dict[str, Any]:
    """Previews, newest first; ``review_queue=true``: those awaiting a person, least
    confident first."""
    with read_session(settings.resolved_database_url) as session:
        return {"previews": views.list_previews(session, settings, principal.scope,
                                                state=state, review_queue=review_queue,
                                                limit=limit, offset=offset)}


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artist: str | None = Field(default=None, max_length=300)
    album: str | None = Field(default=None, max_length=300)
    label: str | None = Field(default=None, max_length=300)
    catalog_number: str | None = Field(default=None, max_length=100)
    year: int | None = Field(default=None, ge=1877, le=2100)
    barcode: str | None = Field(default=None, max_length=32)
    genre: list[str] | None = None
    style: list[str] | None = None
    country: str | None = Field(default=None, max_length=100)
    format: list[str] | None = None
    archive: bool = False


@router.post("/preview/{preview_id}/review")
def review(preview_id: str, body: ReviewBody,
           principal: Principal = Depends(require_principal),
           settings: Settings = Depends(get_app_settings)) -> dict[str, Any]:
    """Apply edits (only the fields sent) → USER_REVIEWED, then enrichment runs.
    ``archive: true`` archives the record as soon as enrichment is done."""
    edits = body.model_dump(exclude_unset=True)
    archive = bool(edits.pop("archive", False))
    try:
        service.review_preview(settings, preview_id, principal.scope, edits, archive=archive)
    except RecordsError as exc:
        raise _error(exc) from exc
    with read_session(settings.resolved_database_url) as session:
        preview = session.get(PreviewRecord, preview_id)
        if preview is None:  # archived already by a fast worker
            return {"preview_id": preview_id, "state": "ARCHIVED"}
        return preview_view(session, settings, preview)


class ArchiveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preview_id: str = Field(max_length=64)


@router.post("/archive")
def archive(body: ArchiveBody, principal: Principal = Depends(require_principal),
            settings: Settings = Depends(get_app_settings),
            storage: Storage = Depends(get_storage)) -> dict[str, str]:
    try:
        record_id = service.archive_preview(settings, storage, body.preview_id, principal.scope)
    except RecordsError as exc:
        raise _error(exc) from exc
    except PermanentError as exc:
        raise HTTPException(status_code=409, detail={"code": exc.code,
                                                     "message": exc.message}) from exc
    return {"record_id": record_id}


@router.get("/records")
def list_records(
    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
    q: str | None = Query(default=None, max_length=200),
    principal: Principal = Depends(require_principal),
    settings: Settings = Depends(get_app_settings),
) -> dict[str, Any]:
    with read_session(settings.resolved_database_url) as session:
        total, records = views.list_records(session, settings, principal.scope, q=q,
                                            limit=limit, offset=offset)
    return {"total": total, "records": records}


@router.get("/records/{record_id}")
def get_record(record_id: str, principal: Principal = Depends(require_principal),
               settings: Settings = Depends(get_app_settings)) -> dict[str, Any]:
    with read_session(settings.resolved_database_url) as session:
        record = session.get(ArchiveRecord, record_id)
        if record is None or principal.scope not in (None, record.user_id):
            raise HTTPException(status_code=404, detail={"code": "record_not_found",
                                                         "message": "no such record"})
        return record_view(session, settings, record)


__all__ = ["router"]
