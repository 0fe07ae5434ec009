"""Seed 002 tables: ``photos`` (one per upload) and ``photo_results`` (the result cache).

A photo's id is its item's id (``item_id`` holds the same value), so events and jobs that
name the item name the photo. ``photo_results`` caches what a provider derived from some
content, keyed by ``(content_sha256, provider, provider_version)``: the same bytes uploaded
again, or a photo processed again, reuse the row instead of calling the provider.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.db.base import Base, JSONType, utcnow
from conveyor.pipelines.photos.states import PENDING


class Photo(Base):
    __tablename__ = "photos"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"),
                                         unique=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    original_filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(500))
    content_type: Mapped[str | None] = mapped_column(String(100), default=None)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer, default=None)
    height: Mapped[int | None] = mapped_column(Integer, default=None)
    # derived files (written by the analyse step): the canonical JPEG and a thumbnail
    canonical_key: Mapped[str | None] = mapped_column(String(500), default=None)
    thumbnail_key: Mapped[str | None] = mapped_column(String(500), default=None)
    # 64-bit perceptual hash as 16 hex digits, for near-duplicate search
    phash: Mapped[str | None] = mapped_column(String(16), default=None)

    ai_processing_status: Mapped[str] = mapped_column(String(20), default=PENDING, index=True)
    ai_results: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    ai_error_code: Mapped[str | None] = mapped_column(String(60), default=None)
    ai_error_message: Mapped[str | None] = mapped_column(Text, default=None)
    ai_provider_used: Mapped[str | None] = mapped_column(String(60), default=None)
    ai_provider_version: Mapped[str | None] = mapped_column(String(40), default=None)
    processed_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_photos_owner_created", "owner_id", "created_at"),)


class PhotoResult(Base):
    """What one provider version derived from some content (the idempotency cache)."""

    __tablename__ = "photo_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    content_sha256: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(60))
    provider_version: Mapped[str] = mapped_column(String(40))
    results: Mapped[dict[str, Any]] = mapped_column(JSONType)
    model: Mapped[str | None] = mapped_column(String(120), default=None)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    confidence: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("content_sha256", "provider", "provider_version",
                         name="uq_photo_results_content_provider_version"),
    )
