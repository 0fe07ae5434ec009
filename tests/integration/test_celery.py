"""The Celery executor over real brokers (Redis and RabbitMQ) with real `conveyor worker
--executor celery` processes on PostgreSQL, including the faults it must survive: a worker
child killed in the middle of a step, lost or duplicated messages, a broker restart and a
database restart during a batch."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from conveyor.config import Settings
from conveyor.db.base import utcnow
from conveyor.db.models import AuditEvent, Job
from conveyor.db.session import dispose_all, read_session, transaction
from conveyor.engine import outbox
from conveyor.engine.executors.celery import publisher_for
from conveyor.engine.jobs import FINAL, JobSpec, enqueue
from conveyor.runtime import prepare
from tests.backends import (
    AMQP_URL,
    REDIS_URL,
    PrivatePostgres,
    PrivateRedis,
    postgres_database,
    require_rabbitmq,
    require_redis,
)
from tests.engine_steps import PIPELINE, runs
from tests.support import REPO, env_for, make_settings

pytestmark = pytest.mark.slow

BROKERS = {"redis": (REDIS_URL, require_redis), "rabbitmq": (AMQP_URL, require_rabbitmq)}


class CeleryStack:
    """This process enqueues (with the outbox publisher installed); workers run elsewhere."""

    def __init__(self, home: Path, db_url: str, broker_url: str) -> None:
        self.home = home
        self.db_url = db_url
        self.broker_url = broker_url
        self.queue = f"conveyor-test-{uuid.uuid4().hex[:8]}"
        self.settings: Settings = make_settings(
            home, database_url=db_url, executor="celery", broker_url=broker_url,
            celery_queue=self.queue, redispatch_after_s=2.0, dispatch_interval_s=0.2)
        prepare(self.settings)
        self.workers: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        return env_for(self.home, CONVEYOR_DATABASE_URL=self.db_url,
                       CONVEYOR_EXECUTOR="celery", CONVEYOR_BROKER_URL=self.broker_url,
                       CONVEYOR_CELERY_QUEUE=self.queue,
                       CONVEYOR_PLUGINS='["tests.engine_steps"]',
                       CONVEYOR_LEASE_SECONDS="3", CONVEYOR_HEARTBEAT_SECONDS="0.5",
                       CONVEYOR_REDISPATCH_AFTER_S="2", CONVEYOR_DISPATCH_INTERVAL_S="0.2")

    def start_worker(self, processes: int = 2) -> subprocess.Popen[bytes]:
        log = self.home / f"worker{len(self.workers)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "worker", "--executor", "celery",
             "--workers", str(processes)], cwd=REPO, env=self.env(),
            stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True)
        self.workers.append(proc)
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"celery worker did not start:\n{log.read_text()}")
            time.sleep(0.1)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.home.glob("worker*.log"))

    def add(self, step: str, n: int = 1, **payload: Any) -> list[str]:
        with transaction(self.db_url) as session:
            return [enqueue(session, JobSpec(pipeline=PIPELINE, step=step,
                                             payload=dict(payload))).id for _ in range(n)]

    def statuses(self, ids: list[str]) -> dict[str, str]:
        with read_session(self.db_url) as session:
            return dict(session.execute(select(Job.id, Job.status)
                                        .where(Job.id.in_(ids))).all())

    def all_ids(self) -> list[str]:
        with read_session(self.db_url) as session:
            return list(session.scalars(select(Job.id)))

    def wait_final(self, ids: list[str] | None = None, timeout: float = 60) -> dict[str, str]:
        """Wait until ``ids`` (default: every job, including those enqueued meanwhile)
        are final."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the database may be restarting
                want = ids if ids is not None else self.all_ids()
                got = self.statuses(want)
                if len(got) == len(want) and all(s in FINAL for s in got.values()):
                    return got
            time.sleep(0.1)
        left = Counter(self.statuses(ids or self.all_ids()).values())
        raise AssertionError(f"jobs not final after {timeout} s: {left}\n"
                             f"{self.logs()[-4000:]}")

    def commits(self) -> Counter[str]:
        """How many times each job's result was committed (the exactly-once witness)."""
        with read_session(self.db_url) as session:
            return Counter(session.scalars(select(AuditEvent.job_id)
                                           .where(AuditEvent.step == "record")).all())

    def stop(self) -> None:
        for proc in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@contextlib.contextmanager
def celery_stack(tmp_path: Path, db_url: str, broker_url: str) -> Iterator[CeleryStack]:
    stack = CeleryStack(tmp_path / "home", db_url, broker_url)
    try:
        yield stack
    finally:
        stack.stop()
        outbox.uninstall()
        dispose_all()


@pytest.fixture(params=list(BROKERS))
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CeleryStack]:
    url, require = BROKERS[request.param]
    require()
    with postgres_database() as db_url, celery_stack(tmp_path, db_url, url) as s:
        yield s


