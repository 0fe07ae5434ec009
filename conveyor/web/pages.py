"""Server-rendered web UI pages (templates + small JavaScript, no build step).

Every page but ``/login`` needs a principal (the ``conveyor_token`` cookie or a Bearer
header); without one it redirects to ``/login?next=…``. Pages read through the records
views (``preview_view``, ``list_previews``, …) that the JSON API uses too, so what a page
shows is what the JSON API answers. JavaScript only uploads, follows SSE, submits reviews and
archives, and binds the accept shortcut (Ctrl+Enter).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from conveyor.accounts import Principal, authenticate
from conveyor.api.common import job_summary
from conveyor.api.deps import TOKEN_COOKIE, get_app_settings, optional_principal
from conveyor.config import Settings
from conveyor.db.models import Item
from conveyor.db.session import read_session
from conveyor.engine.events import latest_event_id
from conveyor.pipelines.records import views
from conveyor.pipelines.records.models import METADATA_FIELDS, ArchiveRecord, PreviewRecord
from conveyor.pipelines.records.states import PIPELINE, REVIEWABLE
from conveyor.pipelines.records.views import preview_view, record_view
from conveyor.storage import direct_url_origin

WEB_DIR = Path(__file__).parent
router = APIRouter(include_in_schema=False)

#: Fields a person can edit (the review endpoint's body); list fields are comma-separated.
EDITABLE_FIELDS: tuple[str, ...] = tuple(f for f in METADATA_FIELDS if f != "tracklist")
LIST_FIELDS = frozenset({"genre", "style", "format"})
FIELD_LABELS = {"catalog_number": "Catalogue no."}
JOB_STATUSES = ("pending", "running", "completed", "failed", "blocked", "cancelled")
ITEMS_ON_INDEX = 200
RECORDS_PER_PAGE = 50
JOBS_REFRESH_S = 5
COOKIE_MAX_AGE_S = 30 * 24 * 3600

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(value: str | datetime | None) -> str:
    """``2024-01-01T12:00:00.123+00:00`` → ``2024-01-01 12:00:00`` (UTC, as stored)."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text.replace("T", " ")[:19]


def _display(value: Any) -> str:
    if value is None or value == [] or value == "":
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:.4f}"


def _size(value: int) -> str:
    if value >= 1024 * 1024:
        return f"{value / (1024 * 1024):.1f}".removesuffix(".0") + " MB"
    return f"{max(1, round(value / 1024))} KB"


def _build_templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(WEB_DIR / "templates")),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, display=_display, percent=_percent, money=_money,
                       size=_size)
    env.globals.update(field_labels=FIELD_LABELS, job_statuses=JOB_STATUSES)
    return Jinja2Templates(env=env)


templates = _build_templates()


def static_files() -> StaticFiles:
    return StaticFiles(directory=str(WEB_DIR / "static"))


