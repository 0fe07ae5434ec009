"""The engine on real SQLite, with several processes where it matters."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import random
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from conveyor.config import Settings
from conveyor.db.base import utcnow
from conveyor.db.models import AuditEvent, Item, Job, User
from conveyor.db.session import read_session, transaction
from conveyor.engine.backoff import backoff_delay
from conveyor.engine.executors.inline import run_until_idle
from conveyor.engine.executors.local import LocalExecutor
from conveyor.engine.jobs import (
    JobSpec,
    cancel_item_jobs,
    claim_next_job,
    enqueue,
    reap_expired_leases,
)
from conveyor.engine.ratelimit import DbCallGuard, Rate
from conveyor.errors import ProviderUnavailable
from tests.engine_steps import PIPELINE, build_test_runner, runs


def add_jobs(settings: Settings, step: str, n: int = 1, **kw: object) -> list[str]:
    with transaction(settings.resolved_database_url) as session:
        return [enqueue(session, JobSpec(pipeline=PIPELINE, step=step, **kw)).id  # type: ignore[arg-type]
                for _ in range(n)]


def job(settings: Settings, job_id: str) -> Job:
    with read_session(settings.resolved_database_url) as session:
        row = session.get(Job, job_id)
        assert row is not None
        return row


def make_item(settings: Settings) -> str:
    with transaction(settings.resolved_database_url) as session:
        user = User(name=f"u{random.randrange(10**9)}")
        session.add(user)
        session.flush()
        item = Item(pipeline=PIPELINE, owner_id=user.id, state="NEW")
        session.add(item)
        session.flush()
        return item.id


def wait_until(pred: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def status_counts(settings: Settings) -> dict[str, int]:
    with read_session(settings.resolved_database_url) as session:
        return dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())


# -- idempotency ---------------------------------------------------------------------------

def test_idempotency_key_returns_the_active_job(settings: Settings) -> None:
    first = add_jobs(settings, "noop", idempotency_key="k1")[0]
    again = add_jobs(settings, "noop", idempotency_key="k1")[0]
    assert again == first
    run_until_idle(build_test_runner(settings))
    assert job(settings, first).status == "completed"
    later = add_jobs(settings, "noop", idempotency_key="k1")[0]
    assert later != first  # the key only guards pending/running jobs


def _enqueue_same_key(url: str, n: int) -> None:
    from conveyor.db.session import transaction as tx

    for _ in range(n):
        with tx(url) as session:
            enqueue(session, JobSpec(pipeline=PIPELINE, step="noop", idempotency_key="race"))


def test_idempotency_key_under_concurrent_processes(settings: Settings) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_enqueue_same_key, args=(settings.resolved_database_url, 20))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with read_session(settings.resolved_database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)
                              .where(Job.idempotency_key == "race")) == 1


# -- claim and lease -----------------------------------------------------------------------

def _drain(settings: Settings) -> None:
    run_until_idle(build_test_runner(settings))


def test_each_job_runs_once_with_several_processes(settings: Settings) -> None:
    ids = add_jobs(settings, "noop", 300)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_drain, args=(settings,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = runs(settings, "noop")
    ran = [line.split()[0] for line in lines]
    assert sorted(ran) == sorted(ids)  # every job once, none twice
    assert len({line.split()[1] for line in lines}) >= 2  # work was actually shared
    assert status_counts(settings) == {"completed": 300}


def test_a_job_whose_lease_expired_is_claimed_again(settings: Settings) -> None:
    jid = add_jobs(settings, "noop")[0]
    url = settings.resolved_database_url
    a = claim_next_job(url, "worker-a", lease_s=0.3)
    assert a is not None and a.id == jid and a.attempts == 1
    assert claim_next_job(url, "worker-b", lease_s=0.3) is None  # leased to A
    runner = build_test_runner(settings)
    assert not runner.run_one()  # still leased: nothing to do
    time.sleep(0.4)
    runner._next_reap = 0.0
    assert runner.run_one()  # idle, so it reaps the expired lease and takes the job
    row = job(settings, jid)
    assert row.status == "completed" and row.attempts == 2
    assert row.locked_by == runner.worker_id
    assert runs(settings, "noop") == [f"{jid} {os.getpid()}"]


def test_output_of_a_worker_that_lost_its_lease_is_discarded(settings: Settings) -> None:
    jid = add_jobs(settings, "noop")[0]
    url = settings.resolved_database_url
    stale = claim_next_job(url, "worker-a", lease_s=0.2)
    assert stale is not None
    time.sleep(0.3)
    runner = build_test_runner(settings)
    assert runner.run_one()  # B reclaims and completes
    done = job(settings, jid)
    assert done.status == "completed" and done.locked_by == runner.worker_id
    runner.execute(stale)  # A wakes up late: its result must not be committed again
    after = job(settings, jid)
    assert after.finished_at == done.finished_at and after.locked_by == runner.worker_id
    with read_session(url) as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.job_id == jid)) == 0


def test_reaper_returns_expired_leases_to_pending(settings: Settings) -> None:
    jid = add_jobs(settings, "noop")[0]
    url = settings.resolved_database_url
    assert claim_next_job(url, "dead-worker", lease_s=0.1) is not None
    assert reap_expired_leases(url) == 0
    time.sleep(0.2)
    assert reap_expired_leases(url) == 1
    row = job(settings, jid)
    assert row.status == "pending" and row.locked_by is None
    assert "worker_lost" in (row.last_error or "")


def test_job_whose_workers_keep_dying_fails_as_worker_lost(settings: Settings) -> None:
    item = make_item(settings)
    jid = add_jobs(settings, "noop", item_id=item)[0]
    url = settings.resolved_database_url
    for i in range(3):
        assert claim_next_job(url, f"dying-{i}", lease_s=0.05) is not None
        time.sleep(0.1)
        assert reap_expired_leases(url) == 1
    run_until_idle(build_test_runner(settings))
    row = job(settings, jid)
    assert row.status == "failed" and "worker_lost" in (row.last_error or "")
    assert runs(settings, "noop") == []
    with read_session(url) as session:
        it = session.get(Item, item)
        assert it is not None and it.state == "FAILED" and it.error_code == "worker_lost"


# -- retries -------------------------------------------------------------------------------

def test_backoff_has_full_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        delays = [backoff_delay(attempt, 2.0, 60.0, rng) for _ in range(200)]
        ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.5 * ceiling  # spread over the whole range, not fixed
        assert min(delays) < 0.5 * ceiling


def test_transient_errors_retry_with_backoff_then_succeed(settings: Settings) -> None:
    jid = add_jobs(settings, "flaky", payload={"succeed_on": 3})[0]
    runner = build_test_runner(settings)
    assert runner.run_one()
    row = job(settings, jid)
    assert row.status == "pending" and row.attempts == 1
    delay = (row.run_after - utcnow()).total_seconds()
    assert -0.1 <= delay <= settings.backoff_cap_s
    run_until_idle(runner, wait_for_delayed_s=3.0)
    row = job(settings, jid)
    assert row.status == "completed" and row.attempts == 3
    assert len(runs(settings, "flaky")) == 3
    with read_session(settings.resolved_database_url) as session:
        outcomes = session.scalars(select(AuditEvent.outcome).where(AuditEvent.job_id == jid)
                                   .order_by(AuditEvent.id)).all()
    assert outcomes == ["retry", "retry"]


def test_retry_after_from_the_provider_is_honoured(settings: Settings) -> None:
    jid = add_jobs(settings, "flaky", payload={"succeed_on": 2, "retry_after": 30})[0]
    build_test_runner(settings).run_one()
    row = job(settings, jid)
    assert row.status == "pending"
    assert 29 <= (row.run_after - utcnow()).total_seconds() <= 30.5


def test_transient_errors_fail_after_max_attempts(settings: Settings) -> None:
    item = make_item(settings)
    jid = add_jobs(settings, "flaky", item_id=item)[0]
    run_until_idle(build_test_runner(settings), wait_for_delayed_s=3.0)
    row = job(settings, jid)
    assert row.status == "failed" and row.attempts == 3
    assert "test_transient" in (row.last_error or "") and row.last_error_stack
    with read_session(settings.resolved_database_url) as session:
        it = session.get(Item, item)
        assert it is not None and it.state == "FAILED" and it.error_code == "test_transient"


def test_permanent_errors_fail_at_once(settings: Settings) -> None:
    item = make_item(settings)
    jid = add_jobs(settings, "broken", item_id=item)[0]
    run_until_idle(build_test_runner(settings), wait_for_delayed_s=0.5)
    row = job(settings, jid)
    assert row.status == "failed" and row.attempts == 1
    with read_session(settings.resolved_database_url) as session:
        it = session.get(Item, item)
        assert it is not None and it.error_code == "test_permanent"
        assert it.error_message == "this input can never work"


# -- fan-out / fan-in ----------------------------------------------------------------------

def test_fan_in_runs_once_after_every_child_with_several_processes(settings: Settings) -> None:
    s = settings.model_copy(update={"workers": 2})
    parent = add_jobs(s, "fanout", payload={"children": 40, "fail": [3, 17]})[0]
    executor = LocalExecutor(s, build_test_runner)
    executor.start()
    try:
        wait_until(lambda: len(runs(s, "fanin")) >= 1, timeout=90)
        time.sleep(0.5)  # let any (wrong) second fan-in show up
    finally:
        executor.stop()
    assert len(runs(s, "fanin")) == 1
    assert len(runs(s, "noop")) == 38 and len(runs(s, "broken")) == 2
    with read_session(s.resolved_database_url) as session:
        children = session.scalars(select(Job).where(Job.parent_id == parent)).all()
        assert len(children) == 40
        assert all(c.status in ("completed", "failed") for c in children)
        p = session.get(Job, parent)
        assert p is not None and p.children_pending == 0


# -- cancellation --------------------------------------------------------------------------

def test_cancel_stops_pending_and_running_jobs(settings: Settings) -> None:
    s = settings.model_copy(update={"heartbeat_seconds": 0.1, "workers": 1})
    item = make_item(s)
    running = add_jobs(s, "sleepy", item_id=item, payload={"seconds": 30}, priority=10)[0]
    pending = add_jobs(s, "noop", item_id=item, delay_s=60)[0]
    executor = LocalExecutor(s, build_test_runner)
    executor.start()
    try:
        wait_until(lambda: job(s, running).status == "running")
        with transaction(s.resolved_database_url) as session:
            assert cancel_item_jobs(session, item) == 2
        assert job(s, pending).status == "cancelled"
        wait_until(lambda: job(s, running).status == "cancelled", timeout=10)
    finally:
        executor.stop()
    assert runs(s, "sleepy_done") == []
    assert runs(s, "noop") == []


# -- shared rate limits and breakers -------------------------------------------------------

def _take_tokens(url: str, n: int, out: Path) -> None:
    guard = DbCallGuard(url, {"p": Rate(per_minute=600, burst=1)})
    stamps = []
    for _ in range(n):
        guard.before_call("p")
        stamps.append(time.time())
    out.write_text("\n".join(map(str, stamps)))


def test_token_bucket_is_shared_by_processes(settings: Settings, tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"p{i}.txt" for i in range(2)]
    procs = [ctx.Process(target=_take_tokens, args=(settings.resolved_database_url, 6, o))
             for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    stamps = sorted(float(x) for o in outs for x in o.read_text().split())
    assert len(stamps) == 12
    # 10 per second for both processes together: 12 calls need at least ~1.1 s
    assert stamps[-1] - stamps[0] >= 1.0
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert sum(g < 0.05 for g in gaps) <= 1  # never a burst beyond the bucket


def test_breaker_opens_after_repeated_failures(settings: Settings) -> None:
    guard = DbCallGuard(settings.resolved_database_url, {"p": Rate(6000)},
                        breaker_failures=3, breaker_open_s=0.5)
    for _ in range(3):
        guard.before_call("p")
        guard.after_call("p", ok=False)
    with pytest.raises(ProviderUnavailable) as info:
        guard.before_call("p")
    assert info.value.code == "circuit_open" and info.value.retry_after
    time.sleep(0.6)
    guard.before_call("p")  # half-open again after the pause
    guard.after_call("p", ok=True)


def test_retry_after_pauses_the_provider_for_everyone(settings: Settings) -> None:
    url = settings.resolved_database_url
    a = DbCallGuard(url, {"p": Rate(6000, 5)}, max_wait_s=0.1)
    b = DbCallGuard(url, {"p": Rate(6000, 5)}, max_wait_s=0.1)
    a.before_call("p")
    a.after_call("p", ok=False, retry_after=5)
    with pytest.raises(ProviderUnavailable) as info:
        b.before_call("p")
    assert info.value.code == "rate_limited" and 4 <= (info.value.retry_after or 0) <= 5


def test_due_jobs_run_before_delayed_ones(settings: Settings) -> None:
    later = add_jobs(settings, "noop", delay_s=60)[0]
    now = add_jobs(settings, "noop")[0]
    runner = build_test_runner(settings)
    assert runner.run_one() and not runner.run_one()
    assert job(settings, now).status == "completed"
    assert job(settings, later).status == "pending"
    with transaction(settings.resolved_database_url) as session:
        session.execute(update(Job).where(Job.id == later)
                        .values(run_after=utcnow() - timedelta(seconds=1)))
    assert runner.run_one()


def test_an_open_breaker_delays_without_using_up_attempts(settings: Settings) -> None:
    guard = DbCallGuard(settings.resolved_database_url, {"p": Rate(6000)},
                        breaker_failures=1, breaker_open_s=30)
    guard.after_call("p", ok=False)  # the provider just failed: breaker open for 30 s
    jid = add_jobs(settings, "guarded")[0]
    runner = build_test_runner(settings)
    for _ in range(5):  # however often it is tried while the breaker is open
        with transaction(settings.resolved_database_url) as session:
            session.execute(update(Job).where(Job.id == jid).values(run_after=utcnow()))
        assert runner.run_one()
    row = job(settings, jid)
    assert row.status == "pending" and row.attempts == 0
    assert "circuit_open" in (row.last_error or "")
    assert (row.run_after - utcnow()).total_seconds() > 20


def test_a_redelivered_job_id_finds_the_job_done_and_does_nothing(settings: Settings) -> None:
    jid = add_jobs(settings, "noop")[0]
    runner = build_test_runner(settings)
    assert runner.run_by_id(jid)
    assert not runner.run_by_id(jid)  # a broker delivered the same id again
    assert len(runs(settings, "noop")) == 1 and job(settings, jid).status == "completed"


def test_a_job_claimed_by_id_must_be_due_or_abandoned(settings: Settings) -> None:
    from conveyor.engine.jobs import claim_job_by_id

    db = settings.resolved_database_url
    later = add_jobs(settings, "noop", delay_s=60)[0]
    assert claim_job_by_id(db, later, "w1", 30) is None  # a delayed retry, not due yet
    jid = add_jobs(settings, "noop")[0]
    first = claim_job_by_id(db, jid, "w1", 30)
    assert first is not None and first.attempts == 1 and first.worker_id == "w1"
    assert claim_job_by_id(db, jid, "w2", 30) is None  # its worker holds a live lease
    with transaction(db) as session:
        session.execute(update(Job).where(Job.id == jid)
                        .values(lease_until=utcnow() - timedelta(seconds=1)))
    second = claim_job_by_id(db, jid, "w2", 30)  # that worker died: its lease ran out
    assert second is not None and second.attempts == 2 and job(settings, jid).locked_by == "w2"


def test_old_events_are_pruned(settings: Settings) -> None:
    from conveyor.db.models import Event
    from conveyor.engine.events import emit, prune_events

    with transaction(settings.resolved_database_url) as session:
        emit(session, "old")
        emit(session, "new")
        session.flush()
        session.execute(update(Event).where(Event.kind == "old")
                        .values(created_at=utcnow() - timedelta(hours=25)))
    with transaction(settings.resolved_database_url) as session:
        assert prune_events(session, keep_hours=24) == 1
    with read_session(settings.resolved_database_url) as session:
        assert session.scalars(select(Event.kind)).all() == ["new"]


def test_a_commit_that_raises_fails_the_job_cleanly(settings: Settings) -> None:
    jid = add_jobs(settings, "commit_refuses")[0]
    runner = build_test_runner(settings)
    assert runner.run_one()
    row = job(settings, jid)
    assert row.status == "failed" and "test_gone" in (row.last_error or "")
    assert row.lease_until is None  # not left running until its lease expires


def test_a_step_that_overruns_its_time_limit_gets_its_worker_killed(settings: Settings) -> None:
    s = settings.model_copy(update={"step_timeout_s": 1.0, "lease_seconds": 30.0,
                                    "workers": 1})
    item = make_item(s)
    jid = add_jobs(s, "sleepy", item_id=item, payload={"seconds": 60}, max_attempts=1)[0]
    executor = LocalExecutor(s, build_test_runner)
    executor.start()
    try:
        first = executor.pids()
        wait_until(lambda: job(s, jid).status == "failed", timeout=60)
        wait_until(lambda: executor.pids() != first and all(
            p.is_alive() for p in executor.processes), timeout=30)
    finally:
        executor.stop()
    row = job(s, jid)
    assert "worker_lost" in (row.last_error or "")
    assert runs(s, "sleepy_done") == []  # it never got to finish
    with read_session(s.resolved_database_url) as session:
        it = session.get(Item, item)
        assert it is not None and it.state == "FAILED"
