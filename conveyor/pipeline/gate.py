"""Confidence gates: accept, review or reject, recorded as a decision with its reasons."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from conveyor.db.models import Decision


@dataclass(frozen=True)
class Gate:
    """``confidence >= accept_at`` → accept; ``>= review_at`` → review; else reject."""

    name: str
    accept_at: float
    review_at: float = 0.0

    def decide(self, confidence: float | None) -> str:
        c = confidence or 0.0
        if c >= self.accept_at:
            return "accept"
        if c >= self.review_at:
            return "review"
        return "reject"

    def record(self, session: Session, *, item_id: str, job_id: str | None,
               confidence: float | None, **reasons: object) -> str:
        outcome = self.decide(confidence)
        session.add(Decision(
            item_id=item_id, job_id=job_id, kind=self.name, outcome=outcome,
            reasons={"confidence": confidence, "accept_at": self.accept_at,
                     "review_at": self.review_at, **reasons},
        ))
        return outcome
