"""Events: state changes, job transitions and progress ticks.

Written in the same transaction as the change they describe, so a reader never sees an
event for something that rolled back. SSE endpoints tail the ``events`` table; that works
across every worker process (and machine) with no extra moving part.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Select, Table, delete, insert, select
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
    return list(session.scalars(_filtered(stmt, owner_id, item_id)))


def _filtered(stmt: Select[Any], owner_id: str | None, item_id: str | None) -> Select[Any]:
    if owner_id is not None:
        stmt = stmt.where(Event.owner_id == owner_id)
    if item_id is not None:
        stmt = stmt.where(Event.item_id == item_id)
    return stmt


class EventTail:
    """Follows the events table past ``after`` without missing late commits.

    On PostgreSQL an id is taken when a row is inserted, not when it commits, so event 41
    can become visible after event 42 has been read. The tail therefore re-reads from a
    floor that only passes an id once that event is ``grace_s`` old (by then every
    transaction that took a smaller id has committed or rolled back), and skips the events
    it has already delivered.
    """

    def __init__(self, after: int, grace_s: float = 10.0) -> None:
        self.floor = after
        self.grace = timedelta(seconds=grace_s)
        self._delivered: dict[int, Any] = {}  # id → created_at, for ids above the floor

    def poll(self, session: Session, *, owner_id: str | None,
             item_id: str | None = None) -> list[Event]:
        high = max(self._delivered, default=self.floor)
        fresh = events_after(session, high, owner_id=owner_id, item_id=item_id)
        if high > self.floor:  # late commits below what was already delivered
            ids = session.scalars(_filtered(select(Event.id), owner_id, item_id)
                                  .where(Event.id > self.floor, Event.id < high)).all()
            missing = [i for i in ids if i not in self._delivered]
            if missing:
                late = session.scalars(select(Event).where(Event.id.in_(missing))
                                       .order_by(Event.id))
                fresh = [*late, *fresh]
        for e in fresh:
            self._delivered[e.id] = e.created_at
        settled = utcnow() - self.grace
        old = [i for i, at in self._delivered.items() if at < settled]
        if old:
            self.floor = max(self.floor, *old)
            self._delivered = {i: at for i, at in self._delivered.items() if i > self.floor}
        return fresh


def latest_event_id(session: Session) -> int:
    row = session.scalars(select(Event.id).order_by(Event.id.desc()).limit(1)).first()
    return int(row or 0)


def prune_events(session: Session, keep_hours: float = 24.0) -> int:
    cutoff = utcnow() - timedelta(hours=keep_hours)
    return affected(session.execute(delete(Event).where(Event.created_at < cutoff)))
