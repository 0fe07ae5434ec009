"""What the records pipeline asks a vision LLM, and how it reads the answers."""

from __future__ import annotations

import re
from typing import Any

_STR_OR_NULL = {"type": ["string", "null"]}
_LIST_OF_STR = {"type": "array", "items": {"type": "string"}}

COVER_SYSTEM = (
    "You read photos of record covers (LPs, singles, CDs, cassettes) and return the "
    "release's metadata as JSON. Use null for anything you cannot read or infer with "
    "reasonable certainty. 'confidence' is your overall certainty from 0 to 1."
)

COVER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["artist", "album", "label", "catalog_number", "year", "barcode", "genre",
                 "confidence"],
    "properties": {
        "artist": _STR_OR_NULL,
        "album": _STR_OR_NULL,
        "label": _STR_OR_NULL,
        "catalog_number": _STR_OR_NULL,
        "year": {"type": ["integer", "null"]},
        "barcode": _STR_OR_NULL,
        "genre": _LIST_OF_STR,
        "confidence": {"type": "number"},
    },
}

ENRICH_SYSTEM = (
    "You are a discography expert. Given what is known about a record, fill in the "
    "label, year, genre, styles, country, format and tracklist of that release as JSON. Use "
    "null or an empty list for anything you do not know; do not invent track titles."
)

ENRICH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["label", "year", "genre", "style", "country", "format", "tracklist",
                 "confidence"],
    "properties": {
        "label": _STR_OR_NULL,
        "year": {"type": ["integer", "null"]},
        "genre": _LIST_OF_STR,
        "style": _LIST_OF_STR,
        "country": _STR_OR_NULL,
        "format": _LIST_OF_STR,
        "tracklist": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["position", "title", "duration"],
                "properties": {"position": _STR_OR_NULL, "title": {"type": "string"},
                               "duration": _STR_OR_NULL},
            },
        },
        "confidence": {"type": "number"},
    },
}


def cover_prompt(ocr_text: str | None) -> str:
    text = (ocr_text or "").strip()[:2000]
    hint = f"\nText found on the cover by OCR (may be wrong):\n{text}" if text else ""
    return "What release is this cover? Return the JSON." + hint


def enrich_prompt(known: dict[str, Any]) -> str:
    facts = "\n".join(f"{k}: {v}" for k, v in known.items() if v not in (None, "", []))
    return f"Known so far:\n{facts}\nReturn the JSON for this release."


def clean_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Keep the fields a preview has, with the types it stores; drop junk values."""
    out: dict[str, Any] = {}
    for key in ("artist", "album", "label", "catalog_number", "barcode", "country"):
        value = data.get(key)
        if isinstance(value, str) and value.strip() and value.strip().lower() != "null":
            out[key] = value.strip()[:300]
    year = data.get("year")
    if isinstance(year, str) and re.fullmatch(r"\d{4}", year.strip()):
        year = int(year)
    if isinstance(year, int) and 1877 <= year <= 2100:
        out["year"] = year
    for key in ("genre", "style", "format"):
        value = data.get(key)
        if isinstance(value, list):
            items = [str(v).strip() for v in value if isinstance(v, str | int) and str(v).strip()]
            if items:
                out[key] = items[:20]
    tracks = data.get("tracklist")
    if isinstance(tracks, list):
        clean = [
            {"position": str(t.get("position") or ""), "title": str(t["title"]).strip(),
             "duration": str(t.get("duration") or "")}
            for t in tracks if isinstance(t, dict) and str(t.get("title") or "").strip()
        ]
        if clean:
            out["tracklist"] = clean[:200]
    return out
