"""Runs claimed jobs: heartbeat, two-phase step execution, retry, failure, fan-in."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.db.models import Item
from conveyor.db.session import transaction
from conveyor.engine.audit import AuditRecord, append_pipeline_log, write_audit
from conveyor.engine.backoff import backoff_delay
from conveyor.engine.events import emit
from conveyor.engine.jobs import (
    ClaimedJob,
    JobSpec,
    child_finished,
    claim_job_by_id,
    claim_next_job,
    enqueue,
    finish,
    finish_owned_job,
    heartbeat,
    lock_owned_job,
    reap_expired_leases,
    schedule_retry,
)
from conveyor.engine.steps import JobCancelled, Resources, Step, StepContext, StepRegistry
from conveyor.errors import ConveyorError, PermanentError, ProviderUnavailable, TransientError
from conveyor.providers.base import CallGuard
from conveyor.storage.base import Storage

log = logging.getLogger("conveyor.runner")


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class _Watch:
    job: ClaimedJob
    ctx: StepContext
    lost: bool = False


class _Heartbeat(threading.Thread):
    """One thread per runner that extends the lease of whatever job is running.

    It also flags cancellation (``ctx.cancelled``) and a lost lease (another worker took
    the job over after our lease expired), so the step stops and its output is discarded.
    """

    def __init__(self, runner: Runner) -> None:
        super().__init__(daemon=True, name="conveyor-heartbeat")
        self.runner = runner
        self._lock = threading.Lock()
        self._watch: _Watch | None = None

    def watch(self, job: ClaimedJob, ctx: StepContext) -> _Watch:
        watch = _Watch(job, ctx)
        with self._lock:
            self._watch = watch
        return watch

    def release(self) -> None:
        with self._lock:
            self._watch = None

    def run(self) -> None:
        s = self.runner.settings
        while True:
            time.sleep(s.heartbeat_seconds)
            with self._lock:
                watch = self._watch
            if watch is None:
                continue
            try:
                ours, cancel = heartbeat(s.resolved_database_url, watch.job.id,
                                         watch.job.worker_id, s.lease_seconds)
            except Exception:  # a database hiccup: try again at the next beat
                log.warning("heartbeat failed for job %s", watch.job.id, exc_info=True)
                continue
            if not ours:
                watch.lost = True
                watch.ctx.cancelled.set()
            elif cancel:
                watch.ctx.cancelled.set()


class Runner:
    """Claims and runs jobs in this process. Executors decide how many and where."""

    def __init__(self, settings: Settings, registry: StepRegistry, storage: Storage,
                 guard: CallGuard, worker_id: str | None = None,
                 pipelines: tuple[str, ...] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.storage = storage
        self.guard = guard
        self.worker_id = worker_id or make_worker_id()
        self.pipelines = pipelines
        self.resources = Resources(guard)
        self._heartbeat: _Heartbeat | None = None
        self._next_reap = 0.0

    def warm_up(self) -> None:
        """Let every step load its models now rather than on its first job."""
        for step in self.registry.steps():
            if self.pipelines is None or step.pipeline in self.pipelines:
                try:
                    step.warm_up(self.settings, self.resources)
                except Exception:
                    log.exception("warm-up of %s.%s failed", step.pipeline, step.name)

    @property
    def db_url(self) -> str:
        return self.settings.resolved_database_url

    def run_one(self) -> bool:
        """Claim and run the next due job. False when there was none."""
        job = self._claim()
        if job is None and time.monotonic() >= self._next_reap:
            # idle: return jobs of dead workers to the queue (at most once a second)
            self._next_reap = time.monotonic() + 1.0
            if reap_expired_leases(self.db_url):
                job = self._claim()
        if job is None:
            return False
        self.execute(job)
        return True

    def _claim(self) -> ClaimedJob | None:
        return claim_next_job(self.db_url, self.worker_id, self.settings.lease_seconds,
                              pipelines=self.pipelines)

    def _beat(self) -> _Heartbeat:
        if self._heartbeat is None or not self._heartbeat.is_alive():
            self._heartbeat = _Heartbeat(self)
            self._heartbeat.start()
        return self._heartbeat

    def run_by_id(self, job_id: str) -> bool:
        """Run one named job if it is still due (a broker redelivery finds it done)."""
        job = claim_job_by_id(self.db_url, job_id, self.worker_id, self.settings.lease_seconds)
        if job is None:
            return False
        self.execute(job)
        return True

    def execute(self, job: ClaimedJob) -> None:
        step = self.registry.get(job.pipeline, job.step)
        ctx = StepContext(job=job, settings=self.settings, storage=self.storage,
                          guard=self.guard, resources=self.resources)
        if step is None:
            self._fail(Step(), ctx, PermanentError(
                f"no step {job.pipeline}.{job.step} is registered", code="unknown_step"), None)
            return
        if job.attempts > job.max_attempts:
            self._fail(step, ctx, PermanentError(
                "the job's worker died or stalled on every attempt", code="worker_lost"), None)
            return
        heart = self._beat()
        beat = heart.watch(job, ctx)
        started = time.perf_counter()
        try:
            output = step.run(ctx)
            ctx.check_cancelled()
        except JobCancelled as exc:
            heart.release()
            if not beat.lost:
                self._cancelled(step, ctx, exc)
            return
        except ConveyorError as exc:
            heart.release()
            if not beat.lost:
                self._handle_error(step, ctx, exc, traceback.format_exc())
            return
        except Exception as exc:  # a bug or an unexpected library error: retry, then fail
            heart.release()
            if not beat.lost:
                err = TransientError(f"{type(exc).__name__}: {exc}", code="internal_error")
                self._handle_error(step, ctx, err, traceback.format_exc())
            return
        finally:
            heart.release()
        if beat.lost:
            log.warning("job %s lost its lease while running; discarding its output", job.id)
            return
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        try:
            self._complete(step, ctx, output, elapsed_ms)
        except JobCancelled as exc:  # the commit found nothing left to do
            self._cancelled(step, ctx, exc)
        except ConveyorError as exc:  # the commit itself refused (e.g. the item is gone)
            self._handle_error(step, ctx, exc, traceback.format_exc())
        except Exception as exc:  # a database error mid-commit: nothing was written
            err = TransientError(f"{type(exc).__name__}: {exc}", code="commit_failed")
            self._handle_error(step, ctx, err, traceback.format_exc())

    # -- outcomes ----------------------------------------------------------------------

    def _complete(self, step: Step, ctx: StepContext, output: Any, elapsed_ms: int) -> None:
        job = ctx.job
        with transaction(self.db_url) as session:
            if not finish_owned_job(session, job, "completed", elapsed_ms):
                log.warning("job %s was taken over before it committed; discarding", job.id)
                return
            step.commit(ctx, session, output)
            rows = self._write_audits(session, ctx)
            self._after_finish(session, job.parent_id)
            emit(session, "job.completed", owner_id=self._owner(session, job),
                 item_id=job.item_id, pipeline=job.pipeline, job_id=job.id, step=job.step)
        append_pipeline_log(self.settings.logs_dir, rows)

    def _handle_error(self, step: Step, ctx: StepContext, exc: ConveyorError,
                      stack: str) -> None:
        job = ctx.job
        # an open breaker or an exhausted rate limit is nobody's fault: wait, don't count it
        waiting = isinstance(exc, ProviderUnavailable)
        if not waiting and (isinstance(exc, PermanentError) or job.attempts >= job.max_attempts):
            self._fail(step, ctx, exc, stack)
            return
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        delay = retry_after if retry_after is not None else backoff_delay(
            job.attempts, self.settings.backoff_base_s, self.settings.backoff_cap_s)
        ctx.audit(AuditRecord(step=job.step, outcome="retry",
                              detail={"error_code": exc.code, "error": exc.message,
                                      "attempt": job.attempts, "retry_in_s": round(delay, 3)}))
        with transaction(self.db_url) as session:
            row = lock_owned_job(session, job)
            if row is None:
                return
            schedule_retry(row, delay, str(exc), stack)
            if waiting:
                row.attempts -= 1
            rows = self._write_audits(session, ctx)
            emit(session, "job.retry", owner_id=self._owner(session, job), item_id=job.item_id,
                 pipeline=job.pipeline, job_id=job.id, step=job.step, error=str(exc),
                 retry_in_s=round(delay, 3))
        append_pipeline_log(self.settings.logs_dir, rows)

    def _fail(self, step: Step, ctx: StepContext, exc: ConveyorError, stack: str | None) -> None:
        job = ctx.job
        ctx.audit(AuditRecord(step=job.step, outcome="failed",
                              detail={"error_code": exc.code, "error": exc.message,
                                      "attempt": job.attempts}))
        with transaction(self.db_url) as session:
            row = lock_owned_job(session, job)
            if row is None:
                return
            try:
                with session.begin_nested():
                    step.on_failure(ctx, session, exc)
            except Exception as hook_exc:  # the job still ends failed; say what else broke
                log.exception("on_failure of %s.%s failed", job.pipeline, job.step)
                stack = f"{stack or ''}\nwhile handling it, on_failure raised: {hook_exc!r}"
            rows = self._write_audits(session, ctx)
            finish(row, "failed", error=str(exc), stack=stack)
            self._after_finish(session, row.parent_id)
            emit(session, "job.failed", owner_id=self._owner(session, job), item_id=job.item_id,
                 pipeline=job.pipeline, job_id=job.id, step=job.step, error=str(exc))
        append_pipeline_log(self.settings.logs_dir, rows)

    def _cancelled(self, step: Step, ctx: StepContext, exc: JobCancelled) -> None:
        job = ctx.job
        ctx.audit(AuditRecord(step=job.step, outcome="cancelled"))
        with transaction(self.db_url) as session:
            row = lock_owned_job(session, job)
            if row is None:
                return
            rows = self._write_audits(session, ctx)
            finish(row, "cancelled", error=str(exc))
            self._after_finish(session, row.parent_id)
            emit(session, "job.cancelled", owner_id=self._owner(session, job),
                 item_id=job.item_id, pipeline=job.pipeline, job_id=job.id, step=job.step)
        append_pipeline_log(self.settings.logs_dir, rows)

    # -- helpers -----------------------------------------------------------------------

    def _write_audits(self, session: Session, ctx: StepContext) -> list[Any]:
        if not ctx.audits:
            return []
        job = ctx.job
        item = session.get(Item, job.item_id) if job.item_id else None
        for record in ctx.audits:
            if record.state is None and item is not None:
                record.state = item.state
        if item is not None:
            item.cost_total = (item.cost_total or 0.0) + sum(a.cost_estimate for a in ctx.audits)
        rows = write_audit(session, pipeline=job.pipeline, item_id=job.item_id, job_id=job.id,
                           records=ctx.audits)
        ctx.audits = []
        return rows

    def _after_finish(self, session: Session, parent_id: str | None) -> None:
        """A fan-out child finished (however it ended): the last one enqueues the fan-in."""
        if parent_id is None:
            return
        parent = child_finished(session, parent_id)
        if parent is not None and parent.result_ref and "fan_in" in parent.result_ref:
            enqueue(session, JobSpec(**parent.result_ref["fan_in"]))

    def _owner(self, session: Session, job: ClaimedJob) -> str | None:
        if job.item_id is None:
            return None
        item = session.get(Item, job.item_id)
        return item.owner_id if item else None
