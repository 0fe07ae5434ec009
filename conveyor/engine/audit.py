"""Audit rows: one per step attempt and escalation tier, mirrored to logs/pipeline.log."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from conveyor.db.base import utcnow
from conveyor.db.models import AuditEvent


@dataclass
class AuditRecord:
    step: str
    model_used: str | None = None
    confidence: float | None = None
    cost_estimate: float = 0.0
    duration_ms: int | None = None
    outcome: str = "ok"  # ok, skipped, escalated, retry, failed, cancelled
    state: str | None = None
    detail: dict[str, Any] | None = None
    timestamp: datetime = field(default_factory=utcnow)


def write_audit(
    session: Session, *, pipeline: str, item_id: str | None, job_id: str | None,
    records: list[AuditRecord],
) -> list[AuditEvent]:
    rows = [
        AuditEvent(
            item_id=item_id, job_id=job_id, pipeline=pipeline, state=r.state, step=r.step,
            model_used=r.model_used, confidence=r.confidence, cost_estimate=r.cost_estimate,
            duration_ms=r.duration_ms, outcome=r.outcome, detail=r.detail, timestamp=r.timestamp,
        )
        for r in records
    ]
    session.add_all(rows)
    return rows


def ndjson_line(row: AuditEvent, id_field: str = "item_id") -> str:
    """Seed 000's log format, plus duration and outcome."""
    doc: dict[str, Any] = {
        id_field: row.item_id,
        "pipeline": row.pipeline,
        "state": row.state,
        "step": row.step,
        "model_used": row.model_used,
        "confidence": row.confidence,
        "cost_estimate": row.cost_estimate,
        "duration_ms": row.duration_ms,
        "outcome": row.outcome,
        "timestamp": row.timestamp.isoformat().replace("+00:00", "Z"),
    }
    if row.detail:
        doc["detail"] = row.detail
    return json.dumps(doc, separators=(",", ":"), default=str)


# Pipelines whose seed names the item id differently in the log (seed 000: preview_id).
LOG_ID_FIELD: dict[str, str] = {"records": "preview_id"}


def append_pipeline_log(logs_dir: Path, rows: list[AuditEvent]) -> None:
    """Append rows as NDJSON after their transaction committed.

    One ``write`` per batch on an ``O_APPEND`` descriptor, so lines from several worker
    processes never interleave.
    """
    if not rows:
        return
    logs_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(
        ndjson_line(r, LOG_ID_FIELD.get(r.pipeline, "item_id")) + "\n" for r in rows
    )
    fd = os.open(logs_dir / "pipeline.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
