"""The records pipeline's steps: canonicalize → ocr (Level 1) → vision (Level 3) → enrich.

``canonicalize`` and ``ocr`` are CPU-bound and run in worker processes; ``vision`` and
``enrich`` wait on providers. Each step's ``run`` does the work outside any transaction and
``commit`` writes the results, the state change and the next job in one.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.db.base import utcnow
from conveyor.db.models import Artifact
from conveyor.db.session import read_session
from conveyor.engine.audit import AuditRecord
from conveyor.engine.jobs import JobSpec, enqueue
from conveyor.engine.steps import JobCancelled, Resources, Step, StepContext, registry
from conveyor.errors import ConveyorError, PermanentError
from conveyor.media.image import CanonicalImage, ImageLimits, canonicalize_isolated
from conveyor.pipeline.gate import Gate
from conveyor.pipeline.tiers import skipped, tier
from conveyor.pipelines.records import prompts
from conveyor.pipelines.records.enrichment import EnrichmentResult, enrich
from conveyor.pipelines.records.heuristics import Extraction, FieldValue, extract_from_ocr, merge
from conveyor.pipelines.records.models import PreviewRecord
from conveyor.pipelines.records.service import (
    archive_in_session,
    canonical_key,
    enrich_job,
    set_state,
)
from conveyor.pipelines.records.states import AI_ANALYZED, ENRICHED, FAILED, PIPELINE, UPLOADED
from conveyor.providers.llm.base import ImageInput
from conveyor.providers.llm.openai_compat import build_llm
from conveyor.providers.ocr.base import OcrEngine, OcrResult
from conveyor.providers.ocr.rapid import build_ocr
from conveyor.storage.signing import signed_path

OCR_COST_PER_IMAGE = 0.001  # seed 000: "Level 1 (OCR): ~$0.001" (notional compute cost)


def _gone() -> JobCancelled:
    """The preview was archived (or removed) meanwhile: this job has nothing left to do."""
    return JobCancelled("the preview was archived or removed while this job waited")


def _load(ctx: StepContext) -> PreviewRecord:
    with read_session(ctx.settings.resolved_database_url) as session:
        preview = session.get(PreviewRecord, ctx.item_id)
    if preview is None:
        raise _gone()
    return preview


def _locked_preview(session: Session, ctx: StepContext) -> PreviewRecord:
    preview = session.get(PreviewRecord, ctx.item_id, with_for_update=True,
                          populate_existing=True)
    if preview is None:
        raise _gone()
    return preview


def _apply(preview: PreviewRecord, extraction: Extraction) -> None:
    for key, fv in extraction.fields.items():
        setattr(preview, key, fv.value)
    preview.field_sources = {**(preview.field_sources or {}), **extraction.sources()}
    preview.confidence = extraction.confidence


def _extraction_of(preview: PreviewRecord) -> Extraction:
    stored = (preview.ai_metadata or {}).get("fields", {})
    return Extraction(fields={k: FieldValue(v["value"], v["confidence"], v["source"])
                              for k, v in stored.items()})


def _gate_after_analysis(ctx: StepContext, session: Session, preview: PreviewRecord) -> None:
    """AI_ANALYZED; ≥ auto-archive threshold → enrich and archive with no review."""
    preview.analyzed_at = utcnow()
    set_state(session, preview, AI_ANALYZED)
    gate = Gate("records.auto_archive", accept_at=ctx.settings.records_auto_archive_at)
    if gate.record(session, item_id=preview.preview_id, job_id=ctx.job.id,
                   confidence=preview.confidence) == "accept":
        preview.archive_after_enrich = True
        enqueue(session, enrich_job(preview))


class RecordsStep(Step):
    pipeline = PIPELINE

    def on_failure(self, ctx: StepContext, session: Session, error: ConveyorError) -> None:
        """The cover cannot be processed: the preview and its item end FAILED, with why."""
        preview = session.get(PreviewRecord, ctx.item_id)
        if preview is None:  # archived meanwhile: the item's state stays as it is
            return
        set_state(session, preview, FAILED, error_code=error.code, error_message=error.message)


@dataclass
class Canonicalized:
    key: str
    image: CanonicalImage


class CanonicalizeStep(RecordsStep):
    name = "canonicalize"

    def run(self, ctx: StepContext) -> Canonicalized:
        preview = _load(ctx)
        key = canonical_key(preview.user_id, preview.preview_id)
        src = ctx.storage.local_path(preview.file_path)
        with tier(ctx, "CANONICALIZE", "pillow") as t, tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "canonical.jpg"
            image = canonicalize_isolated(src, dst, ImageLimits.from_settings(ctx.settings))
            ctx.storage.put_file(key, dst)
            t.detail = {"width": image.width, "height": image.height,
                        "source_format": image.source_format, "source_mode": image.source_mode}
        return Canonicalized(key, image)

    def commit(self, ctx: StepContext, session: Session, output: Canonicalized) -> None:
        preview = _locked_preview(session, ctx)
        preview.canonical_image_path = output.key
        img = output.image
        session.add(Artifact(item_id=preview.preview_id, kind="canonical_jpeg",
                             storage_key=output.key, content_hash=img.sha256, size=img.size,
                             media={"width": img.width, "height": img.height,
                                    "source_format": img.source_format,
                                    "source_mode": img.source_mode}))
        enqueue(session, JobSpec(pipeline=PIPELINE, step="ocr", item_id=preview.preview_id,
                                 payload={"preview_id": preview.preview_id},
                                 idempotency_key=f"records:ocr:{preview.preview_id}"))


@dataclass
class OcrOutput:
    result: OcrResult
    extraction: Extraction


class OcrStep(RecordsStep):
    """Level 1: OCR plus heuristics. Confident enough → AI_ANALYZED; else Level 3."""
    name = "ocr"

    def _engine(self, settings: Settings, resources: Resources) -> OcrEngine:
        engine: OcrEngine = resources.get("ocr", lambda: build_ocr(settings.ocr_provider))
        return engine

    def warm_up(self, settings: Settings, resources: Resources) -> None:
        self._engine(settings, resources)

    def run(self, ctx: StepContext) -> OcrOutput:
        preview = _load(ctx)
        if not preview.canonical_image_path:
            raise PermanentError("the image was not canonicalised", code="no_canonical_image")
        engine = self._engine(ctx.settings, ctx.resources)
        path = ctx.storage.local_path(preview.canonical_image_path)
        with tier(ctx, "LEVEL_1_OCR", f"{engine.name}+heuristics") as t:
            result = engine.read(path)
            extraction = extract_from_ocr(result.lines)
            t.model_used = f"{result.model}+heuristics"
            t.confidence = extraction.confidence
            t.cost_estimate = OCR_COST_PER_IMAGE
            t.detail = {"lines": len(result.lines), "fields": sorted(extraction.fields)}
        return OcrOutput(result, extraction)

    def commit(self, ctx: StepContext, session: Session, output: OcrOutput) -> None:
        preview = _locked_preview(session, ctx)
        preview.ocr_text = output.result.text
        preview.ocr_lines = [ln.to_dict() for ln in output.result.lines]
        preview.ai_metadata = {"fields": {k: f.to_dict()
                                          for k, f in output.extraction.fields.items()},
                               "tiers": ["ocr"]}
        _apply(preview, output.extraction)
        preview.model_used = ctx.audits[-1].model_used if ctx.audits else None
        preview.cost_estimate = (preview.cost_estimate or 0.0) + OCR_COST_PER_IMAGE
        gate = Gate("records.level1", accept_at=ctx.settings.records_escalate_below)
        if gate.record(session, item_id=preview.preview_id, job_id=ctx.job.id,
                       confidence=preview.confidence) == "accept":
            _gate_after_analysis(ctx, session, preview)
            return
        set_state(session, preview, UPLOADED, escalating=True)
        enqueue(session, JobSpec(pipeline=PIPELINE, step="vision", item_id=preview.preview_id,
                                 payload={"preview_id": preview.preview_id},
                                 idempotency_key=f"records:vision:{preview.preview_id}"))


@dataclass
class VisionOutput:
    extraction: Extraction | None
    model: str | None
    cost: float


class VisionStep(RecordsStep):
    """Level 3: the vision LLM, merged with Level 1. Not configured → skipped, to review."""
    name = "vision"

    def run(self, ctx: StepContext) -> VisionOutput:
        preview = _load(ctx)
        llm = ctx.resources.get("llm", lambda: build_llm(ctx.settings, ctx.guard))
        if llm is None:
            skipped(ctx, "LEVEL_3_VISION", "no vision LLM is configured (CONVEYOR_LLM_BASE_URL)")
            return VisionOutput(None, None, 0.0)
        image = _image_input(ctx, preview)
        with tier(ctx, "LEVEL_3_VISION", llm.model) as t:
            response = llm.complete_json(
                system=prompts.COVER_SYSTEM, prompt=prompts.cover_prompt(preview.ocr_text),
                schema=prompts.COVER_SCHEMA, schema_name="record_cover", image=image)
            data = dict(response.data)
            llm_conf = float(data.pop("confidence", 0.0) or 0.0)
            fields = prompts.clean_fields(data)
            merged = merge(_extraction_of(preview), fields, min(max(llm_conf, 0.0), 1.0), "llm")
            t.model_used = response.model
            t.cost_estimate = response.cost_usd
            t.confidence = merged.confidence
            t.detail = {"input_tokens": response.input_tokens,
                        "output_tokens": response.output_tokens,
                        "llm_confidence": llm_conf}
        return VisionOutput(merged, response.model, response.cost_usd)

    def commit(self, ctx: StepContext, session: Session, output: VisionOutput) -> None:
        preview = _locked_preview(session, ctx)
        if output.extraction is not None:
            _apply(preview, output.extraction)
            meta = dict(preview.ai_metadata or {})
            meta["fields"] = {k: f.to_dict() for k, f in output.extraction.fields.items()}
            meta["tiers"] = [*meta.get("tiers", []), "llm"]
            preview.ai_metadata = meta
            preview.model_used = f"{preview.model_used}+{output.model}"
            preview.cost_estimate = (preview.cost_estimate or 0.0) + output.cost
        _gate_after_analysis(ctx, session, preview)

    def on_failure(self, ctx: StepContext, session: Session, error: ConveyorError) -> None:
        """The LLM kept failing: keep the OCR reading and send the cover to review."""
        preview = session.get(PreviewRecord, ctx.item_id)
        if preview is None:
            return
        preview.analyzed_at = utcnow()
        set_state(session, preview, AI_ANALYZED, error_code=error.code,
                  error_message=f"vision model failed, OCR result kept: {error.message}")


def _image_input(ctx: StepContext, preview: PreviewRecord) -> ImageInput:
    key = preview.canonical_image_path or ""
    if ctx.settings.llm_image_mode == "signed_url":
        direct = ctx.storage.direct_url(key, 900)  # S3: a presigned URL the model can fetch
        if direct:
            return ImageInput(url=direct)
        path = signed_path(ctx.settings.signing_key(), key, ttl_s=900)
        return ImageInput(url=ctx.settings.public_url.rstrip("/") + path)
    return ImageInput(data=ctx.storage.read_bytes(key), mime="image/jpeg")


class EnrichStep(RecordsStep):
    """Cache → catalogue (Discogs) → AI; then ENRICHED, and archived when the gate said so."""
    name = "enrich"

    def run(self, ctx: StepContext) -> EnrichmentResult:
        return enrich(ctx, _load(ctx))

    def commit(self, ctx: StepContext, session: Session, output: EnrichmentResult) -> None:
        preview = _locked_preview(session, ctx)
        if ctx.job.payload.get("revision", 0) != (preview.revision or 0):
            # reviewed again while this ran: the newer enrichment job applies its own result
            ctx.audit(AuditRecord(step="ENRICH", outcome="superseded",
                                  detail={"revision": ctx.job.payload.get("revision", 0),
                                          "current": preview.revision}))
            return
        for key, value in output.fields.items():
            if (preview.field_sources or {}).get(key) == "user":
                continue  # a person's edit beats any catalogue
            if getattr(preview, key) in (None, "", []):
                setattr(preview, key, value)
                preview.field_sources = {**(preview.field_sources or {}), key: output.source}
        preview.enrichment_source = output.source
        preview.enrichment_data = output.data
        preview.cost_estimate = (preview.cost_estimate or 0.0) + output.cost
        preview.enriched_at = utcnow()
        set_state(session, preview, ENRICHED, enrichment_source=output.source)
        self._maybe_archive(ctx, session, preview)

    def on_failure(self, ctx: StepContext, session: Session, error: ConveyorError) -> None:
        """Catalogues down for good: the item keeps its state (archivable) and says why."""
        preview = session.get(PreviewRecord, ctx.item_id)
        if preview is None or ctx.job.payload.get("revision", 0) != (preview.revision or 0):
            return
        set_state(session, preview, preview.state, error_code=error.code,
                  error_message=f"enrichment failed: {error.message}")
        self._maybe_archive(ctx, session, preview)

    def _maybe_archive(self, ctx: StepContext, session: Session, preview: PreviewRecord) -> None:
        if not preview.archive_after_enrich or not (preview.artist or preview.album):
            return
        _, audits = archive_in_session(session, ctx.storage, preview, actor="auto")
        for record in audits:
            ctx.audit(record)


for _step in (CanonicalizeStep(), OcrStep(), VisionStep(), EnrichStep()):
    registry.register(_step)

__all__ = ["CanonicalizeStep", "EnrichStep", "OcrStep", "VisionStep"]


