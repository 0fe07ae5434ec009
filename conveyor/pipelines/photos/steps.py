"""The photos pipeline's step: ``analyse`` (seed 002's "AI processing task").

``run`` (no transaction held while it works):

1. marks the photo ``processing`` (its own short transaction, so SSE shows it at once);
2. decodes the upload in the sandboxed decoder into the canonical JPEG (and a thumbnail),
   stored as derived files; a corrupt or hostile file fails the photo with the decoder's
   error code;
3. reuses the cached result of the same content, provider and version (``photo_results``)
   unless the job is forced, else calls the configured provider once.

``commit`` (in the job's completion transaction) stores the result in the cache (race-safe:
two workers may have computed the same content), finds near-duplicates among the owner's
photos by perceptual hash, and marks the photo ``completed`` with its results.

Transient provider errors are retried by the engine with backoff; when the attempts are
spent, or at once for a permanent error, ``on_failure`` marks the photo ``failed`` with a
message meant for people.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.db.base import new_id, utcnow
from conveyor.db.models import Artifact
from conveyor.db.session import read_session, transaction
from conveyor.engine.audit import AuditRecord
from conveyor.engine.steps import JobCancelled, Resources, Step, StepContext, registry
from conveyor.errors import ConveyorError, PermanentError
from conveyor.media import hashes
from conveyor.media.image import CanonicalImage, ImageLimits, canonicalize_isolated
from conveyor.pipeline.tiers import tier
from conveyor.pipelines.photos.analysis import (
    PROVIDER_RESOURCE,
    build_provider,
    json_safe,
    near_duplicates,
    phash_of,
    public_error,
)
from conveyor.pipelines.photos.models import Photo, PhotoResult
from conveyor.pipelines.photos.service import (
    canonical_key,
    set_status,
    thumbnail_key,
)
from conveyor.pipelines.photos.states import (
    ANALYSE_STEP,
    COMPLETED,
    FAILED,
    PIPELINE,
    PROCESSING,
)
from conveyor.providers.vision.base import AIProviderBase, PhotoInput
from conveyor.providers.vision.imaging import open_jpeg
from conveyor.storage.signing import signed_path

THUMBNAIL_SIDE = 480
HASH_SIDE = 512  # the local provider's working size (conveyor.providers.vision.local)
THUMBNAIL_QUALITY = 82
SIGNED_URL_TTL_S = 900


def _gone() -> JobCancelled:
    return JobCancelled("the photo was deleted while this job waited")


def _load(ctx: StepContext) -> Photo:
    with read_session(ctx.settings.resolved_database_url) as session:
        photo = session.get(Photo, ctx.item_id)
    if photo is None:
        raise _gone()
    return photo


@dataclass(frozen=True)
class Derived:
    """The canonical JPEG and thumbnail written to storage."""

    image: CanonicalImage
    jpeg: bytes
    canonical_key: str
    thumbnail_key: str
    thumbnail_sha256: str
    thumbnail_size: int
    thumbnail_width: int
    thumbnail_height: int
    phash: str


@dataclass(frozen=True)
class Analysed:
    derived: Derived
    provider: str
    provider_version: str
    results: dict[str, Any]
    model: str | None
    cost: float
    confidence: float | None
    cached: bool
    forced: bool

    @property
    def phash(self) -> str:
        """The provider's perceptual hash, else the pipeline's own (same algorithm and
        working size as the local provider), so near-duplicates work with any provider."""
        return phash_of(self.results) or self.derived.phash


def _thumbnail(jpeg: bytes) -> tuple[bytes, int, int, str]:
    """A small JPEG of the canonical image (our own, already safe output) and the image's
    perceptual hash."""
    small = open_jpeg(jpeg, max_side=HASH_SIDE)
    im = small.copy()
    im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue(), im.width, im.height, hashes.phash(small)


class AnalyseStep(Step):
    pipeline = PIPELINE
    name = ANALYSE_STEP

    # -- the provider: built once per worker process ---------------------------------------

    def _provider(self, settings: Settings, resources: Resources) -> AIProviderBase:
        provider: AIProviderBase = resources.get(
            PROVIDER_RESOURCE, lambda: build_provider(settings, resources.guard))
        return provider

    def warm_up(self, settings: Settings, resources: Resources) -> None:
        self._provider(settings, resources).warm_up()

    # -- run ---------------------------------------------------------------------------------

    def run(self, ctx: StepContext) -> Analysed:
        photo = _load(ctx)
        self._mark_processing(ctx)
        forced = bool(ctx.job.payload.get("force"))
        provider = self._provider(ctx.settings, ctx.resources)
        derived = self._derive(ctx, photo)
        ctx.check_cancelled()
        if not forced:
            hit = self._cached(ctx, photo, provider)
            if hit is not None:
                return Analysed(derived, provider.name, provider.version, hit.results,
                                hit.model, 0.0, hit.confidence, cached=True, forced=False)
        photo_input = PhotoInput(
            jpeg=derived.jpeg, width=derived.image.width, height=derived.image.height,
            source_format=derived.image.source_format, exif=dict(derived.image.exif),
            filename=photo.original_filename,
            url=ctx.settings.public_url.rstrip("/") + signed_path(
                ctx.settings.signing_key(), derived.canonical_key, ttl_s=SIGNED_URL_TTL_S))
        with tier(ctx, "AI_PROCESS", provider.name) as t:
            result = provider.process_image(photo_input)
            results = json_safe(result.results)
            if not isinstance(results, dict):
                raise PermanentError(f"the {provider.name} provider returned no results",
                                     code="provider_bad_response")
            t.model_used = result.model or provider.name
            t.cost_estimate = float(result.cost_usd or 0.0)
            t.confidence = result.confidence
            t.detail = {"provider": provider.name, "provider_version": provider.version,
                        "keys": sorted(results), "forced": forced}
        return Analysed(derived, provider.name, provider.version, results, result.model,
                        float(result.cost_usd or 0.0), result.confidence, cached=False,
                        forced=forced)

    def _mark_processing(self, ctx: StepContext) -> None:
        with transaction(ctx.settings.resolved_database_url) as session:
            photo = session.get(Photo, ctx.item_id, with_for_update=True)
            if photo is None:
                raise _gone()
            set_status(session, photo, PROCESSING, attempt=ctx.job.attempts)

    def _derive(self, ctx: StepContext, photo: Photo) -> Derived:
        ckey = canonical_key(photo.owner_id, photo.id)
        tkey = thumbnail_key(photo.owner_id, photo.id)
        with tier(ctx, "DECODE", "pillow") as t, \
                tempfile.TemporaryDirectory(prefix="conveyor-photo-") as tmp:
            src = ctx.storage.local_path(photo.storage_key)
            dst = Path(tmp) / "canonical.jpg"
            image = canonicalize_isolated(src, dst, ImageLimits.from_settings(ctx.settings))
            jpeg = dst.read_bytes()
            thumb, tw, th, phash = _thumbnail(jpeg)
            thumb_path = Path(tmp) / "thumb.jpg"
            thumb_path.write_bytes(thumb)
            ctx.storage.put_file(ckey, dst)
            ctx.storage.put_file(tkey, thumb_path)
            t.detail = {"width": image.width, "height": image.height,
                        "source_format": image.source_format, "source_mode": image.source_mode}
        return Derived(image, jpeg, ckey, tkey, hashlib.sha256(thumb).hexdigest(), len(thumb),
                       tw, th, phash)

    def _cached(self, ctx: StepContext, photo: Photo,
                provider: AIProviderBase) -> PhotoResult | None:
        started = time.perf_counter()
        with read_session(ctx.settings.resolved_database_url) as session:
            hit = session.scalars(select(PhotoResult).where(
                PhotoResult.content_sha256 == photo.content_sha256,
                PhotoResult.provider == provider.name,
                PhotoResult.provider_version == provider.version)).first()
        if hit is not None:
            ctx.audit(AuditRecord(
                step="AI_PROCESS", model_used=hit.model or provider.name,
                confidence=hit.confidence, outcome="hit",
                duration_ms=int((time.perf_counter() - started) * 1000),
                detail={"provider": provider.name, "provider_version": provider.version,
                        "cached_at": hit.created_at.isoformat(),
                        "reason": "the same content was analysed by this provider version"}))
        return hit

    # -- commit ------------------------------------------------------------------------------

    def commit(self, ctx: StepContext, session: Session, output: Analysed) -> None:
        current = session.get(Photo, ctx.item_id, populate_existing=True)
        if current is None:
            raise _gone()
        if not output.cached:
            _store_result(session, current.content_sha256, output)
        phash = output.phash
        previous = _near_ids(current.ai_results)
        near = self._near(ctx, session, current, phash)
        # lock this photo and every one whose near-duplicate list changes, in id order, so
        # that two jobs linking the same photos never wait on each other in a cycle
        touched = sorted({current.id, *(d["photo_id"] for d in near), *previous})
        photos = {p.id: p for p in session.scalars(
            select(Photo).where(Photo.id.in_(touched)).order_by(Photo.id)
            .with_for_update().execution_options(populate_existing=True))}
        photo = photos.get(current.id)
        if photo is None:
            raise _gone()
        # again under the locks: a photo another worker finished meanwhile is seen now (its
        # job has committed, so locking it too cannot wait on that job)
        near = self._near(ctx, session, photo, phash)
        linked = {d["photo_id"]: d["distance"] for d in near}
        previous |= _near_ids(photo.ai_results)
        late = sorted(set(linked) - set(photos))
        if late:
            photos.update({p.id: p for p in session.scalars(
                select(Photo).where(Photo.id.in_(late)).order_by(Photo.id)
                .with_for_update().execution_options(populate_existing=True))})
        for other_id in sorted((set(linked) | previous) - {photo.id}):
            other = photos.get(other_id)
            if other is not None:
                _link(other, photo.id, linked.get(other_id))

        derived = output.derived
        photo.width, photo.height = derived.image.width, derived.image.height
        photo.canonical_key, photo.thumbnail_key = derived.canonical_key, derived.thumbnail_key
        photo.phash = phash
        photo.ai_results = {**output.results, "near_duplicates": near}
        photo.ai_provider_used = output.provider
        photo.ai_provider_version = output.provider_version
        photo.processed_at = utcnow()
        _record_artifacts(session, photo, derived)
        set_status(session, photo, COMPLETED, provider=output.provider,
                   cached=output.cached, width=photo.width, height=photo.height,
                   near_duplicates=len(near))

    def _near(self, ctx: StepContext, session: Session, photo: Photo,
              phash: str) -> list[dict[str, Any]]:
        """The owner's other analysed photos whose hash is close to ``phash``."""
        candidates = session.execute(select(Photo.id, Photo.phash).where(
            Photo.owner_id == photo.owner_id, Photo.id != photo.id,
            Photo.phash.is_not(None))).all()
        return near_duplicates(phash, [(r.id, r.phash) for r in candidates],
                               ctx.settings.photos_duplicate_distance)

    def on_failure(self, ctx: StepContext, session: Session, error: ConveyorError) -> None:
        """The photo cannot be analysed (for good): ``failed``, with why, for people."""
        photo = session.get(Photo, ctx.item_id)
        if photo is None:
            return
        message = public_error(error, attempts=ctx.job.attempts,
                               max_attempts=ctx.job.max_attempts,
                               stored_name=Path(photo.storage_key).name,
                               filename=photo.original_filename)
        set_status(session, photo, FAILED, error_code=error.code, error_message=message)


