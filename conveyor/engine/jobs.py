"""The job store: enqueue, claim, heartbeat, complete, fail, cancel, reap.

Every function takes a SQLAlchemy ``Session`` that is inside a transaction, or a database
URL when it owns its own short transaction. The claim is one ``UPDATE … RETURNING`` on the
next due row: under SQLite's ``BEGIN IMMEDIATE`` it is atomic; on PostgreSQL the inner
``SELECT`` takes ``FOR UPDATE SKIP LOCKED`` so that workers never wait on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import TextualSelect, bindparam, column, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.db.base import JSONType, UTCDateTime, new_id, utcnow
from conveyor.db.models import Job
from conveyor.db.session import affected, get_engine, transaction, write_lock
from conveyor.engine import outbox

ACTIVE = ("pending", "running")
FINAL = ("completed", "failed", "blocked", "cancelled")


@dataclass
class JobSpec:
    """What to run next. ``payload`` holds ids only, never blobs (DESIGN principle 3)."""

    pipeline: str
    step: str
    item_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    priority: int = 0
    delay_s: float = 0.0
    max_attempts: int = 3
    run_id: str | None = None
    parent_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def enqueue(session: Session, spec: JobSpec) -> Job:
    """Add a pending job in the caller's transaction.

    With an idempotency key, a second enqueue while the first job is pending or running
    returns that job instead of adding another (a double click, a retried request).
    """
    if spec.idempotency_key is not None:
        existing = _active_with_key(session, spec.idempotency_key)
        if existing is not None:
            return existing
    job = Job(
        id=new_id(),
        item_id=spec.item_id,
        run_id=spec.run_id,
        pipeline=spec.pipeline,
        step=spec.step,
        status="pending",
        attempts=0,
        max_attempts=spec.max_attempts,
        run_after=utcnow() + timedelta(seconds=spec.delay_s),
        priority=spec.priority,
        idempotency_key=spec.idempotency_key,
        payload=dict(spec.payload),
        parent_id=spec.parent_id,
    )
    publish = outbox.mark_dispatch(job)
    if spec.idempotency_key is None:
        session.add(job)
        session.flush()
    else:
        try:
            with session.begin_nested():
                session.add(job)
        except IntegrityError:
            existing = _active_with_key(session, spec.idempotency_key)
            if existing is None:
                raise
            return existing
    if publish:
        outbox.publish_after_commit(session, job.id)
    return job


def _active_with_key(session: Session, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.idempotency_key == key, Job.status.in_(ACTIVE))
    ).first()


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    item_id: str | None
    run_id: str | None
    pipeline: str
    step: str
    attempts: int
    max_attempts: int
    payload: dict[str, Any]
    parent_id: str | None
    worker_id: str


def _claimed(row: Any, worker_id: str) -> ClaimedJob:
    return ClaimedJob(
        id=row.id, item_id=row.item_id, run_id=row.run_id, pipeline=row.pipeline,
        step=row.step, attempts=row.attempts, max_attempts=row.max_attempts,
        payload=dict(row.payload or {}), parent_id=row.parent_id, worker_id=worker_id,
    )


@lru_cache(maxsize=32)
def _claim_statement(dialect: str, by_pipeline: bool, by_step: bool) -> TextualSelect:
    """The claim as one prepared statement per dialect (built once: this is the hot path).

    Only pending jobs are claimed here; jobs whose worker died are returned to pending by
    :func:`reap_expired_leases`, which keeps this query on one index range.
    """
    filters = ""
    if by_pipeline:
        filters += " AND pipeline IN :pipelines"
    if by_step:
        filters += " AND step IN :steps"
    lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
    sql = (
        "UPDATE jobs SET status = 'running', locked_by = :worker, locked_at = :now, "
        "lease_until = :lease_until, attempts = attempts + 1, started_at = :now "
        "WHERE id = (SELECT id FROM jobs WHERE status = 'pending' AND run_after <= :now"
        f"{filters} ORDER BY priority DESC, run_after LIMIT 1{lock}) "
        "AND status = 'pending' "
        "RETURNING id, item_id, run_id, pipeline, step, attempts, max_attempts, payload, "
        "parent_id"
    )
    params = [bindparam("now", type_=UTCDateTime()),
              bindparam("lease_until", type_=UTCDateTime())]
    if by_pipeline:
        params.append(bindparam("pipelines", expanding=True))
    if by_step:
        params.append(bindparam("steps", expanding=True))
    return text(sql).bindparams(*params).columns(
        Job.id, Job.item_id, Job.run_id, Job.pipeline, Job.step, Job.attempts,
        Job.max_attempts, column("payload", JSONType), Job.parent_id)


def claim_next_job(
    db_url: str,
    worker_id: str,
    lease_s: float,
    pipelines: tuple[str, ...] | None = None,
    steps: tuple[str, ...] | None = None,
) -> ClaimedJob | None:
    """Atomically take the next due pending job and lease it to ``worker_id``."""
    engine = get_engine(db_url)
    now = utcnow()
    stmt = _claim_statement(engine.dialect.name, bool(pipelines), bool(steps))
    params: dict[str, Any] = {"worker": worker_id, "now": now,
                              "lease_until": now + timedelta(seconds=lease_s)}
    if pipelines:
        params["pipelines"] = list(pipelines)
    if steps:
        params["steps"] = list(steps)
    with write_lock(db_url), engine.begin() as conn:
        row = conn.execute(stmt, params).first()
    return _claimed(row, worker_id) if row is not None else None


_FINISH = text(
    "UPDATE jobs SET status = :status, finished_at = :now, lease_until = NULL, "
    "processing_time_ms = :ms WHERE id = :id AND status = 'running' AND locked_by = :worker"
).bindparams(bindparam("now", type_=UTCDateTime()))


def finish_owned_job(session: Session, job: ClaimedJob, status: str, elapsed_ms: int) -> bool:
    """Mark our job finished in the caller's transaction; False if we no longer own it
    (its lease expired and another worker took it): then nothing must be committed."""
    result = session.connection().execute(
        _FINISH, {"status": status, "now": utcnow(), "ms": elapsed_ms, "id": job.id,
                  "worker": job.worker_id})
    return affected(result) == 1


_CLAIM_BY_ID = text(
    "UPDATE jobs SET status = 'running', locked_by = :worker, locked_at = :now, "
    "lease_until = :lease_until, attempts = attempts + 1, started_at = :now "
    "WHERE id = :id AND ((status = 'pending' AND run_after <= :now) "
    "OR (status = 'running' AND lease_until < :now)) "
    "RETURNING id, item_id, run_id, pipeline, step, attempts, max_attempts, payload, parent_id"
).bindparams(bindparam("now", type_=UTCDateTime()),
             bindparam("lease_until", type_=UTCDateTime())).columns(
    Job.id, Job.item_id, Job.run_id, Job.pipeline, Job.step, Job.attempts, Job.max_attempts,
    column("payload", JSONType), Job.parent_id)


def claim_job_by_id(db_url: str, job_id: str, worker_id: str, lease_s: float) -> ClaimedJob | None:
    """Claim one named job (a broker delivered its id). None if it is claimed, done, or not
    due yet (a delayed retry: the dispatcher publishes it again when it comes due). One
    prepared statement, like the local executor's claim: this is the Celery hot path."""
    engine = get_engine(db_url)
    now = utcnow()
    with write_lock(db_url), engine.begin() as conn:
        row = conn.execute(_CLAIM_BY_ID, {"worker": worker_id, "now": now, "id": job_id,
                                          "lease_until": now + timedelta(seconds=lease_s)}
                           ).first()
    return _claimed(row, worker_id) if row is not None else None


