"""What a step is to the engine, the context it runs in, and the step registry.

A step runs in two phases so that slow work never holds a database transaction:

1. ``run(ctx)`` does the work (decode, OCR, provider calls) and returns an output;
2. ``commit(ctx, session, output)`` writes that output, the item's new state and the next
   jobs, inside the same transaction that marks the job completed.

A second delivery of the same job finds it completed (or leased by someone else) and the
engine discards the late output, so effects happen once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import update
from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.db.models import Item, Job
from conveyor.engine.audit import AuditRecord
from conveyor.engine.events import emit
from conveyor.engine.jobs import ClaimedJob, JobSpec, enqueue
from conveyor.errors import ConveyorError, PermanentError
from conveyor.providers.base import CallGuard, NoGuard
from conveyor.storage.base import Storage


class JobCancelled(PermanentError):
    code = "cancelled"


@dataclass
class StepContext:
    job: ClaimedJob
    settings: Settings
    storage: Storage
    guard: CallGuard
    resources: Resources
    audits: list[AuditRecord] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def item_id(self) -> str:
        if self.job.item_id is None:
            raise PermanentError("this step needs an item", code="no_item")
        return self.job.item_id

    def audit(self, record: AuditRecord) -> AuditRecord:
        self.audits.append(record)
        return record

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled("the job was cancelled")

    def fan_out(self, session: Session, children: list[JobSpec], fan_in: JobSpec) -> None:
        """Enqueue ``children``; the last of them to finish enqueues ``fan_in``."""
        session.execute(
            update(Job).where(Job.id == self.job.id).values(
                children_pending=len(children), result_ref={"fan_in": fan_in.to_dict()}
            )
        )
        if not children:
            enqueue(session, fan_in)
            return
        for child in children:
            child.parent_id = self.job.id
            enqueue(session, child)


class Resources:
    """Per-process cache of expensive objects (an OCR model, an HTTP client), and the
    process's call guard, for providers built before the first job (``warm_up``)."""

    def __init__(self, guard: CallGuard | None = None) -> None:
        self.guard: CallGuard = guard if guard is not None else NoGuard()
        self._objects: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str, factory: Callable[[], Any]) -> Any:
        with self._lock:
            if name not in self._objects:
                self._objects[name] = factory()
            return self._objects[name]


class Step:
    """Base class for steps. Subclasses set ``pipeline`` and ``name`` and override ``run``."""

    pipeline: ClassVar[str]
    name: ClassVar[str]

    def warm_up(self, settings: Settings, resources: Resources) -> None:
        """Load what the step needs (a model) before the first job, in each worker."""
        return None

    def run(self, ctx: StepContext) -> Any:
        return None

    def commit(self, ctx: StepContext, session: Session, output: Any) -> None:
        return None

    def on_failure(self, ctx: StepContext, session: Session, error: ConveyorError) -> None:
        """The job failed for good: by default the item fails with the error's code."""
        if ctx.job.item_id is None:
            return
        item = session.get(Item, ctx.job.item_id)
        if item is None:
            return
        item.state = "FAILED"
        item.error_code = error.code
        item.error_message = error.message
        emit(session, "item.state", owner_id=item.owner_id, item_id=item.id,
             pipeline=item.pipeline, state="FAILED", error_code=error.code,
             error_message=error.message)


class StepRegistry:
    def __init__(self) -> None:
        self._steps: dict[tuple[str, str], Step] = {}

    def register(self, step: Step) -> Step:
        self._steps[(step.pipeline, step.name)] = step
        return step

    def get(self, pipeline: str, name: str) -> Step | None:
        return self._steps.get((pipeline, name))

    def steps(self) -> list[Step]:
        return [self._steps[k] for k in sorted(self._steps)]

    def names(self) -> list[tuple[str, str]]:
        return sorted(self._steps)


registry = StepRegistry()
