"""Seed 000's enrichment ladder: cache (free) → Discogs (free) → AI (expensive)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.db.session import read_session, transaction
from conveyor.engine.cache import cache_get, cache_key, cache_put
from conveyor.engine.steps import StepContext
from conveyor.errors import PermanentError
from conveyor.pipeline.tiers import skipped, tier
from conveyor.pipelines.records import prompts
from conveyor.pipelines.records.models import PreviewRecord
from conveyor.providers.catalogs import build_catalog
from conveyor.providers.catalogs.base import CatalogMatch, CatalogQuery, RecordCatalog
from conveyor.providers.llm.openai_compat import build_llm

MIN_MATCH_SCORE = 0.6


@dataclass
class EnrichmentResult:
    source: str | None  # "cache", "discogs", "ai" or None
    fields: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    cost: float = 0.0


def query_of(preview: PreviewRecord) -> CatalogQuery:
    return CatalogQuery(artist=preview.artist, album=preview.album,
                        catalog_number=preview.catalog_number, barcode=preview.barcode)


def match_fields(match: CatalogMatch, release: dict[str, Any] | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "artist": match.artist, "album": match.album, "label": match.label,
        "catalog_number": match.catalog_number, "year": match.year, "barcode": match.barcode,
        "genre": match.genre or None, "style": match.style or None, "country": match.country,
        "format": match.format or None,
    }
    if release and isinstance(release.get("tracklist"), list):
        fields["tracklist"] = [
            {"position": str(t.get("position") or ""), "title": str(t.get("title") or ""),
             "duration": str(t.get("duration") or "")}
            for t in release["tracklist"] if isinstance(t, dict) and t.get("title")
        ]
    return {k: v for k, v in fields.items() if v not in (None, "", [])}


def _search_catalog(
    ctx: StepContext, catalog: RecordCatalog, query: CatalogQuery
) -> tuple[CatalogMatch | None, dict[str, Any] | None]:
    """The catalogue tier. A refusal (bad token, 4xx) falls through to the next tier;
    transient trouble (429, 5xx, timeouts) propagates so the job is retried later."""
    try:
        with tier(ctx, "ENRICH_DISCOGS", catalog.name) as t:
            matches = catalog.search(query)
            best = matches[0] if matches and matches[0].score >= MIN_MATCH_SCORE else None
            t.confidence = best.score if best else (matches[0].score if matches else None)
            t.outcome = "hit" if best else "miss"
            t.detail = {"candidates": len(matches)}
            release = None
            get_release = getattr(catalog, "get_release", None)
            if best is not None and get_release is not None and best.release_id:
                release = get_release(best.release_id)
    except PermanentError:
        return None, None
    return best, release


def enrich(ctx: StepContext, preview: PreviewRecord) -> EnrichmentResult:
    query = query_of(preview)
    request = {"artist": query.artist, "album": query.album,
               "catalog_number": query.catalog_number, "barcode": query.barcode}
    if not any(request.values()):
        skipped(ctx, "ENRICH", "nothing to look up: no artist, album, catalogue number or barcode")
        return EnrichmentResult(None)
    db = ctx.settings.resolved_database_url
    key = cache_key("records.enrich", request)

    with tier(ctx, "ENRICH_CACHE", "cache_entries") as t:
        with read_session(db) as session:
            hit = cache_get(session, key)
        t.outcome = "hit" if hit else "miss"
    if hit is not None:
        return EnrichmentResult("cache", dict(hit.get("fields", {})), hit)

    catalog = ctx.resources.get("catalog", lambda: build_catalog(ctx.settings, ctx.guard))
    if catalog is None:
        skipped(ctx, "ENRICH_DISCOGS", "no catalogue is configured "
                "(CONVEYOR_DISCOGS_TOKEN or CONVEYOR_DISCOGS_COLLECTION_CSV)")
    else:
        best, release = _search_catalog(ctx, catalog, query)
        if best is not None:
            value = {"fields": match_fields(best, release), "origin": "discogs",
                     "catalog": catalog.name, "release_id": best.release_id,
                     "score": best.score}
            with transaction(db) as session:
                cache_put(session, key, "discogs", value, ctx.settings.catalog_cache_ttl_s)
            return EnrichmentResult("discogs", value["fields"], value)

    llm = ctx.resources.get("llm", lambda: build_llm(ctx.settings, ctx.guard))
    if llm is None:
        skipped(ctx, "ENRICH_AI", "no vision LLM is configured (CONVEYOR_LLM_BASE_URL)")
        return EnrichmentResult(None)
    known = {k: getattr(preview, k) for k in ("artist", "album", "label", "catalog_number",
                                              "year", "barcode")}
    with tier(ctx, "ENRICH_AI", llm.model) as t:
        response = llm.complete_json(system=prompts.ENRICH_SYSTEM,
                                     prompt=prompts.enrich_prompt(known),
                                     schema=prompts.ENRICH_SCHEMA, schema_name="release")
        data = dict(response.data)
        t.confidence = float(data.pop("confidence", 0.0) or 0.0)
        t.cost_estimate = response.cost_usd
        t.model_used = response.model
        fields = prompts.clean_fields(data)
    value = {"fields": fields, "origin": "ai", "model": response.model}
    with transaction(db) as session:
        cache_put(session, key, "ai", value, ctx.settings.catalog_cache_ttl_s)
    return EnrichmentResult("ai", fields, value, response.cost_usd)
