"""The event tail that feeds SSE, on PostgreSQL where ids can commit out of order."""

from __future__ import annotations

from sqlalchemy import text

from conveyor.config import Settings
from conveyor.db.session import get_engine, read_session, transaction
from conveyor.engine.events import EventTail, emit


def test_an_event_that_commits_late_is_still_delivered(settings: Settings) -> None:
    db = settings.resolved_database_url
    tail = EventTail(0)
    engine = get_engine(db)
    if engine.dialect.name == "sqlite":
        # SQLite has one writer at a time, so ids always commit in order; check the basics
        with transaction(db) as session:
            emit(session, "a", owner_id="u")
        with read_session(db) as session:
            assert [e.kind for e in tail.poll(session, owner_id="u")] == ["a"]
            assert tail.poll(session, owner_id="u") == []
        return
    slow = engine.connect()
    slow_tx = slow.begin()
    slow.execute(text("INSERT INTO events (kind, owner_id, data, created_at) "
                      "VALUES ('slow', 'u', '{}', now())"))  # takes the smaller id
    with transaction(db) as session:
        emit(session, "fast", owner_id="u")
    with read_session(db) as session:
        assert [e.kind for e in tail.poll(session, owner_id="u")] == ["fast"]
    slow_tx.commit()
    slow.close()
    with read_session(db) as session:
        assert [e.kind for e in tail.poll(session, owner_id="u")] == ["slow"]
        assert tail.poll(session, owner_id="u") == []  # each event once