def _near_ids(results: dict[str, Any] | None) -> set[str]:
    found = (results or {}).get("near_duplicates") or []
    return {str(d["photo_id"]) for d in found if isinstance(d, dict) and "photo_id" in d}


def _link(other: Photo, photo_id: str, distance: int | None) -> None:
    """Keep ``other``'s near-duplicate list in step with this photo (added, moved, or
    removed when its new hash is no longer close)."""
    if other.ai_results is None:
        return
    entries = [d for d in (other.ai_results.get("near_duplicates") or [])
               if isinstance(d, dict) and d.get("photo_id") != photo_id]
    if distance is not None:
        entries.append({"photo_id": photo_id, "distance": distance})
        entries.sort(key=lambda d: (int(d.get("distance", 0)), str(d.get("photo_id"))))
    other.ai_results = {**other.ai_results, "near_duplicates": entries}


def _store_result(session: Session, sha256: str, output: Analysed) -> None:
    """Insert the result into the cache; a concurrent insert of the same key wins unless
    this one was forced (process "all"), which overwrites it."""
    where = (PhotoResult.content_sha256 == sha256, PhotoResult.provider == output.provider,
             PhotoResult.provider_version == output.provider_version)
    values: dict[str, Any] = {"results": output.results, "model": output.model,
                              "cost": output.cost, "confidence": output.confidence}
    row = session.scalars(select(PhotoResult).where(*where)).first()
    if row is None:
        try:
            with session.begin_nested():
                session.add(PhotoResult(content_sha256=sha256, provider=output.provider,
                                        provider_version=output.provider_version, **values))
            return
        except IntegrityError:  # another worker stored the same content meanwhile
            row = session.scalars(select(PhotoResult).where(*where)).first()
            if row is None:
                raise
    if output.forced:
        for key, value in values.items():
            setattr(row, key, value)
        row.created_at = utcnow()