def heartbeat(db_url: str, job_id: str, worker_id: str, lease_s: float) -> tuple[bool, bool]:
    """Extend the lease. Returns ``(still_ours, cancel_requested)``."""
    now = utcnow()
    with transaction(db_url) as session:
        row = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running", Job.locked_by == worker_id)
            .values(lease_until=now + timedelta(seconds=lease_s))
            .returning(Job.cancel_requested)
        ).first()
    if row is None:
        return False, False
    return True, bool(row.cancel_requested)


def lock_owned_job(session: Session, job: ClaimedJob) -> Job | None:
    """Re-read the job inside the completion transaction; None if we lost it."""
    row = session.get(Job, job.id, with_for_update=True, populate_existing=True)
    if row is None or row.status != "running" or row.locked_by != job.worker_id:
        return None
    return row


def finish(row: Job, status: str, *, result_ref: dict[str, Any] | None = None,
           error: str | None = None, stack: str | None = None) -> None:
    now = utcnow()
    row.status = status
    row.finished_at = now
    row.lease_until = None
    if row.started_at is not None:
        row.processing_time_ms = int((now - row.started_at).total_seconds() * 1000)
    if result_ref is not None:
        row.result_ref = result_ref
    if error is not None:
        row.last_error = error
        row.last_error_stack = stack


def schedule_retry(row: Job, delay_s: float, error: str, stack: str | None) -> None:
    row.status = "pending"
    row.locked_by = None
    row.lease_until = None
    row.run_after = utcnow() + timedelta(seconds=delay_s)
    row.dispatched_at = None  # a brokered executor publishes it again when it is due
    row.last_error = error
    row.last_error_stack = stack


def child_finished(session: Session, parent_id: str) -> Job | None:
    """Count one child of a fan-out as done; returns the parent when it was the last."""
    row = session.execute(
        update(Job)
        .where(Job.id == parent_id)
        .values(children_pending=Job.children_pending - 1)
        .returning(Job.children_pending)
    ).first()
    if row is None or row.children_pending != 0:
        return None
    return session.get(Job, parent_id)


def cancel_item_jobs(session: Session, item_id: str) -> int:
    """Cancel pending jobs at once; ask running ones to stop at their next heartbeat."""
    now = utcnow()
    pending = session.execute(
        update(Job)
        .where(Job.item_id == item_id, Job.status == "pending")
        .values(status="cancelled", finished_at=now)
    )
    running = session.execute(
        update(Job)
        .where(Job.item_id == item_id, Job.status == "running")
        .values(cancel_requested=True)
    )
    return affected(pending) + affected(running)


def reap_expired_leases(db_url: str) -> int:
    """Return jobs whose worker died (lease expired) to ``pending``.

    The next claim counts the attempt; a job that has used every attempt is failed by the
    runner when it claims it (``attempts > max_attempts``), through the pipeline's usual
    failure path, so the item's state is set in one place.
    """
    now = utcnow()
    with transaction(db_url) as session:
        result = session.execute(
            update(Job)
            .where(Job.status == "running", Job.lease_until < now)
            .values(status="pending", locked_by=None, lease_until=None, run_after=now,
                    dispatched_at=None,
                    last_error="worker_lost: the worker died or stalled past its lease")
        )
        return affected(result)
