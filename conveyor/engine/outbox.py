"""The outbox between the job table and a message broker (the Celery executor).

The ``jobs`` table is the outbox. A job enqueued while a publisher is installed gets
``dispatched_at`` set in the enqueueing transaction, and its id is published right after
that transaction commits (never before: a worker must find the row). If the process dies
between commit and publish, or the broker loses the message, the job stays ``pending`` with
an old ``dispatched_at``; :func:`dispatch_due` (run by every dispatcher loop) publishes it
again once ``redispatch_after_s`` has passed. The same sweep publishes jobs that had no
message yet: delayed retries coming due, jobs the reaper returned to ``pending``, and jobs
enqueued by a process with no publisher installed.

Publishing twice is harmless: a message only carries the job id, and a worker that finds
the job claimed or done does nothing (:func:`conveyor.engine.jobs.claim_job_by_id`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, event, text, update
from sqlalchemy.orm import Session

from conveyor.db.base import UTCDateTime, utcnow
from conveyor.db.models import Job
from conveyor.db.session import get_engine, transaction, write_lock

log = logging.getLogger("conveyor.outbox")

Publisher = Callable[[Sequence[str]], None]
"""Sends one message per job id to the broker; raises if the broker cannot take them."""

_KEY = "conveyor.outbox"
_publisher: Publisher | None = None
_db_url: str | None = None


def install(publisher: Publisher, db_url: str) -> None:
    """Publish the jobs this process enqueues, after each enqueueing commit."""
    global _publisher, _db_url
    _publisher, _db_url = publisher, db_url


def uninstall() -> None:
    global _publisher, _db_url
    _publisher, _db_url = None, None


def installed() -> bool:
    return _publisher is not None


def mark_dispatch(job: Job) -> bool:
    """Called by ``enqueue`` before the insert: True if the job will be published at commit
    (a publisher is installed and the job is due now; otherwise the sweep publishes it)."""
    if _publisher is None or job.run_after > utcnow():
        return False
    job.dispatched_at = utcnow()
    return True


def publish_after_commit(session: Session, job_id: str) -> None:
    session.info.setdefault(_KEY, []).append(job_id)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    ids: list[str] | None = session.info.pop(_KEY, None)
    if ids and _publisher is not None:
        _publish(_publisher, ids, _db_url)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_KEY, None)


def _publish(publisher: Publisher, ids: Sequence[str], db_url: str | None) -> None:
    try:
        publisher(ids)
    except Exception as exc:  # the broker is down: the sweep publishes them later
        log.warning("could not publish %d job(s), the dispatcher will retry: %s",
                    len(ids), type(exc).__name__)
        if db_url is not None:
            _forget_dispatch(db_url, ids)


def _forget_dispatch(db_url: str, ids: Sequence[str]) -> None:
    try:
        with transaction(db_url) as session:
            session.execute(update(Job).where(Job.id.in_(list(ids)), Job.status == "pending")
                            .values(dispatched_at=None))
    except Exception:  # the database is down too: redispatch_after_s covers it
        log.warning("could not clear dispatched_at for %d job(s)", len(ids))


def _sweep_statement(dialect: str) -> Any:
    lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    return text(
        "UPDATE jobs SET dispatched_at = :now WHERE id IN ("
        "SELECT id FROM jobs WHERE status = 'pending' AND run_after <= :now "
        "AND (dispatched_at IS NULL OR dispatched_at < :stale) "
        f"ORDER BY priority DESC, run_after LIMIT :limit{lock}) "
        "RETURNING id"
    ).bindparams(bindparam("now", type_=UTCDateTime()), bindparam("stale", type_=UTCDateTime()))


def dispatch_due(db_url: str, publisher: Publisher, redispatch_after_s: float,
                 limit: int = 500) -> int:
    """Publish due pending jobs that have no recent message; returns how many."""
    engine = get_engine(db_url)
    now = utcnow()
    stmt = _sweep_statement(engine.dialect.name)
    with write_lock(db_url), engine.begin() as conn:
        ids = [row.id for row in conn.execute(stmt, {
            "now": now, "stale": now - timedelta(seconds=redispatch_after_s), "limit": limit})]
    if ids:
        _publish(publisher, ids, db_url)
    return len(ids)