def _record_artifacts(session: Session, photo: Photo, derived: Derived) -> None:
    """The canonical JPEG and its thumbnail as artifacts of the photo's item (updated in
    place when the photo is processed again)."""
    existing = {a.kind: a for a in session.scalars(
        select(Artifact).where(Artifact.item_id == photo.item_id,
                               Artifact.kind.in_(("canonical_jpeg", "thumbnail"))))}
    img = derived.image
    canonical = existing.get("canonical_jpeg")
    if canonical is None:
        canonical = Artifact(id=new_id(), item_id=photo.item_id, kind="canonical_jpeg")
        session.add(canonical)
    canonical.storage_key, canonical.content_hash, canonical.size = (
        derived.canonical_key, img.sha256, img.size)
    canonical.media = {"width": img.width, "height": img.height,
                       "source_format": img.source_format, "source_mode": img.source_mode}
    thumb = existing.get("thumbnail")
    if thumb is None:
        thumb = Artifact(id=new_id(), item_id=photo.item_id, kind="thumbnail",
                         parent_id=canonical.id)
        session.add(thumb)
    thumb.storage_key, thumb.content_hash, thumb.size = (
        derived.thumbnail_key, derived.thumbnail_sha256, derived.thumbnail_size)
    thumb.media = {"width": derived.thumbnail_width, "height": derived.thumbnail_height}


registry.register(AnalyseStep())

__all__ = ["AnalyseStep"]
