"""Events: state changes, job transitions and progress ticks.

Written in the same transaction as the change they describe, so a reader never sees an
event for something that rolled back. SSE endpoints tail the ``events`` table; that works
across every worker process (and machine) with no extra moving part.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from conveyor.db.base import utcnow
from conveyor.db.models import Event
from conveyor.db.session import affected

_EVENTS: Table = Event.__table__  # type: ignore[assignment]
_INSERT = insert(_EVENTS)  # Core: no unit-of-work flush per event


def emit(
    session: Session, kind: str, *, owner_id: str | None = None, item_id: str | None = None,
    pipeline: str | None = None, **data: Any,
) -> None:
    session.connection().execute(_INSERT, {"kind": kind, "owner_id": owner_id,
                                           "item_id": item_id, "pipeline": pipeline,
                                           "data": data, "created_at": utcnow()})


def events_after(
    session: Session, last_id: int, *, owner_id: str | None, item_id: str | None = None,
    limit: int = 500,
) -> list[Event]:
    """Events newer than ``last_id``; ``owner_id=None`` means all owners (an admin)."""
    stmt = select(Event).where(Event.id > last_id).order_by(Event.id).limit(limit)
    if owner_id is not None:
        stmt = stmt.where(Event.owner_id == owner_id)
    if item_id is not None:
        stmt = stmt.where(Event.item_id == item_id)
    return list(session.scalars(stmt))


def latest_event_id(session: Session) -> int:
    row = session.scalars(select(Event.id).order_by(Event.id.desc()).limit(1)).first()
    return int(row or 0)


def prune_events(session: Session, keep_hours: float = 24.0) -> int:
    cutoff = utcnow() - timedelta(hours=keep_hours)
    return affected(session.execute(delete(Event).where(Event.created_at < cutoff)))
