"""Escalation tiers: time a tier, record it as an audit row, skip it when not configured."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from conveyor.engine.audit import AuditRecord
from conveyor.engine.steps import StepContext


@dataclass
class TierOutcome:
    """Filled in by the tier's code; becomes the tier's audit row."""

    model_used: str | None = None
    confidence: float | None = None
    cost_estimate: float = 0.0
    outcome: str = "ok"
    detail: dict[str, object] | None = None


@contextmanager
def tier(ctx: StepContext, step: str, model: str | None = None) -> Iterator[TierOutcome]:
    """``with tier(ctx, "LEVEL_1_OCR", "rapidocr") as t: …; t.confidence = …``

    Records one audit row however the block ends (a failing tier still shows its cost).
    """
    out = TierOutcome(model_used=model)
    started = time.perf_counter()
    try:
        yield out
    except Exception as exc:
        out.outcome = "error"
        out.detail = {**(out.detail or {}), "error": str(exc)}
        raise
    finally:
        ctx.audit(AuditRecord(
            step=step, model_used=out.model_used, confidence=out.confidence,
            cost_estimate=out.cost_estimate, outcome=out.outcome, detail=out.detail,
            duration_ms=int((time.perf_counter() - started) * 1000),
        ))


def skipped(ctx: StepContext, step: str, reason: str, model: str | None = None) -> None:
    """A tier that is not configured: say so in the audit trail instead of pretending."""
    ctx.audit(AuditRecord(step=step, model_used=model, outcome="skipped",
                          detail={"reason": reason}, duration_ms=0))


