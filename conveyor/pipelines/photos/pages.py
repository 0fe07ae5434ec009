"""The photos pages: a grid at ``/gallery`` and a detail page at ``/gallery/{id}``.

They read through the same builders as the JSON API (:mod:`conveyor.pipelines.photos.views`)
and render with the shared web layer (:mod:`conveyor.web.pages`: templates, login redirect,
security headers). JavaScript (``/static/photos.js``) uploads, follows SSE and calls the
admin's process endpoint.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from conveyor.accounts import Principal
from conveyor.api.deps import get_app_settings, optional_principal
from conveyor.config import Settings
from conveyor.db.session import read_session
from conveyor.engine.events import latest_event_id
from conveyor.pipelines.photos import views
from conveyor.pipelines.photos.models import Photo
from conveyor.pipelines.photos.states import COMPLETED, FAILED, STATUSES
from conveyor.web.pages import _not_found, _render, _to_login

router = APIRouter(include_in_schema=False)

PHOTOS_PER_PAGE = 60
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")

EXIF_LABELS: dict[str, str] = {
    "camera_make": "Camera make",
    "camera_model": "Camera model",
    "lens": "Lens",
    "taken_at": "Taken",
    "orientation": "Orientation (EXIF)",
    "iso": "ISO",
    "f_number": "Aperture",
    "exposure_time": "Exposure",
    "focal_length": "Focal length",
}
#: Result keys the detail page renders itself; anything else is shown as JSON.
KNOWN_RESULT_KEYS = frozenset({
    "dimensions", "format", "exif", "colors", "hashes", "quality", "text", "labels",
    "objects", "tags", "caption", "safe_search", "near_duplicates", "confidence",
    "label_model_version", "text_model_version",
})


def _exposure_text(seconds: float) -> str:
    if 0 < seconds < 1:
        return f"1/{round(1 / seconds)} s"
    return f"{seconds:g} s"


def exif_rows(exif: Any) -> list[dict[str, Any]]:
    """EXIF summary (conveyor.media.exif) as labelled, formatted rows."""
    if not isinstance(exif, dict):
        return []
    rows: list[dict[str, Any]] = []
    for key, label in EXIF_LABELS.items():
        value = exif.get(key)
        if value is None or value == "":
            continue
        if key == "f_number" and isinstance(value, int | float):
            text = f"f/{value:g}"
        elif key == "exposure_time" and isinstance(value, int | float):
            text = _exposure_text(float(value))
        elif key == "focal_length" and isinstance(value, int | float):
            text = f"{value:g} mm"
        elif key == "taken_at":
            text = str(value).replace("T", " ")
        else:
            text = str(value)
        rows.append({"key": key, "label": label, "value": text})
    gps = exif.get("gps")
    if isinstance(gps, dict) and isinstance(gps.get("lat"), int | float) \
            and isinstance(gps.get("lon"), int | float):
        lat, lon = float(gps["lat"]), float(gps["lon"])
        text = f"{lat:.5f}, {lon:.5f}"
        if isinstance(gps.get("alt"), int | float):
            text += f" ({gps['alt']:g} m)"
        rows.append({"key": "gps", "label": "Location", "value": text,
                     "href": f"https://www.openstreetmap.org/?mlat={lat:.6f}&mlon={lon:.6f}"
                             f"#map=15/{lat:.6f}/{lon:.6f}"})
    return rows


def _colors(value: Any) -> list[dict[str, Any]]:
    out = []
    for c in value if isinstance(value, list) else []:
        if isinstance(c, dict) and isinstance(c.get("hex"), str) and _HEX_COLOR.match(c["hex"]):
            fraction = c.get("fraction")
            out.append({"hex": c["hex"].lower(),
                        "fraction": float(fraction) if isinstance(fraction, int | float)
                        else None})
    return out


def _labels(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Labels (Rekognition, Google) or objects (vision LLMs): name and confidence."""
    out = []
    for key in ("labels", "objects"):
        for entry in results.get(key) or []:
            if isinstance(entry, dict) and entry.get("name"):
                conf = entry.get("confidence")
                out.append({"name": str(entry["name"]),
                            "confidence": float(conf) if isinstance(conf, int | float)
                            else None})
    return out


