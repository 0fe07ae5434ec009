"""Photos use cases shared by the API, the CLI, the pages and the steps: upload, status
changes, (re)processing.

The upload only stores the file and enqueues the analysis in the transaction that creates
the photo (seed 002: the photo service "does not directly call the AIService"); the worker
step in :mod:`conveyor.pipelines.photos.steps` decodes and analyses it.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.db.base import new_id
from conveyor.db.models import Item, Job, User
from conveyor.db.session import read_session, transaction
from conveyor.engine.audit import AuditRecord, append_pipeline_log, write_audit
from conveyor.engine.events import emit
from conveyor.engine.jobs import ACTIVE, JobSpec, enqueue
from conveyor.errors import ConveyorError
from conveyor.pipelines.photos.models import Photo
from conveyor.pipelines.photos.states import (
    ANALYSE_STEP,
    COMPLETED,
    FAILED,
    MODE_ALL,
    MODE_MISSING,
    MODES,
    PENDING,
    PIPELINE,
)
from conveyor.storage.base import Storage, safe_filename

#: Photos re-queued per transaction by :func:`process_photos`.
PROCESS_BATCH = 500
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$")


class PhotosError(ConveyorError):
    """A broken rule of the photos API; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status


# --- storage keys ----------------------------------------------------------------------------

def original_key(owner_id: str, photo_id: str, filename: str) -> str:
    return f"photos/{owner_id}/{photo_id}_{filename}"


def canonical_key(owner_id: str, photo_id: str) -> str:
    """The canonical JPEG the analyse step derives (what the UI shows and providers see)."""
    return f"derived/photos/{owner_id}/{photo_id}.jpg"


def thumbnail_key(owner_id: str, photo_id: str) -> str:
    return f"derived/photos/{owner_id}/{photo_id}_thumb.jpg"


# --- jobs and status -------------------------------------------------------------------------

def analyse_job(photo_id: str, *, force: bool = False, run_id: str | None = None) -> JobSpec:
    """The analysis of one photo. While one is pending or running, asking again returns it
    (the idempotency key); ``force`` (process "all") recomputes even a cached result."""
    key = f"photos:{ANALYSE_STEP}:{photo_id}" + (":force" if force else "")
    return JobSpec(pipeline=PIPELINE, step=ANALYSE_STEP, item_id=photo_id,
                   payload={"photo_id": photo_id, "force": force}, idempotency_key=key,
                   run_id=run_id)


def set_status(session: Session, photo: Photo, status: str, *, error_code: str | None = None,
               error_message: str | None = None, **extra: Any) -> None:
    """Move a photo and its item to ``status`` and tell SSE listeners."""
    photo.ai_processing_status = status
    photo.ai_error_code = error_code
    photo.ai_error_message = error_message
    item = session.get(Item, photo.item_id)
    if item is not None:
        item.state = status
        item.error_code = error_code
        item.error_message = error_message
    emit(session, "item.state", owner_id=photo.owner_id, item_id=photo.id, pipeline=PIPELINE,
         state=status, ai_processing_status=status, error_code=error_code,
         error_message=error_message, filename=photo.original_filename, **extra)


# --- upload ----------------------------------------------------------------------------------

def clean_content_type(declared: str | None, filename: str) -> str | None:
    """The declared media type if it looks like one (``image/jpeg``), else a guess from the
    file name, else None. Only recorded: the decoder decides what the file really is."""
    value = (declared or "").split(";", 1)[0].strip().lower()
    if _CONTENT_TYPE.match(value) and value != "application/octet-stream":
        return value
    guessed, _ = mimetypes.guess_type(filename)
    return guessed


def _existing_for_key(session: Session, owner_id: str, key: str) -> Photo | None:
    return session.scalars(
        select(Photo).join(Item, Item.id == Photo.item_id)
        .where(Item.owner_id == owner_id, Item.idempotency_key == key,
               Item.pipeline == PIPELINE)).first()


@dataclass(frozen=True)
class PhotoUpload:
    photo_id: str
    created: bool  # False: an earlier request with the same Idempotency-Key made it
    status: str


