"""Seed 000 tables: ``preview_records`` (temporary) and ``archive_records_v2`` (final)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from conveyor.db.base import Base, JSONType, utcnow

# The metadata fields a record carries, in display order.
METADATA_FIELDS: tuple[str, ...] = (
    "artist",
    "album",
    "label",
    "catalog_number",
    "year",
    "barcode",
    "genre",
    "style",
    "country",
    "format",
    "tracklist",
)


class RecordFields:
    """Columns shared by a preview and its archived record."""

    artist: Mapped[str | None] = mapped_column(String(300), default=None)
    album: Mapped[str | None] = mapped_column(String(300), default=None)
    label: Mapped[str | None] = mapped_column(String(300), default=None)
    catalog_number: Mapped[str | None] = mapped_column(String(100), default=None)
    year: Mapped[int | None] = mapped_column(Integer, default=None)
    barcode: Mapped[str | None] = mapped_column(String(32), default=None)
    genre: Mapped[list[str] | None] = mapped_column(JSONType, default=None)
    style: Mapped[list[str] | None] = mapped_column(JSONType, default=None)
    country: Mapped[str | None] = mapped_column(String(100), default=None)
    format: Mapped[list[str] | None] = mapped_column(JSONType, default=None)
    tracklist: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, default=None)
    # where each field came from: {"artist": "ocr", "label": "discogs", "album": "user"}
    field_sources: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    # AI results
    ocr_text: Mapped[str | None] = mapped_column(Text, default=None)
    ocr_lines: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, default=None)
    ai_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    confidence: Mapped[float | None] = mapped_column(Float, default=None)

    # pipeline tracking
    model_used: Mapped[str | None] = mapped_column(String(200), default=None)
    cost_estimate: Mapped[float] = mapped_column(Float, default=0.0)
    enrichment_source: Mapped[str | None] = mapped_column(String(20), default=None)
    enrichment_data: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)

    original_filename: Mapped[str | None] = mapped_column(String(255), default=None)
    content_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    canonical_image_path: Mapped[str | None] = mapped_column(String(500), default=None)

    @declared_attr
    def user_id(cls) -> Mapped[str]:
        return mapped_column(ForeignKey("users.id"), index=True)


class PreviewRecord(RecordFields, Base):
    __tablename__ = "preview_records"
    preview_id: Mapped[str] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    record_id: Mapped[str | None] = mapped_column(String(36), default=None)
    state: Mapped[str] = mapped_column(String(20), index=True)
    file_path: Mapped[str] = mapped_column(String(500))
    archive_after_enrich: Mapped[bool] = mapped_column(default=False)
    # bumped by every review: an enrichment started before the latest review is stale
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    analyzed_at: Mapped[datetime | None] = mapped_column(default=None)
    reviewed_at: Mapped[datetime | None] = mapped_column(default=None)
    enriched_at: Mapped[datetime | None] = mapped_column(default=None)


class ArchiveRecord(RecordFields, Base):
    __tablename__ = "archive_records_v2"
    record_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    preview_id: Mapped[str] = mapped_column(ForeignKey("items.id"), unique=True)
    state: Mapped[str] = mapped_column(String(20), default="ARCHIVED")
    image_path: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime] = mapped_column(default=utcnow)
    uploaded_at: Mapped[datetime | None] = mapped_column(default=None)
    reviewed_at: Mapped[datetime | None] = mapped_column(default=None)
    enriched_at: Mapped[datetime | None] = mapped_column(default=None)
