"""Routes every pipeline shares: health, items, jobs, events (SSE) and signed files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import func, select

from conveyor.accounts import Principal
from conveyor.api.deps import get_app_settings, get_storage, require_principal
from conveyor.config import Settings
from conveyor.db.models import Item, Job
from conveyor.db.session import read_session
from conveyor.engine.events import EventTail, latest_event_id
from conveyor.storage import Storage
from conveyor.storage.signing import verify

router = APIRouter()


@router.get("/health")
def health(settings: Settings = Depends(get_app_settings)) -> dict[str, Any]:
    with read_session(settings.resolved_database_url) as session:
        pending = session.scalar(select(func.count()).select_from(Job)
                                 .where(Job.status == "pending"))
    return {"status": "ok", "executor": settings.executor, "jobs_pending": pending}


def item_dict(item: Item) -> dict[str, Any]:
    return {"id": item.id, "pipeline": item.pipeline, "owner_id": item.owner_id,
            "state": item.state, "confidence": item.confidence, "cost_total": item.cost_total,
            "error_code": item.error_code, "error_message": item.error_message,
            "created_at": item.created_at.isoformat(), "updated_at": item.updated_at.isoformat()}


@router.get("/api/v1/items")
def list_items(
    pipeline: str | None = None, state: str | None = None,
    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
    principal: Principal = Depends(require_principal),
    settings: Settings = Depends(get_app_settings),
) -> dict[str, Any]:
    stmt = select(Item).order_by(Item.created_at.desc()).limit(limit).offset(offset)
    if principal.scope is not None:
        stmt = stmt.where(Item.owner_id == principal.scope)
    if pipeline:
        stmt = stmt.where(Item.pipeline == pipeline)
    if state:
        stmt = stmt.where(Item.state == state)
    with read_session(settings.resolved_database_url) as session:
        return {"items": [item_dict(i) for i in session.scalars(stmt)]}


def job_summary(session: Any, owner_id: str | None) -> dict[str, Any]:
    """Counts per pipeline, step and status, and the latest failures with their error."""
    counts = select(Job.pipeline, Job.step, Job.status, func.count()).group_by(
        Job.pipeline, Job.step, Job.status)
    failures = (select(Job).where(Job.status == "failed")
                .order_by(Job.finished_at.desc()).limit(50))
    if owner_id is not None:
        counts = counts.join(Item, Item.id == Job.item_id).where(Item.owner_id == owner_id)
        failures = failures.join(Item, Item.id == Job.item_id).where(Item.owner_id == owner_id)
    table: dict[str, dict[str, int]] = {}
    for pipeline, step, status, n in session.execute(counts):
        table.setdefault(f"{pipeline}.{step}", {})[status] = n
    return {
        "counts": [{"step": k, **v} for k, v in sorted(table.items())],
        "failures": [{"job_id": j.id, "item_id": j.item_id, "step": f"{j.pipeline}.{j.step}",
                      "attempts": j.attempts, "error": j.last_error,
                      "finished_at": j.finished_at.isoformat() if j.finished_at else None}
                     for j in session.scalars(failures)],
    }


@router.get("/api/v1/jobs")
def jobs(principal: Principal = Depends(require_principal),
         settings: Settings = Depends(get_app_settings)) -> dict[str, Any]:
    with read_session(settings.resolved_database_url) as session:
        return job_summary(session, principal.scope)


async def event_stream(request: Request, settings: Settings, owner_id: str | None,
                       item_id: str | None, last_id: int) -> AsyncIterator[str]:
    db = settings.resolved_database_url
    tail = EventTail(last_id)

    def fetch() -> list[dict[str, Any]]:
        with read_session(db) as session:
            return [{"id": e.id, "kind": e.kind, "item_id": e.item_id, "pipeline": e.pipeline,
                     "data": e.data, "at": e.created_at.isoformat()}
                    for e in tail.poll(session, owner_id=owner_id, item_id=item_id)]

    yield "retry: 2000\n\n"
    idle = 0.0
    while not await request.is_disconnected():
        batch = await asyncio.to_thread(fetch)
        for event in batch:
            yield f"id: {event['id']}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"
        if batch:
            idle = 0.0
            continue
        idle += 0.25
        if idle >= 15:
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(0.25)


@router.get("/events")
@router.get("/api/v1/events")
async def events(
    request: Request, item_id: str | None = None, after: int | None = None,
    principal: Principal = Depends(require_principal),
    settings: Settings = Depends(get_app_settings),
) -> StreamingResponse:
    """Server-sent events: item states, job transitions, progress. Resumes from
    ``Last-Event-ID`` (or ``?after=``); starts at 'now' otherwise."""
    header = request.headers.get("last-event-id")
    if header and header.isdigit():  # a reconnecting browser: resume where it stopped
        after = max(after or 0, int(header))
    if after is None:
        with read_session(settings.resolved_database_url) as session:
            after = latest_event_id(session)
    return StreamingResponse(
        event_stream(request, settings, principal.scope, item_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/files/{key:path}")
def signed_file(key: str, exp: int, sig: str, settings: Settings = Depends(get_app_settings),
                storage: Storage = Depends(get_storage)) -> FileResponse:
    """A stored file behind an HMAC-signed, expiring URL (no token needed: the URL is it)."""
    if not verify(settings.signing_key(), key, exp, sig):
        raise HTTPException(status_code=403, detail={"code": "bad_signature",
                                                     "message": "the link is invalid or expired"})
    try:
        path: Path = storage.local_path(key)
    except Exception as exc:
        raise HTTPException(status_code=404, detail={"code": "not_found",
                                                     "message": "no such file"}) from exc
    if not path.is_file():
        raise HTTPException(status_code=404, detail={"code": "not_found",
                                                     "message": "no such file"})
    return FileResponse(path, headers={"Cache-Control": "private, max-age=300"})