def create_photo(
    settings: Settings, storage: Storage, *, owner_id: str, filename: str | None,
    stream: BinaryIO, content_type: str | None = None, idempotency_key: str | None = None,
    run_id: str | None = None,
) -> PhotoUpload:
    """Store the upload, create the photo (``pending``) and its item, and enqueue its
    analysis, all in one transaction. Nothing is decoded or analysed here.

    Raises :class:`~conveyor.storage.base.UploadTooLarge` past ``max_upload_bytes`` and
    :class:`PhotosError` (400 ``empty_upload``) for an empty file."""
    db = settings.resolved_database_url
    idempotency_key = (idempotency_key or "").strip() or None
    if idempotency_key:
        with read_session(db) as session:
            found = _existing_for_key(session, owner_id, idempotency_key)
            if found is not None:
                return PhotoUpload(found.id, False, found.ai_processing_status)
    photo_id = new_id()
    name = safe_filename(filename, default="photo")
    key = original_key(owner_id, photo_id, name)
    stored = storage.put_stream(key, stream, max_bytes=settings.max_upload_bytes)
    if stored.size == 0:
        storage.delete(key)
        raise PhotosError("the uploaded file is empty", code="empty_upload", status=400)
    ctype = clean_content_type(content_type, name)
    audit = AuditRecord(step="UPLOAD", state=PENDING, detail={
        "filename": name, "bytes": stored.size, "sha256": stored.sha256,
        "content_type": ctype})
    try:
        with transaction(db) as session:
            if idempotency_key and (found := _existing_for_key(session, owner_id,
                                                               idempotency_key)):
                storage.delete(key)
                return PhotoUpload(found.id, False, found.ai_processing_status)
            session.add(Item(id=photo_id, pipeline=PIPELINE, owner_id=owner_id, state=PENDING,
                             idempotency_key=idempotency_key, run_id=run_id))
            session.flush()
            session.add(Photo(
                id=photo_id, item_id=photo_id, owner_id=owner_id, original_filename=name,
                storage_key=key, content_type=ctype, size_bytes=stored.size,
                content_sha256=stored.sha256, ai_processing_status=PENDING))
            enqueue(session, analyse_job(photo_id, run_id=run_id))
            rows = write_audit(session, pipeline=PIPELINE, item_id=photo_id, job_id=None,
                               records=[audit])
            emit(session, "item.created", owner_id=owner_id, item_id=photo_id,
                 pipeline=PIPELINE, state=PENDING, ai_processing_status=PENDING,
                 filename=name)
    except IntegrityError:
        storage.delete(key)
        if idempotency_key:  # a concurrent request with the same key won the race
            with read_session(db) as session:
                found = _existing_for_key(session, owner_id, idempotency_key)
                if found is not None:
                    return PhotoUpload(found.id, False, found.ai_processing_status)
        raise
    except BaseException:
        storage.delete(key)  # nothing refers to the stored file: do not leave it behind
        raise
    append_pipeline_log(settings.logs_dir, rows)
    return PhotoUpload(photo_id, True, PENDING)


def load_photo(session: Session, photo_id: str, scope: str | None) -> Photo:
    """The caller's photo (``scope=None``: an admin, any photo); someone else's is 404."""
    photo = session.get(Photo, photo_id)
    if photo is None or (scope is not None and photo.owner_id != scope):
        raise PhotosError("no such photo", code="photo_not_found", status=404)
    return photo


def user_id_for(settings: Settings, name: str) -> str:
    with read_session(settings.resolved_database_url) as session:
        user_id = session.scalars(select(User.id).where(User.name == name)).first()
    if user_id is None:
        raise PhotosError(f"no user named {name!r}", code="user_not_found", status=404)
    return user_id


# --- (re)processing --------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessCounts:
    mode: str
    provider: str
    provider_version: str
    total: int  # photos looked at
    queued: int  # analyses enqueued now
    already_queued: int  # an analysis was pending or running already
    up_to_date: int  # "missing": completed by the current provider version

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_up_to_date(photo_status: str, used: str | None, version: str | None,
                  provider: tuple[str, str]) -> bool:
    return photo_status == COMPLETED and (used, version) == provider


def _chunks(ids: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def process_photos(settings: Settings, *, owner_id: str | None, mode: str,
                   provider: tuple[str, str]) -> ProcessCounts:
    """Enqueue analyses: ``missing`` for photos without a result of the current provider
    and version (``provider`` = its name and version), ``all`` for every photo, recomputing
    even cached results. ``owner_id=None``: everyone's photos."""
    if mode not in MODES:
        raise PhotosError(f"mode must be one of {', '.join(MODES)}", code="invalid_mode",
                          status=422)
    db = settings.resolved_database_url
    stmt = select(Photo.id, Photo.ai_processing_status, Photo.ai_provider_used,
                  Photo.ai_provider_version).order_by(Photo.created_at)
    if owner_id is not None:
        stmt = stmt.where(Photo.owner_id == owner_id)
    with read_session(db) as session:
        rows = session.execute(stmt).all()
    force = mode == MODE_ALL
    todo = [r.id for r in rows
            if force or not is_up_to_date(r.ai_processing_status, r.ai_provider_used,
                                          r.ai_provider_version, provider)]
    queued = already = 0
    for chunk in _chunks(todo, PROCESS_BATCH):
        with transaction(db) as session:
            keys = {analyse_job(pid, force=force).idempotency_key: pid for pid in chunk}
            active = set(session.scalars(select(Job.idempotency_key).where(
                Job.idempotency_key.in_(list(keys)), Job.status.in_(ACTIVE))))
            photos = {p.id: p for p in session.scalars(
                select(Photo).where(Photo.id.in_(chunk)).with_for_update())}
            for key, pid in keys.items():
                photo = photos.get(pid)
                if photo is None:  # deleted meanwhile
                    continue
                if key in active:
                    already += 1
                    continue
                enqueue(session, analyse_job(pid, force=force))
                queued += 1
                if photo.ai_processing_status in (COMPLETED, FAILED):
                    set_status(session, photo, PENDING, reprocess=mode)
    return ProcessCounts(mode=mode, provider=provider[0], provider_version=provider[1],
                         total=len(rows), queued=queued, already_queued=already,
                         up_to_date=len(rows) - len(todo))


__all__ = [
    "MODE_ALL",
    "MODE_MISSING",
    "PhotoUpload",
    "PhotosError",
    "ProcessCounts",
    "analyse_job",
    "canonical_key",
    "create_photo",
    "load_photo",
    "original_key",
    "process_photos",
    "set_status",
    "thumbnail_key",
]
