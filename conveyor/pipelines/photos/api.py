"""Seed 002's HTTP API: ``/photos`` (also mounted under ``/api/v1/photos``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import (
    APIRouter,
    Depends,
    File,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from pydantic import BaseModel, ConfigDict, Field

from conveyor.accounts import Principal
from conveyor.api.deps import get_app_settings, get_storage, require_admin, require_principal
from conveyor.config import Settings
from conveyor.db.session import read_session
from conveyor.errors import ConveyorError
from conveyor.pipelines.photos import service, views
from conveyor.pipelines.photos.analysis import provider_identity
from conveyor.pipelines.photos.service import PhotosError
from conveyor.pipelines.photos.states import STATUSES
from conveyor.storage import Storage
from conveyor.storage.base import UploadTooLarge

router = APIRouter(prefix="/photos", tags=["photos"])

MAX_PAGE = 200


def _http(exc: PhotosError) -> HTTPException:
    return HTTPException(status_code=exc.status, detail={"code": exc.code, "message": exc.message})


@router.post("", status_code=201)
def upload_photo(
    request: Request,
    response: Response,
    file: UploadFile = File(..., description="the photo (multipart field `file`)"),
    idempotency_key: str | None = Header(default=None, max_length=200),
    principal: Principal = Depends(require_principal),
    settings: Settings = Depends(get_app_settings),
    storage: Storage = Depends(get_storage),
) -> dict[str, str]:
    """Store the photo and queue its analysis: 201 ``{id, ai_processing_status}`` with a
    ``Location``. A repeated ``Idempotency-Key`` answers 200 with the first photo."""
    try:
        up = service.create_photo(
            settings, storage, owner_id=principal.user_id, filename=file.filename,
            stream=file.file, content_type=file.content_type, idempotency_key=idempotency_key)
    except UploadTooLarge as exc:
        raise HTTPException(status_code=413, detail={"code": exc.code,
                                                     "message": exc.message}) from exc
    except PhotosError as exc:
        raise _http(exc) from exc
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{up.photo_id}"
    if not up.created:
        response.status_code = 200
    return {"id": up.photo_id, "ai_processing_status": up.status}


@router.get("")
def list_photos(
    status: str | None = Query(default=None, max_length=20,
                               description="pending, processing, completed or failed"),
    limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0),
    principal: Principal = Depends(require_principal),
    settings: Settings = Depends(get_app_settings),
) -> dict[str, Any]:
    """The caller's photos (an admin's: everyone's), newest first."""
    if status is not None and status not in STATUSES:
        raise HTTPException(status_code=422, detail={
            "code": "invalid_status", "message": f"status must be one of {', '.join(STATUSES)}"})
    with read_session(settings.resolved_database_url) as session:
        total, photos = views.list_photos(session, settings, principal.scope, status=status,
                                          limit=limit, offset=offset)
    more = offset + len(photos) < total
    return {"photos": photos, "total": total, "limit": limit, "offset": offset,
            "next_offset": offset + len(photos) if more else None}


class ProcessBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["missing", "all"] = Field(
        description="missing: photos without a result of the current provider version; "
                    "all: every photo, recomputed")
    user: str | None = Field(default=None, max_length=100,
                             description="only this user's photos (default: everyone's)")


@router.post("/process")
def process(body: ProcessBody, principal: Principal = Depends(require_admin),
            settings: Settings = Depends(get_app_settings)) -> dict[str, Any]:
    """Admins: queue analyses (``missing`` or ``all``); answers the counts."""
    try:
        owner_id = service.user_id_for(settings, body.user) if body.user else None
        identity = provider_identity(settings)
        counts = service.process_photos(settings, owner_id=owner_id, mode=body.mode,
                                        provider=identity)
    except PhotosError as exc:
        raise _http(exc) from exc
    except ConveyorError as exc:  # the configured provider cannot be built
        raise HTTPException(status_code=503, detail={
            "code": "provider_unavailable",
            "message": exc.message}) from exc
    return counts.to_dict()


@router.get("/{photo_id}")
def get_photo(photo_id: str, audit: bool = False,
              principal: Principal = Depends(require_principal),
              settings: Settings = Depends(get_app_settings)) -> dict[str, Any]:
    """One photo: status, results, provider, error, signed image links (``audit=true``:
    also its audit trail). Someone else's photo is a 404."""
    with read_session(settings.resolved_database_url) as session:
        try:
            photo = service.load_photo(session, photo_id, principal.scope)
        except PhotosError as exc:
            raise _http(exc) from exc
        return views.photo_view(settings, photo, session=session, with_audit=audit)


__all__ = ["router"]