def _render(request: Request, name: str, context: dict[str, Any], *,
            principal: Principal | None, status_code: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, name, {"principal": principal, "path": request.url.path, **context},
        status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    settings = getattr(request.app.state, "settings", None)
    files_origin = direct_url_origin(settings.resolved_storage_url) if settings else None
    if files_origin:  # S3: images come straight from presigned URLs on the bucket's host
        response.headers["Content-Security-Policy"] = SECURITY_HEADERS[
            "Content-Security-Policy"].replace("img-src 'self' data:",
                                               f"img-src 'self' data: {files_origin}")
    return response


def _safe_next(target: str | None) -> str:
    """Only a path on this site (``/x``), never ``//host`` or an absolute URL."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _to_login(request: Request) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = "/login" if here == "/" else f"/login?next={quote(here, safe='')}"
    return RedirectResponse(target, status_code=303)


def _not_found(request: Request, principal: Principal, what: str) -> HTMLResponse:
    return _render(request, "not_found.html", {"what": what}, principal=principal,
                   status_code=404)


def _form_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key in LIST_FIELDS and isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


# --- login / logout ------------------------------------------------------------------------

@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None,
               principal: Principal | None = Depends(optional_principal)) -> Response:
    if principal is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _render(request, "login.html", {"next": _safe_next(next), "error": None},
                   principal=None)


@router.post("/login", response_class=HTMLResponse)
def login_submit(request: Request, token: str = Form(default="", max_length=500),
                 next: str = Form(default="/", max_length=2000),
                 settings: Settings = Depends(get_app_settings)) -> Response:
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        return _render(request, "login.html", {
            "next": "/", "error": "This login form was sent from another site; log in here."},
            principal=None, status_code=403)
    token = token.strip()
    principal = authenticate(settings.resolved_database_url, token) if token else None
    if principal is None:
        error = ("Paste an API token." if not token else
                 "That token is not valid (it may be mistyped or revoked).")
        return _render(request, "login.html", {"next": _safe_next(next), "error": error},
                       principal=None, status_code=401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, max_age=COOKIE_MAX_AGE_S, path="/",
                        httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")
    return response


@router.get("/logout")
@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="lax")
    return response


# --- upload + items ------------------------------------------------------------------------

def _item_rows(session: Any, settings: Settings, scope: str | None) -> list[dict[str, Any]]:
    """The newest records items with their preview (or, once archived, record) view."""
    stmt = (select(Item).where(Item.pipeline == PIPELINE)
            .order_by(Item.created_at.desc()).limit(ITEMS_ON_INDEX))
    if scope is not None:
        stmt = stmt.where(Item.owner_id == scope)
    items = list(session.scalars(stmt))
    ids = [i.id for i in items]
    previews = {p.preview_id: p for p in session.scalars(
        select(PreviewRecord).where(PreviewRecord.preview_id.in_(ids)))} if ids else {}
    records = {r.preview_id: r for r in session.scalars(
        select(ArchiveRecord).where(ArchiveRecord.preview_id.in_(ids)))} if ids else {}
    rows = []
    for item in items:
        if item.id in previews:
            view = preview_view(session, settings, previews[item.id], with_audit=False)
        elif item.id in records:
            view = record_view(session, settings, records[item.id], with_audit=False)
        else:
            continue
        view.update(state=item.state, confidence=item.confidence,
                    error_code=item.error_code, error_message=item.error_message,
                    created_at=item.created_at.isoformat())
        rows.append(view)
    return rows


@router.get("/", response_class=HTMLResponse)
def index(request: Request, principal: Principal | None = Depends(optional_principal),
          settings: Settings = Depends(get_app_settings)) -> Response:
    if principal is None:
        return _to_login(request)
    with read_session(settings.resolved_database_url) as session:
        last_event = latest_event_id(session)
        rows = _item_rows(session, settings, principal.scope)
    return _render(request, "index.html", {
        "rows": rows, "last_event": last_event,
        "max_upload_bytes": settings.max_upload_bytes}, principal=principal)


# --- item (preview) page -------------------------------------------------------------------

@router.get("/previews/{preview_id}", response_class=HTMLResponse)
def preview_page(request: Request, preview_id: str, queue: bool = False,
                 principal: Principal | None = Depends(optional_principal),
                 settings: Settings = Depends(get_app_settings)) -> Response:
    if principal is None:
        return _to_login(request)
    with read_session(settings.resolved_database_url) as session:
        preview = session.get(PreviewRecord, preview_id)
        if preview is None or principal.scope not in (None, preview.user_id):
            record = session.scalars(select(ArchiveRecord)
                                     .where(ArchiveRecord.preview_id == preview_id)).first()
            if record is not None and principal.scope in (None, record.user_id):
                return RedirectResponse(f"/records/{quote(record.record_id)}", status_code=303)
            return _not_found(request, principal, "preview")
        view = preview_view(session, settings, preview)
        last_event = latest_event_id(session)
        form = {k: _form_value(k, view["metadata"].get(k)) for k in EDITABLE_FIELDS}
    return _render(request, "item.html", {
        "view": view, "field_conf": view["field_confidence"], "queue": queue, "form": form,
        "editable_fields": EDITABLE_FIELDS, "list_fields": LIST_FIELDS,
        "reviewable": view["state"] in REVIEWABLE, "last_event": last_event,
        "metadata_fields": METADATA_FIELDS}, principal=principal)


# --- review queue --------------------------------------------------------------------------

@router.get("/review", response_class=HTMLResponse)
def review_queue(request: Request, principal: Principal | None = Depends(optional_principal),
                 settings: Settings = Depends(get_app_settings)) -> Response:
    if principal is None:
        return _to_login(request)
    with read_session(settings.resolved_database_url) as session:
        queue = views.list_previews(session, settings, principal.scope, review_queue=True,
                                    limit=500)
    return _render(request, "review.html", {"queue": queue}, principal=principal)


# --- archived records ----------------------------------------------------------------------

@router.get("/records", response_class=HTMLResponse)
def records_page(request: Request, q: str = Query(default="", max_length=200),
                 page: int = Query(default=1, ge=1, le=100_000),
                 principal: Principal | None = Depends(optional_principal),
                 settings: Settings = Depends(get_app_settings)) -> Response:
    if principal is None:
        return _to_login(request)
    q = q.strip()
    with read_session(settings.resolved_database_url) as session:
        total, records = views.list_records(session, settings, principal.scope, q=q or None,
                                            limit=RECORDS_PER_PAGE,
                                            offset=(page - 1) * RECORDS_PER_PAGE)
    pages = max(1, -(-total // RECORDS_PER_PAGE))
    return _render(request, "records.html", {
        "records": records, "total": total, "q": q, "page": page,
        "pages": pages}, principal=principal)


@router.get("/records/{record_id}", response_class=HTMLResponse)
def record_page(request: Request, record_id: str,
                principal: Principal | None = Depends(optional_principal),
                settings: Settings = Depends(get_app_settings)) -> Response:
    if principal is None:
        return _to_login(request)
    with read_session(settings.resolved_database_url) as session:
        record = session.get(ArchiveRecord, record_id)
        if record is None or principal.scope not in (None, record.user_id):
            return _not_found(request, principal, "record")
        view = record_view(session, settings, record)
    return _render(request, "record.html", {
        "view": view, "field_conf": view["field_confidence"], "metadata_fields": METADATA_FIELDS},
        principal=principal)


# --- jobs ----------------------------------------------------------------------------------

@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, principal: Principal | None = Depends(optional_principal),
              settings: Settings = Depends(get_app_settings)) -> Response:
    if principal is None:
        return _to_login(request)
    with read_session(settings.resolved_database_url) as session:
        summary = job_summary(session, principal.scope)
    totals = {s: sum(int(row.get(s, 0)) for row in summary["counts"]) for s in JOB_STATUSES}
    return _render(request, "jobs.html", {
        "summary": summary, "totals": totals, "refresh_s": JOBS_REFRESH_S}, principal=principal)
