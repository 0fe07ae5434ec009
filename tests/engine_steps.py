"""Steps used by the engine tests (importable by spawned worker processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.db.models import AuditEvent
from conveyor.engine.jobs import JobSpec
from conveyor.engine.ratelimit import DbCallGuard
from conveyor.engine.runner import Runner
from conveyor.engine.steps import Step, StepContext, registry
from conveyor.errors import PermanentError, TransientError
from conveyor.storage import build_storage

PIPELINE = "test"


def _mark(ctx: StepContext, name: str) -> None:
    """Append one line per execution to a file, so tests can count real runs."""
    path = Path(ctx.settings.home_dir) / f"{name}.runs"
    with open(path, "a") as fh:
        fh.write(f"{ctx.job.id} {os.getpid()}\n")


class Noop(Step):
    pipeline = PIPELINE
    name = "noop"

    def run(self, ctx: StepContext) -> Any:
        _mark(ctx, "noop")


class Flaky(Step):
    """Fails transiently until it has been tried ``payload['succeed_on']`` times."""

    pipeline = PIPELINE
    name = "flaky"

    def run(self, ctx: StepContext) -> Any:
        _mark(ctx, "flaky")
        if ctx.job.attempts < int(ctx.job.payload.get("succeed_on", 99)):
            raise TransientError("temporary outage", code="test_transient",
                                 retry_after=ctx.job.payload.get("retry_after"))
        return "ok"


class Broken(Step):
    pipeline = PIPELINE
    name = "broken"

    def run(self, ctx: StepContext) -> Any:
        _mark(ctx, "broken")
        raise PermanentError("this input can never work", code="test_permanent")


class Sleepy(Step):
    """Sleeps ``payload['seconds']``, checking for cancellation."""

    pipeline = PIPELINE
    name = "sleepy"

    def run(self, ctx: StepContext) -> Any:
        _mark(ctx, "sleepy")
        deadline = time.monotonic() + float(ctx.job.payload.get("seconds", 1))
        while time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(0.02)
        _mark(ctx, "sleepy_done")


class Guarded(Step):
    """Calls provider "p" through the engine's guard (as a provider client would)."""

    pipeline = PIPELINE
    name = "guarded"

    def run(self, ctx: StepContext) -> Any:
        ctx.guard.before_call("p")
        _mark(ctx, "guarded")


class Fanout(Step):
    pipeline = PIPELINE
    name = "fanout"

    def commit(self, ctx: StepContext, session: Session, output: Any) -> None:
        n = int(ctx.job.payload.get("children", 5))
        fail = set(ctx.job.payload.get("fail", []))
        children = [JobSpec(pipeline=PIPELINE, step="broken" if i in fail else "noop",
                            item_id=ctx.job.item_id, payload={"i": i}) for i in range(n)]
        ctx.fan_out(session, children, JobSpec(pipeline=PIPELINE, step="fanin",
                                               item_id=ctx.job.item_id))


class Fanin(Step):
    pipeline = PIPELINE
    name = "fanin"

    def run(self, ctx: StepContext) -> Any:
        _mark(ctx, "fanin")


for _s in (Noop(), Flaky(), Broken(), Sleepy(), Guarded(), Fanout(), Fanin()):
    registry.register(_s)


def build_test_runner(settings: Settings) -> Runner:
    return Runner(settings, registry, build_storage(settings.resolved_storage_url),
                  DbCallGuard(settings.resolved_database_url, {}))


def runs(settings: Settings, name: str) -> list[str]:
    path = Path(settings.home_dir) / f"{name}.runs"
    return path.read_text().split("\n")[:-1] if path.exists() else []


class CommitRefuses(Step):
    """Its commit raises, as a step whose item disappeared would."""

    pipeline = PIPELINE
    name = "commit_refuses"

    def commit(self, ctx: StepContext, session: Session, output: Any) -> None:
        raise PermanentError("the item is gone", code="test_gone")


registry.register(CommitRefuses())


class Record(Step):
    """Works ``payload['seconds']``, then commits one audit row: the exactly-once witness
    (a run may repeat after a crash; its committed result must not)."""

    pipeline = PIPELINE
    name = "record"

    def run(self, ctx: StepContext) -> Any:
        _mark(ctx, "record")
        deadline = time.monotonic() + float(ctx.job.payload.get("seconds", 0))
        while time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(0.02)
        return os.getpid()

    def commit(self, ctx: StepContext, session: Session, output: Any) -> None:
        session.add(AuditEvent(item_id=ctx.job.item_id, job_id=ctx.job.id, pipeline=PIPELINE,
                               step="record", outcome="committed", cost_estimate=0.0,
                               detail={"pid": output}))


registry.register(Record())