@pytest.fixture
def redis_stack(tmp_path: Path) -> Iterator[CeleryStack]:
    require_redis()
    with postgres_database() as db_url, celery_stack(tmp_path, db_url, REDIS_URL) as s:
        yield s


def test_a_batch_runs_every_job_exactly_once(stack: CeleryStack) -> None:
    stack.start_worker(2)
    ids = stack.add("record", 40)
    fanout = stack.add("fanout", 1, children=5, fail=[2])
    flaky = stack.add("flaky", 1, succeed_on=2)  # its retry is published by the dispatcher
    statuses = stack.wait_final()
    assert set(statuses[i] for i in ids) == {"completed"}
    assert stack.commits() == Counter({i: 1 for i in ids})
    assert statuses[flaky[0]] == "completed" and len(runs(stack.settings, "flaky")) == 2
    with read_session(stack.db_url) as session:
        fanin = session.scalars(select(Job.status).where(Job.step == "fanin")).all()
        children = Counter(session.scalars(select(Job.status)
                                           .where(Job.parent_id == fanout[0])).all())
    assert fanin == ["completed"] and children == {"completed": 4, "failed": 1}


def test_messages_lost_before_publish_are_republished(redis_stack: CeleryStack) -> None:
    stack = redis_stack
    stack.start_worker(1)
    outbox.uninstall()  # as if this process died between the commit and the publish
    ids = stack.add("record", 5)
    # a job whose message the broker lost: marked as published long ago, never delivered
    with transaction(stack.db_url) as session:
        lost = enqueue(session, JobSpec(pipeline=PIPELINE, step="record")).id
        session.execute(update(Job).where(Job.id == lost)
                        .values(dispatched_at=utcnow().replace(year=2000)))
    stack.wait_final([*ids, lost], timeout=30)
    assert stack.commits() == Counter({i: 1 for i in [*ids, lost]})


def test_duplicate_messages_run_the_job_once(redis_stack: CeleryStack) -> None:
    stack = redis_stack
    [job] = stack.add("record", 1, seconds=0.3)
    publish = publisher_for(stack.settings)
    for _ in range(4):  # redeliveries, a second dispatcher, a retried publish...
        publish([job])
    stack.start_worker(2)
    stack.wait_final([job])
    time.sleep(1.0)  # let the duplicates arrive and find the job done
    assert stack.commits() == Counter({job: 1}) and len(runs(stack.settings, "record")) == 1
    with read_session(stack.db_url) as session:
        assert session.scalar(select(Job.attempts).where(Job.id == job)) == 1


def _child_running(stack: CeleryStack, name: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = runs(stack.settings, name)
        if lines:
            return int(lines[0].split()[1])
        time.sleep(0.05)
    raise AssertionError(f"no {name} step started\n{stack.logs()[-3000:]}")


def test_kill_9_of_a_worker_child_mid_step_completes_the_job_once(
        redis_stack: CeleryStack) -> None:
    stack = redis_stack
    stack.start_worker(2)
    [job] = stack.add("record", 1, seconds=2.0)
    pid = _child_running(stack, "record")
    os.kill(pid, signal.SIGKILL)
    statuses = stack.wait_final([job], timeout=60)
    assert statuses[job] == "completed"
    assert stack.commits() == Counter({job: 1})
    starts = runs(stack.settings, "record")
    assert len(starts) == 2 and int(starts[1].split()[1]) != pid
    with read_session(stack.db_url) as session:
        attempts, error = session.execute(select(Job.attempts, Job.last_error)
                                          .where(Job.id == job)).one()
    assert attempts == 2 and "worker_lost" in (error or "")


def test_a_broker_restart_during_a_batch_loses_nothing(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path) as redis, postgres_database() as db_url, \
            celery_stack(tmp_path, db_url, redis.url) as stack:
        stack.start_worker(2)
        ids = stack.add("record", 30, seconds=0.1)
        while sum(stack.commits().values()) < 5:
            time.sleep(0.05)
        redis.restart(down_s=1.0)  # it keeps nothing: every queued message is gone
        stack.wait_final(ids, timeout=90)
        assert stack.commits() == Counter({i: 1 for i in ids})
        assert set(stack.statuses(ids).values()) == {"completed"}


def test_a_database_restart_during_a_batch_loses_nothing(tmp_path: Path) -> None:
    require_redis()
    with PrivatePostgres(tmp_path) as pg:
        settings = prepare(make_settings(tmp_path / "migrate", database_url=pg.url))
        assert settings.resolved_database_url == pg.url
        dispose_all()
        with celery_stack(tmp_path, pg.url, REDIS_URL) as stack:
            stack.start_worker(2)
            ids = stack.add("record", 30, seconds=0.1)
            while sum(stack.commits().values()) < 5:
                time.sleep(0.05)
            pg.restart(down_s=1.0)
            stack.wait_final(ids, timeout=90)
            assert stack.commits() == Counter({i: 1 for i in ids})
            with read_session(stack.db_url) as session:
                done = session.scalar(select(func.count()).select_from(Job)
                                      .where(Job.status == "completed"))
            assert done == len(ids)