def _text(value: Any) -> tuple[str, int]:
    """The text found in the photo and its number of lines (local/OCR, or a plain string)."""
    if isinstance(value, dict):
        lines = value.get("lines")
        return str(value.get("text") or ""), len(lines) if isinstance(lines, list) else 0
    if isinstance(value, str):
        return value, len([ln for ln in value.splitlines() if ln.strip()])
    return "", 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def display_results(view: dict[str, Any]) -> dict[str, Any]:
    """A provider's results in the shape the detail page shows (any provider, any keys)."""
    raw = view.get("ai_results")
    results: dict[str, Any] = raw if isinstance(raw, dict) else {}
    dims = _dict(results.get("dimensions"))
    width = dims.get("width") or view.get("width")
    height = dims.get("height") or view.get("height")
    quality = _dict(results.get("quality"))
    text, text_lines = _text(results.get("text"))
    tags = [str(t) for t in results.get("tags") or [] if isinstance(t, str | int | float)]
    extra = {k: v for k, v in results.items() if k not in KNOWN_RESULT_KEYS}
    return {
        "width": width,
        "height": height,
        "megapixels": dims.get("megapixels"),
        "orientation": dims.get("orientation"),
        "format": results.get("format"),
        "exif": exif_rows(results.get("exif")),
        "colors": _colors(results.get("colors")),
        "sharpness": _dict(quality.get("sharpness")) or None,
        "exposure": _dict(quality.get("exposure")) or None,
        "text": text,
        "text_lines": text_lines,
        "labels": _labels(results),
        "tags": tags,
        "caption": results.get("caption") if isinstance(results.get("caption"), str) else None,
        "safe_search": _dict(results.get("safe_search")) or None,
        "hashes": _dict(results.get("hashes")) or None,
        "extra": extra,
    }


@router.get("/gallery", response_class=HTMLResponse)
def gallery(request: Request,
            status: str | None = Query(default=None, max_length=20),
            page: int = Query(default=1, ge=1, le=100_000),
            principal: Principal | None = Depends(optional_principal),
            settings: Settings = Depends(get_app_settings)) -> Response:
    if principal is None:
        return _to_login(request)
    status = status if status in STATUSES else None
    with read_session(settings.resolved_database_url) as session:
        last_event = latest_event_id(session)
        total, photos = views.list_photos(session, settings, principal.scope, status=status,
                                          limit=PHOTOS_PER_PAGE,
                                          offset=(page - 1) * PHOTOS_PER_PAGE)
        counts = views.status_counts(session, principal.scope)
    pages = max(1, -(-total // PHOTOS_PER_PAGE))
    return _render(request, "gallery.html", {
        "photos": photos, "total": total, "counts": counts, "statuses": STATUSES,
        "status": status, "page": page, "pages": pages, "last_event": last_event,
        "max_upload_bytes": settings.max_upload_bytes}, principal=principal)


@router.get("/gallery/{photo_id}", response_class=HTMLResponse)
def photo_page(request: Request, photo_id: str,
               principal: Principal | None = Depends(optional_principal),
               settings: Settings = Depends(get_app_settings)) -> Response:
    if principal is None:
        return _to_login(request)
    with read_session(settings.resolved_database_url) as session:
        photo = session.get(Photo, photo_id)
        if photo is None or principal.scope not in (None, photo.owner_id):
            return _not_found(request, principal, "photo")
        view = views.photo_view(settings, photo, session=session, with_audit=True)
        near = views.near_duplicate_views(session, settings, photo, principal.scope)
        last_event = latest_event_id(session)
    total_cost = sum(float(a.get("cost_estimate") or 0.0) for a in view.get("audit", []))
    return _render(request, "photo.html", {
        "view": view, "shown": display_results(view), "near": near,
        "final": view["ai_processing_status"] in (COMPLETED, FAILED),
        "total_cost": total_cost, "last_event": last_event}, principal=principal)
